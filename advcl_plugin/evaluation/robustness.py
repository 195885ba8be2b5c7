"""Robust accuracy of a classifier on [0, 1] pixels: SA, RA (PGD), AA (AutoAttack), sweeps.

RA uses PGD with random start on the summed cross-entropy (the authors' evaluation: 20 steps
of 2/255 at eps 8/255); AA is the ``standard`` AutoAttack of Croce & Hein (``pyautoattack``).
Metrics are computed on N evenly spaced images of a loader (deterministic), and SA and RA are
also reported on the AutoAttack subset so that ``AA <= RA <= SA`` can be checked on the same
images.

Examples:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from advcl_plugin.evaluation.robustness import pgd_accuracy
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    >>> loader = DataLoader(TensorDataset(torch.rand(16, 3, 8, 8), torch.randint(0, 4, (16,))), batch_size=8)
    >>> clean, robust = pgd_accuracy(model, loader, eps=8 / 255, steps=5, step_size=2 / 255, progress=False)
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from advcl_plugin.core.attack import check_pixel_range, pgd_linf

__all__ = ["autoattack_accuracy", "evaluation_subset", "pgd_accuracy", "robustness_metrics"]


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def evaluation_subset(loader: DataLoader, count: int | None) -> DataLoader:
    """A loader over ``count`` evenly spaced samples of ``loader``'s dataset (all when ``None``).

    Evenly spaced rather than the first N: deterministic, and representative also for datasets
    stored class by class (ImageFolder); the same ``count`` always gives the same images.
    """
    dataset = loader.dataset
    size = len(dataset)  # type: ignore[arg-type]
    if count is None or count >= size:
        return loader
    if count <= 0:
        raise ValueError(f"the number of evaluation samples must be positive, got {count}")
    indices = sorted({int(i) for i in torch.linspace(0, size - 1, count).round().tolist()})
    return DataLoader(Subset(dataset, indices), batch_size=loader.batch_size, num_workers=loader.num_workers)


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
    """(clean accuracy, PGD accuracy) of ``model`` (put in eval mode) over ``loader``."""
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
    if total == 0:
        raise ValueError("the evaluation loader is empty")
    return clean / total, robust / total


def autoattack_accuracy(
    model: nn.Module, loader: DataLoader, eps: float, version: str = "standard", seed: int = 0, progress: bool = True
) -> dict[str, float]:
    """Robust accuracy under AutoAttack (``pyautoattack``); progress is logged to stderr."""
    from advcl_plugin._optional import require

    AutoAttack = require("pyautoattack", "eval").AutoAttack

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
    # a count over the images (float64), not a float32 mean: AA compares exactly with RA on the same images
    return {"aa": int((predictions == targets).sum()) / len(targets), "aa_max_perturbation": linf}


def robustness_metrics(
    model: nn.Module,
    loader: DataLoader,
    *,
    eps: float = 8 / 255,
    step_size: float = 2 / 255,
    pgd_steps: int = 20,
    samples: int | None = None,
    aa_samples: int | None = 1000,
    aa_version: str = "standard",
    eps_sweep: Sequence[float] = (2 / 255, 4 / 255, 8 / 255, 16 / 255),
    steps_sweep: Sequence[int] = (1, 5, 10, 20, 50),
    sweep_samples: int | None = 500,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """SA and RA on ``samples`` test images, AA on ``aa_samples`` (0 skips it), and RA against eps and
    against the number of PGD steps on ``sweep_samples`` (each an evenly spaced subset, see
    :func:`evaluation_subset`)."""
    results: dict[str, Any] = {"eps": eps, "pgd_steps": pgd_steps, "step_size": step_size}
    timings: dict[str, float] = {}

    started = time.perf_counter()
    main = evaluation_subset(loader, samples)
    results["sa"], results["ra"] = pgd_accuracy(model, main, eps, pgd_steps, step_size, seed, progress, "SA/RA")
    results["samples"] = len(main.dataset)  # type: ignore[arg-type]
    timings["sa_ra"] = time.perf_counter() - started

    if aa_samples != 0:
        started = time.perf_counter()
        subset = evaluation_subset(loader, aa_samples)
        results["aa_samples"] = len(subset.dataset)  # type: ignore[arg-type]
        results["sa_aa_subset"], results["ra_aa_subset"] = pgd_accuracy(
            model, subset, eps, pgd_steps, step_size, seed, progress, "RA (AA subset)"
        )
        results.update(autoattack_accuracy(model, subset, eps, aa_version, seed, progress))
        timings["aa"] = time.perf_counter() - started

    if eps_sweep or steps_sweep:
        started = time.perf_counter()
        sweep = evaluation_subset(loader, sweep_samples)
        results["sweep_samples"] = len(sweep.dataset)  # type: ignore[arg-type]
        results["ra_vs_eps"] = {
            f"{e * 255:g}/255": pgd_accuracy(
                model, sweep, e, pgd_steps, step_size, seed, progress, f"eps {e * 255:g}/255"
            )[1]
            for e in eps_sweep
        }
        results["ra_vs_steps"] = {
            str(k): pgd_accuracy(model, sweep, eps, k, step_size, seed, progress, f"PGD-{k}")[1] for k in steps_sweep
        }
        timings["sweeps"] = time.perf_counter() - started
    results["seconds"] = timings
    return results
