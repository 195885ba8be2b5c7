"""Robust linear evaluation of a lightly-trained backbone: lightly's ``LinearClassifier`` harness
(SLF, as the authors finetune), then SA / PGD RA / AutoAttack AA on test images."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
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
    device: str | torch.device | None = None,
    num_workers: int = 0,
    head_init: str = PAPER_FINETUNE.head_init,
    **trainer_kwargs: Any,
) -> dict[str, Any]:
    """Train a linear head with lightly's ``LinearClassifier`` (frozen ``backbone``) and measure robustness.

    Args:
        backbone: encoder with ordinary BatchNorm (e.g. ``export_bn_route(backbone, "pgd")``).
        train, test: datasets of ``(image tensor in [0, 1], label)``; ``train`` augmented.
        epochs, batch_size, milestones: SLF schedule (authors: 25 epochs, batch 512, lr / 10 at 15, 20).
        samples, aa_samples: numbers of (evenly spaced) test images for SA/RA and for AutoAttack.
        device: where the attacks run; default: the device the Trainer trained on (Lightning moves the
            module back to the CPU when ``fit`` ends; PGD-20 and AutoAttack go back to the training device).
        num_workers: data-loader workers for training and test images (pinned memory on a GPU).
        head_init: the head's start, ``"default"`` (the authors') or ``"zeros"`` (the RobustSSL benchmark's).
        trainer_kwargs: extra ``pytorch_lightning.Trainer`` arguments.

    Returns:
        The metrics of :func:`advcl_plugin.core.robustness.robustness_metrics` (no sweeps).
    """
    classifier = RobustLinearClassifier(
        backbone, feature_dim, num_classes, batch_size=batch_size, milestones=milestones, head_init=head_init
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    pin = torch.cuda.is_available()
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=num_workers, pin_memory=pin)
    trainer.fit(classifier, train_loader)
    target = torch.device(device) if device is not None else trainer.strategy.root_device
    model = nn.Sequential(backbone, nn.Flatten(1), classifier.classification_head).eval().to(target)
    loader = DataLoader(test, batch_size=256, num_workers=num_workers, pin_memory=target.type == "cuda")
    return robustness_metrics(
        model, loader, samples=samples, aa_samples=aa_samples, eps_sweep=(), steps_sweep=(), progress=progress
    )
