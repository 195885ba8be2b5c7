"""lightly's benchmarking classifiers for robust finetuning: SLF, ALF (``LinearClassifier``) and AFF
(``FinetuneClassifier``), trained on PGD examples when adversarial and validated with PGD accuracy.

Examples:
    >>> import torch
    >>> from advcl_plugin import cifar_resnet18
    >>> from advcl_plugin.lightly import RobustLinearClassifier
    >>> classifier = RobustLinearClassifier(cifar_resnet18(width=8), feature_dim=64, num_classes=10)
    >>> classifier.logits(torch.rand(2, 3, 32, 32)).shape            # gradients reach the input
    torch.Size([2, 10])
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import FinetuneClassifier, LinearClassifier
from torch import Tensor, nn

from advcl_plugin.core.attack import pgd_linf
from advcl_plugin.evaluation.protocols import PAPER_FINETUNE, FinetuneSchedule
from advcl_plugin.evaluation.trades import trades_kl_attack, trades_loss

__all__ = ["AdversarialFinetuneClassifier", "RobustLinearClassifier"]

#: lightly's ``FinetuneClassifier`` trains the encoder too: its default batch is the benchmark's AFF batch
AFF_DEFAULT = PAPER_FINETUNE.replace(batch_size=128)


def _schedule(given: FinetuneSchedule | None, default: FinetuneSchedule, changes: dict[str, Any]) -> FinetuneSchedule:
    """``given`` (or ``default``) with ``changes`` applied: keywords named as the schedule's fields."""
    schedule = given if given is not None else default
    if given is not None and not isinstance(given, FinetuneSchedule):
        raise TypeError(f"schedule must be a FinetuneSchedule, got {type(given).__name__}")
    return schedule.replace(**changes)  # a validated copy: the caller's object is never shared


class _RobustMixin:
    """Adversarial training steps, robust validation and the schedule's optimiser for lightly classifiers."""

    model: nn.Module
    classification_head: nn.Module
    schedule: FinetuneSchedule

    def _use_schedule(self, schedule: FinetuneSchedule, adversarial: bool) -> None:
        self.schedule, self.adversarial = schedule, adversarial
        self._start_head(schedule.head_init)
        # lightly's save_hyperparameters() also collects this class's init arguments: keep the schedule as plain
        # values, so that checkpoints stay loadable weights-only (a dataclass would be a pickled object)
        for name in ("_hparams", "_hparams_initial"):
            hparams = getattr(self, name, None)
            if hparams is not None:
                for key in ("schedule", "changes"):
                    hparams.pop(key, None)
                hparams["schedule"] = dataclasses.asdict(schedule)

    def _start_head(self, head_init: str) -> None:
        """``"default"``: nn.Linear's initialisation (the AdvCL authors' script); ``"zeros"``: weight and bias
        zero (the RobustSSL benchmark's, in every mode)."""
        if head_init == "zeros":
            with torch.no_grad():
                for tensor in self.classification_head.parameters():
                    tensor.zero_()

    def logits(self, images: Tensor) -> Tensor:
        """Logits with gradients flowing to the input (lightly's ``LinearClassifier.forward`` has none)."""
        return self.classification_head(self.model(images).flatten(1))

    def adversarial_examples(self, images: Tensor, targets: Tensor, steps: int) -> Tensor:
        """PGD on the summed cross-entropy, with the encoder in eval mode (running BN statistics)."""
        was_training = self.model.training
        self.model.eval()
        try:
            return pgd_linf(
                lambda z: F.cross_entropy(self.logits(z), targets, reduction="sum"),
                images,
                self.schedule.attack_eps,
                steps,
                self.schedule.attack_step_size,
            )
        finally:
            self.model.train(was_training)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        images, targets = batch[0], batch[1]
        if self.adversarial:
            images = self.adversarial_examples(images, targets, self.schedule.attack_steps)
        return super().training_step((images, targets), batch_idx)  # type: ignore[misc]

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        loss = super().validation_step(batch, batch_idx)  # type: ignore[misc]
        images, targets = batch[0], batch[1]
        with torch.enable_grad():  # the Trainer needs inference_mode=False for this
            adversarial = self.adversarial_examples(images, targets, self.schedule.val_attack_steps)
        with torch.no_grad():
            robust = (self.logits(adversarial).argmax(1) == targets).float().mean()
        self.log("val_robust_top1", robust, prog_bar=True, batch_size=len(targets), sync_dist=True)  # type: ignore[attr-defined]
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(
            self.get_trainable_parameters(),  # type: ignore[attr-defined]
            lr=self.schedule.lr,
            momentum=self.schedule.momentum,
            weight_decay=self.schedule.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(self.schedule.milestones), self.schedule.gamma)
        return [optimizer], [{"scheduler": scheduler, "interval": "epoch"}]


