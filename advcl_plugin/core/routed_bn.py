"""Routed batch normalisation: one set of BN statistics and affine parameters per route.

AdvCL keeps three BN "routes" in the backbone (reference-facts sheet): ``"normal"`` for the
clean views (tau1, tau2, HFC), ``"pgd"`` for the contrastive adversarial view and
``"pgd_ce"`` for the pseudo-label adversarial view.  Following timm's ``SplitBatchNorm2d``, a
routed layer *is* a batch-norm layer of the original class: its own weights, with their
native names (``bn1.weight``, ``bn1.running_mean``), hold the **primary** route (``"pgd"``,
the one used downstream), and the other routes live beside them under ``aux_routes``
(``bn1.aux_routes.normal.weight``).  So a routed backbone's ``state_dict()`` loads into the
plain architecture (torchvision, timm, solo-learn's ``main_linear.py``) with the downstream
route, non-strictly as is, strictly after :func:`plain_state_dict`.

Examples:
    >>> import torch, torchvision
    >>> from advcl_plugin import bn_route, convert_to_multi_bn, export_bn_route
    >>> net = convert_to_multi_bn(torchvision.models.resnet18(num_classes=10))
    >>> "bn1.weight" in net.state_dict(), "bn1.aux_routes.normal.weight" in net.state_dict()
    (True, True)
    >>> with bn_route(net, "normal"):
    ...     logits = net(torch.rand(2, 3, 32, 32))
    >>> plain = export_bn_route(net, "normal")       # ordinary BatchNorm2d, "normal" tensors
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "DEFAULT_ROUTES",
    "MultiRouteBatchNorm",
    "bn_route",
    "convert_legacy_routed_state_dict",
    "convert_routed_sync_batchnorm",
    "convert_to_multi_bn",
    "export_bn_route",
    "is_legacy_routed_state_dict",
    "load_clean_encoder",
    "plain_state_dict",
    "routed_bn_layers",
    "routed_layer_sync",
]

DEFAULT_ROUTES: tuple[str, ...] = ("normal", "pgd", "pgd_ce")
#: the route kept under the native names when present: the one evaluated downstream
PRIMARY_ROUTE = "pgd"


class MultiRouteBatchNorm(_BatchNorm):
    """Base of the routed BN classes: a BN layer (primary route, native names) plus ``aux_routes``.

    Build routed layers with :func:`convert_to_multi_bn`; ``route`` selects the active route.

    Attributes:
        primary_route: the route held by the layer's own parameters and buffers (native names).
        route: the active route; by default the first route given (``"normal"``, the clean views).
        aux_routes: the other routes, one BN layer of the same kind each.

    Shapes:
        Same as the BN class it replaces: (B, C) or (B, C, *).
    """

    _route_order: tuple[str, ...]
    primary_route: str
    route: str
    aux_routes: nn.ModuleDict
    #: the plain class this layer exports to (a SyncBatchNorm exports as the class it replaced)
    plain_class: type[_BatchNorm]

    @property
    def route_names(self) -> tuple[str, ...]:
        return tuple(self._route_order)

    def route_layer(self, name: str) -> _BatchNorm:
        """A plain BN layer holding route ``name``'s tensors (shared, not copied, for aux routes)."""
        if name not in self._route_order:
            raise KeyError(f"unknown BN route {name!r}; this layer has routes {self.route_names}")
        if name != self.primary_route:
            return self.aux_routes[name]  # type: ignore[return-value]
        return _to_plain(self, self.plain_class)

    def forward(self, x: Tensor) -> Tensor:
        if self.route == self.primary_route:
            return super().forward(x)
        return self.aux_routes[self.route](x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, routes={self.route_names}, primary={self.primary_route!r}"


class RoutedBatchNorm1d(MultiRouteBatchNorm, nn.BatchNorm1d):
    """Routed :class:`torch.nn.BatchNorm1d`."""


class RoutedBatchNorm2d(MultiRouteBatchNorm, nn.BatchNorm2d):
    """Routed :class:`torch.nn.BatchNorm2d`."""


class RoutedBatchNorm3d(MultiRouteBatchNorm, nn.BatchNorm3d):
    """Routed :class:`torch.nn.BatchNorm3d`."""


class RoutedSyncBatchNorm(MultiRouteBatchNorm, nn.SyncBatchNorm):
    """Routed :class:`torch.nn.SyncBatchNorm` (every route synchronised)."""


_ROUTED_CLASSES: dict[type[_BatchNorm], type[MultiRouteBatchNorm]] = {
    nn.BatchNorm1d: RoutedBatchNorm1d,
    nn.BatchNorm2d: RoutedBatchNorm2d,
    nn.BatchNorm3d: RoutedBatchNorm3d,
    nn.SyncBatchNorm: RoutedSyncBatchNorm,
}


def _new_like(layer: _BatchNorm, cls: type[_BatchNorm]) -> _BatchNorm:
    """A layer of class ``cls`` with ``layer``'s settings, tensors, device, dtype and mode."""
    kwargs: dict[str, Any] = {
        "eps": layer.eps,
        "momentum": layer.momentum,
        "affine": layer.affine,
        "track_running_stats": layer.track_running_stats,
    }
    if issubclass(cls, nn.SyncBatchNorm):
        kwargs["process_group"] = getattr(layer, "process_group", None)
    new = cls(layer.num_features, **kwargs)
    reference = layer.running_mean if layer.running_mean is not None else layer.weight
    if reference is not None:
        new = new.to(device=reference.device, dtype=reference.dtype)
    state = {k: v for k, v in nn.Module.state_dict(layer, keep_vars=False).items() if not k.startswith("aux_routes.")}
    new.load_state_dict(state)
    new.train(layer.training)
    return new


def _to_plain(layer: _BatchNorm, plain_class: type[_BatchNorm]) -> _BatchNorm:
    if type(layer) is plain_class:
        return copy.deepcopy(layer)
    return _new_like(layer, plain_class)


def _plain_class_of(layer: _BatchNorm) -> type[_BatchNorm]:
    if isinstance(layer, MultiRouteBatchNorm):
        return layer.plain_class
    if isinstance(layer, nn.SyncBatchNorm):
        return getattr(layer, "_advcl_plain_class", nn.BatchNorm2d)
    return type(layer)


def _routed(template: _BatchNorm, routes: tuple[str, ...], primary: str) -> MultiRouteBatchNorm:
    kind = nn.SyncBatchNorm if isinstance(template, nn.SyncBatchNorm) else type(template)
    if kind not in _ROUTED_CLASSES:
        raise TypeError(
            f"routed batch norm supports BatchNorm1d/2d/3d and SyncBatchNorm layers, not {type(template).__name__}"
        )
    layer = _new_like(template, _ROUTED_CLASSES[kind])
    assert isinstance(layer, MultiRouteBatchNorm)
    layer.primary_route = primary
    layer.route = routes[0]
    layer._route_order = routes
    layer.plain_class = _plain_class_of(template)
    layer.aux_routes = nn.ModuleDict({name: copy.deepcopy(template) for name in routes if name != primary})
    return layer


def convert_to_multi_bn(
    module: nn.Module, routes: Sequence[str] = DEFAULT_ROUTES, primary: str | None = None
) -> nn.Module:
    """Replace every batch-norm layer of ``module`` (in place) by a routed one.

    Every route starts from a copy of the original layer's affine parameters and running
    statistics.  Layers that are already routed are kept if they carry the same routes and
    refused otherwise.

    Args:
        module: any module (a torchvision/timm ResNet, :func:`cifar_resnet18`, ...), or a
            single BN layer.
        routes: route names; AdvCL uses ("normal", "pgd", "pgd_ce").
        primary: the route kept under the native parameter names; default ``"pgd"`` when it
            is one of ``routes``, else the first route. The first route is the one active
            outside :func:`bn_route` (``"normal"``, the clean views, for AdvCL's routes).

    Returns:
        ``module`` itself, or the new layer when ``module`` is a BN layer.

    Raises:
        ValueError: when ``module`` has no batch-norm layer at all (GroupNorm, LayerNorm or
            ViT backbones): routed BN needs BatchNorm layers.
    """
    routes = tuple(routes)
    if not routes or len(set(routes)) != len(routes):
        raise ValueError(f"routes must be distinct names, at least one, got {routes}")
    primary = primary or (PRIMARY_ROUTE if PRIMARY_ROUTE in routes else routes[0])
    if primary not in routes:
        raise ValueError(f"the primary route {primary!r} is not one of the routes {routes}")
    if isinstance(module, MultiRouteBatchNorm):
        if module.route_names != routes:
            raise ValueError(f"module is already routed with routes {module.route_names}, cannot convert to {routes}")
        return module
    if isinstance(module, _BatchNorm):
        return _routed(module, routes, primary)
    if not any(isinstance(m, _BatchNorm) for m in module.modules()):
        raise ValueError(
            f"{type(module).__name__} has no BatchNorm layer: routed batch norm keeps one set of BatchNorm "
            "statistics per view kind, so it needs a backbone with BatchNorm layers (a ResNet, not a "
            "GroupNorm/LayerNorm network or a ViT)"
        )
    _convert_children(module, routes, primary)
    return module


def _convert_children(module: nn.Module, routes: tuple[str, ...], primary: str) -> None:
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm):
            converted = convert_to_multi_bn(child, routes, primary)
            if converted is not child:
                setattr(module, name, converted)
        else:
            _convert_children(child, routes, primary)


