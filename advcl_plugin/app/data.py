"""The datasets and loaders of a recipe."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms as T

from advcl_plugin.app.recipe import DataConfig, PseudoLabelConfig
from advcl_plugin.data import (
    AdvCLViews,
    IndexedDataset,
    LabeledImageDataset,
    dataset_image_size,
    load_dataset,
    pseudo_labels_for,
)
from advcl_plugin.data.transforms import eval_transform

__all__ = [
    "EpochSeededSampler",
    "SeededSamples",
    "evaluation_loader",
    "load_split",
    "pretraining_data",
    "target_image_size",
]


class EpochSeededSampler(Sampler[tuple[int, int]]):
    """Shuffles with a permutation drawn from ``seed + epoch`` and yields ``(epoch, index)`` keys: the
    order of every epoch is fixed by the seed alone, and the key lets :class:`SeededSamples` draw each
    sample's augmentation from ``(seed, epoch, index)``, so a resumed run sees the same batches and
    views as an uninterrupted one, whatever the number of workers. Lightning calls :meth:`set_epoch`
    at the start of every epoch."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch  # fixed for this pass, even if set_epoch is called while it is consumed
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return iter([(epoch, index) for index in torch.randperm(self.size, generator=generator).tolist()])

    def __len__(self) -> int:
        return self.size


class SeededSamples(Dataset):
    """Wraps a dataset with random transforms so that item ``(epoch, index)`` is drawn with torch's
    generator seeded from ``(seed, epoch, index)`` (the caller's random state is left as it was):
    the augmentations no longer depend on which worker makes a sample or on its history."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            return self.dataset[index]


def target_image_size(config: DataConfig) -> int:
    """The size images are used at: ``image_size`` if set, else the dataset's own."""
    return config.image_size or dataset_image_size(config.dataset)


def load_split(config: DataConfig, split: str, transform: Callable | None = None) -> LabeledImageDataset:
    """One split of the dataset a :class:`DataConfig` names (``limit`` applies to ``train`` only)."""
    dataset = load_dataset(
        config.dataset,
        split,
        root=config.root,
        download=config.download,
        data_dir=config.data_dir,
        transform=transform,
    )
    return first_images(dataset, config.limit) if split == "train" else dataset


def first_images(dataset: LabeledImageDataset, limit: int | None) -> LabeledImageDataset:
    """The first ``limit`` images of ``dataset`` (``data.limit``; all of them when ``limit`` is None or larger)."""
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.subset(np.arange(limit), name=f"{dataset.name}[:{limit}]")


def pretraining_data(
    data: DataConfig, pseudo_labels: PseudoLabelConfig | None, ks: tuple[int, ...] | None
) -> tuple[IndexedDataset, torch.Tensor | None]:
    """The indexed training set with AdvCL's views (or, for ``data.views: device``, uint8 images), and its
    pseudo labels (N, len(ks)) if ``ks``."""
    full = load_dataset(data.dataset, "train", root=data.root, download=data.download, data_dir=data.data_dir)
    dataset = first_images(full, data.limit)
    labels = None
    if ks:
        assert pseudo_labels is not None
        labels = pseudo_labels_for(dataset, pseudo_labels.path, ks, data.data_dir, full=full)
    size = target_image_size(data)
    if data.views == "device":  # uint8 images; the views are made on the device (DeviceAdvCLViews)
        dataset = dataset.with_transform(T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor()]))
    else:
        dataset = dataset.with_transform(AdvCLViews(size))
    return IndexedDataset(dataset), labels


def evaluation_loader(
    dataset: LabeledImageDataset, image_size: int, batch_size: int, num_workers: int = 0
) -> DataLoader:
    native = dataset.image_size
    transform = eval_transform(image_size if image_size != native else None)
    return DataLoader(
        dataset.with_transform(transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )
