"""The timing benchmark of this repository (``python -m benchmarks bench``, or ``advcl bench`` in a source
checkout): time AdvCL's training step (optimised vs the authors' loop, fp32 vs bf16,
channels_last, torch.compile) and SimCLR's, interleaved in one run on one machine.

A *step* is what one training batch costs: the attack (PGD), the loss, the backward pass and an
SGD update, on random pixel batches of the chosen size.  Configurations are timed in rounds
(one step of each per round, after warm-up), so that drifts of the machine affect all of them
alike; the table reports the median step time, images per second, the ratios, peak memory and
the achieved FLOP rate (and, on a GPU, the share of its bf16 peak).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from advcl_plugin._platform import compile_backbone, cpu_has_native_bf16
from advcl_plugin.core.methods import build_config
from advcl_plugin.core.objective import AdvCLObjective
from advcl_plugin.core.resnet import build_backbone
from advcl_plugin.testing import AuthorsLoopObjective


def _with_repository_root() -> str:
    """``PYTHONPATH`` with this repository's root first, so that a child process finds ``benchmarks``."""
    root = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])


__all__ = ["BenchConfig", "attack_precision_check", "cpu_has_native_bf16", "run_bench"]
#: dense bf16 tensor-core peaks (TFLOP/s) for the share-of-peak column
GPU_BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


@dataclass(frozen=True)
class StepConfig:
    """One configuration to time."""

    name: str
    method: str = "advcl"
    authors_loop: bool = False  # the authors' loop (advcl_plugin.testing.AuthorsLoopObjective)
    precision: str = "fp32"  # or "bf16" (autocast)
    channels_last: bool = False
    compile: bool = False
    objective_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchConfig:
    arch: str = "cifar_resnet18"
    width: int = 64
    batch_size: int = 64
    image_size: int = 32
    device: str = "cpu"
    rounds: int = 5
    warmup: int = 2
    seed: int = 0
    configs: list[StepConfig] = field(default_factory=list)
    measure_memory: bool = True  # on a CPU each configuration's peak is measured in a fresh process (seconds each)


def default_configs(bf16: bool = True, compile_: bool = False) -> list[StepConfig]:
    configs = [
        StepConfig("advcl authors-loop fp32", authors_loop=True),
        StepConfig("advcl optimised fp32"),
        StepConfig("simclr fp32", method="simclr"),
    ]
    if bf16:
        configs += [
            StepConfig("advcl authors-loop bf16+cl", authors_loop=True, precision="bf16", channels_last=True),
            StepConfig("advcl optimised bf16+cl", precision="bf16", channels_last=True),
            StepConfig("simclr bf16+cl", method="simclr", precision="bf16", channels_last=True),
        ]
    if compile_:
        # compile beside the fastest uncompiled setting timed in the same run
        if bf16:
            configs.append(
                StepConfig("advcl optimised bf16+cl+compile", precision="bf16", channels_last=True, compile=True)
            )
        else:
            configs.append(StepConfig("advcl optimised fp32+compile", compile=True))
    return configs


class _FlopCount(TorchDispatchMode):
    """Sums torch's FLOP formulas over the dispatched operators. (``FlopCounterMode`` itself tracks
    modules with backward hooks, which ``torch.autograd.grad`` in the attack does not support.)"""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            self.total += flop_registry[packet](*args, **kwargs, out_val=out)
        return out


class _Step:
    """A ready-to-run training step of one configuration."""

    def __init__(self, config: StepConfig, bench: BenchConfig) -> None:
        torch.manual_seed(bench.seed)
        self.config, self.device = config, torch.device(bench.device)
        objective_class = AuthorsLoopObjective if config.authors_loop else AdvCLObjective
        self.objective = objective_class(
            build_backbone(bench.arch, bench.width), build_config(config.method, config.objective_kwargs)
        )
        self.objective.to(self.device).train()
        if config.channels_last:
            self.objective.to(memory_format=torch.channels_last)
        if config.compile:
            compile_backbone(self.objective.backbone)
        self.optimizer = torch.optim.SGD(self.objective.parameters(), lr=1e-3, momentum=0.9)
        generator = torch.Generator().manual_seed(bench.seed)
        shape = (bench.batch_size, 3, bench.image_size, bench.image_size)
        self.inputs = [torch.rand(shape, generator=generator).to(self.device) for _ in range(3)]
        if config.channels_last:
            self.inputs = [x.contiguous(memory_format=torch.channels_last) for x in self.inputs]
        self.labels = None
        if self.objective.pseudo_label_heads is not None:
            heads = self.objective.pseudo_label_heads.ks  # type: ignore[union-attr]
            self.labels = torch.stack(
                [torch.randint(0, k, (bench.batch_size,), generator=generator) for k in heads], 1
            ).to(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.config.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self) -> float:
        x, tau1, tau2 = self.inputs
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with self.autocast():
            loss = self.objective(x, tau1, tau2, self.labels).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    def flops(self) -> float:
        """FLOPs of one step, counted with torch's per-operator formulas (``torch.utils.flop_counter``)."""
        counter = _FlopCount()
        with counter:
            self()
        return float(counter.total)


