"""``advcl bench --device-check``: one short, prepared measurement of a GPU (or, with ``--dry-run``, a
few seconds of the same code on a CPU), written as JSON and Markdown after every part.

The offline data is opened before anything else (a missing or damaged data folder stops the check in
its first second, not minutes in).  Then six parts, each guarded (a part that fails is recorded with
its error and the others still run) and each saved as it finishes (``device_check_<mode>.json`` says
which parts ran, failed or were skipped, so a check cut short by its time limit keeps what it measured):

1. **Training step** at width 64, batch 512: the authors'-loop stand-in (fp32), the optimised step
   (fp32), bf16 autocast + channels_last, and, separately guarded, the same with ``torch.compile``;
   images/s, peak memory, share of the card's bf16 peak (:mod:`benchmarks.bench`).
2. **Largest batch** that fits (doubling from 512) for bf16 + channels_last; an allocation failure of
   the allocator, cuBLAS or cuDNN ends the doubling.
3. **Data path**: AdvCL's three views made by one CPU process (views/s per data-loader worker, workers
   the measured step needs) and by :class:`~advcl_plugin.data.device_views.DeviceAdvCLViews`
   (``data.views: device``) on the device; which of the two the GPU recipes should use.
4. **Real pretraining** for a fixed time from the real data loader: images/s and the share of the
   time spent waiting for the loader, then half as long with the views made on the device (their
   time is counted apart from the loader's).
5. **AutoAttack throughput** (``pyautoattack``, standard version): each attack alone on every image of
   a random-weight width-64 encoder + head (labels = its own predictions), and the projected full
   standard AutoAttack for a robust fraction.
6. **GPU-only checks** of what a CPU cannot show: host-device synchronisations in one AdvCL step
   (``torch.cuda.set_sync_debug_mode``), the contrastive logits in float32 under bf16 autocast,
   float16 attack gradients with and without the attack's loss scaling, the graphs of the compiled
   backbone under inductor, and two deterministic steps (``torch.use_deterministic_algorithms``) giving
   identical weights.

Every duration and size is an option (:class:`DeviceCheckConfig`); :meth:`DeviceCheckConfig.for_budget`
sizes the parts to fit a number of seconds.  Nothing here trains a useful model: it measures speed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from advcl_plugin._io import atomic_write_text
from advcl_plugin.core.methods import build_config
from advcl_plugin.core.objective import AdvCLObjective
from advcl_plugin.core.resnet import build_backbone
from benchmarks.bench import BenchConfig, StepConfig, format_table, run_bench

__all__ = ["PARTS", "DeviceCheckConfig", "format_markdown", "is_allocation_failure", "run_device_check"]

#: the parts in the order they run
PARTS = ("step", "largest_batch", "views", "pretrain", "autoattack", "gpu_checks")


@dataclass(frozen=True)
class DeviceCheckConfig:
    """Sizes of the check (every one is a command-line option); :meth:`dry` gives the CPU smoke-test sizes and
    :meth:`for_budget` sizes the parts to a number of seconds."""

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
    largest_batch: bool = True
    gpu_checks: bool = True
    measure_memory: bool = True

    @staticmethod
    def dry(data_dir: str | None = None, dataset: str = "cifar10-offline") -> DeviceCheckConfig:
        """Tiny sizes for a CPU run of the same code (CI runs it)."""
        return DeviceCheckConfig(
            device="cpu",
            width=8,
            batch_size=8,
            max_batch_size=16,
            rounds=1,
            warmup=1,
            dataset=dataset,
            data_dir=data_dir,
            num_workers=0,
            view_seconds=1.0,
            pretrain_seconds=3.0,
            aa_samples=8,
            aa_batch_size=8,
            aa_smoke=True,
            compile=False,
            measure_memory=False,
        )

    def for_budget(self, seconds: float) -> DeviceCheckConfig:
        """These settings shrunk to fit about ``seconds`` of wall time (the full check takes about 8 minutes on
        one GPU, by estimate): the pretraining time, the view timing and the AutoAttack images scale with the
        budget; the compiled step (a minute of compilation) needs 300 s and the largest-batch search 240 s."""
        if seconds <= 0:
            raise ValueError(f"--budget-seconds must be > 0, got {seconds}")
        scale = min(1.0, seconds / 480)
        return dataclasses.replace(
            self,
            pretrain_seconds=min(self.pretrain_seconds, max(5.0, 0.25 * seconds)),
            view_seconds=min(self.view_seconds, max(1.0, 0.02 * seconds)),
            aa_samples=max(50, min(self.aa_samples, round(self.aa_samples * scale))),
            rounds=self.rounds if seconds >= 300 else max(1, min(self.rounds, 2)),
            compile=self.compile and seconds >= 300,
            largest_batch=self.largest_batch and seconds >= 240,
        )


def _say(message: str) -> None:
    print(f"[device-check] {message}", file=sys.stderr, flush=True)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_allocation_failure(error: BaseException) -> bool:
    """Whether ``error`` is the device running out of memory: PyTorch's ``OutOfMemoryError`` or the
    ``RuntimeError`` cuBLAS / cuDNN raise when they cannot allocate their workspace."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    markers = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "CUDNN_STATUS_NOT_SUPPORTED")
    return isinstance(error, RuntimeError) and any(marker in text for marker in markers)


