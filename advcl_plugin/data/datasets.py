"""Datasets for AdvCL: CIFAR-10/100 through torchvision or from the offline copies.

All of them become an :class:`ImageArrayDataset` (uint8 HWC images in memory) that
knows, for every sample, its index in the official split (``source_index``), so that
pseudo labels made for the full split can be looked up for a subset.

Example:
    >>> from advcl_plugin.data import load_dataset
    >>> train = load_dataset("cifar10", "train", root="./data", download=True)  # doctest: +SKIP
    >>> image, label = train[0]                                                  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from advcl_plugin.core.clusterfit import PseudoLabels
from advcl_plugin.data.offline import OFFLINE_FILES, find_offline_data_dir, load_offline_arrays

__all__ = [
    "DATASETS",
    "ImageArrayDataset",
    "IndexedDataset",
    "SplitInfo",
    "align_pseudo_labels",
    "load_dataset",
]

TORCHVISION_DATASETS = ("cifar10", "cifar100")
#: every name accepted by :func:`load_dataset`
DATASETS = (*TORCHVISION_DATASETS, *OFFLINE_FILES)


@dataclass(frozen=True)
class SplitInfo:
    """The official split a dataset's ``source_index`` refers to, e.g. ``cifar10-train`` of 50,000."""

    name: str
    size: int


_OFFICIAL_SIZES = {
    ("cifar10", "train"): 50000,
    ("cifar10", "test"): 10000,
    ("cifar100", "train"): 50000,
    ("cifar100", "test"): 10000,
}


class ImageArrayDataset(Dataset):
    """Images held as a uint8 array (N, H, W, C); items are ``(transform(PIL image), label)``.

    Attributes:
        images, labels, source_index: arrays of length N.
        split: the official split ``source_index`` refers to.
        name: dataset name, e.g. ``"cifar10-offline/train"``.
        class_names: names of the classes.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        name: str,
        split: SplitInfo,
        source_index: np.ndarray | None = None,
        class_names: Any = None,
        transform: Callable | None = None,
    ) -> None:
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be a uint8 array (N, H, W, C), got {images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.source_index = np.arange(len(images), dtype=np.int64) if source_index is None else np.asarray(source_index)
        self.name = name
        self.split = split
        self.class_names = list(class_names) if class_names is not None else None
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def subset(self, indices: np.ndarray | list[int], transform: Callable | None = None) -> ImageArrayDataset:
        """The samples at ``indices`` (keeping their source indices)."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageArrayDataset(
            self.images[indices],
            self.labels[indices],
            name=f"{self.name}[{len(indices)}]",
            split=self.split,
            source_index=self.source_index[indices],
            class_names=self.class_names,
            transform=transform if transform is not None else self.transform,
        )

    def with_transform(self, transform: Callable | None) -> ImageArrayDataset:
        """A shallow copy sharing the images, with another transform."""
        clone = copy.copy(self)
        clone.transform = transform
        return clone

    @property
    def identity(self) -> str:
        """Name recorded in pseudo-label files: the official split's name when this dataset
        is that whole split in official order, else the dataset's own name."""
        full = len(self) == self.split.size and np.array_equal(self.source_index, np.arange(self.split.size))
        return self.split.name if full else self.name


class IndexedDataset(Dataset):
    """Wraps a dataset so that items are ``(sample, label, index)``; pseudo labels are looked up by index."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        sample, label = self.dataset[index]
        return sample, label, index


def load_dataset(
    name: str,
    split: str = "train",
    *,
    root: str | os.PathLike = "./data",
    download: bool = False,
    data_dir: str | os.PathLike | None = None,
    transform: Callable | None = None,
) -> ImageArrayDataset:
    """Load a dataset by name (see :data:`DATASETS`).

    Args:
        name: ``"cifar10"`` / ``"cifar100"`` (torchvision layout under ``root``; set
            ``download=True`` to fetch them) or an offline name
            (``"cifar10-offline"``, ``"cifar10-jpeg-offline"``, ``"cifar100-offline"``).
        split: ``"train"`` or ``"test"``.
        root: torchvision dataset root.
        download: let torchvision download the dataset.
        data_dir: folder of the offline files (default ``$ADVCL_DATA_DIR``).
        transform: applied to each PIL image.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name in TORCHVISION_DATASETS:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        try:
            tv = cls(root=str(root), train=split == "train", download=download)
        except RuntimeError as error:
            raise FileNotFoundError(
                f"{name} was not found under {root}: pass download=True (--download) to fetch it, "
                f"or use an offline copy ({', '.join(OFFLINE_FILES)}) with {'ADVCL_DATA_DIR'} set"
            ) from error
        return ImageArrayDataset(
            np.asarray(tv.data, dtype=np.uint8),
            np.asarray(tv.targets, dtype=np.int64),
            name=f"{name}/{split}",
            split=SplitInfo(f"{name}-{split}", _OFFICIAL_SIZES[(name, split)]),
            class_names=tv.classes,
            transform=transform,
        )
    if name in OFFLINE_FILES:
        directory = find_offline_data_dir(data_dir, required=True)
        arrays = load_offline_arrays(name, split, str(directory))
        family = "cifar100" if name.startswith("cifar100") else "cifar10"
        return ImageArrayDataset(
            arrays["images"],
            arrays["labels"],
            name=f"{name}/{split}",
            split=SplitInfo(f"{family}-{split}", _OFFICIAL_SIZES[(family, split)]),
            source_index=arrays["source_index"],
            class_names=[str(c) for c in arrays["class_names"]],
            transform=transform,
        )
    raise ValueError(f"unknown dataset {name!r}; choose from {list(DATASETS)}")


def align_pseudo_labels(labels: PseudoLabels, dataset: ImageArrayDataset) -> PseudoLabels:
    """Pseudo labels for the samples of ``dataset``, in its order.

    Accepts labels made for this very dataset, or for the whole official split that the
    dataset's ``source_index`` refers to (e.g. the authors' 50,000 CIFAR-10 train labels
    used with the exact-pixel subset); anything else is refused with a clear message.
    """
    if labels.dataset == dataset.identity and labels.num_samples == len(dataset):
        return labels
    if labels.dataset == dataset.split.name and labels.num_samples == dataset.split.size:
        return labels.subset(dataset.source_index, dataset=dataset.identity)
    raise ValueError(
        f"pseudo labels made for {labels.dataset!r} ({labels.num_samples} samples) do not match "
        f"dataset {dataset.name!r} ({len(dataset)} samples, from split {dataset.split.name!r} of "
        f"{dataset.split.size}); make them for this dataset with `advcl pseudo-labels`"
    )