def _peak_memory_mb(config: StepConfig, bench: BenchConfig) -> float:
    """Peak memory of one step beyond the model, optimiser and inputs.

    On a GPU: the CUDA allocator's peak during a step.  On a CPU: a fresh process builds the
    configuration, notes its resident size, resets the kernel's peak mark, runs one step and
    reports its peak resident size minus that; large allocations are forced onto ``mmap``
    (``MALLOC_MMAP_THRESHOLD_``) so that freed activations leave the resident size instead of
    staying cached by the C allocator.
    """
    if bench.device.startswith("cuda"):
        step = _Step(config, bench)
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    payload = json.dumps({"config": asdict(config), "bench": {**asdict(bench), "configs": []}})
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--memory-probe", payload],
        capture_output=True,
        text=True,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "PYTHONPATH": _with_repository_root()},
    )
    if result.returncode != 0:
        return float("nan")
    return float(result.stdout.strip().splitlines()[-1])


def _memory_probe(payload: str) -> None:
    import resource

    data = json.loads(payload)
    config = StepConfig(**data["config"])
    bench = BenchConfig(**{k: v for k, v in data["bench"].items() if k != "configs"})
    step = _Step(config, bench)
    before = _rss_mb()
    try:  # Linux: writing 5 resets the peak resident size (VmHWM), so setting-up peaks do not count
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        step()
        peak = _status_mb("VmHWM")
    except OSError:
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(max(peak - before, 0.0))


