"""AdvCL assembled from lightly components and trained with pytorch_lightning.

lightly's ``SimCLRProjectionHead`` (Linear-BN-ReLU-Linear, AdvCL's head), ``LightlyDataset``
and ``MultiViewTransform`` (as ``AdvCLTransform``), this package's ``AdvCLLoss``, pseudo-label
heads, routed batch norm, HFC view and PGD.  After pretraining, the backbone's adversarial BN
route is evaluated with lightly's ``LinearClassifier`` (SLF) and PGD / AutoAttack.

    python recipes/lightly/advcl_lightly.py --epochs 1 --limit 512 --width 16

Data: the exact-pixel CIFAR-10 copy from $ADVCL_DATA_DIR (``--dataset cifar10-offline``, the
default) or torchvision's CIFAR-10 (``--dataset cifar10 --download``). Pseudo labels: the
authors' file from the offline folder, or ``--pseudo-labels`` (``advcl pseudo-labels``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightly.data import LightlyDataset
from lightly.models.modules import SimCLRProjectionHead
from torch.utils.data import DataLoader

from advcl_plugin import (
    PseudoLabelHeads,
    PseudoLabels,
    bn_route,
    cifar_resnet18,
    convert_to_multi_bn,
    export_bn_route,
    high_frequency,
    pgd_linf,
)
from advcl_plugin.data import align_pseudo_labels, load_dataset
from advcl_plugin.data.transforms import eval_transform, original_view_transform
from advcl_plugin.lightly import AdvCLLoss, AdvCLTransform, robust_linear_evaluation

KS = (2, 10, 50, 100, 500)


class AdvCL(pl.LightningModule):
    def __init__(self, width: int, pseudo_labels: torch.Tensor, lr: float = 0.5 * 128 / 512) -> None:
        super().__init__()
        self.backbone = convert_to_multi_bn(cifar_resnet18(width=width), ("normal", "pgd", "pgd_ce"))
        dim = self.backbone.feature_dim
        self.projection_head = SimCLRProjectionHead(dim, dim, 128)  # lightly: Linear-BN-ReLU-Linear
        self.pseudo_label_heads = PseudoLabelHeads(dim, KS)
        self.criterion = AdvCLLoss(temperature=0.5, pseudo_label_weight=0.2)
        self.register_buffer("pseudo_labels", pseudo_labels, persistent=False)
        self.lr = lr

    def project(self, x: torch.Tensor, route: str) -> torch.Tensor:
        with bn_route(self.backbone, route):
            return self.projection_head(self.backbone(x))

    def logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        with bn_route(self.backbone, "pgd_ce"):
            return self.pseudo_label_heads(self.backbone(x))

    def training_step(self, batch, batch_idx):
        (tau1, tau2, x), _, filenames = batch
        labels = self.pseudo_labels[torch.tensor([int(f) for f in filenames], device=self.device)]
        clean = [self.project(v, "normal") for v in (tau1, tau2, high_frequency(x, radius=8))]
        frozen = [z.detach() for z in clean]

        def attack_loss(x_cl, x_ce):  # eqs. (9) + (10), cross-entropy summed while attacking
            return self.criterion([self.project(x_cl, "pgd"), *frozen], self.logits(x_ce), labels, "sum")

        x_cl, x_ce = pgd_linf(attack_loss, (x, x), eps=8 / 255, steps=5, step_size=2 / 255)
        loss = self.criterion([self.project(x_cl, "pgd"), *clean], self.logits(x_ce), labels)
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10-offline")
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--pseudo-labels", default=None)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--limit", type=int, default=None, help="first N training images")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--linear-epochs", type=int, default=2)
    parser.add_argument("--test-samples", type=int, default=200)
    parser.add_argument("--aa-samples", type=int, default=32)
    parser.add_argument("--out", default="lightly_advcl.json")
    args = parser.parse_args()
    pl.seed_everything(0)

    train = load_dataset(args.dataset, "train", download=args.download)
    path = (
        args.pseudo_labels or Path(os.environ.get("ADVCL_DATA_DIR", ".")) / "advcl_reference_pseudo_labels_cifar10.npz"
    )
    labels = align_pseudo_labels(PseudoLabels.load(path, ks=KS), train).as_tensor(KS)
    if args.limit:
        train, labels = train.subset(range(args.limit)), labels[: args.limit]
    dataset = LightlyDataset.from_torch_dataset(
        train, transform=AdvCLTransform(input_size=32), index_to_filename=lambda _, index: str(index)
    )
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)
    model = AdvCL(args.width, labels)
    trainer = pl.Trainer(
        max_epochs=args.epochs, max_steps=args.max_steps, logger=False, enable_checkpointing=False, log_every_n_steps=1
    )
    trainer.fit(model, loader)

    backbone = export_bn_route(model.backbone, "pgd")  # the adversarial BN, as the authors evaluate
    test = load_dataset(args.dataset, "test", download=args.download, transform=eval_transform())
    metrics = robust_linear_evaluation(
        backbone, backbone.feature_dim, train.num_classes, train.with_transform(original_view_transform(32)), test,
        epochs=args.linear_epochs, batch_size=256, milestones=(args.linear_epochs,), samples=args.test_samples,
        aa_samples=args.aa_samples, progress=False,
    )  # fmt: skip
    result = {
        "train_loss": float(trainer.callback_metrics["loss"]),
        **{k: metrics[k] for k in ("sa", "ra", "sa_aa_subset", "ra_aa_subset", "aa")},
    }
    print(json.dumps(result))
    Path(args.out).write_text(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
