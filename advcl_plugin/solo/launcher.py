"""``advcl-solo``: run solo-learn's own scripts with this package's methods registered.

    advcl-solo pretrain --config-path pkg://advcl_plugin.recipes.solo --config-name advcl_cifar10
    advcl-solo linear --config-path ... --config-name ... pretrained_feature_extractor=<ckpt>
    advcl-solo evaluate --checkpoint <linear ckpt> --dataset cifar10-offline ...

solo-learn's scripts (``main_pretrain.py``, ``main_linear.py``) live at the root of its
repository, not in the installed package: the launcher finds them through ``--solo-root``,
``$SOLO_LEARN_ROOT``, or beside an editable/source install of ``solo``.  Before running a
script it registers the methods (``import advcl_plugin.solo``) and adapts solo-learn 1.0.6 to
current Lightning/torchmetrics (:func:`advcl_plugin.solo.compat.apply_lightning_compat`); solo-learn's
files are not modified.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path
from typing import Any

from advcl_plugin.data.arguments import add_data_arguments

__all__ = ["find_solo_script", "main"]

SCRIPTS = {"pretrain": "main_pretrain.py", "linear": "main_linear.py"}


def find_solo_script(name: str, solo_root: str | None = None) -> Path:
    """Path of solo-learn's ``main_pretrain.py`` / ``main_linear.py``."""
    candidates = []
    if solo_root:
        candidates.append(Path(solo_root))
    if os.environ.get("SOLO_LEARN_ROOT"):
        candidates.append(Path(os.environ["SOLO_LEARN_ROOT"]))
    try:
        import solo

        candidates.append(Path(solo.__file__).resolve().parent.parent)
    except ImportError:
        pass
    for root in candidates:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"solo-learn's {name} was not found (looked in {[str(c) for c in candidates] or 'nothing'}): pass "
        "--solo-root <solo-learn checkout> or set SOLO_LEARN_ROOT"
    )


def run_script(name: str, argv: list[str], solo_root: str | None = None) -> None:
    """Run solo-learn's script ``name`` with ``argv`` (Hydra arguments) and the methods registered."""
    script = find_solo_script(SCRIPTS[name], solo_root)
    from advcl_plugin.solo import apply_lightning_compat  # importing registers the methods

    apply_lightning_compat()
    sys.argv = [str(script), *argv]
    runpy.run_path(str(script), run_name="__main__")


def solo_validation_pipeline(dataset: str, image_size: int | None = None) -> tuple[Any, list[float], list[float]]:
    """solo-learn's validation transform for ``dataset`` without its ``Normalize`` step (so images stay
    in [0, 1] pixels), and the mean and std that step used.

    With ``image_size`` the resize/crop steps are replaced by one resize to ``image_size`` x
    ``image_size`` (solo-learn's normalisation is kept).
    """
    from solo.data.classification_dataloader import prepare_transforms
    from torchvision import transforms

    _, validation = prepare_transforms(dataset)
    steps, mean, std = [], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    for step in validation.transforms:
        if isinstance(step, transforms.Normalize):
            mean, std = [float(v) for v in step.mean], [float(v) for v in step.std]
        elif image_size is None or not isinstance(step, (transforms.Resize, transforms.CenterCrop)):
            steps.append(step)
    if image_size is not None:
        steps.insert(0, transforms.Resize((image_size, image_size)))
    return transforms.Compose(steps), mean, std


def _image_size(value: str) -> int | None:
    if value == "solo":
        return None
    if not value.isdigit() or int(value) < 8:
        raise argparse.ArgumentTypeError(f"--image-size takes 'solo' or a size in pixels >= 8, not {value!r}")
    return int(value)