def routed_bn_layers(module: nn.Module) -> list[MultiRouteBatchNorm]:
    """All routed BN layers of ``module``."""
    return [layer for layer in module.modules() if isinstance(layer, MultiRouteBatchNorm)]


def _layers_with_route(module: nn.Module, name: str) -> list[MultiRouteBatchNorm]:
    layers = routed_bn_layers(module)
    if not layers:
        raise ValueError(
            "the module has no routed batch-norm layers: convert it with convert_to_multi_bn(module) "
            "(which needs BatchNorm layers)"
        )
    for layer in layers:
        if name not in layer.route_names:
            raise KeyError(f"unknown BN route {name!r}; this module has routes {layer.route_names}")
    return layers


@contextlib.contextmanager
def bn_route(module: nn.Module, name: str) -> Iterator[nn.Module]:
    """Context manager: run ``module`` with every routed BN layer on route ``name``.

    The previous routes are restored on exit, also after an exception.
    """
    layers = _layers_with_route(module, name)
    previous = [layer.route for layer in layers]
    for layer in layers:
        layer.route = name
    try:
        yield module
    finally:
        for layer, old in zip(layers, previous, strict=True):
            layer.route = old


def export_bn_route(module: nn.Module, name: str) -> nn.Module:
    """Return a copy of ``module`` whose routed BN layers are plain BN layers holding route ``name``.

    The copy has ordinary ``BatchNorm1d/2d`` layers (a SyncBatchNorm route is exported as the
    plain class it replaced), so its state dict loads strictly into the unconverted architecture
    (torchvision/timm code, lightly's harness).  In eval mode its output equals the routed
    module's output under ``bn_route(module, name)``.
    """
    _layers_with_route(module, name)
    if isinstance(module, MultiRouteBatchNorm):
        return copy.deepcopy(module.route_layer(name))
    exported = copy.deepcopy(module)
    _replace_routed(exported, name)
    return exported


