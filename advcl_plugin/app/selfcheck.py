"""A few AdvCL training steps on real CIFAR-10 images, printing every loss term.

Run it with ``advcl selfcheck`` (see ``--help``).  It needs either the offline copy
(``--data-dir`` or ``$ADVCL_DATA_DIR``) or torchvision's CIFAR-10 (``--download``).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from advcl_plugin.core import PAPER, AdvCLObjective, cifar_resnet18
from advcl_plugin.data import (
    REFERENCE,
    AdvCLViews,
    IndexedDataset,
    find_offline_data_dir,
    load_dataset,
    pseudo_labels_for,
    resolve_pseudo_label_path,
)
from advcl_plugin.data.arguments import add_data_arguments
from advcl_plugin.testing import AuthorsLoopObjective


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(
        parser,
        dataset_required=False,
        dataset_help="dataset name (default: cifar10-offline if the offline copy is found, else cifar10)",
    )
    parser.add_argument(
        "--pseudo-labels", default=None, help="pseudo-label .npz (default: the reference file in the data dir)"
    )
    parser.add_argument("--steps", type=int, default=5, help="training steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 width (64 = the paper's)")
    parser.add_argument("--lr", type=float, default=0.5 * 64 / 512, help="SGD learning rate")
    parser.add_argument(
        "--authors-loop", action="store_true", help="compute the objective as the authors' loop does (the oracle)"
    )
    parser.add_argument("--naive", action="store_true", help=argparse.SUPPRESS)  # deprecated: --authors-loop
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> list[dict[str, float]]:
    """Run the self-check; returns the logged terms of every step."""
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    data_dir = find_offline_data_dir(args.data_dir)
    name = args.dataset or ("cifar10-offline" if data_dir is not None else "cifar10")
    dataset = load_dataset(
        name, "train", root=args.root, download=args.download, data_dir=data_dir, transform=AdvCLViews(32)
    )
    print(f"dataset: {dataset.name} ({len(dataset)} images)")

    setting = args.pseudo_labels or REFERENCE
    labels = None
    try:
        label_path = resolve_pseudo_label_path(setting, data_dir)
    except FileNotFoundError:
        if args.pseudo_labels:
            raise
        print("pseudo labels: none found, running without the pseudo-label term")
    else:
        labels = pseudo_labels_for(dataset, label_path, PAPER.ks)
        print(f"pseudo labels: {label_path.name} -> {tuple(labels.shape)} for K = {list(PAPER.ks)}")

    if args.naive:
        print("advcl selfcheck: --naive is deprecated, use --authors-loop", file=sys.stderr)
    objective_class = AuthorsLoopObjective if args.authors_loop or args.naive else AdvCLObjective
    objective = objective_class(cifar_resnet18(width=args.width), PAPER.replace(use_pseudo_labels=labels is not None))
    optimizer = torch.optim.SGD(objective.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(IndexedDataset(dataset), batch_size=args.batch_size, shuffle=True, drop_last=True)
    objective.train()
    history = []
    print(
        f"{'step':>4} {'loss':>9} {'contrast':>9} {'pseudo':>8} {'attack':>9} {'|d|mean':>8} {'|d|max':>7} {'sec':>6}"
    )
    for step, ((tau1, tau2, x), _, index) in enumerate(loader):
        if step >= args.steps:
            break
        start = time.perf_counter()
        out = objective(x, tau1, tau2, labels[index] if labels is not None else None)
        loss, logs = out.loss, out.logs
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        row = {key: float(value) for key, value in logs.items()} | {"seconds": time.perf_counter() - start}
        history.append(row)
        pseudo_loss = row.get("pseudo_label_loss", float("nan"))
        print(
            f"{step:>4} {row['loss']:>9.4f} {row['contrastive_loss']:>9.4f} {pseudo_loss:>8.4f} "
            f"{row['attack_loss']:>9.3f} {row['delta_abs_mean'] * 255:>7.2f}/255 "
            f"{row['delta_abs_max'] * 255:>4.1f}/255 {row['seconds']:>6.2f}"
        )
    print(
        f"eps = 8/255: max |delta| = {max(r['delta_abs_max'] for r in history) * 255:.3f}/255 over {len(history)} steps"
    )
    return history


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="advcl selfcheck", description=__doc__)
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