def step_figures(check: DeviceCheckConfig) -> dict[str, Any]:
    """Part 1: the three step configurations at ``batch_size``; then, guarded on its own, the compiled one."""
    configs = [
        StepConfig("advcl authors-loop fp32", authors_loop=True),
        StepConfig("advcl optimised fp32"),
        StepConfig("advcl optimised bf16+cl", precision="bf16", channels_last=True),
    ]
    bench = BenchConfig(
        width=check.width,
        batch_size=check.batch_size,
        device=check.device,
        rounds=check.rounds,
        warmup=check.warmup,
        configs=configs,
        measure_memory=check.measure_memory,
    )
    result = run_bench(bench, progress=True)
    if check.compile:
        compiled = StepConfig("advcl optimised bf16+cl+compile", precision="bf16", channels_last=True, compile=True)
        try:
            both = run_bench(dataclasses.replace(bench, configs=[configs[-1], compiled]), progress=True)
            result["rows"].append(both["rows"][1])
            result["ratios"].update(both["ratios"])
        except Exception as error:  # an Inductor / Triton build failure must not cost the other figures
            result["compile_error"] = _error(error)
            _say(f"torch.compile failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    return result


def largest_batch(check: DeviceCheckConfig) -> dict[str, Any]:
    """Part 2: double the batch of the bf16 + channels_last step from ``batch_size`` until an allocation fails
    (or ``max_batch_size``); time one step at the largest that fits."""
    from benchmarks.bench import _Step

    config = StepConfig("advcl optimised bf16+cl", precision="bf16", channels_last=True)
    batch, fitted, seconds, stopped = check.batch_size, None, None, "reached the limit tried"
    while batch <= check.max_batch_size:
        step = None
        try:
            step = _Step(config, BenchConfig(width=check.width, batch_size=batch, device=check.device))
            step()  # warm-up (allocations)
            seconds = step()
            fitted = batch
        except (RuntimeError, torch.OutOfMemoryError) as error:
            if not is_allocation_failure(error):
                raise
            stopped = f"batch {batch}: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
            break
        finally:
            del step
            if check.device.startswith("cuda"):
                torch.cuda.empty_cache()
        batch *= 2
    return {
        "config": config.name,
        "largest_batch": fitted,
        "step_s": seconds,
        "images_per_s": fitted / seconds if fitted and seconds else None,
        "limit_tried": check.max_batch_size,
        "stopped": stopped,
    }


def _training_set(check: DeviceCheckConfig, uint8: bool = False) -> Any:
    from torchvision import transforms as T

    from advcl_plugin.data import load_dataset
    from advcl_plugin.data.transforms import AdvCLViews

    dataset = load_dataset(check.dataset, "train", data_dir=check.data_dir)
    return dataset.with_transform(T.PILToTensor() if uint8 else AdvCLViews(32))


def check_data(check: DeviceCheckConfig) -> dict[str, Any]:
    """Open the training and test images before any part runs: a missing or damaged folder is named at once."""
    from advcl_plugin.data import load_dataset

    train = load_dataset(check.dataset, "train", data_dir=check.data_dir)
    test = load_dataset(check.dataset, "test", data_dir=check.data_dir)
    return {"dataset": check.dataset, "train_images": len(train), "test_images": len(test)}


def view_figures(check: DeviceCheckConfig, images_per_s_needed: float | None) -> dict[str, Any]:
    """Part 3: AdvCL's three views per second in one process (one data-loader worker) and on the device."""
    dataset = _training_set(check)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a worker is one process with one thread
    try:
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < check.view_seconds:
            dataset[count % len(dataset)]
            count += 1
        elapsed = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    images_per_s = count / elapsed
    on_device = device_view_rate(check)
    result: dict[str, Any] = {
        "dataset": check.dataset,
        "images_per_s_per_worker": images_per_s,
        "views_per_s_per_worker": 3 * images_per_s,
        "host_cpus": os.cpu_count(),
        "device_views_images_per_s": on_device,
    }
    if images_per_s_needed:
        result["step_images_per_s"] = images_per_s_needed
        result["workers_needed"] = images_per_s_needed / images_per_s
        workers = max(1, min(check.num_workers, os.cpu_count() or 1))  # 0 workers: the main process makes them
        cpu_rate = workers * images_per_s
        result["recommended_views"] = "device" if cpu_rate < images_per_s_needed else "cpu"
        result["recommendation"] = (
            f"{workers} CPU workers make about {cpu_rate:.0f} images/s of views, the fastest step takes "
            f"{images_per_s_needed:.0f}: data.views: {result['recommended_views']}"
        )
    return result


def device_view_rate(check: DeviceCheckConfig) -> float:
    """Images/s (three views each) of ``DeviceAdvCLViews`` (``data.views: device``) on the check's device."""
    from advcl_plugin.data.device_views import DeviceAdvCLViews

    device = torch.device(check.device)
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (check.batch_size, 3, 32, 32), dtype=torch.uint8, generator=generator, device=device)
    views = DeviceAdvCLViews(32)
    views(images, generator)
    _synchronize(device)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < check.view_seconds:
        views(images, generator)
        count += check.batch_size
    _synchronize(device)
    return count / (time.perf_counter() - started)