def _evaluate(args: argparse.Namespace) -> None:
    """SA, PGD RA and AutoAttack AA of a ``main_linear.py`` checkpoint, on the test images seen through
    solo-learn's own validation pipeline (its resolution), attacked in [0, 1] pixels."""
    import json

    from torch.utils.data import DataLoader

    from advcl_plugin.data import load_dataset
    from advcl_plugin.evaluation.robustness import robustness_metrics

    model, cfg = solo_linear_classifier(args.checkpoint)
    solo_dataset = cfg["data"]["dataset"] if cfg else "cifar10"
    transform, mean, std = solo_validation_pipeline(solo_dataset, args.image_size)
    model[0].mean.copy_(torch_tensor(mean))
    model[0].std.copy_(torch_tensor(std))
    device = evaluation_device(args.device)
    model.to(device)
    test = load_dataset(
        args.dataset, "test", root=args.root, download=args.download, data_dir=args.data_dir, transform=transform
    )
    result = robustness_metrics(
        model,
        DataLoader(test, batch_size=args.batch_size, num_workers=args.num_workers, pin_memory=device.type == "cuda"),
        samples=args.samples,
        aa_samples=args.aa_samples,
        eps_sweep=(),
        steps_sweep=(),
        progress=not args.quiet,
    )
    result |= {
        "checkpoint": args.checkpoint,
        "dataset": test.name,
        "solo_pipeline": solo_dataset,
        "image_size": args.image_size or "solo-learn's validation pipeline",
        "mean": mean,
        "std": std,
        "device": str(device),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from advcl_plugin._io import atomic_write_text

        atomic_write_text(args.out, text + "\n")


def evaluation_device(name: str | None) -> Any:
    """The device ``advcl-solo evaluate`` attacks on: ``name``, else the GPU when there is one."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no GPU is visible to PyTorch here; use --device cpu")
    return device


def torch_tensor(values: list[float]) -> Any:
    import torch

    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def solo_linear_classifier(checkpoint: str) -> tuple[Any, dict | None]:
    """The classifier of a ``main_linear.py`` checkpoint as ``Sequential(NormalizedEncoder, Flatten, Linear)``
    taking [0, 1] pixels (the normalisation statistics are set by the caller), and its config."""
    from solo.methods.base import BaseMethod
    from torch import nn

    from advcl_plugin._io import check_weights, read_weights
    from advcl_plugin.core.pixels import NormalizedEncoder

    try:  # files are data: no pickle that could run code
        payload = read_weights(checkpoint)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{checkpoint} cannot be read as data (weights only): {str(error).splitlines()[0]}; advcl-solo refuses "
            "checkpoints that need arbitrary unpickling"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        raise ValueError(f"{checkpoint} is not a solo-learn checkpoint (no state_dict)")
    check_weights(payload["state_dict"], checkpoint)
    hyper_parameters = payload.get("hyper_parameters")
    cfg = hyper_parameters.get("cfg") if isinstance(hyper_parameters, dict) else None
    arguments = Path(checkpoint).with_name("args.json")  # solo-learn's checkpointer saves the config there
    if cfg is None and arguments.is_file():
        import json

        cfg = json.loads(arguments.read_text())
    state = payload["state_dict"]
    name = cfg["backbone"]["name"] if cfg else "resnet18"
    backbone = BaseMethod._BACKBONES[name](method=cfg.get("pretrain_method") if cfg else None)
    backbone.fc = nn.Identity()
    if cfg and cfg["data"]["dataset"] in ("cifar10", "cifar100"):
        backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
        backbone.maxpool = nn.Identity()
    backbone.load_state_dict({k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")})
    head = nn.Linear(state["classifier.weight"].shape[1], state["classifier.weight"].shape[0])
    head.load_state_dict({"weight": state["classifier.weight"], "bias": state["classifier.bias"]})
    model = nn.Sequential(NormalizedEncoder(backbone, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]), nn.Flatten(1), head)
    return model.eval(), cfg


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="advcl-solo",
        description="Run solo-learn's scripts with AdvCL and the adversarial-view methods registered.",
        epilog="Everything after the command is passed to solo-learn's script (Hydra arguments).",
    )
    parser.add_argument("command", choices=("pretrain", "linear", "evaluate"))
    parser.add_argument("--solo-root", default=None, help="solo-learn checkout (default: $SOLO_LEARN_ROOT)")
    known, rest = parser.parse_known_args(argv)
    if known.command in SCRIPTS:
        run_script(known.command, rest, known.solo_root)
        return
    evaluate = argparse.ArgumentParser(prog="advcl-solo evaluate")
    evaluate.add_argument("--checkpoint", required=True, help="a main_linear.py checkpoint")
    add_data_arguments(evaluate, dataset_default="cifar10")
    evaluate.add_argument("--samples", type=int, default=None)
    evaluate.add_argument("--aa-samples", type=int, default=1000)
    evaluate.add_argument("--batch-size", type=int, default=256)
    evaluate.add_argument(
        "--image-size",
        type=_image_size,
        default=None,
        metavar="solo|N",
        help="'solo' (default): solo-learn's validation pipeline for the linear run's dataset, the resolution "
        "main_linear.py trained and validated the classifier at (224 for `custom` folders); N: resize the test "
        "images to N x N instead (e.g. 32 for CIFAR-sized folders: the pretraining resolution, much faster, "
        "but not the resolution the classifier was fitted at)",
    )
    evaluate.add_argument("--device", default=None, help="where to attack: cuda, cuda:1, cpu (default: the GPU if any)")
    evaluate.add_argument("--num-workers", type=int, default=2, help="data-loader workers for the test images")
    evaluate.add_argument("--out", default=None)
    evaluate.add_argument("--quiet", action="store_true")
    import advcl_plugin.solo  # noqa: F401

    try:
        _evaluate(evaluate.parse_args(rest))
    except (FileNotFoundError, ValueError) as error:
        print(f"advcl-solo evaluate: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
