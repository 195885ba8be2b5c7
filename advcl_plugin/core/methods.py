"""Registry of pretraining methods: AdvCL, its ablations and the baselines, as objective settings.

Every method is one :class:`~advcl_plugin.core.objective.AdvCLObjective` configuration, so
comparisons at equal budget are one name apart.

Example:
    >>> from advcl_plugin.core.methods import METHODS, build_objective
    >>> from advcl_plugin import cifar_resnet18
    >>> sorted(METHODS)[:3]
    ['acl', 'advcl', 'advcl-k10']
    >>> objective = build_objective("simclr", cifar_resnet18(width=8))
    >>> objective.attack
    'none'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from advcl_plugin.core.objective import AdvCLObjective

__all__ = ["METHODS", "MethodSpec", "build_objective", "get_method"]


@dataclass(frozen=True)
class MethodSpec:
    """A pretraining method: objective settings and the BN route used downstream."""

    name: str
    description: str
    objective_kwargs: dict[str, Any] = field(default_factory=dict)
    downstream_route: str = "pgd"

    @property
    def uses_pseudo_labels(self) -> bool:
        return bool(self.objective_kwargs.get("use_pseudo_labels", True))


_NO_PL = {"use_pseudo_labels": False}

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "simclr",
            "SimCLR: contrastive loss over [tau1, tau2], no attack",
            {"attack": "none", "frequency_views": (), **_NO_PL},
            downstream_route="normal",
        ),
        MethodSpec(
            "acl",
            "ACL-style paired adversarial views (eq. 6) with dual BN: loss over "
            "[tau1 + delta1, tau2 + delta2, tau1, tau2] (Table 4, row 3)",
            {"attack": "paired", "paired_clean_views": True, "frequency_views": (), **_NO_PL},
        ),
        MethodSpec("advcl", "AdvCL: [x + delta, tau1, tau2, x_HFC] + pseudo labels (K ensemble)"),
        MethodSpec("advcl-no-hfc", "AdvCL without the HFC view", {"frequency_views": ()}),
        MethodSpec("advcl-lfc", "AdvCL with the LFC view instead of the HFC view", {"frequency_views": ("low",)}),
        MethodSpec("advcl-no-pl", "AdvCL without pseudo labels (eq. 9 only)", _NO_PL),
        MethodSpec("advcl-k10", "AdvCL with a single pseudo-label head, K = 10", {"ks": (10,)}),
    )
}


def get_method(name: str) -> MethodSpec:
    """The method registered as ``name`` (clear error for unknown names)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name]


def build_objective(method: str, backbone: nn.Module, **overrides: Any) -> AdvCLObjective:
    """Build the objective of ``method`` around ``backbone``; ``overrides`` win over the method's settings.

    An override that contradicts what defines the method (e.g. ``attack`` for ``simclr``)
    is rejected.
    """
    spec = get_method(method)
    clash = {k for k in overrides if k in spec.objective_kwargs and overrides[k] != spec.objective_kwargs[k]}
    if clash:
        raise ValueError(f"method {method!r} fixes {sorted(clash)}; pick another method instead of overriding them")
    return AdvCLObjective(backbone, **{**spec.objective_kwargs, **overrides})
