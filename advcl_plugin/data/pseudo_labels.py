"""The one place that turns a pseudo-label setting into labels for a dataset.

``path`` is ``"reference"`` (the authors' file for the 50,000 CIFAR-10 train images, looked up in
the offline data folder) or a file made by ``advcl pseudo-labels`` / :class:`PseudoLabels.save`.
Rows are matched to the dataset by its samples' source indices (so the authors' file serves an
exact-pixel subset), or taken as they are when the file was made for these very images.

Examples:
    >>> from advcl_plugin.data import load_dataset, pseudo_labels_for
    >>> train = load_dataset("cifar10-offline", "train")                  # doctest: +SKIP
    >>> labels = pseudo_labels_for(train, "reference", ks=(2, 10))        # doctest: +SKIP
    >>> labels.shape                                                       # doctest: +SKIP
    torch.Size([5438, 2])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from advcl_plugin.core.clusterfit import PseudoLabels
from advcl_plugin.data.datasets import LabeledImageDataset, align_pseudo_labels
from advcl_plugin.data.offline import find_offline_data_dir

__all__ = [
    "REFERENCE",
    "REFERENCE_PSEUDO_LABELS",
    "pseudo_labels_for",
    "pseudo_labels_for_file",
    "resolve_pseudo_label_path",
]

#: the setting that names the authors' reference file
REFERENCE = "reference"
#: its file name in the offline data folder
REFERENCE_PSEUDO_LABELS = "advcl_reference_pseudo_labels_cifar10.npz"


def resolve_pseudo_label_path(path: str | os.PathLike | None, data_dir: str | os.PathLike | None = None) -> Path:
    """The file a pseudo-label setting names (``"reference"`` or a path); refuses a missing one."""
    if path is None:
        raise ValueError(
            "this method uses pseudo labels: give a file made by `advcl pseudo-labels`, or 'reference' for "
            "the authors' CIFAR-10 labels"
        )
    if str(path) == REFERENCE:
        directory = find_offline_data_dir(data_dir)
        if directory is None or not (directory / REFERENCE_PSEUDO_LABELS).is_file():
            raise FileNotFoundError(
                f"pseudo labels 'reference' need {REFERENCE_PSEUDO_LABELS} in the offline data folder "
                "(data_dir or $ADVCL_DATA_DIR); or make labels with `advcl pseudo-labels`"
            )
        return directory / REFERENCE_PSEUDO_LABELS
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"pseudo-label file not found: {resolved}")
    return resolved


def pseudo_labels_for(
    dataset: LabeledImageDataset,
    path: str | os.PathLike | None,
    ks: Sequence[int],
    data_dir: str | os.PathLike | None = None,
    full: LabeledImageDataset | None = None,
) -> torch.Tensor:
    """Labels (N, len(ks)) int64 for the samples of ``dataset``, in its order.

    Args:
        dataset: the training images.
        path: ``"reference"`` or a pseudo-label file.
        ks: the cluster counts, one column each (a missing K is refused).
        data_dir: the offline data folder for ``"reference"`` (default ``$ADVCL_DATA_DIR``).
        full: when ``dataset`` is the first N images of a larger dataset, that dataset (labels
            made for all of its images are accepted).
    """
    loaded = PseudoLabels.load(resolve_pseudo_label_path(path, data_dir), ks=ks)
    try:
        aligned = align_pseudo_labels(loaded, dataset)
    except ValueError:
        if full is None or full is dataset:
            raise
        aligned = align_pseudo_labels(loaded, full).subset(np.arange(len(dataset)))
    return aligned.as_tensor(ks)


def pseudo_labels_for_file(
    path: str | os.PathLike, ks: Sequence[int], data_dir: str | os.PathLike | None = None
) -> tuple[PseudoLabels, torch.Tensor]:
    """The labels of a file (or ``"reference"``) in its own row order, as (N, len(ks)), for hosts that
    look labels up by their own sample index (solo-learn); the host checks N against its dataset."""
    loaded = PseudoLabels.load(resolve_pseudo_label_path(path, data_dir), ks=ks)
    return loaded, loaded.as_tensor(ks)