def _replace_routed(parent: nn.Module, name: str) -> None:
    for child_name, child in parent.named_children():
        if isinstance(child, MultiRouteBatchNorm):
            setattr(parent, child_name, _to_plain(child.route_layer(name), child.plain_class))
        else:
            _replace_routed(child, name)


def plain_state_dict(module: nn.Module, route: str | None = None) -> dict[str, Tensor]:
    """The state dict of the plain architecture holding ``route`` (default: each layer's primary
    route, i.e. the routed state dict without its ``aux_routes`` entries), detached on the CPU."""
    if route is None:
        return {k: v.detach().cpu() for k, v in module.state_dict().items() if ".aux_routes." not in f".{k}"}
    return {k: v.detach().cpu() for k, v in export_bn_route(module, route).state_dict().items()}


def load_clean_encoder(backbone: nn.Module, state: Mapping[str, Tensor], source: str = "the clean encoder") -> None:
    """Warm start: load a clean (single-BN) encoder's weights into ``backbone`` with **every** BN route set to
    the clean encoder's BN (the statistics and affine parameters of each route start equal, then diverge
    with training).  Strict: ``state`` must hold exactly the plain architecture's keys with their shapes
    (missing, unexpected and mis-shaped keys are listed and nothing is loaded).

    Examples:
        >>> import torch
        >>> from advcl_plugin import bn_route, cifar_resnet18, convert_to_multi_bn
        >>> clean = cifar_resnet18(width=4)
        >>> routed = convert_to_multi_bn(cifar_resnet18(width=4))
        >>> load_clean_encoder(routed, clean.state_dict())
        >>> x = torch.rand(2, 3, 32, 32)
        >>> with bn_route(routed.eval(), "normal"):
        ...     same = torch.equal(routed(x), clean.eval()(x))
        >>> same
        True
    """
    expected = plain_state_dict(backbone)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                    if k in state and tuple(state[k].shape) != tuple(v.shape))  # fmt: skip
    if missing or unexpected or shapes:
        problems = [f"{what} {items[:10]}{' ...' if len(items) > 10 else ''}"
                    for what, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                    if items]  # fmt: skip
        raise ValueError(f"{source} does not fit this backbone: " + "; ".join(problems))
    full = dict(state)
    for prefix, layer in backbone.named_modules():
        if not isinstance(layer, MultiRouteBatchNorm):
            continue
        head = f"{prefix}." if prefix else ""
        plain_keys = [k for k in _to_plain(layer, layer.plain_class).state_dict()]
        for route in layer.aux_routes:
            for key in plain_keys:
                full[f"{head}aux_routes.{route}.{key}"] = state[f"{head}{key}"]
    backbone.load_state_dict(full, strict=True)


