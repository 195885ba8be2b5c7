"""Finetuning with lightly's benchmarking harness: SLF, ALF and AFF.

* SLF (standard linear finetuning): lightly's ``LinearClassifier`` on the frozen encoder
  (eval mode), clean images, the authors' optimiser (SGD lr 0.01, momentum 0.9, weight
  decay 2e-4, 25 epochs, lr / 10 at epochs 15 and 20).
* ALF (adversarial linear finetuning): the same, trained on PGD examples of the current
  classifier (10 steps by default).
* AFF (adversarial full finetuning): lightly's ``FinetuneClassifier`` (encoder trained too)
  on PGD examples.

Validation on a held-out part of the train split (``val_fraction > 0``) logs clean and PGD
accuracy and keeps the epoch with the best held-out robust accuracy; otherwise the last
epoch is kept.  The test set is never used for selection.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import FinetuneClassifier, LinearClassifier
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import transforms as T

from advcl_plugin.config import FinetuneConfig, Recipe
from advcl_plugin.core.attack import pgd_linf
from advcl_plugin.training.checkpointing import AtomicCheckpointIO
from advcl_plugin.training.data import load_split, target_image_size
from advcl_plugin.training.encoders import RobustClassifier, load_encoder, save_classifier

__all__ = ["AdversarialFinetuneClassifier", "RobustLinearClassifier", "finetune"]

MODES = ("slf", "alf", "aff")


def _attack(logits_fn: Any, images: Tensor, targets: Tensor, steps: int, eps: float, step_size: float) -> Tensor:
    """PGD on the cross-entropy (summed over the batch, as the authors' script)."""
    return pgd_linf(lambda z: F.cross_entropy(logits_fn(z), targets, reduction="sum"), images, eps, steps, step_size)


class _RobustMixin:
    """Adversarial training steps, robust validation and the authors' optimiser for lightly classifiers."""

    config: FinetuneConfig
    adversarial: bool
    model: nn.Module
    classification_head: nn.Module

    def logits(self, images: Tensor) -> Tensor:
        """Logits with gradients flowing to the input (lightly's LinearClassifier.forward has none)."""
        return self.classification_head(self.model(images).flatten(1))

    def _adversarial_examples(self, images: Tensor, targets: Tensor, steps: int) -> Tensor:
        was_training = self.model.training
        self.model.eval()  # attack with the encoder's running statistics
        try:
            return _attack(self.logits, images, targets, steps, self.config.attack_eps, self.config.attack_step_size)
        finally:
            self.model.train(was_training)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        images, targets = batch[0], batch[1]
        if self.adversarial:
            images = self._adversarial_examples(images, targets, self.config.attack_steps)
        return super().training_step((images, targets), batch_idx)  # type: ignore[misc]

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        loss = super().validation_step(batch, batch_idx)  # type: ignore[misc]
        images, targets = batch[0], batch[1]
        with torch.enable_grad():
            adversarial = self._adversarial_examples(images, targets, self.config.val_attack_steps)
        with torch.no_grad():
            robust = (self.logits(adversarial).argmax(1) == targets).float().mean()
        self.log("val_robust_top1", robust, prog_bar=True, batch_size=len(targets), sync_dist=True)  # type: ignore[attr-defined]
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(
            self.get_trainable_parameters(),  # type: ignore[attr-defined]
            lr=self.config.lr,
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, self.config.milestones, self.config.gamma)
        return [optimizer], [{"scheduler": scheduler, "interval": "epoch"}]


class RobustLinearClassifier(_RobustMixin, LinearClassifier):
    """SLF (``adversarial=False``) or ALF (``adversarial=True``) on a frozen encoder."""

    def __init__(
        self, model: nn.Module, feature_dim: int, num_classes: int, config: FinetuneConfig, adversarial: bool
    ) -> None:
        super().__init__(model, config.batch_size, config.lr, feature_dim, num_classes, topk=(1,))
        self.config, self.adversarial = config, adversarial


class AdversarialFinetuneClassifier(_RobustMixin, FinetuneClassifier):
    """AFF: encoder and head trained on PGD examples."""

    def __init__(self, model: nn.Module, feature_dim: int, num_classes: int, config: FinetuneConfig) -> None:
        super().__init__(model, config.batch_size, config.lr, feature_dim, num_classes, topk=(1,))
        self.config, self.adversarial = config, True


def finetune_transform(image_size: int, native_size: int) -> T.Compose:
    """The authors' finetuning augmentation: (resize,) RandomCrop(size, padding 4), flip."""
    resize = [T.Resize(image_size)] if image_size != native_size else []
    return T.Compose([*resize, T.RandomCrop(image_size, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])


def finetune(
    recipe: Recipe,
    mode: str,
    encoder_path: str | Path | None = None,
    output_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Finetune the encoder of a run in ``mode`` ("slf", "alf", "aff"); writes ``classifier.pt``.

    Args:
        recipe: the run's recipe (finetuning data and settings come from it).
        mode: finetuning mode.
        encoder_path: encoder to finetune; default ``<run dir>/encoder.pt``.
        output_dir: default ``<run dir>/finetune-<mode>``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    config: FinetuneConfig = getattr(recipe.finetune, mode)
    encoder_path = Path(encoder_path or recipe.run_dir / "encoder.pt")
    if not encoder_path.is_file():
        raise FileNotFoundError(f"no encoder at {encoder_path}: run `advcl pretrain` first or pass --encoder")
    output_dir = Path(output_dir or recipe.run_dir / f"finetune-{mode}")
    output_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(recipe.seed, workers=True, verbose=False)

    backbone, encoder_info = load_encoder(encoder_path)
    data = recipe.finetune_data()
    train = load_split(data, "train")
    image_size = target_image_size(recipe.data)  # the size the encoder was pretrained at
    augment = finetune_transform(image_size, train.image_size)
    plain = finetune_transform(image_size, train.image_size).transforms[:1] if image_size != train.image_size else []
    evaluation = T.Compose([*plain, T.ToTensor()])
    val_loader = None
    if config.val_fraction > 0:
        order = np.random.default_rng(recipe.seed).permutation(len(train))
        held_out = round(config.val_fraction * len(train))
        val = train.subset(np.sort(order[:held_out])).with_transform(evaluation)
        train = train.subset(np.sort(order[held_out:]))
        val_loader = DataLoader(val, batch_size=config.batch_size, num_workers=data.num_workers)
    train = train.with_transform(augment)
    loader = DataLoader(
        train,
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=data.num_workers,
        persistent_workers=data.num_workers > 0,
        drop_last=False,
    )
    feature_dim, num_classes = int(encoder_info["feature_dim"]), train.num_classes
    if mode == "aff":
        module: pl.LightningModule = AdversarialFinetuneClassifier(backbone, feature_dim, num_classes, config)
    else:
        module = RobustLinearClassifier(backbone, feature_dim, num_classes, config, adversarial=mode == "alf")

    callbacks = [ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="last", enable_version_counter=False)]
    if val_loader is not None:
        best = ModelCheckpoint(
            dirpath=output_dir / "checkpoints", filename="best", monitor="val_robust_top1", mode="max"
        )
        callbacks.append(best)
    from advcl_plugin.training.pretrain import trainer_kwargs

    trainer = pl.Trainer(
        max_epochs=config.epochs,
        callbacks=callbacks,
        logger=CSVLogger(str(output_dir), name="logs"),
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress,
        enable_model_summary=False,
        inference_mode=False,  # robust validation needs input gradients
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, len(loader))),
        **trainer_kwargs(recipe),
    )
    last = output_dir / "checkpoints" / "last.ckpt"
    resume = last if recipe.resume == "auto" and last.is_file() else None
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=val_loader, ckpt_path=str(resume) if resume else None)
    selection = "last epoch"
    if val_loader is not None and callbacks[1].best_model_path:
        state = torch.load(callbacks[1].best_model_path, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
        selection = f"best held-out PGD-{config.val_attack_steps} accuracy ({config.val_fraction:.0%} of train)"
    classifier = RobustClassifier(module.model, feature_dim, num_classes)
    classifier.head.load_state_dict(module.classification_head.state_dict())
    path = save_classifier(
        classifier,
        output_dir / "classifier.pt",
        encoder_info,
        mode=mode,
        selection=selection,
        image_size=image_size,
        dataset=data.dataset,
        epochs=config.epochs,
    )
    summary = {
        "mode": mode,
        "classifier": str(path),
        "selection": selection,
        "train_images": len(train),
        "seconds": time.perf_counter() - started,
        "final_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
    }
    (output_dir / "finetune.json").write_text(json.dumps(summary, indent=2))
    return summary
