"""Building the datasets and loaders of a recipe."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from advcl_plugin.config import DataConfig, PseudoLabelConfig
from advcl_plugin.core.clusterfit import PseudoLabels
from advcl_plugin.data import (
    AdvCLViews,
    IndexedDataset,
    LabeledImageDataset,
    align_pseudo_labels,
    dataset_image_size,
    find_offline_data_dir,
    load_dataset,
)
from advcl_plugin.data.transforms import eval_transform

__all__ = [
    "REFERENCE_PSEUDO_LABELS",
    "EpochSeededSampler",
    "load_split",
    "pretraining_data",
    "resolve_pseudo_label_path",
    "target_image_size",
]

REFERENCE_PSEUDO_LABELS = "advcl_reference_pseudo_labels_cifar10.npz"


class EpochSeededSampler(Sampler[int]):
    """Shuffles with a permutation drawn from ``seed + epoch``: the order of every epoch is fixed
    by the seed alone, so a resumed run sees the same batches as an uninterrupted one.
    Lightning calls :meth:`set_epoch` at the start of every epoch."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


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
    if split == "train" and config.limit is not None and config.limit < len(dataset):
        dataset = dataset.subset(np.arange(config.limit), name=f"{dataset.name}[:{config.limit}]")
    return dataset


def resolve_pseudo_label_path(config: PseudoLabelConfig, data: DataConfig) -> Path:
    if config.path is None:
        raise ValueError(
            "this method uses pseudo labels: set pseudo_labels.path to a file made by `advcl pseudo-labels`, "
            "or to 'reference' for the authors' CIFAR-10 labels"
        )
    if config.path == "reference":
        directory = find_offline_data_dir(data.data_dir)
        if directory is None or not (directory / REFERENCE_PSEUDO_LABELS).is_file():
            raise FileNotFoundError(
                f"pseudo_labels.path=reference needs {REFERENCE_PSEUDO_LABELS} in the offline data folder "
                "(data.data_dir or $ADVCL_DATA_DIR); or make labels with `advcl pseudo-labels`"
            )
        return directory / REFERENCE_PSEUDO_LABELS
    return Path(config.path)


def pretraining_data(
    data: DataConfig, pseudo_labels: PseudoLabelConfig | None, ks: tuple[int, ...] | None
) -> tuple[IndexedDataset, torch.Tensor | None]:
    """The indexed training set with AdvCL's views, and its pseudo labels (N, len(ks)) if ``ks``."""
    full = load_dataset(data.dataset, "train", root=data.root, download=data.download, data_dir=data.data_dir)
    dataset = full
    if data.limit is not None and data.limit < len(full):
        dataset = full.subset(np.arange(data.limit), name=f"{full.name}[:{data.limit}]")
    labels = None
    if ks:
        assert pseudo_labels is not None
        loaded = PseudoLabels.load(resolve_pseudo_label_path(pseudo_labels, data), ks=ks)
        try:  # labels made for exactly these images (or for their official split)
            aligned = align_pseudo_labels(loaded, dataset)
        except ValueError:
            if dataset is full:
                raise
            aligned = align_pseudo_labels(loaded, full).subset(np.arange(len(dataset)))  # made for all images
        labels = aligned.as_tensor(ks)
    dataset = dataset.with_transform(AdvCLViews(target_image_size(data)))
    return IndexedDataset(dataset), labels


def evaluation_loader(
    dataset: LabeledImageDataset, image_size: int, batch_size: int, num_workers: int = 0
) -> DataLoader:
    native = dataset.image_size
    transform = eval_transform(image_size if image_size != native else None)
    return DataLoader(dataset.with_transform(transform), batch_size=batch_size, shuffle=False, num_workers=num_workers)
