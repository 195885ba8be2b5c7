"""Lightning pieces of the lab: the pretraining module, checkpoint I/O, callbacks and Trainer arguments.

The module trains the objective the core builds (:func:`advcl_plugin.core.methods.build_objective`);
checkpoints are written atomically and hold the random-generator states, so that a resumed run
reaches the uninterrupted run's weights.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.plugins.layer_sync import LayerSync

from advcl_plugin._io import atomic_torch_save
from advcl_plugin._platform import compile_backbone, cpu_has_native_bf16
from advcl_plugin.app.data import target_image_size
from advcl_plugin.app.processes import local_rank
from advcl_plugin.app.recipe import Recipe, TrainerConfig, load_recipe
from advcl_plugin.app.recipe_files import flat_keys
from advcl_plugin.app.schedule import lr_at, scaled_lr_factor
from advcl_plugin.core.objective import AdvCLObjective
from advcl_plugin.core.resnet import build_backbone
from advcl_plugin.core.routed_bn import routed_layer_sync
from advcl_plugin.data.device_views import DeviceAdvCLViews

__all__ = [
    "AdvCLPretrainModule",
    "AtomicCheckpointIO",
    "NumberedSnapshots",
    "RoutedLayerSync",
    "capture_rng_state",
    "check_same_setup",
    "restore_rng_state",
    "trainer_kwargs",
]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it, so that a run killed while saving
    never leaves a truncated ``last.ckpt`` behind; reads checkpoints as data (``weights_only``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        from advcl_plugin.app.artifacts import read_checkpoint

        return read_checkpoint(path)


#: Lightning's ``sync_batchnorm`` for routed BN (every route of every routed layer synchronised)
RoutedLayerSync = routed_layer_sync(LayerSync)


def capture_rng_state() -> dict[str, Any]:
    """Random states of torch, numpy and python as tensors and plain values (loadable with
    ``torch.load(weights_only=True)``)."""
    kind, keys, position, has_gauss, cached = cast(tuple[str, Any, int, int, float], np.random.get_state())
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_from_ranks(value: Any) -> list[Any]:
    """``value`` of every process of a DDP run, in rank order (``[value]`` with one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def rank_rng_state(saved: dict[str, Any], rank: int) -> dict[str, Any]:
    """The random state of process ``rank`` from a checkpoint (checkpoints of advcl-plugin 0.1 hold one state,
    rank 0's, for every process)."""
    if "ranks" not in saved:
        return saved
    states = saved["ranks"]
    if rank >= len(states):
        raise ValueError(
            f"the checkpoint holds the random states of {len(states)} process(es), this is process {rank}: resume "
            "with as many devices as the run was trained on"
        )
    return states[rank]


#: recipe keys that do not change the training trajectory (they may differ when a run is resumed)
_FREE_KEYS = (
    "name", "output_dir", "resume", "finetune", "evaluate", "data.num_workers", "data.root", "data.data_dir",
    "data.download", "trainer.max_epochs", "trainer.save_every_n_epochs", "trainer.log_every_n_steps",
    "trainer.accelerator",
)  # fmt: skip


def check_same_setup(saved: dict[str, Any], current: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse to resume a run from a checkpoint whose settings would give another trajectory (method,
    network, data, seed, optimiser, schedule, precision ...), naming every difference and the ways out."""
    old, new = (flat_keys(tree, leaves=("method_kwargs",)) for tree in (saved, current))
    free = tuple(f"{key}." for key in _FREE_KEYS)
    different = {
        key: (old.get(key), new.get(key))
        for key in sorted(set(old) | set(new))
        if key not in _FREE_KEYS and not key.startswith(free) and old.get(key) != new.get(key)
    }
    if different:
        details = "; ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, (a, b) in different.items())
        raise ValueError(
            f"{path} was trained with other settings ({details}); resuming would not continue the same run. "
            "Run with the checkpoint's settings, start over with resume=never, or pick another name"
        )


class AdvCLPretrainModule(pl.LightningModule):
    """Lightning module training the objective of a recipe's method (AdvCL or a baseline).

    Args:
        recipe: the validated :class:`~advcl_plugin.app.recipe.Recipe`, used as it is (its ``to_dict()`` is
            saved in the checkpoint's hyper-parameters); a dict (such hyper-parameters) is read as a recipe.

    Batches are ``([tau1, tau2, x_orig], label, index)`` (with ``data.views: device``:
    ``(uint8 images, label, index)``, the views made here); the pseudo labels of a batch are
    looked up by index in the tensor given to :meth:`set_pseudo_labels`.
    """

    def __init__(self, recipe: Recipe | dict[str, Any]) -> None:
        super().__init__()
        self.recipe: Recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        self.save_hyperparameters({"recipe": self.recipe.to_dict()})
        config = self.recipe.objective_config()
        backbone = build_backbone(self.recipe.model.arch, self.recipe.model.width)
        # global negatives under DDP (no effect on one process)
        self.objective = AdvCLObjective(backbone, config, gather_distributed=True)
        if self.recipe.trainer.channels_last:  # before Lightning moves and DDP wraps the module (gradient buckets)
            self.objective.to(memory_format=torch.channels_last)
        if self.recipe.trainer.compile:
            compile_backbone(self.objective.backbone)
        self.device_views = (
            DeviceAdvCLViews(target_image_size(self.recipe.data)) if self.recipe.data.views == "device" else None
        )
        self.register_buffer("pseudo_labels", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        self._nonfinite_steps: torch.Tensor | None = None

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

    def views_on_device(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``data.views: device``: the three views of a uint8 batch, drawn from a generator keyed by
        (seed, step, process), so that a resumed run draws the same views."""
        assert self.device_views is not None
        generator = torch.Generator(device=images.device)
        generator.manual_seed((self.recipe.seed * 1_000_003 + self.global_step) * 1_009 + self.global_rank)
        return self.device_views(images, generator)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.device_views is not None:
            images, _, index = batch
            tau1, tau2, x_orig = self.views_on_device(images)
        else:
            (tau1, tau2, x_orig), _, index = batch
        labels = None
        if self.pseudo_label_ks:
            if self.pseudo_labels.numel() == 0:
                raise RuntimeError("pseudo labels were not set: call set_pseudo_labels() before training")
            labels = self.pseudo_labels[index]
        if self.recipe.trainer.channels_last:
            tau1, tau2, x_orig = (t.contiguous(memory_format=torch.channels_last) for t in (tau1, tau2, x_orig))
        skip_attack = self.recipe.attack_every > 1 and batch_idx % self.recipe.attack_every != 0
        out = self.objective(x_orig, tau1, tau2, labels, steps=0 if skip_attack else None)
        self._check_loss(out.loss, batch_idx)
        logs = dict(out.logs)
        batch_size = x_orig.shape[0]
        # per step (every log_every_n_steps, this process) and as epoch means over all processes ("..._epoch"
        # columns of metrics.csv): the processes' values are reduced once per epoch, not at every step
        for name, value in {"loss": logs.pop("loss"), **{f"train/{k}": v for k, v in logs.items()}}.items():
            self.log(name, value, prog_bar=name == "loss", batch_size=batch_size, on_step=True, on_epoch=False)
            self.log(f"{name}_epoch", value, batch_size=batch_size, on_step=False, on_epoch=True, sync_dist=True)
        return out.loss

    def _check_loss(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop on a NaN or infinite training loss without a host-device synchronisation at every step: the
        steps' finiteness is collected on the device and read every ``log_every_n_steps`` steps and at the
        last batch of each epoch, before the epoch's checkpoint is written (so no checkpoint holds it)."""
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite_steps = bad.int() if self._nonfinite_steps is None else self._nonfinite_steps + bad.int()
        every = max(1, self.recipe.trainer.log_every_n_steps)
        trainer = self._trainer
        last = trainer is not None and batch_idx + 1 >= trainer.num_training_batches
        if (batch_idx + 1) % every != 0 and not last:
            return
        steps = self._nonfinite_steps
        if trainer is not None:  # every process stops together (a sum over processes)
            steps = trainer.strategy.reduce(steps.float(), reduce_op="sum")
        count, self._nonfinite_steps = int(steps), None
        if count:
            raise FloatingPointError(
                f"the training loss became NaN or infinite at {count} of the steps up to epoch {self.current_epoch}, "
                f"step {self.global_step} (a learning rate too high for this batch size?); training stopped, the last "
                "good checkpoint is kept (checkpoints/last.ckpt)"
            )

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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # every process's random state (each rank draws its own attack starts and views), gathered so that a
        # resumed DDP run gives each rank its own state back
        checkpoint["advcl_rng_state"] = {"ranks": gather_from_ranks(capture_rng_state())}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("recipe")
        if saved is None:
            raise ValueError("this checkpoint was not written by advcl pretrain (no recipe in its hyper-parameters)")
        check_same_setup(saved, self.hparams["recipe"], checkpoint.get("advcl_path", "checkpoint"))
        if "advcl_rng_state" in checkpoint:
            restore_rng_state(rank_rng_state(checkpoint["advcl_rng_state"], self.global_rank))


class NumberedSnapshots(Callback):
    """Keep ``epoch-NNNN.ckpt`` every ``every`` epochs (``last.ckpt`` is rewritten every epoch)."""

    def __init__(self, directory: Path, every: int) -> None:
        self.directory, self.every = Path(directory), every

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = trainer.current_epoch + 1
        if self.every > 0 and done % self.every == 0:
            # a full snapshot (optimizer, loops, RNG) that resumes exactly; saying so keeps Lightning from logging
            # "`weights_only` was not set", which reads like unsafe loading (loading is weights-only, see above)
            trainer.save_checkpoint(self.directory / f"epoch-{done:04d}.ckpt", weights_only=False)


def stage_device(trainer: TrainerConfig) -> torch.device:
    """The device a stage that runs outside Lightning (evaluation, PGD-20, AutoAttack) uses for a recipe's
    ``trainer`` section: the CPU for ``accelerator: cpu`` or without a GPU; otherwise the GPU this process
    trains on (in a DDP run, the one of its local rank; the first of a ``devices`` list)."""
    accelerator = str(trainer.accelerator)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator={accelerator} but PyTorch sees no GPU here; use trainer.accelerator=cpu")
    if accelerator not in ("auto", "gpu", "cuda") or not torch.cuda.is_available():
        return torch.device("cpu")
    devices = trainer.devices
    if isinstance(devices, str) and devices.replace(",", "").replace(" ", "").isdigit() and "," in devices:
        devices = [int(d) for d in devices.split(",") if d.strip()]  # Lightning's "0,1": device ids
    index = local_rank()
    if isinstance(devices, (list, tuple)) and devices:
        return torch.device("cuda", int(devices[min(index, len(devices) - 1)]))
    return torch.device("cuda", index)


def trainer_kwargs(recipe: Recipe) -> dict[str, Any]:
    """Lightning ``Trainer`` arguments shared by pretraining and finetuning.

    Batch norm is synchronised across processes when there are several GPUs, every route of the
    routed layers included (:data:`RoutedLayerSync`); PyTorch's SyncBatchNorm has no CPU
    implementation, so CPU processes normalise their own batches (a warning says so).
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
    if not on_gpu and str(config.precision).startswith("bf16") and not cpu_has_native_bf16():
        warnings.warn(
            f"trainer.precision={config.precision} on a CPU without bf16 instructions (avx512_bf16/AMX): bf16 autocast "
            "is emulated there, about 12x slower than fp32 on a 2-core AVX2 VM (docs/reproducibility/performance.md); "
            "trainer.precision=32-true is faster on this machine",
            stacklevel=2,
        )
    return {
        "accelerator": config.accelerator,
        "devices": devices,
        "num_nodes": config.num_nodes,
        "strategy": config.strategy,
        "precision": config.precision,
        "deterministic": config.deterministic,
        "plugins": [AtomicCheckpointIO(), *([RoutedLayerSync()] if sync else [])],
    }