def convert_routed_sync_batchnorm(module: nn.Module, process_group: object | None = None) -> nn.Module:
    """Like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, keeping routed layers routed: every
    route of every routed layer, and every plain BN layer, becomes synchronised.

    (PyTorch's own converter would replace a routed layer by a plain SyncBatchNorm and drop its
    routing.)"""
    if isinstance(module, MultiRouteBatchNorm):
        if isinstance(module, nn.SyncBatchNorm):
            return module
        routed = _new_like(module, RoutedSyncBatchNorm)
        assert isinstance(routed, RoutedSyncBatchNorm)
        routed.process_group = process_group
        routed.primary_route, routed.route = module.primary_route, module.route
        routed._route_order = module.route_names
        routed.plain_class = module.plain_class
        routed.aux_routes = nn.ModuleDict(
            {k: convert_routed_sync_batchnorm(v, process_group) for k, v in module.aux_routes.items()}
        )
        return routed
    if isinstance(module, _BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
        synced._advcl_plain_class = type(module)  # type: ignore[attr-defined]
        return synced
    for name, child in module.named_children():
        converted = convert_routed_sync_batchnorm(child, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module


def routed_layer_sync(layer_sync: type) -> type:
    """The ``sync_batchnorm`` plugin of a Lightning flavour for routed BN, made from its ``LayerSync`` base class
    (``pytorch_lightning``'s for the lab and lightly, ``lightning``'s for solo-learn): every route of every routed
    layer is synchronised (Lightning's own plugin would turn each routed layer into one plain SyncBatchNorm, whose
    routes would then share one set of statistics).  The core stays free of Lightning: the base is passed in."""

    class RoutedLayerSync(layer_sync):  # type: ignore[misc, valid-type]
        def apply(self, model: nn.Module) -> nn.Module:
            return convert_routed_sync_batchnorm(model)

        def revert(self, model: nn.Module) -> nn.Module:
            return model

    RoutedLayerSync.__qualname__ = RoutedLayerSync.__name__ = "RoutedLayerSync"
    return RoutedLayerSync


def is_legacy_routed_state_dict(state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` comes from advcl-plugin <= 0.1 (every route under ``<bn>.routes.<name>.``)."""
    return any(".routes." in f".{key}" and key.split(".routes.")[-1].count(".") == 1 for key in state)


def convert_legacy_routed_state_dict(state: Mapping[str, Tensor], primary: str = PRIMARY_ROUTE) -> dict[str, Tensor]:
    """Rename the keys of an advcl-plugin <= 0.1 routed state dict (``bn1.routes.pgd.weight``) to this
    layout: the ``primary`` route under the native names (``bn1.weight``), the others under
    ``bn1.aux_routes.<route>.``.  Other keys are kept."""
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        head, sep, tail = key.rpartition(".routes.")
        if not sep or tail.count(".") != 1:
            converted[key] = value
            continue
        route, leaf = tail.split(".")
        prefix = f"{head}." if head else ""
        converted[f"{prefix}{leaf}" if route == primary else f"{prefix}aux_routes.{route}.{leaf}"] = value
    return converted
