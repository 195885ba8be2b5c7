"""AdvCL in a lightly-style model trained with pytorch_lightning.

lightly's ``LightlyDataset`` and ``MultiViewTransform`` (as ``AdvCLTransform``) feed the views;
the package's ``AdvCLObjective`` (eqs. 9 + 10: the HFC view, the joint PGD attack on x_cl and
x_ce, three BN routes, ``AdvCLLoss``'s terms) with AdvCL's own ``ProjectionHead``
(Linear-BN-ReLU-Linear, as the authors'; lightly 1.6's ``SimCLRProjectionHead`` has no biases and
ends in a BatchNorm, so it is not AdvCL's head) and ``PseudoLabelHeads``.  After pretraining, the
backbone's adversarial BN route is evaluated with lightly's ``LinearClassifier`` (SLF) and PGD /
AutoAttack.

    python examples/lightly/advcl_lightly.py --epochs 1 --limit 512 --width 16

Data: the exact-pixel CIFAR-10 copy from $ADVCL_DATA_DIR (``--dataset cifar10-offline``, the
default) or torchvision's CIFAR-10 (``--dataset cifar10 --download``). Pseudo labels: the
authors' file from the offline folder (``reference``), or ``--pseudo-labels`` (``advcl pseudo-labels``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightly.data import LightlyDataset
from torch.utils.data import DataLoader

from advcl_plugin import PAPER, PAPER_FINETUNE, AdvCLObjective, cifar_resnet18, export_bn_route
from advcl_plugin.data import load_dataset, pseudo_labels_for
from advcl_plugin.data.transforms import eval_transform, original_view_transform
from advcl_plugin.lightly import AdvCLTransform, robust_linear_evaluation


class AdvCL(pl.LightningModule):
    def __init__(self, width: int, pseudo_labels: torch.Tensor, lr: float = 0.5 * 128 / 512) -> None:
        super().__init__()
        self.objective = AdvCLObjective(cifar_resnet18(width=width), PAPER)  # backbone, heads, attack, loss
        self.register_buffer("pseudo_labels", pseudo_labels, persistent=False)
        self.lr = lr

    def training_step(self, batch, batch_idx):
        (tau1, tau2, x), _, filenames = batch
        labels = self.pseudo_labels[torch.tensor([int(f) for f in filenames], device=self.device)]
        out = self.objective(x, tau1, tau2, labels)
        self.log_dict({"loss": out.loss, **{k: v for k, v in out.logs.items() if k != "loss"}}, prog_bar=True)
        return out.loss

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
    labels = pseudo_labels_for(train, args.pseudo_labels or "reference", PAPER.ks)
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

    backbone = export_bn_route(model.objective.backbone, "pgd")  # the adversarial BN, as the authors evaluate
    test = load_dataset(args.dataset, "test", download=args.download, transform=eval_transform())
    metrics = robust_linear_evaluation(
        backbone, backbone.feature_dim, train.num_classes, train.with_transform(original_view_transform(32)), test,
        PAPER_FINETUNE.replace(epochs=args.linear_epochs, batch_size=256, milestones=[args.linear_epochs]),
        samples=args.test_samples,
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