def pretrain_figures(check: DeviceCheckConfig, seconds: float, on_device: bool = False) -> dict[str, Any]:
    """Part 4: real pretraining from the real loader for ``seconds``; time spent waiting for the loader.  With
    ``on_device`` the loader delivers uint8 images and the views are made on the device: that time is counted
    as ``view_share``, not as waiting for data."""
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
        dataset,
        batch_size=check.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=check.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=check.num_workers > 0,
    )
    waits: list[float] = []
    view_times: list[float] = []
    steps: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        batches = iter(loader)
        while time.perf_counter() - started < seconds:
            fetch = time.perf_counter()
            try:
                views, _, indexes = next(batches)
            except StopIteration:
                break
            fetched = time.perf_counter()
            if device_views is not None:
                views = device_views(views.to(device, non_blocking=True), generator)
                _synchronize(device)
            made = time.perf_counter()
            tau1, tau2, original = (
                v.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last) for v in views
            )
            batch_labels = labels[indexes].to(device) if labels is not None else None
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = objective(original, tau1, tau2, batch_labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _synchronize(device)
            end = time.perf_counter()
            waits.append(fetched - fetch)
            view_times.append(made - fetched)
            steps.append(end - made)
    first = 1 if len(steps) > 1 else 0  # the first fetch includes starting the workers
    wait, view, step = sum(waits[first:]), sum(view_times[first:]), sum(steps[first:])
    total = sum(waits) + sum(view_times) + sum(steps)
    return {
        "dataset": check.dataset,
        "batch_size": check.batch_size,
        "num_workers": check.num_workers,
        "views": "device (uint8 from the loader)" if on_device else "cpu workers",
        "precision": "bf16 autocast + channels_last",
        "steps": len(steps),
        "seconds": total,
        "images_per_s": len(steps) * check.batch_size / total if total else None,
        "data_wait_share": wait / max(wait + view + step, 1e-9),
        "view_share": view / max(wait + view + step, 1e-9),
        "median_wait_s": statistics.median(waits[first:]) if waits[first:] else None,
        "median_step_s": statistics.median(steps[first:]) if steps[first:] else None,
        "note": "pseudo labels are random (speed only); the first step (worker start-up) is left out of the shares",
    }


def autoattack_figures(check: DeviceCheckConfig) -> dict[str, Any]:
    """Part 5: seconds of each standard-AutoAttack attack on ``aa_samples`` test images, every image attacked."""
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
        _synchronize(device)
        started = time.perf_counter()
        attack.run_standard_evaluation(images, labels, batch_size=check.aa_batch_size)
        _synchronize(device)
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


def _small_step(check: DeviceCheckConfig, batch: int = 64) -> tuple[AdvCLObjective, list[torch.Tensor], torch.Tensor]:
    device = torch.device(check.device)
    torch.manual_seed(0)
    objective = AdvCLObjective(build_backbone("cifar_resnet18", check.width), build_config("advcl", ks=(2, 10)))
    objective.to(device).train()
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(batch, 3, 32, 32, generator=generator).to(device) for _ in range(3)]
    labels = torch.stack([torch.randint(0, k, (batch,), generator=generator) for k in (2, 10)], 1).to(device)
    return objective, images, labels


