"""Robust linear evaluation of a lightly-trained backbone: lightly's ``LinearClassifier`` harness
(SLF, as the authors finetune), then SA / PGD RA / AutoAttack AA on test images."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from torch import nn
from torch.utils.data import DataLoader, Dataset

from advcl_plugin.core.config import PAPER_FINETUNE
from advcl_plugin.core.robustness import robustness_metrics
from advcl_plugin.lightly.classifiers import RobustLinearClassifier

__all__ = ["robust_linear_evaluation"]


def robust_linear_evaluation(
    backbone: nn.Module,
    feature_dim: int,
    num_classes: int,
    train: Dataset,
    test: Dataset,
    *,
    epochs: int = PAPER_FINETUNE.epochs,
    batch_size: int = PAPER_FINETUNE.batch_size,
    milestones: tuple[int, ...] = PAPER_FINETUNE.milestones,
    samples: int | None = None,
    aa_samples: int | None = 1000,
    progress: bool = True,
    **trainer_kwargs: Any,
) -> dict[str, Any]:
    """Train a linear head with lightly's ``LinearClassifier`` (frozen ``backbone``) and measure robustness.

    Args:
        backbone: encoder with ordinary BatchNorm (e.g. ``export_bn_route(backbone, "pgd")``).
        train, test: datasets of ``(image tensor in [0, 1], label)``; ``train`` augmented.
        epochs, batch_size, milestones: SLF schedule (authors: 25 epochs, batch 512, lr / 10 at 15, 20).
        samples, aa_samples: numbers of (evenly spaced) test images for SA/RA and for AutoAttack.
        trainer_kwargs: extra ``pytorch_lightning.Trainer`` arguments.

    Returns:
        The metrics of :func:`advcl_plugin.core.robustness.robustness_metrics` (no sweeps).
    """
    classifier = RobustLinearClassifier(
        backbone, feature_dim, num_classes, batch_size=batch_size, milestones=milestones
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(classifier, DataLoader(train, batch_size=batch_size, shuffle=True))
    model = nn.Sequential(backbone, nn.Flatten(1), classifier.classification_head).eval()
    loader = DataLoader(test, batch_size=256)
    return robustness_metrics(
        model, loader, samples=samples, aa_samples=aa_samples, eps_sweep=(), steps_sweep=(), progress=progress
    )
