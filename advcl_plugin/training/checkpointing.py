"""Checkpoint helpers: atomic writes, random-number-generator state, compatibility checks."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "capture_rng_state", "check_same_setup", "restore_rng_state", "torch_load"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it, so that a run killed while
    saving never leaves a truncated ``last.ckpt`` behind."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".partial")
        super().save_checkpoint(checkpoint, temporary, storage_options)
        os.replace(temporary, path)


def capture_rng_state() -> dict[str, Any]:
    """Random states of torch, numpy and python as tensors and plain values (loadable with
    ``torch.load(weights_only=True)``)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def torch_load(path: str | os.PathLike) -> Any:
    """Load a checkpoint or state dict written by this package (or plain tensors) on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # Lightning checkpoints may hold objects that weights_only refuses
        return torch.load(path, map_location="cpu", weights_only=False)


def check_same_setup(saved: dict[str, Any], current: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse to resume a run from a checkpoint of another method, backbone or width."""
    fields = {
        "method": (saved.get("method"), current.get("method")),
        "model.arch": (saved.get("model", {}).get("arch"), current.get("model", {}).get("arch")),
        "model.width": (saved.get("model", {}).get("width"), current.get("model", {}).get("width")),
        "method_kwargs": (saved.get("method_kwargs"), current.get("method_kwargs")),
    }
    different = {k: v for k, v in fields.items() if v[0] != v[1]}
    if different:
        details = "; ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, (a, b) in different.items())
        raise ValueError(f"checkpoint {path} comes from another setup ({details}); use another output_dir or name")
