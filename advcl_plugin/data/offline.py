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
import zipfile
import zlib
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
            f"no offline data folder was given: set {DATA_DIR_ENV} to the folder holding cifar10.npz / "
            "cifar10_full_jpeg.npz / cifar100.npz, or name it where the data is chosen (data.data_dir=<folder> in "
            "a recipe or as an override of advcl pretrain / finetune / evaluate / study / demo, --data-dir for "
            "advcl pseudo-labels / make-folder, data_dir= in Python)"
        )
    return None


def _decode_jpegs(buffer: np.ndarray, offsets: np.ndarray, path: Path, split: str) -> np.ndarray:
    from PIL import Image

    if buffer.dtype != np.uint8 or buffer.ndim != 1 or offsets.ndim != 1 or len(offsets) < 1:
        raise ValueError(f"jpeg_{split} must be a 1-D uint8 buffer with 1-D offsets")
    if offsets[0] != 0 or offsets[-1] != len(buffer) or bool((np.diff(offsets) <= 0).any()):
        raise ValueError(f"jpeg_{split}_offsets do not cut the {len(buffer)}-byte buffer into images")
    images = np.empty((len(offsets) - 1, 32, 32, 3), dtype=np.uint8)
    for i in range(len(offsets) - 1):
        blob = buffer[offsets[i] : offsets[i + 1]].tobytes()
        try:
            with Image.open(io.BytesIO(blob)) as image:
                images[i] = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as error:
            raise ValueError(f"image {i} of the {split} split cannot be decoded ({error})") from None
    return images


def _check_arrays(arrays: dict[str, np.ndarray], split: str) -> None:
    """The arrays of one split have the shapes and dtypes of a labelled image set."""
    images, labels, source_index = arrays["images"], arrays["labels"], arrays["source_index"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"the {split} images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    for key, values in (("labels", labels), ("source indices", source_index)):
        if values.ndim != 1 or len(values) != len(images):
            raise ValueError(f"{len(images)} {split} images but {key} of shape {values.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= max(len(arrays["class_names"]), 1)):
        raise ValueError(f"the {split} labels lie outside 0..{len(arrays['class_names']) - 1}")


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
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise ValueError("it holds one array, not the archive of arrays an offline dataset is")
            if name == "cifar10-jpeg-offline":
                images = _decode_jpegs(archive[f"jpeg_{split}"], archive[f"jpeg_{split}_offsets"], path, split)
            else:
                images = archive[f"x_{split}"]
            class_key = "fine_label_names" if "fine_label_names" in archive.files else "class_names"
            for key in (f"y_{split}", f"source_index_{split}"):
                if not np.issubdtype(archive[key].dtype, np.integer):
                    raise ValueError(f"{key} must hold integers, got {archive[key].dtype}")
            arrays = {
                "images": images,
                "labels": archive[f"y_{split}"].astype(np.int64),
                "source_index": archive[f"source_index_{split}"].astype(np.int64),
                "class_names": archive[class_key],
            }
        _check_arrays(arrays, split)
    except KeyError as error:
        raise ValueError(
            f"offline data file {path} lacks the array {error} that {name!r} needs: it is not that dataset's "
            "file (or an incomplete copy); copy it again"
        ) from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        reason = "the file is empty" if isinstance(error, EOFError) else f"{type(error).__name__}: {error}"
        raise ValueError(
            f"offline data file {path} is damaged or not a {name!r} file ({reason}); copy it again"
        ) from None
    return arrays
