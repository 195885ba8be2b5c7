"""Command implementations: pseudo labels, export, and the end-to-end demo."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from advcl_plugin.config import DataConfig, Recipe, load_recipe
from advcl_plugin.core.clusterfit import PseudoLabels, cluster_pseudo_labels, compute_features
from advcl_plugin.data.transforms import eval_transform
from advcl_plugin.training.data import load_split
from advcl_plugin.training.encoders import ENCODER_FORMAT, load_encoder

__all__ = ["export", "make_pseudo_labels", "run_demo", "write_image_folder"]


def make_pseudo_labels(
    encoder: str | Path,
    data: DataConfig,
    ks: list[int],
    output: str | Path,
    *,
    arch: str | None = None,
    width: int = 64,
    route: str | None = None,
    image_size: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
) -> PseudoLabels:
    """ClusterFit: embed the train split of ``data`` with ``encoder`` and k-means its features per K."""
    backbone, info = load_encoder(encoder, arch=arch, width=width, route=route)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = load_split(data, "train")
    size = image_size or data.image_size
    dataset = dataset.with_transform(eval_transform(size if size and size != dataset.image_size else None))
    features = compute_features(backbone.to(device), dataset, batch_size=batch_size, progress=progress)
    labels = cluster_pseudo_labels(features, ks, seed=seed)
    description = (
        f"{info.get('method', 'external')} {info.get('arch')} ({Path(str(encoder)).name}, route {info.get('route')})"
    )
    result = PseudoLabels(
        labels, dataset=dataset.identity, num_samples=len(dataset), encoder=description, extra={"seed": seed}
    )
    result.save(output)
    return result


def write_image_folder(data: DataConfig, output: str | Path, train: int | None, test: int | None) -> dict[str, int]:
    """Write the first ``train`` / ``test`` images of a dataset as an ImageFolder (``train/``, ``val/``),
    e.g. for solo-learn's ``custom`` dataset. Returns the number of images written per split."""
    output = Path(output)
    written = {}
    for split, folder, count in (("train", "train", train), ("test", "val", test)):
        dataset = load_split(data, split)
        total = len(dataset) if count is None else min(count, len(dataset))
        names = dataset.class_names or [str(c) for c in range(dataset.num_classes)]
        for index in range(total):
            directory = output / folder / names[int(dataset.labels[index])]
            directory.mkdir(parents=True, exist_ok=True)
            dataset.image(index).save(directory / f"{index:05d}.png")
        written[folder] = total
    return written


def export(checkpoint: str | Path, output: str | Path, route: str | None = None, plain: bool = False) -> Path:
    """Write the encoder of a checkpoint with ordinary BatchNorm holding ``route``.

    ``plain=True`` writes only the state dict (torchvision/timm naming; for a width-64 CIFAR
    ResNet-18 it loads into ``torchvision_cifar_resnet18()``), otherwise a self-describing
    ``advcl-encoder`` file that ``advcl finetune --encoder`` and lightly's harness can use.
    """
    backbone, info = load_encoder(checkpoint, route=route)
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    payload: dict[str, Any] = state if plain else {**info, "format": ENCODER_FORMAT, "state_dict": state}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, output)
    return output


def run_demo(
    config: str = "demo",
    methods: list[str] | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain each method at the same budget, finetune (recipe's modes), evaluate, and report."""
    from advcl_plugin.report import build_report
    from advcl_plugin.training.evaluate import evaluate
    from advcl_plugin.training.finetune import finetune
    from advcl_plugin.training.pretrain import pretrain

    methods = methods or ["simclr", "acl", "advcl"]
    base = load_recipe(config, overrides)
    timings: dict[str, float] = {}
    eval_files = []
    for method in methods:
        recipe: Recipe = load_recipe(config, [*(overrides or []), f"method={method}", f"name={base.name}-{method}"])
        print(f"\n=== {method}: pretraining {recipe.optim.epochs} epoch(s) on {recipe.data.dataset} ===", flush=True)
        started = time.perf_counter()
        summary = pretrain(recipe, progress=progress)
        timings[f"{method} pretrain"] = time.perf_counter() - started
        if "encoder" not in summary:
            raise RuntimeError(f"{method} pretraining did not finish; run the demo again to continue")
        for mode in recipe.finetune.modes:
            print(f"=== {method}: {mode.upper()} finetuning ===", flush=True)
            started = time.perf_counter()
            finetune(recipe, mode, progress=progress)
            timings[f"{method} {mode}"] = time.perf_counter() - started
            print(f"=== {method}: evaluation ({mode.upper()}) ===", flush=True)
            started = time.perf_counter()
            result = evaluate(recipe, mode, progress=progress)
            timings[f"{method} evaluate {mode}"] = time.perf_counter() - started
            eval_files.append(recipe.run_dir / f"eval-{mode}.json")
            print(json.dumps({k: result[k] for k in ("sa", "ra", "aa") if k in result}), flush=True)
    started = time.perf_counter()
    report_dir = Path(base.output_dir) / f"{base.name}-report"
    report = build_report(eval_files, report_dir, timings)
    report["timings"]["report"] = time.perf_counter() - started
    print("\n" + report["markdown"])
    print(f"report: {report_dir / 'report.md'}, plots: {', '.join(report['plots'])}")
    return report
