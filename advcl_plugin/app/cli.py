"""The ``advcl`` command line: pretrain, pseudo-labels, finetune, evaluate, export, report, demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from advcl_plugin import __version__
from advcl_plugin.core.config import KS_ENSEMBLE
from advcl_plugin.data.arguments import add_data_arguments

EPILOG = "Recipes: a YAML path or a shipped name (demo, cifar10, cifar100, transfer_cifar10_stl10, study_base_cpu...)."


def _recipe_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--config", "-c", default=default, required=default is None, help="recipe (YAML path or name)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. optim.epochs=10")


def _protocol_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--protocol",
        choices=("authors", "robustssl"),
        default=None,
        help="finetuning/evaluation protocol: the AdvCL authors' scripts (default) or the RobustSSL benchmark's "
        "(its settings over the recipe's; key=value overrides still win and are listed in the records)",
    )


def _encoder_format_arguments(parser: argparse.ArgumentParser) -> None:
    from advcl_plugin.app.artifacts import ENCODER_SOURCES

    parser.add_argument(
        "--source-format",
        choices=ENCODER_SOURCES,
        default="auto",
        help="format of the encoder file: this package's, a solo-learn checkpoint, a torchvision/timm state dict, "
        "or a RobustSSL-benchmark checkpoint (auto: told apart by its keys; the record says why)",
    )
    parser.add_argument(
        "--input-normalization",
        choices=("none", "imagenet", "cifar10"),
        default=None,
        help="the mean/std the encoder was trained with (default none; RobustSSL files: read from a dual-BN file, "
        "required for the others: imagenet except for AdvCL and A-InfoNCE)",
    )


def _load(args: argparse.Namespace):
    from advcl_plugin.app.recipe import load_recipe

    return load_recipe(args.config, args.overrides, protocol=getattr(args, "protocol", None))


def cmd_pretrain(args: argparse.Namespace) -> None:
    from advcl_plugin.app.stages.pretrain import pretrain

    summary = pretrain(_load(args), progress=not args.quiet)
    print(json.dumps(summary, indent=2))


def cmd_pseudo_labels(args: argparse.Namespace) -> None:
    from advcl_plugin.app.recipe import DataConfig
    from advcl_plugin.app.stages.pseudo_labels import make_pseudo_labels

    data = DataConfig(
        dataset=args.dataset, root=args.root, download=args.download, data_dir=args.data_dir, limit=args.limit
    )
    result = make_pseudo_labels(
        args.encoder,
        data,
        [int(k) for k in args.ks.split(",")],
        args.out,
        arch=args.arch,
        width=args.width,
        route=args.route,
        source_format=args.source_format,
        input_normalization=args.input_normalization,
        image_size=args.image_size,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(f"wrote {args.out}: {result}")


def cmd_make_folder(args: argparse.Namespace) -> None:
    from advcl_plugin.app.recipe import DataConfig
    from advcl_plugin.app.stages.make_folder import write_image_folder

    data = DataConfig(dataset=args.dataset, root=args.root, download=args.download, data_dir=args.data_dir)
    written = write_image_folder(data, args.out, args.train, args.test)
    print(f"wrote {written} images under {args.out}")


def cmd_finetune(args: argparse.Namespace) -> None:
    from advcl_plugin.app.stages.finetune import finetune

    options = {
        "arch": args.arch,
        "width": args.width,
        "route": args.route,
        "source_format": args.source_format,
        "input_normalization": args.input_normalization,
    }
    summary = finetune(_load(args), args.mode, args.encoder, progress=not args.quiet, encoder_options=options)
    print(json.dumps(summary, indent=2))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from advcl_plugin.app.stages.evaluate import evaluate

    result = evaluate(_load(args), args.mode, args.classifier, args.out, progress=not args.quiet)
    print(json.dumps(result, indent=2))


def cmd_export(args: argparse.Namespace) -> None:
    from advcl_plugin.app.stages.export import export

    print(f"wrote {export(args.checkpoint, args.out, route=args.route, plain=args.plain)}")


def cmd_report(args: argparse.Namespace) -> None:
    from advcl_plugin.app.report import build_report

    files = []
    for item in args.inputs:
        path = Path(item)
        files += sorted(path.glob("eval-*.json")) if path.is_dir() else [path]
    report = build_report(files, args.out)
    print(report["markdown"])


def cmd_demo(args: argparse.Namespace) -> None:
    from advcl_plugin.app.study import run_demo

    run_demo(args.config, args.methods.split(",") if args.methods else None, args.overrides, progress=not args.quiet)


def cmd_bench(args: argparse.Namespace) -> None:
    """Run the repository's benchmarks (``python -m benchmarks``) from a source checkout; they are a maintainers'
    tool and are not installed with the package."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise ValueError(
            "advcl bench runs the benchmarks of the source repository (benchmarks/, not installed with the package): "
            "clone the repository, install it (pip install -e .) and run `advcl bench` or `python -m benchmarks` there"
        )
    path = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "PYTHONPATH": path, "ADVCL_BENCH_PROG": "advcl bench"}
    quiet = ["--quiet"] if args.quiet else []
    result = subprocess.run([sys.executable, "-m", "benchmarks", *quiet, *args.bench_args], env=env)
    if result.returncode:
        raise SystemExit(result.returncode)


