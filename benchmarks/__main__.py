"""The maintainers' benchmarks of this repository (not part of the installed package).

    python -m benchmarks [--width 64 --batch-size 64 ...]      # the timing benchmark (benchmarks/bench.py)
    python -m benchmarks --device-check [--dry-run]             # the GPU check (benchmarks/device_check.py)

``advcl bench ...`` runs this module from a source checkout.  Results go to ``--out`` / ``--out-dir``
(default ``device-check`` in the current folder), never into the repository unless asked.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="time the AdvCL step: optimised vs the authors' loop, fp32 vs bf16, vs SimCLR; "
        "or the GPU device check",
    )
    p.add_argument("--arch", default="cifar_resnet18")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (one step of every configuration each)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-bf16", action="store_true", help="time fp32 only")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the backbone")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="write the results as JSON (and the table as .md)")
    p.add_argument(
        "--device-check",
        action="store_true",
        help="the prepared GPU check (step at batch 512 in four settings, largest batch, data path, 2 minutes of "
        "real pretraining, AutoAttack throughput), written to --out-dir as JSON and Markdown; about 8 minutes",
    )
    p.add_argument("--dry-run", action="store_true", help="with --device-check: tiny sizes on the CPU (seconds)")
    p.add_argument("--out-dir", default="device-check", help="with --device-check: where the JSON/Markdown go")
    p.add_argument("--data-dir", default=None, help="with --device-check: offline data (default: $ADVCL_DATA_DIR)")
    check = p.add_argument_group("device check sizes (each part is saved as it finishes)")
    check.add_argument("--budget-seconds", type=float, default=None, help="size the parts to fit this many seconds")
    check.add_argument("--parts", default=None, help="comma-separated parts to run (default: all)")
    check.add_argument("--pretrain-seconds", type=float, default=None, help="real pretraining time (default 120)")
    check.add_argument("--view-seconds", type=float, default=None, help="time per data-path measurement (default 10)")
    check.add_argument("--num-workers", type=int, default=None, help="data-loader workers (default 16)")
    check.add_argument("--aa-samples", type=int, default=None, help="AutoAttack images (default 1000)")
    check.add_argument("--max-batch-size", type=int, default=None, help="largest batch tried (default 8192)")
    check.add_argument("--check-rounds", type=int, default=None, help="timed rounds of the step (default 3)")
    check.add_argument("--no-compile", action="store_true", help="skip the torch.compile step")
    check.add_argument("--no-largest-batch", action="store_true", help="skip the largest-batch search")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> None:

    if args.device_check:
        import dataclasses

        from benchmarks.device_check import PARTS, DeviceCheckConfig, format_markdown, run_device_check

        data_dir = args.data_dir or os.environ.get("ADVCL_DATA_DIR")
        if args.dry_run:
            check = DeviceCheckConfig.dry(data_dir=data_dir)
        else:
            if not torch.cuda.is_available() and args.device != "cpu":
                raise ValueError("--device-check needs a GPU (or --dry-run for the CPU smoke test, or --device cpu)")
            check = DeviceCheckConfig(device=args.device or "cuda", data_dir=data_dir)
        sizes = {
            "pretrain_seconds": args.pretrain_seconds,
            "view_seconds": args.view_seconds,
            "num_workers": args.num_workers,
            "aa_samples": args.aa_samples,
            "max_batch_size": args.max_batch_size,
            "rounds": args.check_rounds,
        }
        check = dataclasses.replace(check, **{k: v for k, v in sizes.items() if v is not None})
        if args.no_compile:
            check = dataclasses.replace(check, compile=False)
        if args.no_largest_batch:
            check = dataclasses.replace(check, largest_batch=False)
        if args.budget_seconds is not None:
            check = check.for_budget(args.budget_seconds)
        parts = tuple(p.strip() for p in args.parts.split(",") if p.strip()) if args.parts else PARTS
        result = run_device_check(check, args.out_dir, mode="dry-cpu" if args.dry_run else "device", parts=parts)
        print(format_markdown(result))
        return

    from benchmarks.bench import BenchConfig, attack_precision_check, default_configs, format_table, run_bench

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    bench = BenchConfig(
        arch=args.arch,
        width=args.width,
        batch_size=args.batch_size,
        device=device,
        rounds=args.rounds,
        warmup=args.warmup,
        configs=default_configs(bf16=not args.no_bf16, compile_=args.compile),
    )
    result = run_bench(bench, progress=not args.quiet)
    if not args.no_bf16:
        result["attack_precision"] = attack_precision_check(bench)
    table = format_table(result)
    print(table)
    if args.out:
        from advcl_plugin._io import atomic_write_json, atomic_write_text

        atomic_write_json(args.out, result)
        atomic_write_text(Path(args.out).with_suffix(".md"), table + "\n")


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> None:
    args = build_parser(prog).parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main(prog=os.environ.get("ADVCL_BENCH_PROG", "python -m benchmarks"))
