"""``advcl bench --device-check``: one short, prepared measurement of a GPU (or, with ``--dry-run``, a
few seconds of the same code on a CPU), written as JSON and Markdown.

Four parts, each printed as it finishes:

1. **Training step** at width 64, batch 512: the authors'-loop stand-in (fp32), the optimised step
   (fp32), bf16 autocast + channels_last, and the same with ``torch.compile``; images/s, peak
   memory, share of the card's bf16 peak (:mod:`advcl_plugin.tools.bench`, interleaved rounds).
   Then the largest batch that fits (doubling from 512) for bf16 + channels_last.
2. **Data path**: AdvCL's three views (``AdvCLViews``: two strong crops + the original view) made
   from the real training images in one CPU process: views/s per data-loader worker, and how many
   workers the measured step rate needs; and the rate of the device-side views
   (``data.views: device``, :class:`~advcl_plugin.data.device_views.DeviceAdvCLViews`).
3. **Real pretraining** for a fixed time from the real data loader (the training set's JPEGs or
   arrays, AdvCL's views, ``num_workers`` workers): images/s and the share of each step spent
   waiting for data; then half as long with the views made on the device.
4. **AutoAttack throughput** (the authors' ``pyautoattack``, standard version) on test images of a
   randomly initialised width-64 encoder + linear head, each attack alone on every image, the
   labels being the model's own predictions so that every image is attacked.  A trained robust
   model keeps a fraction of the images for the later attacks; the JSON gives the projected time
   of the full standard AutoAttack for such a fraction.

Nothing here trains a useful model: it measures speed.  Dry mode (``--dry-run``) uses tiny sizes so
that the whole check runs end to end on a CPU in well under a minute (tested).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from advcl_plugin._io import atomic_write_text
from advcl_plugin.core.methods import build_config
from advcl_plugin.core.objective import AdvCLObjective
from advcl_plugin.core.resnet import build_backbone
from advcl_plugin.tools.bench import BenchConfig, StepConfig, format_table, run_bench

__all__ = ["DeviceCheckConfig", "run_device_check"]


@dataclass(frozen=True)
class DeviceCheckConfig:
    """Sizes of the check; :meth:`dry` gives the CPU smoke-test sizes."""

    device: str = "cuda"
    width: int = 64
    batch_size: int = 512
    max_batch_size: int = 8192
    rounds: int = 3
    warmup: int = 2
    dataset: str = "cifar10-jpeg-offline"
    data_dir: str | None = None
    num_workers: int = 16
    view_seconds: float = 10.0
    pretrain_seconds: float = 120.0
    aa_samples: int = 1000
    aa_batch_size: int = 500
    robust_fraction: float = 0.45  # for the projected full-AutoAttack time (AdvCL's AA is about 43 %)
    aa_smoke: bool = False  # dry mode: 2 iterations, 1 target class, 10 Square queries (not AutoAttack's settings)
    compile: bool = True
    measure_memory: bool = True

    @staticmethod
    def dry(data_dir: str | None = None, dataset: str = "cifar10-offline") -> DeviceCheckConfig:
        return DeviceCheckConfig(
            device="cpu", width=8, batch_size=8, max_batch_size=16, rounds=1, warmup=1, dataset=dataset,
            data_dir=data_dir, num_workers=0, view_seconds=1.0, pretrain_seconds=3.0, aa_samples=8,
            aa_batch_size=8, aa_smoke=True, compile=False, measure_memory=False,
        )  # fmt: skip


def _say(message: str) -> None:
    print(f"[device-check] {message}", file=sys.stderr, flush=True)


def step_figures(check: DeviceCheckConfig) -> dict[str, Any]:
    """Part 1: the four step configurations at ``batch_size``, then the largest batch that fits."""
    configs = [
        StepConfig("advcl naive fp32", naive=True),
        StepConfig("advcl optimised fp32"),
        StepConfig("advcl optimised bf16+cl", precision="bf16", channels_last=True),
    ]
    if check.compile:
        configs.append(
            StepConfig("advcl optimised bf16+cl+compile", precision="bf16", channels_last=True, compile=True)
        )
    bench = BenchConfig(
        width=check.width, batch_size=check.batch_size, device=check.device, rounds=check.rounds,
        warmup=check.warmup, configs=configs, measure_memory=check.measure_memory,
    )  # fmt: skip
    result = run_bench(bench, progress=True)
    result["largest_batch"] = largest_batch(check)
    return result


def largest_batch(check: DeviceCheckConfig) -> dict[str, Any]:
    """Double the batch of the bf16 + channels_last step from ``batch_size`` until it runs out of memory
    (or reaches ``max_batch_size``); time one step at the largest that fits."""
    from advcl_plugin.tools.bench import _Step

    config = StepConfig("advcl optimised bf16+cl", precision="bf16", channels_last=True)
    batch, fitted, seconds = check.batch_size, None, None
    while batch <= check.max_batch_size:
        try:
            step = _Step(config, BenchConfig(width=check.width, batch_size=batch, device=check.device))
            step()  # warm-up (allocations)
            seconds = step()
            fitted = batch
            del step
        except torch.OutOfMemoryError:
            break
        finally:
            if check.device.startswith("cuda"):
                torch.cuda.empty_cache()
        batch *= 2
    return {
        "config": config.name,
        "largest_batch": fitted,
        "step_s": seconds,
        "images_per_s": fitted / seconds if fitted and seconds else None,
        "limit_tried": check.max_batch_size,
    }


def _training_set(check: DeviceCheckConfig, uint8: bool = False) -> Any:
    from torchvision import transforms as T

    from advcl_plugin.data import load_dataset
    from advcl_plugin.data.transforms import AdvCLViews

    dataset = load_dataset(check.dataset, "train", data_dir=check.data_dir)
    return dataset.with_transform(T.PILToTensor() if uint8 else AdvCLViews(32))


def view_figures(check: DeviceCheckConfig, images_per_s_needed: float | None) -> dict[str, Any]:
    """Part 2: AdvCL's three views per second in one process (one data-loader worker)."""
    dataset = _training_set(check)
    torch.set_num_threads(1)  # a worker is one process with one thread
    try:
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < check.view_seconds:
            dataset[count % len(dataset)]
            count += 1
        elapsed = time.perf_counter() - started
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    images_per_s = count / elapsed
    result = {
        "dataset": check.dataset,
        "images_per_s_per_worker": images_per_s,
        "views_per_s_per_worker": 3 * images_per_s,
        "host_cpus": os.cpu_count(),
        "device_views_images_per_s": device_view_rate(check),
    }
    if images_per_s_needed:
        result["step_images_per_s"] = images_per_s_needed
        result["workers_needed"] = images_per_s_needed / images_per_s
    return result


