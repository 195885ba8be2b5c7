"""Offline copies of CIFAR-10/100 stored as ``.npz`` files (no download needed).

The directory is given explicitly or through the ``ADVCL_DATA_DIR`` environment
variable; the package never assumes where it is.  Files understood:

* ``cifar10.npz``: exact CIFAR-10 pixels of a subset (5,438 train / 1,017 test images)
  with ``source_index_*`` = index in the official order;
* ``cifar10_full_jpeg.npz``: all 60,000 CIFAR-10 images as JPEG (lossy, quality 75);
* ``cifar100.npz``: exact CIFAR-100 pixels of a subset (1,117 train / 916 test).
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

import numpy as np

__all__ = ["DATA_DIR_ENV", "OFFLINE_FILES", "find_offline_data_dir", "load_offline_arrays"]

DATA_DIR_ENV = "ADVCL_DATA_DIR"

#: offline dataset name -> (file name, description)
OFFLINE_FILES: dict[str, tuple[str, str]] = {
    "cifar10-offline": ("cifar10.npz", "exact CIFAR-10 pixels, subset (5,438 train / 1,017 test)"),
    "cifar10-jpeg-offline": ("cifar10_full_jpeg.npz", "full CIFAR-10 as JPEG q75 (50,000 / 10,000), lossy"),
    "cifar100-offline": ("cifar100.npz", "exact CIFAR-100 pixels, subset (1,117 train / 916 test)"),
}


def find_offline_data_dir(data_dir: str | os.PathLike | None = None, required: bool = False) -> Path | None:
    """Directory holding the offline ``.npz`` files: ``data_dir``, else ``$ADVCL_DATA_DIR``.

    Returns ``None`` (or raises ``FileNotFoundError`` when ``required``) if neither is set
    or the directory does not exist.
    """
    candidate = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if candidate:
        path = Path(candidate).expanduser()
        if path.is_dir():
            return path
        if required:
            raise FileNotFoundError(f"offline data directory {path} does not exist")
        return None
    if required:
        raise FileNotFoundError(
            f"no offline data directory: pass --data-dir or set {DATA_DIR_ENV} to the folder "
            "holding cifar10.npz / cifar10_full_jpeg.npz / cifar100.npz"
        )
    return None


def _decode_jpegs(buffer: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image

    images = np.empty((len(offsets) - 1, 32, 32, 3), dtype=np.uint8)
    for i in range(len(offsets) - 1):
        blob = buffer[offsets[i] : offsets[i + 1]].tobytes()
        images[i] = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    return images


@functools.lru_cache(maxsize=8)
def load_offline_arrays(name: str, split: str, data_dir: str) -> dict[str, np.ndarray]:
    """Load one split of an offline dataset as arrays.

    Args:
        name: a key of :data:`OFFLINE_FILES`.
        split: ``"train"`` or ``"test"``.
        data_dir: the directory holding the files.

    Returns:
        ``{"images": (N, 32, 32, 3) uint8, "labels": (N,) int64,
        "source_index": (N,) int64, "class_names": (C,) str}``.
    """
    if name not in OFFLINE_FILES:
        raise ValueError(f"unknown offline dataset {name!r}; choose from {sorted(OFFLINE_FILES)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = Path(data_dir) / OFFLINE_FILES[name][0]
    if not path.is_file():
        raise FileNotFoundError(f"offline dataset {name!r} needs {path}, which does not exist")
    with np.load(path, allow_pickle=False) as archive:
        if name == "cifar10-jpeg-offline":
            images = _decode_jpegs(archive[f"jpeg_{split}"], archive[f"jpeg_{split}_offsets"])
        else:
            images = archive[f"x_{split}"]
        class_key = "fine_label_names" if "fine_label_names" in archive.files else "class_names"
        return {
            "images": images,
            "labels": archive[f"y_{split}"].astype(np.int64),
            "source_index": archive[f"source_index_{split}"].astype(np.int64),
            "class_names": archive[class_key],
        }
