"""Registry of pretraining methods: AdvCL, its ablations and the baselines, as variants of one config.

Every method is a set of :class:`~advcl_plugin.core.config.AdvCLConfig` changes from ``PAPER``,
so comparisons at equal budget are one name apart, in the style of solo-learn's ``METHODS``.

Examples:
    >>> from advcl_plugin.core.methods import METHODS, build_config, build_objective
    >>> from advcl_plugin import cifar_resnet18
    >>> sorted(METHODS)[:3]
    ['acl', 'advcl', 'advcl-k10']
    >>> build_config("advcl", steps=3).steps
    3
    >>> build_objective("simclr", cifar_resnet18(width=8)).config.attack
    'none'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from advcl_plugin.core.config import PAPER, AdvCLConfig
from advcl_plugin.core.objective import AdvCLObjective

__all__ = ["METHODS", "MethodSpec", "build_config", "build_objective", "get_method"]


@dataclass(frozen=True)
class MethodSpec:
    """A pretraining method: the changes it makes to ``PAPER`` and a description."""

    name: str
    description: str
    changes: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> AdvCLConfig:
        """The method's config with every other setting at the paper's value."""
        return PAPER.replace(**self.changes)

    @property
    def uses_pseudo_labels(self) -> bool:
        return self.config.use_pseudo_labels

    @property
    def downstream_route(self) -> str:
        return self.config.downstream_route


_NO_PL = {"use_pseudo_labels": False}

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "simclr",
            "SimCLR: contrastive loss over [tau1, tau2], no attack",
            {"attack": "none", "frequency_views": (), **_NO_PL},
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


def build_config(method: str, overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> AdvCLConfig:
    """The validated config of ``method`` with ``overrides`` (e.g. a recipe's ``method_kwargs``).

    Unknown keys are refused with the valid ones; an override that contradicts what defines the
    method (e.g. ``attack`` for ``simclr``) is refused too.
    """
    spec = get_method(method)
    changes = {**(overrides or {}), **kwargs}
    unknown = sorted(set(changes) - set(AdvCLConfig.field_names()))
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in method_kwargs of method {method!r}; valid keys: "
            f"{sorted(AdvCLConfig.field_names())}"
        )
    merged = spec.config.replace(**changes)
    clash = sorted(k for k in changes if k in spec.changes and getattr(merged, k) != spec.config.to_dict()[k])
    if clash:
        raise ValueError(f"method {method!r} fixes {clash}; pick another method instead of overriding them")
    return merged


def build_objective(method: str, backbone: nn.Module, overrides: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> AdvCLObjective:  # fmt: skip
    """Build the objective of ``method`` around ``backbone`` (see :func:`build_config`); the keyword
    ``gather_distributed`` goes to the objective."""
    gather = bool(kwargs.pop("gather_distributed", False))
    return AdvCLObjective(backbone, build_config(method, overrides, **kwargs), gather_distributed=gather)
