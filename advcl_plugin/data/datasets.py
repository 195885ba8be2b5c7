"""Labelled image datasets for AdvCL: torchvision CIFAR-10/100 and STL-10, the offline copies,
and any ImageFolder.

Every dataset is a :class:`LabeledImageDataset`: items are ``(transform(PIL image), label)``,
and each sample knows its index in the official split it comes from (``source_index``),
so that pseudo labels made for the full split can be used with a subset.

Examples:
    >>> from advcl_plugin.data import load_dataset
    >>> train = load_dataset("cifar10", "train", root="./data", download=True)  # doctest: +SKIP
    >>> image, label = train[0]                                                  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from advcl_plugin.core.clusterfit import PseudoLabels
from advcl_plugin.data.offline import DATA_DIR_ENV, OFFLINE_FILES, find_offline_data_dir, load_offline_arrays

__all__ = [
    "DATASETS",
    "ImageArrayDataset",
    "ImageFolderDataset",
    "IndexedDataset",
    "LabeledImageDataset",
    "SplitInfo",
    "align_pseudo_labels",
    "check_image_files",
    "dataset_image_size",
    "image_file_problem",
    "load_dataset",
]

TORCHVISION_DATASETS = ("cifar10", "cifar100", "stl10")
FOLDER_PREFIX = "folder:"
#: every name accepted by :func:`load_dataset` (plus ``folder:<path>`` for an ImageFolder)
DATASETS = (*TORCHVISION_DATASETS, *OFFLINE_FILES)

_OFFICIAL_SIZES = {
    ("cifar10", "train"): 50000,
    ("cifar10", "test"): 10000,
    ("cifar100", "train"): 50000,
    ("cifar100", "test"): 10000,
    ("stl10", "train"): 5000,
    ("stl10", "test"): 8000,
    ("stl10", "unlabeled"): 100000,
}


@dataclass(frozen=True)
class SplitInfo:
    """The official split a dataset's ``source_index`` refers to, e.g. ``cifar10-train`` of 50,000."""

    name: str
    size: int


