"""The one owner of the lab's saved files: encoders, classifiers, checkpoints and run records.

Every file is written here and read here, as data: ``torch.load(weights_only=True)`` with no
fallback, so a file handed in by a user cannot run code.  Models are rebuilt through the core
(:func:`advcl_plugin.core.methods.build_objective`, :func:`advcl_plugin.core.resnet.build_backbone`).

* ``encoder.pt`` (``format: advcl-encoder``): a backbone with ordinary BatchNorm holding one BN
  route, with its architecture, width, route and method;
* ``classifier.pt`` (``format: advcl-classifier``): encoder + linear head, with how it was finetuned;
* pretraining checkpoints (``.ckpt``, Lightning's format with the recipe in its hyper-parameters);
* encoders of other tools, named by their ``source_format`` and architecture
  (:data:`ENCODER_SOURCES`), read by :mod:`advcl_plugin.app.interop` (torchvision/timm state dicts,
  solo-learn checkpoints, the RobustSSL benchmark's format).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advcl_plugin._io import atomic_torch_save, atomic_write_json, check_weights, read_weights
from advcl_plugin.app.interop import (
    describe_encoder,
    external_encoder,
    foreign_source,
    robustssl_input_normalization,
    robustssl_state_dict,
    state_of,
    with_input_normalization,
)
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
    "ENCODER_SOURCES",
    "RobustClassifier",
    "describe_encoder",
    "encoder_from_checkpoint",
    "load_classifier",
    "load_encoder",
    "read_checkpoint",
    "robustssl_input_normalization",
    "robustssl_state_dict",
    "save_classifier",
    "save_encoder",
    "write_record",
]

ENCODER_FORMAT = "advcl-encoder"
CLASSIFIER_FORMAT = "advcl-classifier"
#: formats :func:`load_encoder` reads ("auto" tells them apart by their keys)
ENCODER_SOURCES = ("auto", "advcl", "solo", "torchvision", "timm", "robustssl")


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

    A missing, empty, truncated or pickle-bearing file gets one clear error naming it
    (:func:`advcl_plugin._io.read_weights`).
    """
    return read_weights(path)