def _status_mb(field_name: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(f"{field_name} not in /proc/self/status")


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def attack_precision_check(bench: BenchConfig) -> dict[str, float]:
    """How much bf16 autocast changes the attack: the same model, batch and random start in fp32 and
    bf16; agreement of the perturbation's sign, mean |delta|, and the training loss."""
    step = _Step(StepConfig("check"), bench)
    x, tau1, tau2 = step.inputs
    deltas, losses = {}, {}
    for precision in ("fp32", "bf16"):
        step.config = StepConfig(precision, precision=precision)
        with step.autocast():
            generator = torch.Generator(step.device).manual_seed(bench.seed)
            adversarial = step.objective.perturb(x, tau1, tau2, step.labels, generator=generator)
            generator = torch.Generator(step.device).manual_seed(bench.seed)
            loss = step.objective(x, tau1, tau2, step.labels, generator=generator).loss
        deltas[precision] = torch.cat([(a - x).flatten() for a in adversarial]).float().cpu()
        losses[precision] = loss.item()
    delta32, delta16 = deltas["fp32"], deltas["bf16"]
    return {
        "delta_sign_agreement": float((torch.sign(delta32) == torch.sign(delta16)).float().mean()),
        "delta_abs_mean_fp32_x255": float(delta32.abs().mean() * 255),
        "delta_abs_mean_bf16_x255": float(delta16.abs().mean() * 255),
        "delta_abs_max_bf16_x255": float(delta16.abs().max() * 255),
        "loss_fp32": losses["fp32"],
        "loss_bf16": losses["bf16"],
        "loss_relative_difference": abs(losses["bf16"] - losses["fp32"]) / abs(losses["fp32"]),
    }


def _gpu_peak(device: str) -> tuple[str, float | None]:
    if not device.startswith("cuda"):
        return "cpu", None
    name = torch.cuda.get_device_name(torch.device(device))
    for key, peak in GPU_BF16_PEAK_TFLOPS.items():
        if key in name:
            return name, peak
    return name, None


def run_bench(bench: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Time every configuration (interleaved rounds) and compute the ratios."""
    steps = {config.name: _Step(config, bench) for config in bench.configs}
    for _ in range(bench.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(bench.rounds):
        for name, step in steps.items():
            times[name].append(step())
        if progress:
            print(f"round {round_index + 1}/{bench.rounds} done", file=sys.stderr, flush=True)
    device_name, peak = _gpu_peak(bench.device)
    rows = []
    flop_counts: dict[tuple[str, bool, str], float] = {}  # precision and memory layout do not change the count
    for config in bench.configs:
        median = statistics.median(times[config.name])
        math_key = (config.method, config.authors_loop, json.dumps(config.objective_kwargs, sort_keys=True))
        if math_key not in flop_counts:
            flop_counts[math_key] = steps[config.name].flops()
        flops = flop_counts[math_key]
        row = {
            "config": config.name,
            "median_step_s": median,
            "min_step_s": min(times[config.name]),
            "images_per_s": bench.batch_size / median,
            "tflops_per_s": flops / median / 1e12,
            "gflop_per_step": flops / 1e9,
            "peak_memory_mb": _peak_memory_mb(config, bench) if bench.measure_memory else float("nan"),
        }
        if peak is not None and config.precision == "bf16":
            row["share_of_bf16_peak"] = row["tflops_per_s"] / peak
        rows.append(row)
    by_name = {row["config"]: row for row in rows}
    ratios = {}
    for precision in ("fp32", "bf16+cl"):
        authors_loop, optimised, simclr = (
            by_name.get(f"{k} {precision}") for k in ("advcl authors-loop", "advcl optimised", "simclr")
        )
        if authors_loop and optimised:
            ratio = authors_loop["median_step_s"] / optimised["median_step_s"]
            ratios[f"optimised vs authors-loop ({precision})"] = ratio
        if optimised and simclr:
            ratios[f"advcl optimised / simclr step ({precision})"] = (
                optimised["median_step_s"] / simclr["median_step_s"]
            )
    if "advcl optimised bf16+cl" in by_name:
        ratios["bf16+cl optimised vs fp32 optimised"] = (
            by_name["advcl optimised fp32"]["median_step_s"] / by_name["advcl optimised bf16+cl"]["median_step_s"]
        )
        ratios["bf16+cl optimised vs fp32 authors-loop"] = (
            by_name["advcl authors-loop fp32"]["median_step_s"] / by_name["advcl optimised bf16+cl"]["median_step_s"]
        )
    for precision in ("fp32", "bf16+cl"):
        plain, compiled = (
            by_name.get(f"advcl optimised {precision}"),
            by_name.get(f"advcl optimised {precision}+compile"),
        )
        if plain and compiled:
            ratios[f"compile vs no compile ({precision} optimised)"] = (
                plain["median_step_s"] / compiled["median_step_s"]
            )
    return {
        "machine": {
            "device": device_name,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": _cpu_name(),
            "cpu_native_bf16": cpu_has_native_bf16(),
        },
        "settings": {k: v for k, v in asdict(bench).items() if k != "configs"},
        "rows": rows,
        "ratios": ratios,
        "times": times,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"machine: {result['machine']['device']} ({result['machine']['cpu']}, {result['machine']['threads']} threads, "
        f"native bf16: {'yes' if result['machine'].get('cpu_native_bf16') else 'no'}), "
        f"torch {result['machine']['torch']}",
        "settings: " + ", ".join(f"{k}={v}" for k, v in result["settings"].items()),
        "",
        "| configuration | median step (s) | images/s | GFLOP/step | TFLOP/s | peak memory (MB) | share of bf16 peak |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        share = f"{100 * row['share_of_bf16_peak']:.1f}%" if "share_of_bf16_peak" in row else "—"
        lines.append(
            f"| {row['config']} | {row['median_step_s']:.3f} | {row['images_per_s']:.1f} | "
            f"{row['gflop_per_step']:.1f} | {row['tflops_per_s']:.3f} | {row['peak_memory_mb']:.0f} | {share} |"
        )
    lines += ["", "| ratio | value |", "| --- | --- |"]
    lines += [f"| {name} | {value:.2f}x |" for name, value in result["ratios"].items()]
    if "attack_precision" in result:
        lines += ["", "bf16 attack vs fp32 (same batch, same random start): " + ", ".join(
            f"{k}={v:.4g}" for k, v in result["attack_precision"].items()
        )]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--memory-probe":
        _memory_probe(argv[1])
        return
    raise SystemExit("use `python -m benchmarks` (or `advcl bench` in a source checkout)")


if __name__ == "__main__":
    main()
