"""Encoders of other tools, read into this package's networks: torchvision/timm state dicts, solo-learn
checkpoints and checkpoints in the RobustSSL benchmark's format (dual BN ``bn_list.<i>``, ``downsample.conv`` /
``.bn``, ``normalize.*`` buffers).  Every key must fit the named architecture: a mismatch is refused with the
keys listed.  Files are read as data by :mod:`advcl_plugin.app.artifacts`, which dispatches here.

Examples:
    >>> import torch
    >>> from advcl_plugin.app.interop import robustssl_state_dict
    >>> state = {"conv1.weight": torch.zeros(1), "bn1.bn_list.0.weight": torch.ones(1),
    ...          "bn1.bn_list.1.weight": torch.full((1,), 2.0), "fc.weight": torch.zeros(1)}
    >>> {k: float(v) for k, v in robustssl_state_dict(state, "pgd").items()}
    {'conv1.weight': 0.0, 'bn1.weight': 2.0}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from advcl_plugin._io import check_weights
from advcl_plugin.core.pixels import INPUT_NORMALIZATIONS, NormalizedEncoder
from advcl_plugin.core.resnet import build_backbone

__all__ = [
    "ROBUSTSSL_ROUTES",
    "describe_encoder",
    "external_encoder",
    "foreign_source",
    "robustssl_input_normalization",
    "robustssl_state_dict",
    "solo_state_dict",
    "state_of",
    "strict_load",
    "with_input_normalization",
]

_PREFIXES = ("module.", "backbone.", "encoder.", "model.")


def describe_encoder(arch: str, width: int, feature_dim: int, route: str | None, method: str, **more: Any) -> dict:
    """The description every encoder record carries (``encoder.pt``, classifier files, run records), for this
    package's encoders and other tools' alike."""
    return {"arch": arch, "width": width, "feature_dim": feature_dim, "route": route, "method": method, **more}


#: BN route names of dual-BN checkpoints in the RobustSSL benchmark's format (``bn_list.0``, ``bn_list.1``)
ROBUSTSSL_ROUTES = {"normal": 0, "pgd": 1}


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


def strict_load(backbone: nn.Module, state: dict[str, Tensor], path: Path, what: str) -> None:
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


def solo_state_dict(state: dict[str, Tensor], route: str | None) -> dict[str, Tensor]:
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


def foreign_source(payload: dict[str, Any]) -> tuple[str, str]:
    """Which other tool's format a payload has, and why (``--source-format auto``), from its keys."""
    state = _strip_prefixes(state_of(payload))
    if any(".bn_list." in k for k in state):
        return "robustssl", "dual-BN keys (bn_list.<i>) of the RobustSSL benchmark's ResNet"
    if any("downsample.conv." in k for k in state):
        return "robustssl", "downsample.conv / downsample.bn, the RobustSSL benchmark's shortcut names"
    if "normalize.mean" in state and "normalize.std" in state:
        return "robustssl", "normalize.mean / normalize.std, the RobustSSL benchmark's input-normalisation buffers"
    if "pytorch-lightning_version" in payload and any(k.startswith("backbone.") for k in state_of(payload)):
        return "solo", "a Lightning checkpoint with backbone.* weights (solo-learn)"
    return "torchvision", "torchvision / timm names (none of the other formats' marks)"


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


def state_of(payload: Any) -> dict[str, Tensor]:
    if isinstance(payload, dict):
        for key in ("state_dict_dual", "state_dict", "model"):
            if isinstance(payload.get(key), dict):
                return payload[key]
        if payload and all(isinstance(v, Tensor) for v in payload.values()):
            return payload
    return {}


def external_encoder(
    payload: Any, source: str, arch: str | None, width: int, route: str | None, path: Path
) -> tuple[nn.Module, dict[str, Any]]:
    state = state_of(payload)
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
        state = solo_state_dict(state, route)
    else:
        if any(k.startswith("backbone.") for k in state):  # a backbone inside a bigger model: keep it
            state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        state = {k: v for k, v in _strip_prefixes(state).items() if not k.startswith("fc.")}
    backbone = build_backbone(arch, width)
    strict_load(backbone, state, path, f"{arch}" + (f" (width {width})" if arch == "cifar_resnet18" else ""))
    kept = (route or "pgd") if source == "robustssl" else route if source == "solo" else None
    feature_dim = cast(int, backbone.feature_dim)
    return backbone, describe_encoder(arch, width, feature_dim, kept, "external", source_format=source)


def with_input_normalization(backbone: nn.Module, info: dict[str, Any], name: str) -> tuple[nn.Module, dict]:
    if name not in INPUT_NORMALIZATIONS:
        raise ValueError(f"input_normalization must be one of {list(INPUT_NORMALIZATIONS)}, got {name!r}")
    stats = INPUT_NORMALIZATIONS[name]
    if stats is None:
        return backbone, info
    return NormalizedEncoder(backbone, *stats), info | {"input_normalization": name}
