"""lightly's benchmarking classifiers for robust finetuning: SLF, ALF (``LinearClassifier``) and AFF
(``FinetuneClassifier``), trained on PGD examples when adversarial and validated with PGD accuracy.

Example:
    >>> import torch
    >>> from advcl_plugin import cifar_resnet18
    >>> from advcl_plugin.lightly import RobustLinearClassifier
    >>> classifier = RobustLinearClassifier(cifar_resnet18(width=8), feature_dim=64, num_classes=10)
    >>> classifier.logits(torch.rand(2, 3, 32, 32)).shape            # gradients reach the input
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import FinetuneClassifier, LinearClassifier
from torch import Tensor, nn

from advcl_plugin.core.attack import pgd_linf
from advcl_plugin.core.config import HEAD_INITS
from advcl_plugin.core.config import PAPER_EVALUATION as EVAL
from advcl_plugin.core.config import PAPER_FINETUNE as SLF
from advcl_plugin.core.trades import trades_kl_attack, trades_loss

__all__ = ["AdversarialFinetuneClassifier", "RobustLinearClassifier"]


class _RobustMixin:
    """Adversarial training steps, robust validation and the authors' optimiser for lightly classifiers."""

    model: nn.Module
    classification_head: nn.Module

    def _robust_settings(
        self,
        adversarial: bool,
        momentum: float,
        weight_decay: float,
        milestones: Sequence[int],
        gamma: float,
        attack_eps: float,
        attack_step_size: float,
        attack_steps: int,
        val_attack_steps: int,
    ) -> None:
        for name, value in (("attack_eps", attack_eps), ("attack_step_size", attack_step_size)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must lie in [0, 1] (pixel units), got {value}")
        counts = {"attack_steps": attack_steps, "val_attack_steps": val_attack_steps}
        for name, value in {**counts, "momentum": momentum, "weight_decay": weight_decay}.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if gamma <= 0 or any(m < 0 for m in milestones):
            raise ValueError(f"need gamma > 0 and milestones >= 0, got {gamma}, {list(milestones)}")
        self.adversarial = adversarial
        self.momentum, self.weight_decay = momentum, weight_decay
        self.milestones, self.gamma = list(milestones), gamma
        self.attack_eps, self.attack_step_size = attack_eps, attack_step_size
        self.attack_steps, self.val_attack_steps = attack_steps, val_attack_steps

    def _start_head(self, head_init: str) -> None:
        """``"default"``: nn.Linear's initialisation (the AdvCL authors' script); ``"zeros"``: weight and bias
        zero (the RobustSSL benchmark's, in every mode)."""
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {list(HEAD_INITS)}, got {head_init!r}")
        self.head_init = head_init
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
                self.attack_eps,
                steps,
                self.attack_step_size,
            )
        finally:
            self.model.train(was_training)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        images, targets = batch[0], batch[1]
        if self.adversarial:
            images = self.adversarial_examples(images, targets, self.attack_steps)
        return super().training_step((images, targets), batch_idx)  # type: ignore[misc]

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        loss = super().validation_step(batch, batch_idx)  # type: ignore[misc]
        images, targets = batch[0], batch[1]
        with torch.enable_grad():  # the Trainer needs inference_mode=False for this
            adversarial = self.adversarial_examples(images, targets, self.val_attack_steps)
        with torch.no_grad():
            robust = (self.logits(adversarial).argmax(1) == targets).float().mean()
        self.log("val_robust_top1", robust, prog_bar=True, batch_size=len(targets), sync_dist=True)  # type: ignore[attr-defined]
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(
            self.get_trainable_parameters(),  # type: ignore[attr-defined]
            lr=self.lr,  # type: ignore[attr-defined]
            momentum=self.momentum,
            weight_decay=self.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, self.milestones, self.gamma)
        return [optimizer], [{"scheduler": scheduler, "interval": "epoch"}]


