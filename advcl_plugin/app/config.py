"""Deprecated: the recipe module was split by concern in advcl-plugin 0.2.

* :mod:`advcl_plugin.app.recipe`: the recipe schema, :func:`~advcl_plugin.app.recipe.load_recipe` and its checks;
* :mod:`advcl_plugin.app.recipe_files`: reading YAML, shipped recipes and studies, structured validation;
* :mod:`advcl_plugin.app.protocols`: protocol presets and deviations.

Every old name still works from here, with a ``DeprecationWarning`` naming its new home.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {
    "advcl_plugin.app.recipe": (
        "DataConfig", "EvalConfig", "FinetuneConfig", "FinetuneSection", "ModelConfig", "OptimConfig",
        "PseudoLabelConfig", "Recipe", "TrainerConfig", "load_recipe",
    ),
    "advcl_plugin.app.recipe_files": (
        "MAX_RECIPE_BYTES", "MAX_YAML_NODES", "available_recipes", "available_studies", "load_structured",
        "read_yaml", "recipe_path",
    ),
    "advcl_plugin.app.protocols": ("PROTOCOLS", "protocol_deviations", "protocol_settings"),
    "advcl_plugin.evaluation.protocols": ("AA_VERSIONS", "HEAD_INITS"),
}  # fmt: skip
_HOME = {name: module for module, names in _MOVED.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"advcl_plugin.app.config.{name} moved to {_HOME[name]}.{name}; import it from there",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(_HOME[name]), name)