def device_view_rate(check: DeviceCheckConfig) -> float:
    """Images/s (three views each) of ``DeviceAdvCLViews`` (``data.views: device``) on the check's device."""
    from advcl_plugin.data.device_views import DeviceAdvCLViews

    device = torch.device(check.device)
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (check.batch_size, 3, 32, 32), dtype=torch.uint8, generator=generator, device=device)
    views = DeviceAdvCLViews(32)
    views(images, generator)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < check.view_seconds:
        views(images, generator)
        count += check.batch_size
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


def pretrain_figures(check: DeviceCheckConfig, seconds: float, on_device: bool = False) -> dict[str, Any]:
    """Part 3: real pretraining from the real loader for ``seconds``; time spent waiting for data.  With
    ``on_device`` the loader delivers uint8 images and the views are made on the device."""
    from torch.utils.data import DataLoader

    from advcl_plugin.data.datasets import IndexedDataset
    from advcl_plugin.data.device_views import DeviceAdvCLViews

    device = torch.device(check.device)
    objective = AdvCLObjective(build_backbone("cifar_resnet18", check.width), build_config("advcl"))
    objective.to(device).train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.01, momentum=0.9)
    heads = objective.pseudo_label_heads.ks if objective.pseudo_label_heads is not None else ()  # type: ignore[union-attr]
    dataset = IndexedDataset(_training_set(check, uint8=on_device))
    device_views = DeviceAdvCLViews(32) if on_device else None
    generator = torch.Generator(device=device).manual_seed(0)
    labels = torch.stack([torch.randint(0, k, (len(dataset),)) for k in heads], 1) if heads else None
    loader = DataLoader(
        dataset, batch_size=check.batch_size, shuffle=True, drop_last=True, num_workers=check.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=check.num_workers > 0,
    )  # fmt: skip
    waits, steps = [], []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        batches = iter(loader)
        while time.perf_counter() - started < seconds:
            fetch = time.perf_counter()
            try:
                views, _, indexes = next(batches)
            except StopIteration:
                break
            if device_views is not None:
                views = device_views(views.to(device, non_blocking=True), generator)
            tau1, tau2, original = (v.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                                    for v in views)  # fmt: skip
            batch_labels = labels[indexes].to(device) if labels is not None else None
            begin = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = objective(original, tau1, tau2, batch_labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            end = time.perf_counter()
            waits.append(begin - fetch)
            steps.append(end - begin)
    total = sum(waits) + sum(steps)
    first = 1 if len(steps) > 1 else 0  # the first fetch includes starting the workers
    return {
        "dataset": check.dataset,
        "batch_size": check.batch_size,
        "num_workers": check.num_workers,
        "views": "device (uint8 from the loader)" if on_device else "cpu workers",
        "precision": "bf16 autocast + channels_last",
        "steps": len(steps),
        "seconds": total,
        "images_per_s": len(steps) * check.batch_size / total if total else None,
        "data_wait_share": sum(waits[first:]) / max(sum(waits[first:]) + sum(steps[first:]), 1e-9),
        "median_wait_s": statistics.median(waits[first:]) if waits else None,
        "median_step_s": statistics.median(steps[first:]) if steps else None,
        "note": "pseudo labels are random (speed only); the first step (worker start-up) is left out of the shares",
    }


def autoattack_figures(check: DeviceCheckConfig) -> dict[str, Any]:
    """Part 4: seconds of each standard-AutoAttack attack on ``aa_samples`` test images, every image attacked."""
    from advcl_plugin._optional import require
    from advcl_plugin.data import load_dataset
    from advcl_plugin.data.transforms import eval_transform

    AutoAttack = require("pyautoattack", "eval").AutoAttack
    device = torch.device(check.device)
    torch.manual_seed(0)
    backbone = build_backbone("cifar_resnet18", check.width)
    model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.feature_dim, 10)).to(device).eval()
    test = load_dataset(check.dataset, "test", data_dir=check.data_dir).with_transform(eval_transform())
    count = min(check.aa_samples, len(test))
    images = torch.stack([test[i][0] for i in range(count)]).to(device)
    with torch.no_grad():
        labels = torch.cat([model(chunk).argmax(1) for chunk in images.split(check.aa_batch_size)])
    seconds: dict[str, float] = {}
    for name in ("apgd-ce", "apgd-t", "fab-t", "square"):
        attack = AutoAttack(model, device=device, eps=8 / 255, norm="Linf", seed=0, version="standard")
        attack.attacks_to_run = [name]  # the standard version's settings, one attack at a time
        if check.aa_smoke:
            attack.apgd.n_iter = attack.apgd_targeted.n_iter = attack.fab.n_iter = 2
            attack.apgd_targeted.n_target_classes = attack.fab.n_target_classes = 1
            attack.square.n_queries = 10
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        attack.run_standard_evaluation(images, labels, batch_size=check.aa_batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds[name] = time.perf_counter() - started
        _say(f"AutoAttack {name}: {seconds[name]:.1f} s on {count} images")
    later = seconds["apgd-t"] + seconds["fab-t"] + seconds["square"]
    projected = seconds["apgd-ce"] + check.robust_fraction * later
    return {
        "images": count,
        "batch_size": check.aa_batch_size,
        "seconds_per_attack_all_images": seconds,
        "robust_fraction_assumed": check.robust_fraction,
        "projected_standard_aa_seconds": projected,
        "projected_images_per_s": count / projected,
        "settings": "smoke (2 iterations, 1 target class, 10 queries)" if check.aa_smoke else "standard",
        "note": "random-weight model, labels = its own predictions: every attack runs on every image; Square's "
        "queries stop at the first success, so a robust model costs more there",
    }


def format_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Device check ({result['mode']}): {result['step']['machine']['device']}", ""]
    lines += [format_table(result["step"]), ""]
    largest = result["step"]["largest_batch"]
    lines += [f"Largest batch that fits ({largest['config']}, tried up to {largest['limit_tried']}): "
              f"{largest['largest_batch']} ({largest['images_per_s'] or 0:.0f} images/s)", ""]  # fmt: skip
    views = result["views"]
    lines += [
        f"Data path ({views['dataset']}): {views['images_per_s_per_worker']:.0f} images/s "
        f"({views['views_per_s_per_worker']:.0f} views/s) per worker on this host ({views['host_cpus']} CPUs); "
        f"on the device (data.views: device): {views['device_views_images_per_s']:.0f} images/s"
        + (f"; the fastest step needs {views['workers_needed']:.1f} workers" if "workers_needed" in views else ""),
        "",
    ]
    for key in ("pretrain", "pretrain_device_views"):
        pre = result[key]
        lines += [
            f"Real pretraining ({pre['views']}; {pre['seconds']:.0f} s, {pre['steps']} steps of {pre['batch_size']}, "
            f"{pre['num_workers']} workers, {pre['precision']}): {pre['images_per_s'] or 0:.0f} images/s, data wait "
            f"{100 * pre['data_wait_share']:.1f}% of each step",
            "",
        ]
    aa = result["autoattack"]
    per = ", ".join(f"{k} {v:.1f} s" for k, v in aa["seconds_per_attack_all_images"].items())
    lines += [
        f"AutoAttack on {aa['images']} images, each attack on every image: {per}; projected standard AutoAttack "
        f"with {100 * aa['robust_fraction_assumed']:.0f}% robust: {aa['projected_standard_aa_seconds']:.0f} s "
        f"({aa['projected_images_per_s']:.1f} images/s)",
        "",
        f"Total wall time of the check: {result['seconds']:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in result["part_seconds"].items())
        + ")",
    ]
    return "\n".join(lines) + "\n"


def run_device_check(check: DeviceCheckConfig, out_dir: str | Path, mode: str = "device") -> dict[str, Any]:
    """Run the four parts and write ``device_check_<mode>.json`` / ``.md`` under ``out_dir``."""
    started = time.perf_counter()
    parts: dict[str, float] = {}

    def timed(name: str, work: Any) -> Any:
        begin = time.perf_counter()
        value = work()
        parts[name] = time.perf_counter() - begin
        return value

    _say(f"1/4 training step ({check.device}, width {check.width}, batch {check.batch_size})")
    step = timed("step", lambda: step_figures(check))
    fastest = max(row["images_per_s"] for row in step["rows"])
    _say("2/4 data path")
    views = timed("views", lambda: view_figures(check, fastest))
    _say(
        f"3/4 real pretraining for {check.pretrain_seconds:.0f} s (views by CPU workers), then half that on the device"
    )
    pretrain = timed("pretrain", lambda: pretrain_figures(check, check.pretrain_seconds))
    pretrain_device = timed("pretrain_device_views", lambda: pretrain_figures(check, check.pretrain_seconds / 2, True))
    _say(f"4/4 AutoAttack on {check.aa_samples} images")
    autoattack = timed("autoattack", lambda: autoattack_figures(check))
    result = {
        "mode": mode,
        "settings": asdict(check),
        "step": step,
        "views": views,
        "pretrain": pretrain,
        "pretrain_device_views": pretrain_device,
        "autoattack": autoattack,
        "seconds": time.perf_counter() - started,
        "part_seconds": parts,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"device_check_{mode}.json", json.dumps(result, indent=2, default=str))
    atomic_write_text(out / f"device_check_{mode}.md", format_markdown(result))
    return result
