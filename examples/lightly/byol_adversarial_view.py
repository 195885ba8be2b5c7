"""BYOL (lightly's components) with an AdvCL-style adversarial view, trained with pytorch_lightning.

lightly's ``BYOLProjectionHead``, ``BYOLPredictionHead``, ``NegativeCosineSimilarity``,
``update_momentum`` and ``cosine_schedule`` as in lightly's BYOL example, plus
``AdversarialView``: ``x + delta`` found by PGD against BYOL's own loss (prediction of the
adversarial view vs the momentum projection of the first view), through the backbone's
``"pgd"`` BN route, added to the loss.  The momentum encoder is copied after the backbone is
routed, so ``update_momentum`` pairs parameters one to one.

    python examples/lightly/byol_adversarial_view.py --epochs 1 --limit 512 --width 16
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightly.data import LightlyDataset
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch.utils.data import DataLoader

from advcl_plugin import PAPER_FINETUNE, cifar_resnet18, export_bn_route
from advcl_plugin.data import load_dataset
from advcl_plugin.data.transforms import eval_transform, original_view_transform
from advcl_plugin.lightly import AdvCLTransform, AdversarialView, robust_linear_evaluation


class BYOLWithAdversarialView(pl.LightningModule):
    def __init__(self, width: int, lr: float = 0.06) -> None:
        super().__init__()
        self.backbone = cifar_resnet18(width=width)
        dim = self.backbone.feature_dim
        self.projection_head = BYOLProjectionHead(dim, 256, 64)
        self.prediction_head = BYOLPredictionHead(64, 256, 64)
        self.criterion = NegativeCosineSimilarity()
        # routes the backbone's BN ("normal" / "pgd") before the momentum copy is made
        self.adversarial_view = AdversarialView(self.backbone, self.predict, self.criterion, eps=8 / 255, steps=5)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.lr = lr

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x)))

    def target(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x)).detach()

    def training_step(self, batch, batch_idx):
        momentum = cosine_schedule(self.current_epoch, self.trainer.max_epochs, 0.996, 1)
        update_momentum(self.backbone, self.backbone_momentum, m=momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, m=momentum)
        (x0, x1, x), _, _ = batch
        p0, p1 = self.predict(x0), self.predict(x1)
        z0, z1 = self.target(x0), self.target(x1)
        byol = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        x_adv = self.adversarial_view(x, z0)  # x + delta against BYOL's loss w.r.t. the first view's target
        adversarial = self.criterion(self.adversarial_view.embed_adversarial(x_adv), z0)
        loss = byol + adversarial
        self.log_dict({"loss": loss, "byol": byol, "adversarial_view": adversarial}, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10-offline")
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--linear-epochs", type=int, default=2)
    parser.add_argument("--test-samples", type=int, default=200)
    parser.add_argument("--aa-samples", type=int, default=32)
    parser.add_argument("--out", default="lightly_byol_adv.json")
    args = parser.parse_args()
    pl.seed_everything(0)

    train = load_dataset(args.dataset, "train", download=args.download)
    if args.limit:
        train = train.subset(range(args.limit))
    dataset = LightlyDataset.from_torch_dataset(train, transform=AdvCLTransform(input_size=32))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)
    model = BYOLWithAdversarialView(args.width)
    trainer = pl.Trainer(
        max_epochs=args.epochs, max_steps=args.max_steps, logger=False, enable_checkpointing=False, log_every_n_steps=1
    )
    trainer.fit(model, loader)

    backbone = export_bn_route(model.backbone, "pgd")
    test = load_dataset(args.dataset, "test", download=args.download, transform=eval_transform())
    metrics = robust_linear_evaluation(
        backbone, backbone.feature_dim, train.num_classes, train.with_transform(original_view_transform(32)), test,
        PAPER_FINETUNE.replace(epochs=args.linear_epochs, batch_size=256, milestones=[args.linear_epochs]),
        samples=args.test_samples,
        aa_samples=args.aa_samples, progress=False,
    )  # fmt: skip
    metrics_out = {k: float(trainer.callback_metrics[k]) for k in ("loss", "byol", "adversarial_view")}
    print(json.dumps({**metrics_out, **{k: metrics[k] for k in ("sa", "ra", "sa_aa_subset", "ra_aa_subset", "aa")}}))
    Path(args.out).write_text(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
