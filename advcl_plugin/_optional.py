"""Imports of optional dependencies that say which extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ``ImportError`` naming the extra of advcl-plugin that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f'{module!r} is needed here but is not installed: pip install "advcl-plugin[{extra}]"'
        ) from error
