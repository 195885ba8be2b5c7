"""Routed batch normalisation: one set of BN statistics and affine parameters per route.

AdvCL keeps three BN "routes" in the backbone (reference-facts sheet): ``"normal"``
for the clean views (tau1, tau2, HFC), ``"pgd"`` for the contrastive adversarial
view and ``"pgd_ce"`` for the pseudo-label adversarial view.  The helpers follow
timm's in-place layer conversion style.

Example:
    >>> import torch, torchvision
    >>> from advcl_plugin import bn_route, convert_to_multi_bn, export_bn_route
    >>> net = convert_to_multi_bn(torchvision.models.resnet18(num_classes=10))
    >>> with bn_route(net, "pgd"):
    ...     logits = net(torch.rand(2, 3, 32, 32))
    >>> plain = export_bn_route(net, "pgd")         # ordinary BatchNorm2d, "pgd" tensors
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "DEFAULT_ROUTES",
    "MultiRouteBatchNorm",
    "bn_route",
    "convert_to_multi_bn",
    "export_bn_route",
    "routed_bn_layers",
]

DEFAULT_ROUTES: tuple[str, ...] = ("normal", "pgd", "pgd_ce")


class MultiRouteBatchNorm(nn.Module):
    """A batch-norm layer holding one independent BN per route; ``route`` selects the active one.

    Args:
        template: the BatchNorm1d/2d/3d (or SyncBatchNorm) to replicate; every route starts
            as a copy of it (affine parameters and running statistics).
        routes: route names, the first one is active by default.

    Shapes:
        Same as ``template``: (B, C) or (B, C, *).
    """

    def __init__(self, template: _BatchNorm, routes: Sequence[str] = DEFAULT_ROUTES) -> None:
        super().__init__()
        routes = tuple(routes)
        if not routes:
            raise ValueError("routes must name at least one route")
        if len(set(routes)) != len(routes):
            raise ValueError(f"route names must be unique, got {routes}")
        self.routes = nn.ModuleDict({name: copy.deepcopy(template) for name in routes})
        self.route = routes[0]
        # Plain BN class to export to (SyncBatchNorm is exported as the class it replaced).
        self.plain_class: type[_BatchNorm] = _plain_batchnorm_class(template)

    @property
    def route_names(self) -> tuple[str, ...]:
        return tuple(self.routes.keys())

    def forward(self, x: Tensor) -> Tensor:
        return self.routes[self.route](x)

    def extra_repr(self) -> str:
        return f"routes={self.route_names}, active={self.route!r}"


def _plain_batchnorm_class(layer: _BatchNorm) -> type[_BatchNorm]:
    if isinstance(layer, nn.SyncBatchNorm):
        return getattr(layer, "_advcl_plain_class", nn.BatchNorm2d)
    return type(layer)


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm)


def convert_to_multi_bn(module: nn.Module, routes: Sequence[str] = DEFAULT_ROUTES) -> nn.Module:
    """Replace every batch-norm layer of ``module`` (in place) by a :class:`MultiRouteBatchNorm`.

    Each route starts from a copy of the original layer's affine parameters and
    running statistics.  Layers that are already routed are left as they are if
    they carry the same routes, and rejected otherwise.

    Args:
        module: any module (a torchvision/timm ResNet, :func:`cifar_resnet18`, ...), or a
            single BN layer.
        routes: route names; AdvCL uses ("normal", "pgd", "pgd_ce").

    Returns:
        ``module`` itself, or the new layer when ``module`` is a BN layer.
    """
    routes = tuple(routes)
    if isinstance(module, MultiRouteBatchNorm):
        if module.route_names != routes:
            raise ValueError(f"module is already routed with routes {module.route_names}, cannot convert to {routes}")
        return module
    if _is_batchnorm(module):
        return MultiRouteBatchNorm(module, routes)  # type: ignore[arg-type]
    for name, child in module.named_children():
        converted = convert_to_multi_bn(child, routes)
        if converted is not child:
            setattr(module, name, converted)
    return module


def routed_bn_layers(module: nn.Module) -> list[MultiRouteBatchNorm]:
    """All :class:`MultiRouteBatchNorm` layers of ``module``."""
    return [layer for layer in module.modules() if isinstance(layer, MultiRouteBatchNorm)]


def _layers_with_route(module: nn.Module, name: str) -> list[MultiRouteBatchNorm]:
    layers = routed_bn_layers(module)
    if not layers:
        raise ValueError("the module has no routed batch-norm layers: call convert_to_multi_bn(module) first")
    for layer in layers:
        if name not in layer.routes:
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


def _to_plain(layer: _BatchNorm, plain_class: type[_BatchNorm]) -> _BatchNorm:
    if type(layer) is plain_class:
        return copy.deepcopy(layer)
    plain = plain_class(
        layer.num_features,
        eps=layer.eps,
        momentum=layer.momentum,
        affine=layer.affine,
        track_running_stats=layer.track_running_stats,
    )
    reference = layer.running_mean if layer.running_mean is not None else layer.weight
    if reference is not None:
        plain = plain.to(device=reference.device, dtype=reference.dtype)
    plain.load_state_dict(layer.state_dict())
    plain.train(layer.training)
    return plain


def export_bn_route(module: nn.Module, name: str) -> nn.Module:
    """Return a copy of ``module`` whose routed BN layers are plain BN layers holding route ``name``.

    The copy has ordinary ``BatchNorm1d/2d`` layers (a SyncBatchNorm route is exported as
    the plain class it replaced), so its state dict loads into the unconverted
    architecture (torchvision/timm code, lightly's harness).  In eval mode its output
    equals the routed module's output under ``bn_route(module, name)``.
    """
    _layers_with_route(module, name)
    exported = copy.deepcopy(module)

    def replace(parent: nn.Module) -> nn.Module:
        if isinstance(parent, MultiRouteBatchNorm):
            return _to_plain(parent.routes[name], parent.plain_class)  # type: ignore[arg-type]
        for child_name, child in parent.named_children():
            new = replace(child)
            if new is not child:
                setattr(parent, child_name, new)
        return parent

    return replace(exported)
