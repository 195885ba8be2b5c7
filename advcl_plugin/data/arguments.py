"""The data-set options every command line of the package takes (``advcl pseudo-labels``, ``make-folder``,
``selfcheck``, ``advcl-solo evaluate``): written once, with one default root.

Examples:
    >>> import argparse
    >>> from advcl_plugin.data.arguments import add_data_arguments
    >>> parser = argparse.ArgumentParser()
    >>> add_data_arguments(parser, dataset_default="cifar10")
    >>> args = parser.parse_args(["--download"])
    >>> args.dataset, args.root, args.download, args.data_dir
    ('cifar10', './data', True, None)
"""

from __future__ import annotations

import argparse

__all__ = ["DEFAULT_ROOT", "add_data_arguments"]

#: torchvision's download folder when none is given (the recipes' ``data.root`` default too)
DEFAULT_ROOT = "./data"


def add_data_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    dataset_default: str | None = None,
    dataset_required: bool | None = None,
    dataset_help: str = "dataset name (cifar10, cifar100, cifar10-offline, folder:<path>, ...)",
) -> None:
    """``--dataset`` (required when there is no default, unless ``dataset_required=False``), ``--root``,
    ``--download`` and ``--data-dir``."""
    required = dataset_default is None if dataset_required is None else dataset_required
    parser.add_argument("--dataset", default=dataset_default, required=required, help=dataset_help)
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"torchvision dataset root (default {DEFAULT_ROOT})")
    parser.add_argument("--download", action="store_true", help="let torchvision download the dataset")
    parser.add_argument("--data-dir", default=None, help="offline data folder (default: $ADVCL_DATA_DIR)")