def gpu_checks(check: DeviceCheckConfig) -> dict[str, Any]:
    """Part 6: what only a device shows (each check on its own; a CPU run records what it could check)."""
    import warnings

    from advcl_plugin.core.attack import pgd_linf
    from advcl_plugin.core.contrastive import multi_view_contrastive_loss

    device = torch.device(check.device)
    results: dict[str, Any] = {}

    def guarded(name: str, work: Callable[[], Any]) -> None:
        try:
            results[name] = work()
        except Exception as error:
            results[name] = {"error": _error(error)}

    def synchronisations() -> Any:
        objective, (x, t1, t2), labels = _small_step(check)
        objective(x, t1, t2, labels).loss.backward()  # warm-up: caches (radius check) filled
        if device.type != "cuda":  # what a CPU can count: tensor-to-Python reads (each one a sync on a GPU)
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                objective(x, t1, t2, labels).loss.backward()
            reads = sum(e.count for e in profiler.key_averages() if e.key == "aten::_local_scalar_dense")
            return {"tensor_reads_per_step": reads, "expected": 1}
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                objective(x, t1, t2, labels).loss.backward()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        messages = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        return {"synchronisations_per_step": len(messages), "first": messages[:3], "expected": 1}

    def logits_in_float32() -> Any:
        generator = torch.Generator().manual_seed(0)
        views = [torch.randn(256, 128, generator=generator).to(device).bfloat16() for _ in range(4)]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            autocast = multi_view_contrastive_loss(views)
        reference = multi_view_contrastive_loss([v.float() for v in views])
        return {"dtype": str(autocast.dtype), "difference_to_float32": abs(float(autocast) - float(reference))}

    def fp16_attack() -> Any:
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 30 * 30, 10))
        net.to(device)
        x = torch.rand(32, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (32,), device=device)
        moved = {}
        for scaled in (False, True):
            with torch.autocast(device.type, dtype=torch.float16):
                if scaled:
                    adversarial = pgd_linf(lambda z: 1e-6 * torch.nn.functional.cross_entropy(net(z), y), x, steps=1,
                                           random_start=False)  # fmt: skip
                else:
                    z = x.clone().requires_grad_(True)
                    loss = 1e-6 * torch.nn.functional.cross_entropy(net(z), y)
                    (gradient,) = torch.autograd.grad(loss, [z])
                    adversarial = x + 2 / 255 * gradient.sign()
            moved["scaled" if scaled else "unscaled"] = float(((adversarial - x).abs() > 0).float().mean())
        return {"share_of_pixels_moved": moved, "note": "a small loss: unscaled fp16 input gradients underflow"}

    def compiled_graphs() -> Any:
        if device.type != "cuda" or not check.compile:
            return "needs CUDA and --compile"
        from advcl_plugin._platform import compile_backbone

        objective, (x, t1, t2), labels = _small_step(check)
        torch._dynamo.reset()
        compile_backbone(objective.backbone)
        for _ in range(2):
            objective(x, t1, t2, labels).loss.backward()
        counters = dict(torch._dynamo.utils.counters["stats"])
        return {"dynamo_stats": counters, "note": "unique_graphs should stay below the recompile limit (16)"}

    def deterministic_steps() -> Any:
        if device.type != "cuda":
            return "needs CUDA (the CPU's kernels are deterministic already)"
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        try:
            weights = []
            for _ in range(2):
                objective, (x, t1, t2), labels = _small_step(check)
                generator = torch.Generator(device=device).manual_seed(0)
                objective(x, t1, t2, labels, generator=generator).loss.backward()
                weights.append(torch.cat([p.grad.flatten() for p in objective.parameters() if p.grad is not None]))
        finally:
            torch.use_deterministic_algorithms(False)
        return {"gradients_identical": bool(torch.equal(weights[0], weights[1]))}

    for name, work in (
        ("synchronisations", synchronisations),
        ("contrastive_logits_under_bf16", logits_in_float32),
        ("fp16_attack_gradients", fp16_attack),
        ("compiled_backbone", compiled_graphs),
        ("deterministic_steps", deterministic_steps),
    ):
        guarded(name, work)
    return results