class RobustLinearClassifier(_RobustMixin, LinearClassifier):
    """lightly's ``LinearClassifier`` (frozen encoder in eval mode) for SLF, or ALF with ``adversarial=True``.

    Defaults are the authors' SLF settings: SGD lr 0.01, momentum 0.9, weight decay 2e-4,
    lr / 10 at epochs 15 and 20; PGD (ALF training: 10 steps, validation: ``val_attack_steps``)
    at eps 8/255 with steps of 2/255.  Validation logs ``val_top1`` and ``val_robust_top1``.
    """

    def __init__(
        self,
        model: nn.Module,
        feature_dim: int,
        num_classes: int,
        *,
        adversarial: bool = False,
        batch_size: int = SLF.batch_size,
        lr: float = SLF.lr,
        momentum: float = SLF.momentum,
        weight_decay: float = SLF.weight_decay,
        milestones: Sequence[int] = SLF.milestones,
        gamma: float = SLF.gamma,
        attack_eps: float = EVAL.eps,
        attack_step_size: float = EVAL.step_size,
        attack_steps: int = SLF.attack_steps,
        val_attack_steps: int = SLF.attack_steps,
        head_init: str = SLF.head_init,
    ) -> None:
        super().__init__(model, batch_size, lr, feature_dim, num_classes, topk=(1,))
        self._robust_settings(
            adversarial, momentum, weight_decay, milestones, gamma, attack_eps, attack_step_size, attack_steps,
            val_attack_steps,
        )  # fmt: skip
        self._start_head(head_init)


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
    benchmark's AFF: KL attack in eval mode, :func:`advcl_plugin.core.trades.trades_loss` in train mode)."""

    def __init__(
        self,
        model: nn.Module,
        feature_dim: int,
        num_classes: int,
        *,
        batch_size: int = 128,
        lr: float = SLF.lr,
        momentum: float = SLF.momentum,
        weight_decay: float = SLF.weight_decay,
        milestones: Sequence[int] = SLF.milestones,
        gamma: float = SLF.gamma,
        attack_eps: float = EVAL.eps,
        attack_step_size: float = EVAL.step_size,
        attack_steps: int = SLF.attack_steps,
        val_attack_steps: int = SLF.attack_steps,
        loss: str = SLF.loss,
        trades_beta: float = SLF.trades_beta,
        head_init: str = SLF.head_init,
    ) -> None:
        if loss not in ("ce", "trades"):
            raise ValueError(f"loss must be 'ce' or 'trades', got {loss!r}")
        if trades_beta < 0:
            raise ValueError(f"trades_beta must be >= 0 (a negative weight rewards the divergence), got {trades_beta}")
        super().__init__(model, batch_size, lr, feature_dim, num_classes, topk=(1,))
        self._robust_settings(
            True, momentum, weight_decay, milestones, gamma, attack_eps, attack_step_size, attack_steps,
            val_attack_steps,
        )  # fmt: skip
        self.loss, self.trades_beta = loss, trades_beta
        self._start_head(head_init)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        if self.loss == "ce":
            return super().training_step(batch, batch_idx)
        images, targets = batch[0], batch[1]
        was_training = self.model.training
        self.model.eval()
        self.classification_head.eval()
        try:
            adversarial = trades_kl_attack(
                self.logits, images, self.attack_eps, self.attack_steps, self.attack_step_size
            )
        finally:
            self.model.train(was_training)
            self.classification_head.train(was_training)
        # two forward passes, as the benchmark does: each batch gets its own BN statistics
        natural_logits, adversarial_logits = self.logits(images), self.logits(adversarial)
        loss = trades_loss(natural_logits, adversarial_logits, targets, self.trades_beta)
        accuracy = (natural_logits.argmax(1) == targets).float().mean()
        self.log("train_loss", loss, prog_bar=True, sync_dist=True, batch_size=len(targets))
        self.log("train_top1", accuracy, sync_dist=True, batch_size=len(targets))
        return loss
