"""Robust evaluation of a finetuned classifier: SA, RA (PGD), AA (AutoAttack), eps and step sweeps.

All attacks are L-inf on [0, 1] pixels.  RA uses PGD with random start on the summed
cross-entropy (the authors' evaluation: 20 steps of 2/255 at eps 8/255); AA is the
``standard`` AutoAttack of Croce & Hein (``pyautoattack``).  Every metric is computed on
the first N test images (deterministic), and SA and RA are also reported on the
AutoAttack subset so that ``AA <= RA <= SA`` can be checked on the same images.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from advcl_plugin.config import EvalConfig, Recipe
from advcl_plugin.core.attack import check_pixel_range, pgd_linf
from advcl_plugin.training.data import evaluation_loader, load_split
from advcl_plugin.training.encoders import load_classifier

__all__ = ["autoattack_accuracy", "evaluate", "evaluate_classifier", "pgd_accuracy"]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def pgd_accuracy(
    model: nn.Module,
    loader: DataLoader,
    eps: float,
    steps: int,
    step_size: float,
    seed: int = 0,
    progress: bool = True,
    desc: str = "PGD",
) -> tuple[float, float]:
    """(clean accuracy, PGD accuracy) of ``model`` (eval mode) over ``loader``."""
    model.eval()
    device = _device(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    clean = robust = total = 0
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images, targets = images.to(device), targets.to(device)
        check_pixel_range(images, "evaluation images")
        with torch.no_grad():
            clean += int((model(images).argmax(1) == targets).sum())
        adversarial = pgd_linf(
            lambda z, t=targets: F.cross_entropy(model(z), t, reduction="sum"),
            images,
            eps,
            steps,
            step_size,
            generator=generator,
        )
        with torch.no_grad():
            robust += int((model(adversarial).argmax(1) == targets).sum())
        total += len(targets)
    return clean / total, robust / total


def autoattack_accuracy(
    model: nn.Module, loader: DataLoader, eps: float, version: str = "standard", seed: int = 0, progress: bool = True
) -> dict[str, float]:
    """Robust accuracy under AutoAttack (``pyautoattack``), with its per-attack progression."""
    from pyautoattack import AutoAttack

    model.eval()
    device = _device(model)
    images = torch.cat([batch[0] for batch in loader])
    targets = torch.cat([batch[1] for batch in loader])
    check_pixel_range(images, "evaluation images")
    attack = AutoAttack(model, eps=eps, norm="Linf", version=version, device=device, seed=seed)
    logger = logging.getLogger("auto-attack")
    handler = None
    if progress:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("AutoAttack: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        adversarial, _ = attack.run_standard_evaluation(images, targets, batch_size=loader.batch_size or 256)
    finally:
        if handler is not None:
            logger.removeHandler(handler)
    with torch.no_grad():
        predictions = torch.cat([model(chunk.to(device)).argmax(1).cpu() for chunk in adversarial.split(256)])
    linf = (adversarial - images).abs().flatten(1).max(1).values.max().item()
    return {"aa": float((predictions == targets).float().mean()), "aa_max_perturbation": linf}


def _first(loader: DataLoader, count: int | None) -> DataLoader:
    dataset = loader.dataset
    if count is None or count >= len(dataset):  # type: ignore[arg-type]
        return loader
    return DataLoader(Subset(dataset, range(count)), batch_size=loader.batch_size, num_workers=loader.num_workers)


def evaluate_classifier(model: nn.Module, loader: DataLoader, config: EvalConfig, progress: bool = True) -> dict:
    """All metrics of :class:`EvalConfig` for ``model`` on ``loader`` (test images, in order)."""
    results: dict[str, Any] = {"eps": config.eps, "pgd_steps": config.pgd_steps, "step_size": config.step_size}
    timings: dict[str, float] = {}

    started = time.perf_counter()
    main = _first(loader, config.samples)
    results["sa"], results["ra"] = pgd_accuracy(
        model, main, config.eps, config.pgd_steps, config.step_size, config.seed, progress, "SA/RA"
    )
    results["samples"] = len(main.dataset)  # type: ignore[arg-type]
    timings["sa_ra"] = time.perf_counter() - started

    if config.aa_samples != 0:
        started = time.perf_counter()
        subset = _first(loader, config.aa_samples)
        results["aa_samples"] = len(subset.dataset)  # type: ignore[arg-type]
        results["sa_aa_subset"], results["ra_aa_subset"] = pgd_accuracy(
            model, subset, config.eps, config.pgd_steps, config.step_size, config.seed, progress, "RA (AA subset)"
        )
        results.update(autoattack_accuracy(model, subset, config.eps, config.aa_version, config.seed, progress))
        timings["aa"] = time.perf_counter() - started

    if config.eps_sweep or config.steps_sweep:
        started = time.perf_counter()
        sweep = _first(loader, config.sweep_samples)
        results["sweep_samples"] = len(sweep.dataset)  # type: ignore[arg-type]
        results["ra_vs_eps"] = {
            f"{eps * 255:g}/255": pgd_accuracy(
                model, sweep, eps, config.pgd_steps, config.step_size, config.seed, progress, f"eps {eps * 255:g}/255"
            )[1]
            for eps in config.eps_sweep
        }
        results["ra_vs_steps"] = {
            str(steps): pgd_accuracy(
                model, sweep, config.eps, steps, config.step_size, config.seed, progress, f"PGD-{steps}"
            )[1]
            for steps in config.steps_sweep
        }
        timings["sweeps"] = time.perf_counter() - started
    results["seconds"] = timings
    return results


def encoder_features(model: nn.Module, loader: DataLoader, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Encoder features and labels of the first ``count`` images (for the t-SNE plot)."""
    backbone = getattr(model, "backbone", model)
    backbone.eval()
    device = _device(backbone)
    features, labels = [], []
    with torch.no_grad():
        for images, targets in _first(loader, count):
            features.append(backbone(images.to(device)).flatten(1).cpu())
            labels.append(targets)
    return torch.cat(features).numpy(), torch.cat(labels).numpy()


