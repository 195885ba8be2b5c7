"""The one owner of the lab's saved files: encoders, classifiers, checkpoints and run records.

Every file is written here and read here, as data: ``torch.load(weights_only=True)`` with no
fallback, so a file handed in by a user cannot run code.  Models are rebuilt through the core
(:func:`advcl_plugin.core.methods.build_objective`, :func:`advcl_plugin.core.resnet.build_backbone`).

* ``encoder.pt`` (``format: advcl-encoder``): a backbone with ordinary BatchNorm holding one BN
  route, with its architecture, width, route and method;
* ``classifier.pt`` (``format: advcl-classifier``): encoder + linear head, with how it was finetuned;
* pretraining checkpoints (``.ckpt``, Lightning's format with the recipe in its hyper-parameters);
* encoders of other tools, named by their ``source_format`` and architecture
  (:data:`ENCODER_SOURCES`): torchvision/timm state dicts, solo-learn checkpoints, and checkpoints
  in the RobustSSL benchmark's format (dual BN ``bn_list.<i>``, ``downsample.conv``/``.bn``).
  Every key must fit: a mismatch is refused with the keys listed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advcl_plugin._io import atomic_torch_save, atomic_write_json, check_weights, read_weights
from advcl_plugin.core.objective import AdvCLObjective
from advcl_plugin.core.pixels import INPUT_NORMALIZATIONS, NormalizedEncoder
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
_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
#: formats :func:`load_encoder` reads ("auto" tells them apart by their keys)
ENCODER_SOURCES = ("auto", "advcl", "solo", "torchvision", "timm", "robustssl")
#: BN route names of dual-BN checkpoints in the RobustSSL benchmark's format (``bn_list.0``, ``bn_list.1``)
ROBUSTSSL_ROUTES = {"normal": 0, "pgd": 1}


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


def _key_list(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} [{shown}{', ...' if len(keys) > limit else ''}]"


def _strict_load(backbone: nn.Module, state: dict[str, Tensor], path: Path, what: str) -> None:
    """Load every key or refuse, listing the keys that do not fit and the shapes that differ."""
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"missing {_key_list(missing)}")
        if unexpected:
            problems.append(f"unexpected {_key_list(unexpected)}")
        if shapes:
            problems.append(f"shape mismatch (file vs {what}) {_key_list(shapes)}")
        raise ValueError(f"{path} does not fit {what}: " + "; ".join(problems))
    check_weights(state, path)
    backbone.load_state_dict(state, strict=True)


def robustssl_state_dict(state: dict[str, Tensor], route: str = "pgd") -> dict[str, Tensor]:
    """A checkpoint in the RobustSSL benchmark's format as torchvision names, keeping one BN route.

    The benchmark's dual-BN ResNets keep each BN route under ``<bn>.bn_list.<i>`` (``0``: normal,
    ``1``: adversarial, the one it finetunes) and call a block's shortcut ``downsample.conv`` /
    ``downsample.bn``; plain ones use torchvision's names.  The head (``fc``) and the input
    normalisation buffers (``normalize.*``) are dropped; other routes' BN layers too.
    """
    if route not in ROBUSTSSL_ROUTES:
        raise ValueError(f"route must be one of {list(ROBUSTSSL_ROUTES)} for a RobustSSL checkpoint, got {route!r}")
    keep = f".bn_list.{ROBUSTSSL_ROUTES[route]}."
    converted: dict[str, Tensor] = {}
    for key, value in _strip_prefixes(state).items():
        if key.startswith(("fc.", "normalize.")):
            continue
        if ".bn_list." in key:
            if keep not in key:
                continue
            key = key.replace(keep, ".")
        key = key.replace("downsample.conv.", "downsample.0.").replace("downsample.bn.", "downsample.1.")
        converted[key] = value
    return converted


def _solo_state_dict(state: dict[str, Tensor], route: str | None) -> dict[str, Tensor]:
    """The ``backbone.`` part of a solo-learn checkpoint with one BN route under the native names
    (this package's solo-learn methods keep the other routes under ``aux_routes.<route>``)."""
    backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    if not backbone:
        raise ValueError("the checkpoint has no backbone.* weights (is it a solo-learn checkpoint?)")
    routes = {k.split(".aux_routes.")[1].split(".")[0] for k in backbone if ".aux_routes." in k}
    if route is not None and route not in routes | {"pgd"}:
        raise ValueError(f"the checkpoint has no {route!r} BN route; it has {sorted(routes | {'pgd'})}")
    if route is not None and route in routes:
        marker = f".aux_routes.{route}."
        for key in [k for k in backbone if marker in k]:
            backbone[key.replace(marker, ".")] = backbone[key]
    return {k: v for k, v in backbone.items() if ".aux_routes." not in k}


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
    state = _strip_prefixes(_state_of(payload))
    if any(".bn_list." in k for k in state):
        return "robustssl", "dual-BN keys (bn_list.<i>) of the RobustSSL benchmark's ResNet"
    if any("downsample.conv." in k for k in state):
        return "robustssl", "downsample.conv / downsample.bn, the RobustSSL benchmark's shortcut names"
    if "normalize.mean" in state and "normalize.std" in state:
        return "robustssl", "normalize.mean / normalize.std, the RobustSSL benchmark's input-normalisation buffers"
    if "pytorch-lightning_version" in payload and any(k.startswith("backbone.") for k in _state_of(payload)):
        return "solo", "a Lightning checkpoint with backbone.* weights (solo-learn)"
    return "torchvision", "torchvision / timm names (none of the other formats' marks)"


#: formats ``--source-format auto`` tells apart, in the order it tries them
AUTO_ORDER = ("advcl", "robustssl", "solo", "torchvision")


def robustssl_input_normalization(state: dict[str, Tensor], requested: str | None, path: Path) -> str:
    """The input normalisation of a RobustSSL-format file: read from the file where the file says so, else
    the one ``requested`` (refused when it is missing, with the reason).

    The benchmark's dual-BN ResNet (``bn_list.<i>`` keys) always normalises its input with the statistics of
    its ``normalize.mean`` / ``normalize.std`` buffers (ImageNet's); its single-BN ResNet does so only for
    models pretrained by other methods than AdvCL and A-InfoNCE (a constructor flag, ``do_normalize``, that
    the file does not record)."""
    state = _strip_prefixes(state)
    dual = any(".bn_list." in k for k in state)
    if dual and "normalize.mean" in state and "normalize.std" in state:
        mean, std = state["normalize.mean"].flatten().tolist(), state["normalize.std"].flatten().tolist()
        known = {name: stats or ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)) for name, stats in INPUT_NORMALIZATIONS.items()}
        found = next(
            (name for name, (m, d) in known.items()
             if torch.allclose(torch.tensor(mean), torch.tensor(m), atol=1e-4)
             and torch.allclose(torch.tensor(std), torch.tensor(d), atol=1e-4)),
            None,
        )  # fmt: skip
        if found is None:
            raise ValueError(f"{path}: its normalize buffers hold mean {mean}, std {std}, which no known "
                             f"normalisation ({list(INPUT_NORMALIZATIONS)}) matches")  # fmt: skip
        if requested not in (None, found):
            raise ValueError(
                f"{path} is the RobustSSL benchmark's dual-BN ResNet, which always normalises its input with the "
                f"{found} statistics of its normalize buffers; --input-normalization {requested} would feed it "
                f"other inputs than it was trained on (leave the flag out, or give {found})"
            )
        return found
    if requested is None:
        kind = "dual-BN checkpoint without normalize buffers" if dual else "single-BN ResNet"
        raise ValueError(
            f"{path} is a RobustSSL-format {kind}: whether it expects normalised inputs depends on how it was "
            "pretrained, which the file does not record (the benchmark normalises with ImageNet's statistics "
            "for every pretraining method except AdvCL and A-InfoNCE): pass --input-normalization none (AdvCL, "
            "A-InfoNCE) or imagenet (ACL, DynACL, DeACL, ...)"
        )
    return requested


