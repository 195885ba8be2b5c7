"""Robust linear evaluation of a lightly-trained backbone: lightly's ``LinearClassifier`` harness
(SLF, as the authors finetune), then SA / PGD RA / AutoAttack AA on test images."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from advcl_plugin.evaluation.protocols import PAPER_FINETUNE, FinetuneSchedule
from advcl_plugin.evaluation.robustness import robustness_metrics
from advcl_plugin.lightly.classifiers import RobustLinearClassifier

__all__ = ["robust_linear_evaluation"]


def robust_linear_evaluation(
    backbone: nn.Module,
    feature_dim: int,
    num_classes: int,
    train: Dataset,
    test: Dataset,
    schedule: FinetuneSchedule | None = None,
    *,
    samples: int | None = None,
    aa_samples: int | None = 1000,
    progress: bool = True,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    **kwargs: Any,
) -> dict[str, Any]:
    """Train a linear head with lightly's ``LinearClassifier`` (frozen ``backbone``) and measure robustness.

    Args:
        backbone: encoder with ordinary BatchNorm (e.g. ``export_bn_route(backbone, "pgd")``).
        feature_dim: size of the backbone's features.
        num_classes: number of classes.
        train: dataset of ``(image tensor in [0, 1], label)``, augmented.
        test: dataset of ``(image tensor in [0, 1], label)``.
        schedule: the SLF :class:`~advcl_plugin.evaluation.protocols.FinetuneSchedule` (default: the authors':
            25 epochs, batch 512, lr / 10 at 15, 20; ``robustssl_protocol(method).slf`` for the benchmark's).
        samples: number of (evenly spaced) test images for SA and RA (None: all).
        aa_samples: number of (evenly spaced) test images for AutoAttack.
        progress: progress bars.
        device: where the attacks run; default: the device the Trainer trained on (Lightning moves the
            module back to the CPU when ``fit`` ends; PGD-20 and AutoAttack go back to the training device).
        num_workers: data-loader workers for training and test images (pinned memory on a GPU).
        kwargs: settings of the schedule by name (``epochs=1``, ``head_init="zeros"``); the others are
            ``pytorch_lightning.Trainer`` arguments.

    Returns:
        The metrics of :func:`advcl_plugin.evaluation.robustness.robustness_metrics` (no sweeps).
    """
    changes = {name: kwargs.pop(name) for name in FinetuneSchedule.fields() if name in kwargs}
    classifier = RobustLinearClassifier(backbone, feature_dim, num_classes, schedule or PAPER_FINETUNE, **changes)
    chosen = classifier.schedule
    trainer = pl.Trainer(
        max_epochs=chosen.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        **kwargs,
    )
    pin = torch.cuda.is_available()
    train_loader = DataLoader(
        train, batch_size=chosen.batch_size, shuffle=True, num_workers=num_workers, pin_memory=pin
    )
    trainer.fit(classifier, train_loader)
    target = torch.device(device) if device is not None else trainer.strategy.root_device
    model = nn.Sequential(backbone, nn.Flatten(1), classifier.classification_head).eval().to(target)
    loader = DataLoader(test, batch_size=256, num_workers=num_workers, pin_memory=target.type == "cuda")
    return robustness_metrics(
        model, loader, samples=samples, aa_samples=aa_samples, eps_sweep=(), steps_sweep=(), progress=progress
    )
