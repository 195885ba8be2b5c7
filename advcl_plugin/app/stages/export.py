"""``advcl export``: the encoder of a checkpoint with one BN route as ordinary BatchNorm."""

from __future__ import annotations

from pathlib import Path

from advcl_plugin.app.artifacts import load_encoder, save_encoder

__all__ = ["export"]


def export(checkpoint: str | Path, output: str | Path, route: str | None = None, plain: bool = False) -> Path:
    """Write the encoder of a checkpoint with ordinary BatchNorm holding ``route``.

    ``plain=True`` writes only the state dict (torchvision/timm naming; for a width-64 CIFAR
    ResNet-18 it loads into ``torchvision_cifar_resnet18()``), otherwise a self-describing
    ``advcl-encoder`` file that ``advcl finetune --encoder`` and lightly's harness can use.
    """
    backbone, info = load_encoder(checkpoint, route=route)
    return save_encoder(backbone, output, info, plain=plain)
