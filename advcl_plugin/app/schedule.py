"""Learning-rate schedule of AdvCL pretraining (authors' code): linear warm-up, then cosine."""

from __future__ import annotations

import math

__all__ = ["lr_at", "scaled_lr_factor"]


def scaled_lr_factor(global_batch_size: int, reference_batch_size: int = 512) -> float:
    """Linear scaling rule: the recipe's learning rates are for ``reference_batch_size``."""
    return global_batch_size / reference_batch_size


def lr_at(
    epoch: float,
    *,
    lr: float,
    epochs: int,
    warmup_epochs: float = 10,
    warmup_from: float = 0.01,
    min_lr_ratio: float = 0.001,
) -> float:
    """Learning rate at (fractional) ``epoch`` for the reference batch size.

    Cosine decay from ``lr`` to ``lr * min_lr_ratio`` over ``epochs``; during the first
    ``warmup_epochs`` the rate rises linearly from ``warmup_from`` to the cosine's value at
    the end of the warm-up.  The authors update the cosine once per epoch and the warm-up
    per step; here both are evaluated per step (identical at epoch boundaries).

    Examples:
        >>> round(lr_at(0, lr=0.5, epochs=1000), 4), round(lr_at(500, lr=0.5, epochs=1000), 4)
        (0.01, 0.2502)
    """
    eta_min = lr * min_lr_ratio

    def cosine(e: float) -> float:
        return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * min(e, epochs) / epochs)) / 2

    if warmup_epochs > 0 and epoch < warmup_epochs:
        return warmup_from + (epoch / warmup_epochs) * (cosine(warmup_epochs) - warmup_from)
    return cosine(epoch)
