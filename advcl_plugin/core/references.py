"""Modules used, not owned: a module that only calls modules registered elsewhere keeps them in an
:class:`Unowned` holder, so that PyTorch does not register them twice (no duplicate parameters in
``parameters()``, no second set of state-dict keys, no second ``.to()``).

Examples:
    >>> import torch
    >>> from advcl_plugin.core.references import Unowned
    >>> class Probe(torch.nn.Module):
    ...     def __init__(self, encoder):
    ...         super().__init__()
    ...         self._encoder = Unowned(encoder)
    >>> len(list(Probe(torch.nn.Linear(2, 2)).parameters()))
    0
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Unowned"]

T = TypeVar("T")


class Unowned(Generic[T]):
    """Holds ``target`` as a plain attribute value: ``nn.Module`` registers modules, not holders."""

    __slots__ = ("target",)

    def __init__(self, target: T) -> None:
        self.target = target

    def __repr__(self) -> str:
        return f"Unowned({type(self.target).__name__})"
