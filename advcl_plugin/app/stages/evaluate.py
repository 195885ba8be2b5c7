"""``advcl evaluate``: a finetuned classifier of a run measured with ``advcl_plugin.evaluation.robustness`` on the
test split of the recipe's evaluation data, written as JSON (and test features for the t-SNE plot)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from advcl_plugin._io import atomic_savez
from advcl_plugin.app.artifacts import load_classifier, write_record
from advcl_plugin.app.data import evaluation_loader, load_split
from advcl_plugin.app.lightning import stage_device
from advcl_plugin.app.processes import barrier, is_global_zero_process
from advcl_plugin.app.protocols import protocol_deviations
from advcl_plugin.app.recipe import EvalConfig, Recipe
from advcl_plugin.app.rundir import protocol_tag, run_directory_lock
from advcl_plugin.evaluation.robustness import evaluation_subset, robustness_metrics

__all__ = ["encoder_features", "evaluate", "evaluate_classifier"]


def evaluate_classifier(model: nn.Module, loader: DataLoader, config: EvalConfig, progress: bool = True) -> dict:
    """All metrics of :class:`EvalConfig` for ``model`` on ``loader`` (test images, in order)."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("data", "tsne_samples", "batch_size")}
    return robustness_metrics(model, loader, progress=progress, **settings)


def encoder_features(model: nn.Module, loader: DataLoader, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Encoder features and labels of ``count`` evenly spaced images (for the t-SNE plot)."""
    backbone = getattr(model, "backbone", model)
    backbone.eval()
    device = next(backbone.parameters()).device
    features, labels = [], []
    with torch.no_grad():
        for images, targets in evaluation_subset(loader, count):
            features.append(backbone(images.to(device)).flatten(1).cpu())
            labels.append(targets)
    return torch.cat(features).numpy(), torch.cat(labels).numpy()


def evaluate(
    recipe: Recipe,
    mode: str = "slf",
    classifier_path: str | Path | None = None,
    output_path: str | Path | None = None,
    progress: bool = True,
    record_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``<run dir>/finetune-<mode>/classifier.pt`` (or ``classifier_path``) on the test split of
    the recipe's evaluation data; writes ``<run dir>/eval-<mode>.json`` and test features for t-SNE
    (``finetune-robustssl-<mode>`` and ``eval-robustssl-<mode>.json`` under ``protocol: robustssl``).
    ``record_fields`` are added to the record (a study names its arm and seed there)."""
    tag = protocol_tag(recipe.protocol)
    classifier_path = Path(classifier_path or recipe.run_dir / f"finetune-{tag}{mode}" / "classifier.pt")
    if not classifier_path.is_file():
        hint = f" --protocol {recipe.protocol}" if tag else ""
        raise FileNotFoundError(f"no classifier at {classifier_path}: run `advcl finetune --mode {mode}{hint}` first")
    model, info = load_classifier(classifier_path)
    finetuned_under = info.get("protocol", "authors")
    if finetuned_under != recipe.protocol:
        raise ValueError(
            f"{classifier_path} was finetuned under the {finetuned_under!r} protocol; evaluate it with "
            f"--protocol {finetuned_under} (a report names one protocol per number)"
        )
    model.to(stage_device(recipe.trainer)).eval()
    data = recipe.eval_data()
    test = load_split(data, "test")
    if test.num_classes != info["num_classes"]:
        raise ValueError(
            f"the classifier predicts {info['num_classes']} classes but {test.name} has {test.num_classes}"
        )
    loader = evaluation_loader(test, int(info["image_size"]), recipe.evaluate.batch_size, data.num_workers)
    deviations = dict(info.get("protocol_deviations", {}))
    deviations |= {k: v for k, v in protocol_deviations(recipe, ()).items() if k.startswith("evaluate.")}
    output_path = Path(output_path or recipe.run_dir / f"eval-{tag}{info['mode']}.json")
    with run_directory_lock(recipe.run_dir):
        features_path = output_path.with_name(f"features-{tag}{info['mode']}.npz")
        results = _measure(recipe, model, info, loader, test, classifier_path, deviations, features_path, progress)
        results |= record_fields or {}
        if is_global_zero_process():  # in a DDP study every process evaluates on its own device; rank 0 writes
            write_record(output_path, results)
    barrier()
    return results


def _measure(
    recipe: Recipe,
    model: nn.Module,
    info: dict[str, Any],
    loader: DataLoader,
    test: Any,
    classifier_path: Path,
    deviations: dict[str, Any],
    features_path: Path,
    progress: bool,
) -> dict[str, Any]:
    results = {
        "method": info["encoder"].get("method"),
        "run": recipe.name,
        "mode": info["mode"],
        "protocol": recipe.protocol,
        "protocol_deviations": deviations,
        "selection": info["selection"],
        "head_init": info.get("head_init", "default"),
        "dataset": test.name,
        "test_split_images": len(test),
        "exact_pixels": "jpeg" not in test.name.lower(),
        "train_images": info.get("train_images"),
        "classifier": str(classifier_path),
        "encoder": info["encoder"].get("source"),
        **evaluate_classifier(model, loader, recipe.evaluate, progress),
    }
    if recipe.evaluate.tsne_samples > 0:
        features, labels = encoder_features(model, loader, recipe.evaluate.tsne_samples)
        if is_global_zero_process():
            atomic_savez(features_path, features=features, labels=labels)
        results["features"] = features_path.name
    return results
