"""``advcl finetune``: finetuning with lightly's benchmarking harness: SLF, ALF and AFF.

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

import dataclasses
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms as T

from advcl_plugin._io import atomic_write_json, read_json
from advcl_plugin.app.artifacts import RobustClassifier, load_encoder, read_checkpoint, save_classifier, write_record
from advcl_plugin.app.data import load_split, target_image_size
from advcl_plugin.app.lightning import trainer_kwargs
from advcl_plugin.app.processes import barrier
from advcl_plugin.app.protocols import protocol_deviations
from advcl_plugin.app.recipe import FinetuneConfig, Recipe
from advcl_plugin.app.rundir import protocol_tag, run_directory_lock
from advcl_plugin.lightly.classifiers import AdversarialFinetuneClassifier, RobustLinearClassifier

__all__ = ["finetune", "finetune_transform"]

MODES = ("slf", "alf", "aff")


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
    encoder_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Finetune the encoder of a run in ``mode`` ("slf", "alf", "aff"); writes ``classifier.pt``.

    Args:
        recipe: the run's recipe (finetuning data and settings, and ``recipe.protocol``, come from it).
        mode: finetuning mode.
        encoder_path: encoder to finetune; default ``<run dir>/encoder.pt``.  Any format
            :func:`~advcl_plugin.app.artifacts.load_encoder` reads (``encoder_options`` are passed to it:
            ``arch``, ``width``, ``route``, ``source_format``, ``input_normalization``).
        output_dir: default ``<run dir>/finetune-<mode>`` (``finetune-robustssl-<mode>`` under that protocol).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    config: FinetuneConfig = getattr(recipe.finetune, mode)
    encoder_path = Path(encoder_path or recipe.run_dir / "encoder.pt")
    if not encoder_path.is_file():
        raise FileNotFoundError(f"no encoder at {encoder_path}: run `advcl pretrain` first or pass --encoder")
    output_dir = Path(output_dir or recipe.run_dir / f"finetune-{protocol_tag(recipe.protocol)}{mode}")
    pl.seed_everything(recipe.seed, workers=True, verbose=False)

    backbone, encoder_info = load_encoder(encoder_path, **(encoder_options or {}))
    data = recipe.finetune_data()
    train = load_split(data, "train")
    with run_directory_lock(recipe.run_dir):
        return _finetune(recipe, mode, config, backbone, encoder_info, data, train, output_dir, progress)


def _finetune(
    recipe: Recipe,
    mode: str,
    config: FinetuneConfig,
    backbone: Any,
    encoder_info: dict[str, Any],
    data: Any,
    train: Any,
    output_dir: Path,
    progress: bool,
) -> dict[str, Any]:
    image_size = target_image_size(recipe.data)  # the size the encoder was pretrained at
    augment = finetune_transform(image_size, train.image_size)
    plain = finetune_transform(image_size, train.image_size).transforms[:1] if image_size != train.image_size else []
    evaluation = T.Compose([*plain, T.ToTensor()])
    val_loader = None
    pin = torch.cuda.is_available()
    if config.val_fraction > 0:
        order = np.random.default_rng(recipe.seed).permutation(len(train))
        held_out = round(config.val_fraction * len(train))
        val = train.subset(np.sort(order[:held_out])).with_transform(evaluation)
        train = train.subset(np.sort(order[held_out:]))
        val_loader = DataLoader(val, batch_size=config.batch_size, num_workers=data.num_workers, pin_memory=pin)
    train = train.with_transform(augment)
    loader = DataLoader(
        train,
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=data.num_workers,
        persistent_workers=data.num_workers > 0,
        drop_last=False,
        pin_memory=pin,
    )
    feature_dim, num_classes = int(encoder_info["feature_dim"]), train.num_classes
    schedule = config.schedule()
    if mode == "aff":
        module: pl.LightningModule = AdversarialFinetuneClassifier(backbone, feature_dim, num_classes, schedule)
    else:
        module = RobustLinearClassifier(backbone, feature_dim, num_classes, schedule, adversarial=mode == "alf")

    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="last", enable_version_counter=False)
    ]
    best: ModelCheckpoint | None = None
    if val_loader is not None:
        best = ModelCheckpoint(
            dirpath=output_dir / "checkpoints", filename="best", monitor="val_robust_top1", mode="max"
        )
        callbacks.append(best)
    trainer = pl.Trainer(
        max_epochs=config.epochs,
        callbacks=callbacks,
        logger=CSVLogger(str(output_dir), name="logs"),
        enable_progress_bar=progress,
        enable_model_summary=False,
        inference_mode=False,  # robust validation needs input gradients
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, len(loader))),
        **trainer_kwargs(recipe),
    )
    last = output_dir / "checkpoints" / "last.ckpt"
    resume = last if recipe.resume == "auto" and last.is_file() else None
    setup = {
        "mode": mode,
        "protocol": recipe.protocol,
        "seed": recipe.seed,
        "encoder": encoder_info.get("source"),
        "data": {k: v for k, v in dataclasses.asdict(data).items() if k not in ("num_workers", "root", "data_dir")},
        "finetune": dataclasses.asdict(config),
        "precision": recipe.trainer.precision,
    }
    setup_path = output_dir / "finetune_setup.json"
    if resume is not None and setup_path.is_file():
        saved = read_json(setup_path, remedy="delete it, or finetune again with resume=never")
        different = {key: (saved.get(key), value) for key, value in setup.items() if saved.get(key) != value}
        if different:
            details = "; ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, (a, b) in different.items())
            raise ValueError(
                f"{last} was finetuned with other settings ({details}); resuming would not continue the same run. "
                "Finetune with the checkpoint's settings, or start over with resume=never"
            )
    if trainer.is_global_zero:
        atomic_write_json(setup_path, setup)
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=val_loader, ckpt_path=str(resume) if resume else None)
    deviations = {k: v for k, v in protocol_deviations(recipe, (mode,)).items() if k.startswith("finetune.")}
    selection = "last epoch"
    if best is not None and best.best_model_path:
        state = read_checkpoint(best.best_model_path)["state_dict"]
        module.load_state_dict(state)
        selection = f"best held-out PGD-{config.val_attack_steps} accuracy ({config.val_fraction:.0%} of train)"
    encoder, head = cast(nn.Module, module.model), cast(nn.Module, module.classification_head)
    classifier = RobustClassifier(encoder, feature_dim, num_classes)
    classifier.head.load_state_dict(head.state_dict())
    path = output_dir / "classifier.pt"
    summary = {
        "mode": mode,
        "protocol": recipe.protocol,
        "protocol_deviations": deviations,
        "classifier": str(path),
        "selection": selection,
        "head_init": config.head_init,
        "train_images": len(train),
        "seconds": time.perf_counter() - started,
        "final_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
    }
    if not trainer.is_global_zero:  # the other processes of a DDP run trained with rank 0, which writes
        barrier()
        return summary
    save_classifier(
        classifier,
        path,
        encoder_info,
        mode=mode,
        selection=selection,
        head_init=config.head_init,
        image_size=image_size,
        dataset=data.dataset,
        epochs=config.epochs,
        protocol=recipe.protocol,
        protocol_deviations=deviations,
        finetune_settings=dataclasses.asdict(config),
        train_images=len(train),
    )
    write_record(output_dir / "finetune.json", summary)
    barrier()
    return summary
