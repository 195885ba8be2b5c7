"""``advcl pretrain``: AdvCL or a baseline with Lightning (``pytorch_lightning``, the trainer lightly uses).

Examples:
    >>> from advcl_plugin.app.recipe import load_recipe
    >>> from advcl_plugin.app.lightning import AdvCLPretrainModule
    >>> module = AdvCLPretrainModule(load_recipe("demo", ["method=simclr"]))
    >>> module.objective.config.attack
    'none'
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader

from advcl_plugin._io import atomic_write_text, check_weights
from advcl_plugin.app.artifacts import describe_encoder, load_encoder, read_checkpoint, save_encoder, write_record
from advcl_plugin.app.data import EpochSeededSampler, SeededSamples, pretraining_data
from advcl_plugin.app.lightning import AdvCLPretrainModule, NumberedSnapshots, check_same_setup, trainer_kwargs
from advcl_plugin.app.processes import barrier, is_global_zero_process
from advcl_plugin.app.recipe import Recipe
from advcl_plugin.app.rundir import check_run_name, run_directory_lock
from advcl_plugin.core.routed_bn import export_bn_route, load_clean_encoder

__all__ = ["export_encoder", "init_from_path", "pretrain", "warm_start_from"]


def export_encoder(module: AdvCLPretrainModule, path: str | Path, route: str | None = None) -> Path:
    """Save the backbone with ordinary BatchNorm holding ``route`` (default: the method's
    downstream route, ``pgd`` for adversarial methods) as a self-describing ``encoder.pt``."""
    route = route or module.objective.config.downstream_route
    recipe = module.recipe
    info = describe_encoder(
        recipe.model.arch, recipe.model.width, module.objective.feature_dim, route, recipe.method, recipe=recipe.name
    )
    return save_encoder(export_bn_route(module.objective.backbone, route), path, info)


def init_from_path(recipe: Recipe) -> Path:
    """The clean encoder ``model.init_from`` names: a file, or the name of a run in ``output_dir`` (its
    ``encoder.pt``)."""
    given = str(recipe.model.init_from)
    if Path(given).is_file():
        return Path(given)
    try:
        run = Path(recipe.output_dir) / check_run_name(given, "model.init_from") / "encoder.pt"
    except ValueError:
        run = None
    if run is not None and run.is_file():
        return run
    raise FileNotFoundError(
        f"model.init_from={given!r} is neither a file nor a finished run in {recipe.output_dir} (no encoder.pt)"
    )


def warm_start_from(recipe: Recipe, module: AdvCLPretrainModule) -> dict[str, Any]:
    """Load ``model.init_from`` (weights-only, strict, finite) into every BN route of the module's backbone;
    returns its description for the run record."""
    path = init_from_path(recipe)
    backbone, info = load_encoder(path, arch=recipe.model.arch, width=recipe.model.width)
    if (info.get("arch"), info.get("width")) != (recipe.model.arch, recipe.model.width):
        raise ValueError(
            f"model.init_from={path} holds a {info.get('arch')} of width {info.get('width')}; this run trains a "
            f"{recipe.model.arch} of width {recipe.model.width}"
        )
    load_clean_encoder(module.objective.backbone, backbone.state_dict(), source=f"model.init_from={path}")
    keys = ("method", "arch", "width", "route", "recipe", "source_format")
    return {"path": str(path), **{k: info[k] for k in keys if k in info}}


def _resume_path(recipe: Recipe) -> Path | None:
    if recipe.resume is None or recipe.resume == "never":
        return None
    if recipe.resume == "auto":
        last = recipe.run_dir / "checkpoints" / "last.ckpt"
        return last if last.is_file() else None
    return Path(recipe.resume)


def pretrain(recipe: Recipe, progress: bool = True) -> dict[str, Any]:
    """Pretrain as the recipe says; write checkpoints, logs and (when done) ``encoder.pt``.

    Everything that can be checked without training is checked before the run directory is
    touched (the recipe when it was read; here the checkpoint to resume, the data and the pseudo
    labels). The run directory is held by this process while it trains (a second process is
    refused). Returns a summary dict (also written to ``<run dir>/pretrain.json``).
    """
    with run_directory_lock(recipe.run_dir):
        return _pretrain(recipe, progress)


def _pretrain(recipe: Recipe, progress: bool) -> dict[str, Any]:
    resume = _resume_path(recipe)
    next_epoch = 0
    if resume is not None:
        try:
            payload = read_checkpoint(resume)
        except ValueError as error:
            older = sorted(resume.parent.glob("epoch-*.ckpt"))
            hint = f"resume from an older one: resume={older[-1]}" if older else "start over with resume=never"
            raise ValueError(f"{error}; {hint}") from None
        hyper_parameters = payload.get("hyper_parameters") if isinstance(payload, dict) else None
        saved = hyper_parameters.get("recipe") if isinstance(hyper_parameters, dict) else None
        if saved is None:
            raise ValueError(f"{resume} was not written by advcl pretrain (no recipe in its hyper-parameters)")
        next_epoch = int(payload.get("epoch", -1)) + 1
        check_same_setup(saved, recipe.to_dict(), resume)
        check_weights(payload.get("state_dict", {}), resume)
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    module = AdvCLPretrainModule(recipe)
    warm_start = warm_start_from(recipe, module) if resume is None and recipe.model.init_from else None
    dataset, labels = pretraining_data(recipe.data, recipe.pseudo_labels, module.pseudo_label_ks or None)
    module.set_pseudo_labels(labels)
    batch_size = recipe.optim.batch_size
    if len(dataset) < batch_size:
        raise ValueError(f"the training set has {len(dataset)} images, fewer than one batch of {batch_size}")

    run_dir = recipe.run_dir
    if is_global_zero_process():  # the other processes of a DDP run train, rank 0 writes
        atomic_write_text(run_dir / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    sampler = EpochSeededSampler(len(dataset), recipe.seed)
    # workers may draw the first epoch's order before Lightning sets the epoch: start where the checkpoint left off
    sampler.set_epoch(next_epoch)
    loader = DataLoader(
        SeededSamples(dataset, recipe.seed),
        batch_size=batch_size,
        sampler=sampler,
        generator=torch.Generator().manual_seed(recipe.seed),  # workers' seeds: not from the global RNG
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
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=recipe.trainer.log_every_n_steps,
        num_sanity_val_steps=0,
        limit_train_batches=recipe.trainer.limit_train_batches,
        **trainer_kwargs(recipe),
    )
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
        "finished": trainer.current_epoch >= recipe.optim.epochs,
    }
    if recipe.model.init_from:
        summary["init_from"] = warm_start or "resumed (the warm start was applied when the run began)"
    if summary["finished"] and trainer.is_global_zero:
        summary["encoder"] = str(export_encoder(module, run_dir / "encoder.pt"))
    elif trainer.is_global_zero:
        print(f"stopped after {trainer.current_epoch}/{recipe.optim.epochs} epochs; run the same command to continue")
    if trainer.is_global_zero:
        write_record(run_dir / "pretrain.json", summary)
    barrier()  # the other processes of a DDP run go on once encoder.pt is written (they read it to finetune)
    return summary
