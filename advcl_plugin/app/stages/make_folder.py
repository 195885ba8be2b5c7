"""``advcl make-folder``: a dataset written as an ImageFolder (``train/``, ``val/``), e.g. for solo-learn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from advcl_plugin._io import atomic_write
from advcl_plugin.app.data import load_split
from advcl_plugin.app.recipe import DataConfig

__all__ = ["write_image_folder"]


def write_image_folder(data: DataConfig, output: str | Path, train: int | None, test: int | None) -> dict[str, int]:
    """Write the first ``train`` / ``test`` images of a dataset as PNG files (lossless) in an
    ImageFolder (``train/<class>/``, ``val/<class>/``). Returns the number of images per split."""
    output = Path(output)
    written = {}
    for split, folder, count in (("train", "train", train), ("test", "val", test)):
        dataset = load_split(data, split)
        total = len(dataset) if count is None else min(count, len(dataset))
        names = dataset.class_names or [str(c) for c in range(dataset.num_classes)]
        for index in range(total):
            directory = output / folder / names[int(dataset.labels[index])]
            directory.mkdir(parents=True, exist_ok=True)
            image = dataset.image(index)

            # atomic, without a disk flush per image (thousands of small files)
            def write(handle: Any, picture: Any = image) -> None:
                picture.save(handle, format="PNG")

            atomic_write(directory / f"{index:05d}.png", write, False)
        written[folder] = total
    return written