def _state_of(payload: Any) -> dict[str, Tensor]:
    if isinstance(payload, dict):
        for key in ("state_dict_dual", "state_dict", "model"):
            if isinstance(payload.get(key), dict):
                return payload[key]
        if payload and all(isinstance(v, Tensor) for v in payload.values()):
            return payload
    return {}


def _external_encoder(
    payload: Any, source: str, arch: str | None, width: int, route: str | None, path: Path
) -> tuple[nn.Module, dict[str, Any]]:
    state = _state_of(payload)
    if not state:
        raise ValueError(f"{path} holds no state dict (looked for state_dict_dual, state_dict, model, or tensors)")
    if arch is None:
        raise ValueError(
            f"{path} is a {source} state dict: say which network it is with --arch (cifar_resnet18 --width N, "
            "torchvision_cifar_resnet18 for CIFAR ResNets with torchvision's names (RobustSSL, solo-learn), "
            "resnet18, resnet34, resnet50)"
        )
    if source == "robustssl":
        state = robustssl_state_dict(state, route or "pgd")
    elif source == "solo":
        state = _solo_state_dict(state, route)
    else:
        if any(k.startswith("backbone.") for k in state):  # a backbone inside a bigger model: keep it
            state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        state = {k: v for k, v in _strip_prefixes(state).items() if not k.startswith("fc.")}
    backbone = build_backbone(arch, width)
    _strict_load(backbone, state, path, f"{arch}" + (f" (width {width})" if arch == "cifar_resnet18" else ""))
    info = {
        "arch": arch,
        "width": width,
        "feature_dim": backbone.feature_dim,
        "route": (route or "pgd") if source == "robustssl" else route if source == "solo" else None,
        "method": "external",
        "source_format": source,
    }
    return backbone, info


def _with_input_normalization(backbone: nn.Module, info: dict[str, Any], name: str) -> tuple[nn.Module, dict]:
    if name not in INPUT_NORMALIZATIONS:
        raise ValueError(f"input_normalization must be one of {list(INPUT_NORMALIZATIONS)}, got {name!r}")
    stats = INPUT_NORMALIZATIONS[name]
    if stats is None:
        return backbone, info
    return NormalizedEncoder(backbone, *stats), info | {"input_normalization": name}


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
            input_normalization = robustssl_input_normalization(_state_of(payload), input_normalization, path)
        try:
            backbone, info = _external_encoder(payload, source, arch, width, route, path)
        except ValueError as error:
            if source_format != "auto":
                raise
            raise ValueError(f"{error} [format chosen by --source-format {reason}]") from None
        backbone, info = _with_input_normalization(backbone, info, input_normalization or "none")
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
    backbone, _ = _with_input_normalization(
        build_backbone(encoder["arch"], encoder["width"]), {}, encoder.get("input_normalization", "none")
    )
    classifier = RobustClassifier(backbone, encoder["feature_dim"], payload["num_classes"])
    check_weights(payload["state_dict"], path)
    classifier.load_state_dict(payload["state_dict"])
    return classifier, {k: v for k, v in payload.items() if k != "state_dict"}