class RobustLinearClassifier(_RobustMixin, LinearClassifier):
    """lightly's ``LinearClassifier`` (frozen encoder in eval mode) for SLF, or ALF with ``adversarial=True``.

    Args:
        schedule: the :class:`~advcl_plugin.evaluation.protocols.FinetuneSchedule` to train with (default: the
            AdvCL authors' SLF: SGD lr 0.01, momentum 0.9, weight decay 2e-4, lr / 10 at epochs 15 and 20; PGD-10
            at eps 8/255 with steps of 2/255 for ALF and validation); the RobustSSL benchmark's is
            ``robustssl_protocol(method).slf``.
        **changes: single settings of the schedule changed by name (``lr=0.1``, ``head_init="zeros"``).

    Validation logs ``val_top1`` and ``val_robust_top1``.
    """

    def __init__(
        self,
        model: nn.Module,
        feature_dim: int,
        num_classes: int,
        schedule: FinetuneSchedule | None = None,
        *,
        adversarial: bool = False,
        **changes: Any,
    ) -> None:
        chosen = _schedule(schedule, PAPER_FINETUNE, changes).validate(mode="alf" if adversarial else "slf")
        super().__init__(model, chosen.batch_size, chosen.lr, feature_dim, num_classes, topk=(1,))
        self._use_schedule(chosen, adversarial)

    def setup(self, stage: str) -> None:
        """The encoder's parameters are frozen while the Trainer runs (lightly's ``LinearClassifier`` only runs it
        without gradient): DDP then wraps the module without parameters that never get a gradient.  PGD still
        takes gradients with respect to the input.  ``teardown`` gives the parameters their flags back."""
        super().setup(stage)
        self._encoder_flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for parameter, _ in self._encoder_flags:
            parameter.requires_grad_(False)

    def teardown(self, stage: str) -> None:
        for parameter, flag in getattr(self, "_encoder_flags", []):
            parameter.requires_grad_(flag)
        self._encoder_flags = []
        super().teardown(stage)


class AdversarialFinetuneClassifier(_RobustMixin, FinetuneClassifier):
    """lightly's ``FinetuneClassifier`` for AFF: encoder and head trained on PGD examples
    (``loss="ce"``, the AdvCL authors' AFF) or with TRADES (``loss="trades"``, the RobustSSL
    benchmark's AFF: KL attack in eval mode, :func:`advcl_plugin.evaluation.trades.trades_loss` in train mode).

    Args:
        schedule: the :class:`~advcl_plugin.evaluation.protocols.FinetuneSchedule` to train with (default: the
            authors' schedule at batch 128); the RobustSSL benchmark's is ``robustssl_protocol(method).aff``.
        **changes: single settings of the schedule changed by name (``loss="trades"``, ``trades_beta=6``).
    """

    def __init__(
        self,
        model: nn.Module,
        feature_dim: int,
        num_classes: int,
        schedule: FinetuneSchedule | None = None,
        **changes: Any,
    ) -> None:
        chosen = _schedule(schedule, AFF_DEFAULT, changes).validate(mode="aff")
        super().__init__(model, chosen.batch_size, chosen.lr, feature_dim, num_classes, topk=(1,))
        self._use_schedule(chosen, True)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        if self.schedule.loss == "ce":
            return super().training_step(batch, batch_idx)
        images, targets = batch[0], batch[1]
        was_training = self.model.training
        self.model.eval()
        self.classification_head.eval()
        try:
            schedule = self.schedule
            adversarial = trades_kl_attack(
                self.logits, images, schedule.attack_eps, schedule.attack_steps, schedule.attack_step_size
            )
        finally:
            self.model.train(was_training)
            self.classification_head.train(was_training)
        # two forward passes, as the benchmark does: each batch gets its own BN statistics
        natural_logits, adversarial_logits = self.logits(images), self.logits(adversarial)
        loss = trades_loss(natural_logits, adversarial_logits, targets, self.schedule.trades_beta)
        accuracy = (natural_logits.argmax(1) == targets).float().mean()
        self.log("train_loss", loss, prog_bar=True, sync_dist=True, batch_size=len(targets))
        self.log("train_top1", accuracy, sync_dist=True, batch_size=len(targets))
        return loss