def _error(error: BaseException) -> dict[str, str]:
    return {
        "type": type(error).__name__,
        "message": str(error)[:2000],
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__))[-4000:],
    }


def format_markdown(result: dict[str, Any]) -> str:
    """The check's results as Markdown (the parts that ran; failed and skipped parts named)."""
    machine = result.get("step", {}).get("machine", {}).get("device", result.get("device", "?"))
    lines = [f"# Device check ({result['mode']}): {machine}", ""]
    listed = {key: ", ".join(result[f"parts_{key}"]) or "none" for key in ("done", "failed", "skipped")}
    lines += [
        f"Parts done: {listed['done']}; failed: {listed['failed']}; skipped: {listed['skipped']}; "
        f"complete: {'yes' if result['complete'] else 'no'}",
        "",
    ]
    for name in result["parts_failed"]:
        error = result[name]["error"]
        lines += [f"**{name} failed**: {error['type']}: {error['message'][:300]}", ""]
    if "step" in result["parts_done"]:
        lines += [format_table(result["step"]), ""]
        if "compile_error" in result["step"]:
            lines += [f"torch.compile failed: {result['step']['compile_error']['message'][:300]}", ""]
    if "largest_batch" in result["parts_done"]:
        largest = result["largest_batch"]
        lines += [
            f"Largest batch that fits ({largest['config']}, tried up to {largest['limit_tried']}): "
            f"{largest['largest_batch']} ({largest['images_per_s'] or 0:.0f} images/s; {largest['stopped']})",
            "",
        ]
    if "views" in result["parts_done"]:
        views = result["views"]
        lines += [
            f"Data path ({views['dataset']}): {views['images_per_s_per_worker']:.0f} images/s "
            f"({views['views_per_s_per_worker']:.0f} views/s) per worker on this host ({views['host_cpus']} CPUs); "
            f"on the device (data.views: device): {views['device_views_images_per_s']:.0f} images/s"
            + (f"; {views['recommendation']}" if "recommendation" in views else ""),
            "",
        ]
    if "pretrain" in result["parts_done"]:
        for pre in result["pretrain"].values():
            lines += [
                f"Real pretraining ({pre['views']}; {pre['seconds']:.0f} s, {pre['steps']} steps of "
                f"{pre['batch_size']}, {pre['num_workers']} workers, {pre['precision']}): "
                f"{pre['images_per_s'] or 0:.0f} images/s, waiting for the loader {100 * pre['data_wait_share']:.1f}% "
                f"of the time, views on the device {100 * pre['view_share']:.1f}%",
                "",
            ]
    if "autoattack" in result["parts_done"]:
        aa = result["autoattack"]
        per = ", ".join(f"{k} {v:.1f} s" for k, v in aa["seconds_per_attack_all_images"].items())
        lines += [
            f"AutoAttack on {aa['images']} images, each attack on every image: {per}; projected standard "
            f"AutoAttack with {100 * aa['robust_fraction_assumed']:.0f}% robust: "
            f"{aa['projected_standard_aa_seconds']:.0f} s ({aa['projected_images_per_s']:.1f} images/s)",
            "",
        ]
    if "gpu_checks" in result["parts_done"]:
        lines += ["GPU-only checks:", ""]
        lines += [f"- {name}: {json.dumps(value, default=str)[:400]}" for name, value in result["gpu_checks"].items()]
        lines.append("")
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in result["part_seconds"].items())
    lines.append(f"Total wall time of the check: {result['seconds']:.0f} s ({seconds})")
    return "\n".join(lines) + "\n"


