"""The one owner of the lab's saved files: encoders, classifiers, checkpoints and run records.

Every file is written here and read here, as data: ``torch.load(weights_only=True)`` with no
fallback, so a file handed in by a user cannot run code.  Models are rebuilt through the core
(:func:`advcl_plugin.core.methods.build_objective`, :func:`advcl_plugin.core.resnet.build_backbone`).

* ``encoder.pt`` (``format: advcl-encoder``): a backbone with ordinary BatchNorm holding one BN
  route, with its architecture, width, route and method;
* ``classifier.pt`` (``format: advcl-classifier``): encoder + linear head, with how it was finetuned;
* pretraining checkpoints (``.ckpt``, Lightning's format with the recipe in its hyper-parameters);
* plain state dicts of a known architecture (torchvision/timm naming, solo-learn checkpoints).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advcl_plugin.core.objective import AdvCLObjective
from advcl_plugin.core.resnet import build_backbone
from advcl_plugin.core.routed_bn import (
    convert_legacy_routed_state_dict,
    export_bn_route,
    is_legacy_routed_state_dict,
)

__all__ = [
    "CLASSIFIER_FORMAT",
    "ENCODER_FORMAT",
    "RobustClassifier",
    "encoder_from_checkpoint",
    "load_classifier",
    "load_encoder",
    "read_checkpoint",
    "save_classifier",
    "save_encoder",
    "write_record",
]

ENCODER_FORMAT = "advcl-encoder"
CLASSIFIER_FORMAT = "advcl-classifier"
_PREFIXES = ("module.", "backbone.", "encoder.", "model.")


class RobustClassifier(nn.Module):
    """Encoder + linear head; ``forward`` maps images in [0, 1] to logits (B, num_classes)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images).flatten(1))


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Read a checkpoint or state dict as data (``weights_only=True``, no fallback), on the CPU.

    A missing, empty, truncated or pickle-bearing file gets one clear error naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): it was not written completely")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds Python objects that are not plain tensors and numbers, which advcl-plugin refuses to "
            f"load (a checkpoint can run code when unpickled): {str(error).splitlines()[0]}"
        ) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{path} is not a readable PyTorch file (truncated or corrupt?): {error}") from None


def write_record(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write a JSON run record atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(data, indent=2))
    os.replace(temporary, path)
    return path


def _save(payload: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    torch.save(payload, temporary)
    os.replace(temporary, path)
    return path


def save_encoder(backbone: nn.Module, path: str | os.PathLike, info: dict[str, Any], plain: bool = False) -> Path:
    """Write an encoder with ordinary BatchNorm: a self-describing ``advcl-encoder`` file, or with
    ``plain=True`` only its state dict (torchvision/timm naming)."""
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"the encoder's {key} holds NaN or infinite values: not writing {path}")
    info = {k: v for k, v in info.items() if k not in ("format", "state_dict", "source")}
    return _save(state if plain else {**info, "format": ENCODER_FORMAT, "state_dict": state}, path)


