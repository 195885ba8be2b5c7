"""Loading encoders and classifiers: this package's checkpoints, exported encoders, and plain
torchvision/timm/solo-learn state dicts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advcl_plugin.core.resnet import build_backbone
from advcl_plugin.core.routed_bn import export_bn_route
from advcl_plugin.training.checkpointing import torch_load

__all__ = [
    "CLASSIFIER_FORMAT",
    "ENCODER_FORMAT",
    "RobustClassifier",
    "load_classifier",
    "load_encoder",
    "save_classifier",
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
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
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

    Accepts an ``encoder.pt`` written by ``advcl pretrain`` / ``advcl export``, a
    pretraining checkpoint (``.ckpt``; ``route`` defaults to the method's downstream route,
    ``pgd`` for adversarial methods), or a plain state dict of a known ``arch``
    (torchvision/timm naming; ``backbone.``/``module.`` prefixes and ``fc`` are dropped).
    """
    path = Path(path)
    payload = torch_load(path)
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
        from advcl_plugin.training.pretrain import AdvCLPretrainModule

        recipe = payload["hyper_parameters"]["recipe"]
        if arch is not None and (arch, width) != (recipe["model"]["arch"], recipe["model"]["width"]):
            raise ValueError(
                f"{path} holds a {recipe['model']['arch']} of width {recipe['model']['width']}, "
                f"not the requested {arch} of width {width}"
            )
        module = AdvCLPretrainModule(recipe)
        module.load_state_dict(payload["state_dict"])
        route = route or module.method.downstream_route
        backbone = export_bn_route(module.objective.backbone, route)
        info = {
            "format": ENCODER_FORMAT,
            "arch": recipe["model"]["arch"],
            "width": recipe["model"]["width"],
            "feature_dim": module.objective.feature_dim,
            "route": route,
            "method": recipe["method"],
            "recipe": recipe["name"],
            "epoch": payload.get("epoch"),
        }
        return backbone, info | {"source": str(path)}
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if isinstance(payload, dict) and all(isinstance(v, Tensor) for v in payload.values()):
        backbone, info = _load_plain(payload, arch, width, path)
        return backbone, info | {"source": str(path)}
    raise ValueError(f"{path} is neither an advcl encoder/checkpoint nor a state dict")


def save_classifier(
    classifier: RobustClassifier, path: str | os.PathLike, encoder_info: dict[str, Any], **metadata: Any
) -> Path:
    """Save a finetuned classifier with the description of its encoder and how it was selected."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": CLASSIFIER_FORMAT,
            "encoder": encoder_info,
            "num_classes": classifier.head.out_features,
            "state_dict": {k: v.detach().cpu() for k, v in classifier.state_dict().items()},
            **metadata,
        },
        path,
    )
    return path


def load_classifier(path: str | os.PathLike) -> tuple[RobustClassifier, dict[str, Any]]:
    """A classifier written by ``advcl finetune`` and its metadata."""
    path = Path(path)
    payload = torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{path} is not a classifier written by advcl finetune")
    encoder = payload["encoder"]
    classifier = RobustClassifier(
        build_backbone(encoder["arch"], encoder["width"]), encoder["feature_dim"], payload["num_classes"]
    )
    classifier.load_state_dict(payload["state_dict"])
    return classifier, {k: v for k, v in payload.items() if k != "state_dict"}
