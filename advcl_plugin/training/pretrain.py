"""AdvCL pretraining with Lightning (``pytorch_lightning``, the trainer lightly uses).

Example:
    >>> from advcl_plugin.config import load_recipe
    >>> from advcl_plugin.training.pretrain import AdvCLPretrainModule
    >>> module = AdvCLPretrainModule(load_recipe("demo", ["method=simclr"]).to_dict())
    >>> module.objective.attack
    'none'
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader

from advcl_plugin.config import Recipe, load_recipe
from advcl_plugin.core.methods import build_objective, get_method
from advcl_plugin.core.resnet import build_backbone
from advcl_plugin.core.routed_bn import export_bn_route
from advcl_plugin.training.checkpointing import (
    AtomicCheckpointIO,
    capture_rng_state,
    check_same_setup,
    restore_rng_state,
)
from advcl_plugin.training.data import EpochSeededSampler, pretraining_data
from advcl_plugin.training.encoders import ENCODER_FORMAT
from advcl_plugin.training.schedule import lr_at, scaled_lr_factor

__all__ = ["ENCODER_FORMAT", "AdvCLPretrainModule", "export_encoder", "pretrain", "trainer_kwargs"]


class AdvCLPretrainModule(pl.LightningModule):
    """Lightning module training :class:`~advcl_plugin.core.objective.AdvCLObjective` (or a baseline).

    Args:
        recipe: the recipe as a dict (saved in the checkpoint's hyper-parameters).

    Batches are ``([tau1, tau2, x_orig], label, index)``; the pseudo labels of a batch are
    looked up by index in the tensor given to :meth:`set_pseudo_labels`.
    """

    def __init__(self, recipe: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"recipe": recipe})
        self.recipe: Recipe = load_recipe(recipe)
        self.method = get_method(self.recipe.method)
        kwargs = dict(self.recipe.method_kwargs)
        kwargs.setdefault("gather_distributed", True)  # global negatives under DDP (no effect on one process)
        if self.method.uses_pseudo_labels and "ks" not in self.method.objective_kwargs:
            kwargs.setdefault("ks", tuple(self.recipe.pseudo_labels.ks))
        backbone = build_backbone(self.recipe.model.arch, self.recipe.model.width)
        self.objective = build_objective(self.recipe.method, backbone, **_tuples(kwargs))
        if self.recipe.trainer.compile:
            self.objective.backbone.compile()
        self.register_buffer("pseudo_labels", torch.zeros(0, 0, dtype=torch.long), persistent=False)

    @property
    def pseudo_label_ks(self) -> tuple[int, ...]:
        heads = self.objective.pseudo_label_heads
        return heads.ks if heads is not None else ()

    def set_pseudo_labels(self, labels: torch.Tensor | None) -> None:
        """Pseudo labels of the whole training set, (N, len(ks)), row = dataset index."""
        if not self.pseudo_label_ks:
            return
        if labels is None or labels.dim() != 2 or labels.shape[1] != len(self.pseudo_label_ks):
            raise ValueError(
                f"method {self.recipe.method!r} needs pseudo labels with one column per K {self.pseudo_label_ks}"
            )
        self.pseudo_labels = labels.to(self.device)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (tau1, tau2, x_orig), _, index = batch
        labels = None
        if self.pseudo_label_ks:
            if self.pseudo_labels.numel() == 0:
                raise RuntimeError("pseudo labels were not set: call set_pseudo_labels() before training")
            labels = self.pseudo_labels[index]
        if self.recipe.trainer.channels_last:
            tau1, tau2, x_orig = (t.contiguous(memory_format=torch.channels_last) for t in (tau1, tau2, x_orig))
        skip_attack = self.recipe.attack_every > 1 and batch_idx % self.recipe.attack_every != 0
        loss, logs = self.objective(x_orig, tau1, tau2, labels, steps=0 if skip_attack else None)
        batch_size = x_orig.shape[0]
        # per step (every log_every_n_steps) and as epoch means ("..._epoch" columns of metrics.csv)
        self.log("loss", logs.pop("loss"), prog_bar=True, batch_size=batch_size, on_step=True, on_epoch=True)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=batch_size, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        optim = self.recipe.optim
        optimizer = torch.optim.SGD(self.parameters(), lr=1.0, momentum=optim.momentum, weight_decay=optim.weight_decay)
        steps_per_epoch = self.trainer.estimated_stepping_batches / max(self.trainer.max_epochs or 1, 1)
        scale = scaled_lr_factor(optim.batch_size * self.trainer.world_size, optim.reference_batch_size)

        def learning_rate(step: int) -> float:
            return scale * lr_at(
                step / steps_per_epoch,
                lr=optim.lr,
                epochs=optim.epochs,
                warmup_epochs=optim.warmup_epochs,
                warmup_from=optim.warmup_from,
                min_lr_ratio=optim.min_lr_ratio,
            )

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        if self.recipe.trainer.channels_last:
            self.objective.to(memory_format=torch.channels_last)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["advcl_rng_state"] = capture_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("recipe")
        if saved is None:
            raise ValueError("this checkpoint was not written by advcl pretrain (no recipe in its hyper-parameters)")
        check_same_setup(saved, self.hparams["recipe"], checkpoint.get("advcl_path", "checkpoint"))
        if "advcl_rng_state" in checkpoint:
            restore_rng_state(checkpoint["advcl_rng_state"])


class NumberedSnapshots(Callback):
    """Keep ``epoch-NNNN.ckpt`` every ``every`` epochs (``last.ckpt`` is rewritten every epoch)."""

    def __init__(self, directory: Path, every: int) -> None:
        self.directory, self.every = Path(directory), every

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = trainer.current_epoch + 1
        if self.every > 0 and done % self.every == 0:
            trainer.save_checkpoint(self.directory / f"epoch-{done:04d}.ckpt")


def _tuples(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def export_encoder(module: AdvCLPretrainModule, path: str | Path, route: str | None = None) -> Path:
    """Save the backbone with ordinary BatchNorm holding ``route`` (default: the method's
    downstream route, ``pgd`` for adversarial methods) as a self-describing state dict."""
    route = route or module.method.downstream_route
    backbone = export_bn_route(module.objective.backbone, route)
    payload = {
        "format": ENCODER_FORMAT,
        "arch": module.recipe.model.arch,
        "width": module.recipe.model.width,
        "feature_dim": module.objective.feature_dim,
        "route": route,
        "method": module.recipe.method,
        "recipe": module.recipe.name,
        "state_dict": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def trainer_kwargs(recipe: Recipe) -> dict[str, Any]:
    """Lightning ``Trainer`` arguments shared by pretraining and finetuning.

    Batch norm is synchronised across processes (``SyncBatchNorm``, every route of the routed
    layers) when there are several GPUs; PyTorch's SyncBatchNorm has no CPU implementation, so
    CPU processes normalise their own batches (a warning says so).
    """
    config = recipe.trainer
    devices = config.devices
    several = (isinstance(devices, int) and devices > 1) or (isinstance(devices, list) and len(devices) > 1)
    distributed = several or config.num_nodes > 1
    on_gpu = config.accelerator in ("gpu", "cuda") or (config.accelerator == "auto" and torch.cuda.is_available())
    sync = config.sync_batchnorm and distributed and on_gpu
    if config.sync_batchnorm and distributed and not on_gpu:
        warnings.warn(
            "SyncBatchNorm needs GPUs: with several CPU processes each one normalises its own batch", stacklevel=2
        )
    return {
        "accelerator": config.accelerator,
        "devices": devices,
        "num_nodes": config.num_nodes,
        "strategy": config.strategy,
        "precision": config.precision,
        "sync_batchnorm": sync,
    }


def _resume_path(recipe: Recipe) -> Path | None:
    if recipe.resume is None or recipe.resume == "never":
        return None
    if recipe.resume == "auto":
        last = recipe.run_dir / "checkpoints" / "last.ckpt"
        return last if last.is_file() else None
    path = Path(recipe.resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint {path} does not exist")
    return path


def pretrain(recipe: Recipe, progress: bool = True) -> dict[str, Any]:
    """Pretrain as the recipe says; write checkpoints, logs and (when done) ``encoder.pt``.

    Returns a summary dict (also written to ``<run dir>/pretrain.json``).
    """
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    run_dir = recipe.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))

    module = AdvCLPretrainModule(recipe.to_dict())
    dataset, labels = pretraining_data(recipe.data, recipe.pseudo_labels, module.pseudo_label_ks or None)
    module.set_pseudo_labels(labels)
    batch_size = recipe.optim.batch_size
    if len(dataset) < batch_size:
        raise ValueError(f"the training set has {len(dataset)} images, fewer than one batch of {batch_size}")
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSeededSampler(len(dataset), recipe.seed),
        drop_last=True,  # equal batches on every process (global negatives need equal shapes)
        num_workers=recipe.data.num_workers,
        persistent_workers=recipe.data.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    checkpoints = run_dir / "checkpoints"
    callbacks = [
        ModelCheckpoint(dirpath=checkpoints, filename="last", every_n_epochs=1, enable_version_counter=False),
        NumberedSnapshots(checkpoints, recipe.trainer.save_every_n_epochs),
    ]
    max_epochs = min(recipe.trainer.max_epochs or recipe.optim.epochs, recipe.optim.epochs)
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=CSVLogger(str(run_dir), name="logs"),  # a new version per session: resumed runs keep old logs
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=recipe.trainer.log_every_n_steps,
        num_sanity_val_steps=0,
        limit_train_batches=recipe.trainer.limit_train_batches,
        **trainer_kwargs(recipe),
    )
    resume = _resume_path(recipe)
    if resume is not None:
        print(f"resuming from {resume}")
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(resume) if resume else None)
    summary = {
        "method": recipe.method,
        "epochs_done": trainer.current_epoch,
        "epochs_planned": recipe.optim.epochs,
        "steps": trainer.global_step,
        "seconds_this_session": time.perf_counter() - started,
        "train_images": len(dataset),
        "final_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "checkpoint": str(checkpoints / "last.ckpt"),
    }
    if trainer.current_epoch >= recipe.optim.epochs and trainer.is_global_zero:
        summary["encoder"] = str(export_encoder(module, run_dir / "encoder.pt"))
    elif trainer.is_global_zero:
        print(f"stopped after {trainer.current_epoch}/{recipe.optim.epochs} epochs; run the same command to continue")
    if trainer.is_global_zero:
        (run_dir / "pretrain.json").write_text(json.dumps(summary, indent=2))
    return summary