def encoder_from_checkpoint(payload: dict[str, Any], route: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone of a pretraining checkpoint's payload, exported with one BN route (default:
    the method's downstream route, ``pgd`` for adversarial methods), and its description."""
    from advcl_plugin.app.config import load_recipe

    recipe = load_recipe(payload["hyper_parameters"]["recipe"])
    config = recipe.objective_config()
    objective = AdvCLObjective(build_backbone(recipe.model.arch, recipe.model.width), config)
    state = {k[len("objective.") :]: v for k, v in payload["state_dict"].items() if k.startswith("objective.")}
    if is_legacy_routed_state_dict(state):  # written by advcl-plugin 0.1: every route under ".routes."
        state = convert_legacy_routed_state_dict(state, primary="pgd" if "pgd" in config.bn_routes else "normal")
    objective.load_state_dict(state)
    route = route or config.downstream_route
    info = {
        "format": ENCODER_FORMAT,
        "arch": recipe.model.arch,
        "width": recipe.model.width,
        "feature_dim": objective.feature_dim,
        "route": route,
        "method": recipe.method,
        "recipe": recipe.name,
        "epoch": payload.get("epoch"),
    }
    return export_bn_route(objective.backbone, route), info


def _strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _load_plain(state: dict[str, Tensor], arch: str | None, width: int, path: Path) -> tuple[nn.Module, dict]:
    if arch is None:
        raise ValueError(
            f"{path} is a plain state dict: say which network it is with --arch (e.g. cifar_resnet18 --width 64, "
            "torchvision_cifar_resnet18, resnet18, resnet50)"
        )
    if any(k.startswith("backbone.") for k in state):  # e.g. a solo-learn checkpoint: keep the backbone only
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    state = _strip_prefixes(state)
    state = {k: v for k, v in state.items() if not k.startswith("fc.") and ".aux_routes." not in f".{k}"}
    backbone = build_backbone(arch, width)
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit {arch} (width {width}): missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    info = {"arch": arch, "width": width, "feature_dim": backbone.feature_dim, "route": None, "method": "external"}
    return backbone, info


def load_encoder(
    path: str | os.PathLike,
    arch: str | None = None,
    width: int = 64,
    route: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """An encoder (pooled features) with ordinary BatchNorm, and a dict describing it.

    Accepts an ``encoder.pt`` written by ``advcl pretrain`` / ``advcl export``, a pretraining
    checkpoint (``.ckpt``; ``route`` defaults to the method's downstream route, ``pgd`` for
    adversarial methods), or a plain state dict of a known ``arch`` (torchvision/timm naming;
    ``backbone.``/``module.`` prefixes and ``fc`` are dropped).
    """
    path = Path(path)
    payload = read_checkpoint(path)
    if isinstance(payload, dict) and payload.get("format") == ENCODER_FORMAT:
        if route is not None and route != payload["route"]:
            raise ValueError(
                f"{path} holds the {payload['route']!r} BN route; export the {route!r} route from the "
                "pretraining checkpoint with `advcl export --route`"
            )
        backbone = build_backbone(payload["arch"], payload["width"])
        backbone.load_state_dict(payload["state_dict"])
        info = {k: v for k, v in payload.items() if k != "state_dict"}
        return backbone, info | {"source": str(path)}
    if isinstance(payload, dict) and payload.get("format") == CLASSIFIER_FORMAT:
        raise ValueError(f"{path} is a finetuned classifier, not an encoder; use load_classifier()")
    if isinstance(payload, dict) and "recipe" in payload.get("hyper_parameters", {}):
        model = payload["hyper_parameters"]["recipe"].get("model", {})
        if arch is not None and (arch, width) != (model.get("arch"), model.get("width")):
            raise ValueError(
                f"{path} holds a {model.get('arch')} of width {model.get('width')}, "
                f"not the requested {arch} of width {width}"
            )
        backbone, info = encoder_from_checkpoint(payload, route)
        return backbone, info | {"source": str(path)}
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if isinstance(payload, dict) and payload and all(isinstance(v, Tensor) for v in payload.values()):
        backbone, info = _load_plain(payload, arch, width, path)
        return backbone, info | {"source": str(path)}
    raise ValueError(f"{path} is neither an advcl encoder/checkpoint nor a state dict")


def save_classifier(
    classifier: RobustClassifier, path: str | os.PathLike, encoder_info: dict[str, Any], **metadata: Any
) -> Path:
    """Save a finetuned classifier with the description of its encoder and how it was selected."""
    return _save(
        {
            "format": CLASSIFIER_FORMAT,
            "encoder": encoder_info,
            "num_classes": classifier.head.out_features,
            "state_dict": {k: v.detach().cpu() for k, v in classifier.state_dict().items()},
            **metadata,
        },
        path,
    )


def load_classifier(path: str | os.PathLike) -> tuple[RobustClassifier, dict[str, Any]]:
    """A classifier written by ``advcl finetune`` and its metadata."""
    path = Path(path)
    payload = read_checkpoint(path)
    if not isinstance(payload, dict) or payload.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{path} is not a classifier written by advcl finetune")
    encoder = payload["encoder"]
    classifier = RobustClassifier(
        build_backbone(encoder["arch"], encoder["width"]), encoder["feature_dim"], payload["num_classes"]
    )
    classifier.load_state_dict(payload["state_dict"])
    return classifier, {k: v for k, v in payload.items() if k != "state_dict"}