def write_record(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write a JSON run record atomically."""
    return atomic_write_json(path, data)


def _save(payload: Any, path: str | os.PathLike) -> Path:
    return atomic_torch_save(payload, path)


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
    from advcl_plugin.app.recipe import load_recipe

    recipe = load_recipe(payload["hyper_parameters"]["recipe"])
    config = recipe.objective_config()
    objective = AdvCLObjective(build_backbone(recipe.model.arch, recipe.model.width), config)
    state = {k[len("objective.") :]: v for k, v in payload["state_dict"].items() if k.startswith("objective.")}
    if is_legacy_routed_state_dict(state):  # written by advcl-plugin 0.1: every route under ".routes."
        state = convert_legacy_routed_state_dict(state, primary="pgd" if "pgd" in config.bn_routes else "normal")
    objective.load_state_dict(state)
    route = route or config.downstream_route
    info = describe_encoder(
        recipe.model.arch, recipe.model.width, objective.feature_dim, route, recipe.method,
        recipe=recipe.name, epoch=payload.get("epoch"), format=ENCODER_FORMAT,
    )  # fmt: skip
    return export_bn_route(objective.backbone, route), info


def _describe_payload(payload: Any) -> str:
    if isinstance(payload, Tensor):
        return f"a bare tensor of shape {tuple(payload.shape)}"
    return f"a {type(payload).__name__}"


def _guess_source(payload: dict[str, Any]) -> tuple[str, str]:
    """The format of a file's payload and why (``--source-format auto``), from its keys."""
    if payload.get("format") in (ENCODER_FORMAT, CLASSIFIER_FORMAT):
        return "advcl", f"it says format: {payload['format']}"
    if isinstance(payload.get("hyper_parameters"), dict) and "recipe" in payload["hyper_parameters"]:
        return "advcl", "a pretraining checkpoint of advcl pretrain (a recipe in its hyper-parameters)"
    return foreign_source(payload)


#: formats ``--source-format auto`` tells apart, in the order it tries them
AUTO_ORDER = ("advcl", "robustssl", "solo", "torchvision")


def load_encoder(
    path: str | os.PathLike,
    arch: str | None = None,
    width: int = 64,
    route: str | None = None,
    source_format: str = "auto",
    input_normalization: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """An encoder taking pixels in [0, 1] and returning pooled features, and a dict describing it.

    Accepts an ``encoder.pt`` written by ``advcl pretrain`` / ``advcl export``, a pretraining
    checkpoint (``.ckpt``; ``route`` defaults to the method's downstream route, ``pgd`` for
    adversarial methods), or another tool's encoder of a named ``arch`` (``source_format``, see
    :data:`ENCODER_SOURCES`; ``"auto"`` tells them apart by their keys): a torchvision/timm state
    dict, a solo-learn checkpoint (its ``backbone.*``), or a RobustSSL-format checkpoint (``route``
    ``pgd``, the default, keeps ``bn_list.1``).  Every key must fit the architecture.
    ``input_normalization`` (``"imagenet"``, ``"cifar10"``) wraps an encoder that was trained on
    normalised images so that it takes pixels; ``None`` (the default) means ``"none"``, except for
    RobustSSL-format files (:func:`robustssl_input_normalization`: read from a dual-BN file, required
    for the others, since the benchmark normalises with ImageNet's statistics for every method but AdvCL
    and A-InfoNCE).  With ``source_format="auto"`` the record says why the format was chosen
    (``source_format_reason``).  Loading is weights-only.
    """
    if source_format not in ENCODER_SOURCES:
        raise ValueError(f"source_format must be one of {ENCODER_SOURCES}, got {source_format!r}")
    path = Path(path)
    payload = read_checkpoint(path)
    if not isinstance(payload, dict):
        raise ValueError(
            f"{path} holds {_describe_payload(payload)}, not a state dict or checkpoint (a mapping of parameter "
            "names to tensors); save the model's state_dict() instead"
        )
    if source_format == "auto":
        source, reason = _guess_source(payload)
        reason = f"auto: {reason} (considered {', '.join(AUTO_ORDER)})"
    else:
        source, reason = source_format, "given"
    if source != "advcl":
        if source == "robustssl":
            input_normalization = robustssl_input_normalization(state_of(payload), input_normalization, path)
        try:
            backbone, info = external_encoder(payload, source, arch, width, route, path)
        except ValueError as error:
            if source_format != "auto":
                raise
            raise ValueError(f"{error} [format chosen by --source-format {reason}]") from None
        backbone, info = with_input_normalization(backbone, info, input_normalization or "none")
        return backbone, info | {"source": str(path), "source_format_reason": reason}
    if input_normalization not in (None, "none"):
        raise ValueError("encoders of this package take pixels in [0, 1]: input_normalization applies to other tools'")
    if payload.get("format") == ENCODER_FORMAT:
        if route is not None and route != payload["route"]:
            raise ValueError(
                f"{path} holds the {payload['route']!r} BN route; export the {route!r} route from the "
                "pretraining checkpoint with `advcl export --route`"
            )
        backbone = build_backbone(payload["arch"], payload["width"])
        check_weights(payload["state_dict"], path)
        backbone.load_state_dict(payload["state_dict"])
        info = {k: v for k, v in payload.items() if k != "state_dict"}
        return backbone, info | {"source": str(path)}
    if isinstance(payload, dict) and payload.get("format") == CLASSIFIER_FORMAT:
        raise ValueError(f"{path} is a finetuned classifier, not an encoder; use load_classifier()")
    if isinstance(payload.get("hyper_parameters"), dict) and "recipe" in payload["hyper_parameters"]:
        model = payload["hyper_parameters"]["recipe"].get("model", {})
        if arch is not None and (arch, width) != (model.get("arch"), model.get("width")):
            raise ValueError(
                f"{path} holds a {model.get('arch')} of width {model.get('width')}, "
                f"not the requested {arch} of width {width}"
            )
        check_weights(payload.get("state_dict", {}), path)
        backbone, info = encoder_from_checkpoint(payload, route)
        return backbone, info | {"source": str(path)}
    raise ValueError(f"{path} is not an advcl encoder or pretraining checkpoint (name its --source-format?)")


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
    backbone, _ = with_input_normalization(
        build_backbone(encoder["arch"], encoder["width"]), {}, encoder.get("input_normalization", "none")
    )
    classifier = RobustClassifier(backbone, encoder["feature_dim"], payload["num_classes"])
    check_weights(payload["state_dict"], path)
    classifier.load_state_dict(payload["state_dict"])
    return classifier, {k: v for k, v in payload.items() if k != "state_dict"}