class LabeledImageDataset(Dataset):
    """Base class: items are ``(transform(PIL image), label)``; subclasses implement :meth:`image`.

    Attributes:
        labels, source_index: int64 arrays of length N (label -1 = unlabelled).
        split: the official split ``source_index`` refers to.
        name: dataset name, e.g. ``"cifar10-offline/train"``.
        class_names: names of the classes (or ``None``).
        transform: applied to each PIL image.
    """

    def __init__(
        self,
        labels: np.ndarray,
        *,
        name: str,
        split: SplitInfo,
        source_index: np.ndarray | None = None,
        class_names: Any = None,
        transform: Callable | None = None,
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.source_index = (
            np.arange(len(self.labels), dtype=np.int64) if source_index is None else np.asarray(source_index)
        )
        if len(self.source_index) != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels but {len(self.source_index)} source indices")
        self.name = name
        self.split = split
        self.class_names = [str(c) for c in class_names] if class_names is not None else None
        self.transform = transform

    def image(self, index: int) -> Image.Image:
        """The untransformed RGB image of sample ``index``."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else int(self.labels.max()) + 1

    @property
    def image_size(self) -> int:
        """Side length of the (square) images; the first image's width for folders."""
        return self.image(0).size[0]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def with_transform(self, transform: Callable | None) -> LabeledImageDataset:
        """A shallow copy sharing the images, with another transform."""
        clone = copy.copy(self)
        clone.transform = transform
        return clone

    def subset(self, indices: np.ndarray | list[int], name: str | None = None) -> LabeledImageDataset:
        """The samples at ``indices``, keeping their source indices."""
        indices = np.asarray(indices, dtype=np.int64)
        clone = copy.copy(self)
        clone._select(indices)
        clone.labels = self.labels[indices]
        clone.source_index = self.source_index[indices]
        clone.name = name or f"{self.name}[{len(indices)}]"
        return clone

    def _select(self, indices: np.ndarray) -> None:
        raise NotImplementedError

    @property
    def identity(self) -> str:
        """Name recorded in pseudo-label files: the official split's name when this dataset
        is that whole split in official order, else the dataset's own name."""
        full = len(self) == self.split.size and np.array_equal(self.source_index, np.arange(self.split.size))
        return self.split.name if full else self.name


class ImageArrayDataset(LabeledImageDataset):
    """Images held in memory as a uint8 array (N, H, W, C)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, **kwargs: Any) -> None:
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be a uint8 array (N, H, W, C), got {images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        super().__init__(labels, **kwargs)
        self.images = images

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[2])

    def _select(self, indices: np.ndarray) -> None:
        self.images = self.images[indices]


#: how many damaged files an error lists by name
_LISTED = 10
_JPEG_END, _PNG_END = b"\xff\xd9", b"IEND\xaeB`\x82"


def image_file_problem(path: str | os.PathLike) -> str | None:
    """Why an image file cannot be used (``None`` if it looks whole), checked cheaply: its size, its header
    (PIL identifies the format and size without decoding) and, for JPEG and PNG, its end marker (a file cut
    short lacks it).  Damage in the middle of a file is found only when it is decoded."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty (0 bytes)"
        with Image.open(path) as image:
            kind, _ = image.format, image.size
        with open(path, "rb") as handle:
            handle.seek(max(0, size - 1024))
            tail = handle.read().rstrip(b"\x00")
    except Image.DecompressionBombError as error:
        return f"refused by PIL: {error}"
    except (OSError, ValueError, SyntaxError) as error:
        return f"not a readable image ({type(error).__name__}: {str(error)[:80]})"
    if kind == "JPEG" and _JPEG_END not in tail[-1024:]:
        return "truncated (a JPEG ends with its end-of-image marker)"
    if kind == "PNG" and _PNG_END not in tail[-1024:]:
        return "truncated (a PNG ends with its IEND chunk)"
    return None


def check_image_files(paths: list[str], where: str) -> None:
    """Refuse a folder with damaged image files, naming them, before any work starts."""
    problems = [(path, reason) for path in paths if (reason := image_file_problem(path)) is not None]
    if problems:
        listed = "; ".join(f"{path}: {reason}" for path, reason in problems[:_LISTED])
        more = f" (and {len(problems) - _LISTED} more)" if len(problems) > _LISTED else ""
        raise ValueError(
            f"{len(problems)} of the {len(paths)} image files of {where} cannot be used: {listed}{more}. "
            "Remove or replace them (nothing was trained)"
        )


class ImageFolderDataset(LabeledImageDataset):
    """A torchvision ``ImageFolder`` (one sub-folder per class), images read from disk.

    Every file is checked when the folder is opened (:func:`image_file_problem`: size, header, end
    marker), so a damaged image is named before training starts, not at the batch that holds it.
    """

    def __init__(self, root: str | os.PathLike, name: str, transform: Callable | None = None) -> None:
        from torchvision.datasets import ImageFolder

        folder = ImageFolder(str(root))
        self.samples = [path for path, _ in folder.samples]
        check_image_files(self.samples, str(root))
        super().__init__(
            np.asarray(folder.targets),
            name=name,
            split=SplitInfo(name.replace("/", "-"), len(folder.samples)),  # the folder is its own split
            class_names=folder.classes,
            transform=transform,
        )

    def image(self, index: int) -> Image.Image:
        try:
            with Image.open(self.samples[index]) as image:
                return image.convert("RGB")
        except (OSError, ValueError, SyntaxError) as error:
            raise ValueError(
                f"image file {self.samples[index]} cannot be decoded ({type(error).__name__}: {error}); "
                "remove or replace it and run the command again"
            ) from None

    def _select(self, indices: np.ndarray) -> None:
        self.samples = [self.samples[i] for i in indices]


class IndexedDataset(Dataset):
    """Wraps a dataset so that items are ``(sample, label, index)``; pseudo labels are looked up by index."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        sample, label = self.dataset[index]
        return sample, label, index


def _load_torchvision(name: str, split: str, root: str, download: bool) -> tuple[np.ndarray, np.ndarray, list]:
    import torchvision

    try:
        if name == "stl10":
            tv = torchvision.datasets.STL10(root=root, split=split, download=download)
            return np.ascontiguousarray(tv.data.transpose(0, 2, 3, 1)), np.asarray(tv.labels), tv.classes
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        tv = cls(root=root, train=split == "train", download=download)
        return np.asarray(tv.data, dtype=np.uint8), np.asarray(tv.targets), tv.classes
    except RuntimeError as error:
        raise FileNotFoundError(
            f"{name} was not found under {root}: pass download=True (--download, or data.download=true in a "
            f"recipe) to fetch it, or use an offline copy ({', '.join(OFFLINE_FILES)}) with {DATA_DIR_ENV} set"
        ) from error


def load_dataset(
    name: str,
    split: str = "train",
    *,
    root: str | os.PathLike = "./data",
    download: bool = False,
    data_dir: str | os.PathLike | None = None,
    transform: Callable | None = None,
) -> LabeledImageDataset:
    """Load a dataset by name.

    Args:
        name: ``"cifar10"``, ``"cifar100"``, ``"stl10"`` (torchvision's layout under ``root``;
            ``download=True`` fetches them), an offline name (``"cifar10-offline"``,
            ``"cifar10-jpeg-offline"``, ``"cifar100-offline"``) or ``"folder:<path>"``, an
            ImageFolder whose ``<path>/<split>/<class>/`` sub-folders hold the images (``val`` is used
            for ``test`` when there is no ``test`` folder).
        split: ``"train"`` or ``"test"`` (STL-10 also ``"unlabeled"``, labels -1).
        root: torchvision dataset root.
        download: let torchvision download the dataset.
        data_dir: folder of the offline files (default ``$ADVCL_DATA_DIR``).
        transform: applied to each PIL image.
    """
    valid_splits = ("train", "test", "unlabeled") if name == "stl10" else ("train", "test")
    if split not in valid_splits:
        raise ValueError(f"split must be one of {valid_splits} for {name!r}, got {split!r}")
    if name.startswith(FOLDER_PREFIX):
        folder = Path(name[len(FOLDER_PREFIX) :]).expanduser() / split
        if split == "test" and not folder.is_dir() and folder.with_name("val").is_dir():
            folder = folder.with_name("val")  # ImageFolder datasets often call their test split "val"
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder {folder} does not exist (expected <path>/{split}/<class>/*)")
        return ImageFolderDataset(folder, name=f"{name}/{split}", transform=transform)
    if name in TORCHVISION_DATASETS:
        images, labels, classes = _load_torchvision(name, split, str(root), download)
        return ImageArrayDataset(
            images,
            labels,
            name=f"{name}/{split}",
            split=SplitInfo(f"{name}-{split}", _OFFICIAL_SIZES[(name, split)]),
            class_names=classes,
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
            class_names=arrays["class_names"],
            transform=transform,
        )
    raise ValueError(f"unknown dataset {name!r}; choose from {[*DATASETS, FOLDER_PREFIX + '<path>']}")


def dataset_image_size(name: str) -> int:
    """Native image size of a named dataset (96 for STL-10, 32 for CIFAR)."""
    return 96 if name == "stl10" else 32


def align_pseudo_labels(labels: PseudoLabels, dataset: LabeledImageDataset) -> PseudoLabels:
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