def evaluate(
    recipe: Recipe,
    mode: str = "slf",
    classifier_path: str | Path | None = None,
    output_path: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``<run dir>/finetune-<mode>/classifier.pt`` (or ``classifier_path``) on the test split of
    the recipe's evaluation data; writes ``<run dir>/eval-<mode>.json`` and test features for t-SNE."""
    classifier_path = Path(classifier_path or recipe.run_dir / f"finetune-{mode}" / "classifier.pt")
    if not classifier_path.is_file():
        raise FileNotFoundError(f"no classifier at {classifier_path}: run `advcl finetune --mode {mode}` first")
    model, info = load_classifier(classifier_path)
    device = torch.device("cuda" if torch.cuda.is_available() and recipe.trainer.accelerator != "cpu" else "cpu")
    model.to(device).eval()
    data = recipe.eval_data()
    test = load_split(data, "test")
    if test.num_classes != info["num_classes"]:
        raise ValueError(
            f"the classifier predicts {info['num_classes']} classes but {test.name} has {test.num_classes}"
        )
    loader = evaluation_loader(test, int(info["image_size"]), recipe.evaluate.batch_size, data.num_workers)
    results = {
        "method": info["encoder"].get("method"),
        "run": recipe.name,
        "mode": info["mode"],
        "selection": info["selection"],
        "dataset": test.name,
        "classifier": str(classifier_path),
        **evaluate_classifier(model, loader, recipe.evaluate, progress),
    }
    output_path = Path(output_path or recipe.run_dir / f"eval-{info['mode']}.json")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    output_path.write_text(json.dumps(results, indent=2))
    if recipe.evaluate.tsne_samples > 0:
        features, labels = encoder_features(model, loader, recipe.evaluate.tsne_samples)
        np.savez(output_path.with_name(f"features-{info['mode']}.npz"), features=features, labels=labels)
    return results