def run_device_check(
    check: DeviceCheckConfig, out_dir: str | Path, mode: str = "device", parts: tuple[str, ...] = PARTS
) -> dict[str, Any]:
    """Run the ``parts`` and write ``device_check_<mode>.json`` / ``.md`` under ``out_dir`` after each one."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; the check has {list(PARTS)}")
    started = time.perf_counter()
    out = Path(out_dir)
    result: dict[str, Any] = {
        "mode": mode,
        "device": check.device,
        "settings": asdict(check),
        "data": check_data(check),  # before any part: a missing data folder fails in the first second
        "parts_done": [],
        "parts_failed": [],
        "parts_skipped": [],
        "complete": False,
        "part_seconds": {},
        "seconds": 0.0,
    }
    skipped = {"largest_batch": not check.largest_batch, "gpu_checks": not check.gpu_checks}

    def save() -> None:
        result["seconds"] = time.perf_counter() - started
        atomic_write_text(out / f"device_check_{mode}.json", json.dumps(result, indent=2, default=str))
        atomic_write_text(out / f"device_check_{mode}.md", format_markdown(result))

    def fastest_step() -> float | None:
        rows = result.get("step", {}).get("rows", [])
        return max(row["images_per_s"] for row in rows) if rows else None

    work: dict[str, Callable[[], Any]] = {
        "step": lambda: step_figures(check),
        "largest_batch": lambda: largest_batch(check),
        "views": lambda: view_figures(check, fastest_step()),
        "pretrain": lambda: {
            "cpu_views": pretrain_figures(check, check.pretrain_seconds),
            "device_views": pretrain_figures(check, check.pretrain_seconds / 2, on_device=True),
        },
        "autoattack": lambda: autoattack_figures(check),
        "gpu_checks": lambda: gpu_checks(check),
    }
    save()
    for index, name in enumerate(PARTS, 1):
        if name not in parts or skipped.get(name):
            result["parts_skipped"].append(name)
            continue
        _say(f"{index}/{len(PARTS)} {name}")
        begin = time.perf_counter()
        try:
            result[name] = work[name]()
            result["parts_done"].append(name)
        except Exception as error:  # one part failing must not cost the others
            result[name] = {"error": _error(error)}
            result["parts_failed"].append(name)
            _say(f"{name} failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        result["part_seconds"][name] = time.perf_counter() - begin
        save()
    result["complete"] = not result["parts_failed"]
    save()
    return result