def cmd_study(args: argparse.Namespace) -> None:
    from advcl_plugin.app.study import run_study

    arms = None
    if args.arms is not None:
        arms = [arm.strip() for arm in args.arms.split(",") if arm.strip()]
        if not arms:
            raise ValueError(f"--arms {args.arms!r} names no arm: give comma-separated arm names, or leave it out")
    run_study(args.config, args.overrides, progress=not args.quiet, arms=arms)


def cmd_selfcheck(args: argparse.Namespace) -> None:
    from advcl_plugin.app import selfcheck

    selfcheck.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advcl", description="AdvCL robust pretraining: pretrain, finetune, evaluate.", epilog=EPILOG
    )
    parser.add_argument("--version", action="version", version=f"advcl-plugin {__version__}")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "pretrain", help="pretrain an encoder (AdvCL or a baseline) as a recipe says", epilog=EPILOG
    )
    _recipe_arguments(p)
    p.set_defaults(handler=cmd_pretrain)

    p = commands.add_parser("pseudo-labels", help="ClusterFit: k-means pseudo labels from any encoder")
    p.add_argument("--encoder", required=True, help="encoder.pt, a pretraining .ckpt, or a plain state dict")
    p.add_argument("--arch", default=None, help="network of a plain state dict (cifar_resnet18, resnet18, ...)")
    p.add_argument("--width", type=int, default=64, help="width of a cifar_resnet18 state dict")
    p.add_argument("--route", default=None, help="BN route of a pretraining checkpoint (default: the method's)")
    _encoder_format_arguments(p)
    add_data_arguments(p, dataset_help="dataset whose train split is clustered")
    p.add_argument("--limit", type=int, default=None, help="first N training images only")
    p.add_argument("--image-size", type=int, default=None, help="resize images to this size")
    p.add_argument(
        "--ks", default=",".join(map(str, KS_ENSEMBLE)), help="comma-separated cluster counts (default: the paper's)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .npz")
    p.set_defaults(handler=cmd_pseudo_labels)

    p = commands.add_parser("make-folder", help="write a dataset as an ImageFolder (train/, val/), e.g. for solo-learn")
    add_data_arguments(p)
    p.add_argument("--train", type=int, default=None, help="first N train images (default: all)")
    p.add_argument("--test", type=int, default=None, help="first N test images (default: all)")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=cmd_make_folder)

    p = commands.add_parser("finetune", help="SLF / ALF / AFF finetuning with lightly's harness", epilog=EPILOG)
    _recipe_arguments(p)
    p.add_argument("--mode", choices=("slf", "alf", "aff"), default="slf")
    p.add_argument("--encoder", default=None, help="default: <run dir>/encoder.pt; or another tool's encoder")
    _protocol_argument(p)
    _encoder_format_arguments(p)
    p.add_argument("--arch", default=None, help="network of another tool's encoder (torchvision_cifar_resnet18, ...)")
    p.add_argument("--width", type=int, default=64, help="width of a cifar_resnet18 state dict")
    p.add_argument("--route", default=None, help="BN route to keep (pgd or normal; default: the adversarial one)")
    p.set_defaults(handler=cmd_finetune)

    p = commands.add_parser("evaluate", help="SA, RA (PGD), AA (AutoAttack) and the eps / steps sweeps", epilog=EPILOG)
    _recipe_arguments(p)
    p.add_argument("--mode", choices=("slf", "alf", "aff"), default="slf")
    p.add_argument("--classifier", default=None, help="default: <run dir>/finetune-<mode>/classifier.pt")
    p.add_argument("--out", default=None, help="default: <run dir>/eval-<mode>.json")
    _protocol_argument(p)
    p.set_defaults(handler=cmd_evaluate)

    p = commands.add_parser("export", help="write the encoder with one BN route as ordinary BatchNorm")
    p.add_argument("--checkpoint", required=True, help="pretraining .ckpt or encoder.pt")
    p.add_argument("--route", default=None, help="BN route (default: the method's downstream route, pgd for AdvCL)")
    p.add_argument("--plain", action="store_true", help="write only the state dict (torchvision/timm naming)")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=cmd_export)

    p = commands.add_parser("report", help="table, JSON and plots from evaluation results")
    p.add_argument("inputs", nargs="+", help="eval-*.json files or run directories")
    p.add_argument("--out", default="report", help="output folder")
    p.set_defaults(handler=cmd_report)

    p = commands.add_parser(
        "demo", help="simclr, acl and advcl at one budget: pretrain, finetune, evaluate, report (study/demo)"
    )
    _recipe_arguments(p, default="study/demo")
    p.add_argument("--methods", default=None, help="comma-separated arms of the study (default: all)")
    p.set_defaults(handler=cmd_demo)

    p = commands.add_parser("study", help="every arm of a reduced-budget reproduction, then the paper's orderings")
    _recipe_arguments(p, default="study/cpu")
    p.add_argument("--arms", default=None, help="comma-separated arms to run or continue (default: all)")
    p.set_defaults(handler=cmd_study)

    p = commands.add_parser(
        "bench",
        help="(source checkout) time the AdvCL step, or run the GPU device check: `advcl bench --help` for options",
        add_help=False,
    )
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of python -m benchmarks")
    p.set_defaults(handler=cmd_bench)

    from advcl_plugin.app import selfcheck

    p = commands.add_parser("selfcheck", help="a few AdvCL steps on real CIFAR-10 images, printing the loss terms")
    selfcheck.add_arguments(p)
    p.set_defaults(handler=cmd_selfcheck)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if "bench" in argv and set(argv[: argv.index("bench")]) <= {"--quiet", "-q"}:
        # every option after `bench` belongs to the benchmarks (python -m benchmarks parses them)
        at = argv.index("bench")
        args = argparse.Namespace(command="bench", quiet=bool(argv[:at]), bench_args=argv[at + 1 :])
        args.handler = cmd_bench
        return _run(args)
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the options (`-c demo --mode aff finetune.aff.epochs=1`)
    unknown = [item for item in extra if "=" not in item or item.startswith("-")]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    _run(args)


def _run(args: argparse.Namespace) -> None:
    try:
        args.handler(args)
    except (FileNotFoundError, ValueError, FloatingPointError) as error:
        print(f"advcl {args.command}: error: {error_message(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as error:
        from advcl_plugin._io import disk_full_message, is_disk_full

        if not is_disk_full(error):
            raise
        message = str(error) if type(error).__name__ == "DiskFullError" else disk_full_message(error.filename)
        print(f"advcl {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def error_message(error: BaseException) -> str:
    """The message of an error for the terminal: one the data loader re-raised from a worker process carries
    the worker's traceback, of which only the last line (the original message) is kept."""
    text = str(error)
    if "Original Traceback" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        text = lines[-1].partition(": ")[2] or lines[-1]
    return text


if __name__ == "__main__":
    main()
