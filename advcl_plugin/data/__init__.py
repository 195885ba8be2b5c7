"""Datasets, offline copies and AdvCL's views."""

from advcl_plugin.data.datasets import (
    DATASETS,
    ImageArrayDataset,
    ImageFolderDataset,
    IndexedDataset,
    LabeledImageDataset,
    SplitInfo,
    align_pseudo_labels,
    dataset_image_size,
    load_dataset,
)
from advcl_plugin.data.offline import DATA_DIR_ENV, OFFLINE_FILES, find_offline_data_dir, load_offline_arrays
from advcl_plugin.data.pseudo_labels import (
    REFERENCE,
    REFERENCE_PSEUDO_LABELS,
    pseudo_labels_for,
    resolve_pseudo_label_path,
)
from advcl_plugin.data.transforms import (
    AdvCLViews,
    eval_transform,
    original_view_transform,
    strong_view_transform,
)

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "OFFLINE_FILES",
    "REFERENCE",
    "REFERENCE_PSEUDO_LABELS",
    "AdvCLViews",
    "ImageArrayDataset",
    "ImageFolderDataset",
    "IndexedDataset",
    "LabeledImageDataset",
    "SplitInfo",
    "align_pseudo_labels",
    "dataset_image_size",
    "eval_transform",
    "find_offline_data_dir",
    "load_dataset",
    "load_offline_arrays",
    "original_view_transform",
    "pseudo_labels_for",
    "resolve_pseudo_label_path",
    "strong_view_transform",
]
