"""lightly integration with the real lightly 1.6 and pytorch_lightning, on real CIFAR-10 images."""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from lightly.loss import NegativeCosineSimilarity, NTXentLoss, VICRegLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.models.utils import update_momentum
from lightly.transforms.multi_view_transform import MultiViewTransform
from lightly.utils.benchmarking import LinearClassifier
from torch.utils.data import DataLoader

from advcl_plugin import MultiViewNTXentLoss, cifar_resnet18, export_bn_route, pseudo_label_loss
from advcl_plugin.core.pixels import normalize
from advcl_plugin.core.routed_bn import routed_bn_layers
from advcl_plugin.data import load_dataset
from advcl_plugin.data.transforms import eval_transform
from advcl_plugin.lightly import AdvCLLoss, AdvCLTransform, AdversarialView

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(data_dir):
    dataset = load_dataset("cifar10-offline", "test", data_dir=data_dir, transform=eval_transform())
    return torch.stack([dataset[i][0] for i in range(32)])


def test_advcl_loss_is_eq9_plus_lambda_eq10():
    views = [torch.randn(6, 16) for _ in range(4)]
    logits = [torch.randn(6, 2), torch.randn(6, 10)]
    labels = torch.stack([torch.randint(0, 2, (6,)), torch.randint(0, 10, (6,))], dim=1)
    criterion = AdvCLLoss(temperature=0.5, pseudo_label_weight=0.2)
    expected = MultiViewNTXentLoss(0.5, 0.07)(views) + 0.2 * pseudo_label_loss(logits, labels)
    torch.testing.assert_close(criterion(views, logits, labels), expected)
    torch.testing.assert_close(criterion(views), MultiViewNTXentLoss(0.5, 0.07)(views))
    summed = MultiViewNTXentLoss(0.5, 0.07)(views) + 0.2 * pseudo_label_loss(logits, labels, "sum")
    torch.testing.assert_close(criterion(views, logits, labels, reduction="sum"), summed)
    with pytest.raises(ValueError, match="without pseudo_labels"):
        criterion(views, logits)


def test_transform_is_a_lightly_multi_view_transform(data_dir):
    dataset = load_dataset("cifar10-offline", "train", data_dir=data_dir)
    transform = AdvCLTransform(input_size=32)
    assert isinstance(transform, MultiViewTransform)
    tau1, tau2, x = transform(dataset.image(0))
    for view in (tau1, tau2, x):
        assert view.shape == (3, 32, 32) and view.min() >= 0 and view.max() <= 1
    assert not torch.equal(tau1, tau2)


@pytest.mark.parametrize("loss_name", ["ntxent", "vicreg", "multiview"])
def test_adversarial_view_stays_in_ball_and_raises_the_loss(images, loss_name):
    torch.manual_seed(0)
    backbone, head = cifar_resnet18(width=8), SimCLRProjectionHead(64, 64, 32)
    losses = {
        "ntxent": NTXentLoss(temperature=0.5),
        "vicreg": VICRegLoss(),
        "multiview": lambda z, *zs: MultiViewNTXentLoss()([z, *zs]),
    }
    loss_fn = losses[loss_name]
    view = AdversarialView(backbone, lambda x: head(backbone(x)), loss_fn, steps=5)
    assert routed_bn_layers(backbone)[0].route_names == ("normal", "pgd")
    backbone.eval(), head.eval()
    x, other = images[:16], images[16:32]
    reference = head(backbone(other))
    references = (reference, head(backbone(other.flip(-1)))) if loss_name == "multiview" else (reference,)
    x_adv = view(x, *references, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        clean = loss_fn(view.embed_adversarial(x), *references)
        attacked = loss_fn(view.embed_adversarial(x_adv), *references)
    assert attacked > clean + 1e-3, (float(clean), float(attacked))
    # the adversarial view gets gradients through the "pgd" route only
    view.embed_adversarial(x_adv).sum().backward()
    layer = routed_bn_layers(backbone)[0]
    assert layer.weight.grad is not None and layer.aux_routes["normal"].weight.grad is None  # "pgd" is primary


def test_pixel_budget_with_a_normalising_pipeline(images):
    mean, std = (0.49, 0.48, 0.45), (0.1, 0.2, 0.3)
    backbone, head = cifar_resnet18(width=8), SimCLRProjectionHead(64, 64, 32)
    view = AdversarialView(backbone, lambda x: head(backbone(x)), NTXentLoss(), mean=mean, std=std)
    x = normalize(images[:8], mean, std)
    x_adv = view(x, head(backbone(normalize(images[8:16], mean, std))))
    delta = (x_adv - x) * torch.tensor(std).view(1, 3, 1, 1)  # back to pixel units
    assert delta.abs().max() <= 8 / 255 + 1e-5 and delta.abs().max() > 7 / 255
    with pytest.raises(ValueError, match="both mean and std"):
        AdversarialView(backbone, head, NTXentLoss(), mean=mean)


def test_backbone_is_not_registered_twice_and_momentum_copies_pair_up(images):
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = cifar_resnet18(width=8)
            self.head = SimCLRProjectionHead(64, 64, 32)
            embed = lambda x: self.head(self.backbone(x))  # noqa: E731
            self.view = AdversarialView(self.backbone, embed, NegativeCosineSimilarity())
            self.backbone_momentum = copy.deepcopy(self.backbone)

    model = Model()
    assert not [k for k in model.state_dict() if k.startswith("view.")]
    update_momentum(model.backbone, model.backbone_momentum, m=0.5)  # zips parameters: same routed layout
    assert len(list(model.backbone.parameters())) == len(list(model.backbone_momentum.parameters()))


def test_lightly_linear_classifier_trains_on_the_exported_backbone(data_dir):
    backbone = cifar_resnet18(width=8)
    AdversarialView(backbone, backbone, NTXentLoss())  # routes the backbone
    plain = export_bn_route(backbone, "pgd")
    train = load_dataset("cifar10-offline", "train", data_dir=data_dir, transform=eval_transform()).subset(range(64))
    classifier = LinearClassifier(plain, batch_size_per_device=32, feature_dim=64, num_classes=10, topk=(1,))
    before = classifier.classification_head.weight.detach().clone()
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(classifier, DataLoader(train, batch_size=32))
    assert not torch.equal(before, classifier.classification_head.weight)
    assert "train_loss" in trainer.callback_metrics


@pytest.mark.slow
@pytest.mark.parametrize("script", ["advcl_lightly.py", "byol_adversarial_view.py"])
def test_examples_train_on_real_images(script, tmp_path, data_dir):
    env = dict(os.environ, ADVCL_DATA_DIR=str(data_dir))
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "lightly" / script), "--max-steps", "2", "--limit", "128",
         "--batch-size", "32", "--width", "8", "--linear-epochs", "1", "--test-samples", "64", "--aa-samples", "16",
         "--out", str(tmp_path / "metrics.json")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(0 <= printed[k] <= 1 for k in ("sa", "ra", "aa"))
    assert printed["aa"] <= printed["sa"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["samples"] == 64 and metrics["aa_samples"] == 16


def test_guide_snippet_runs_as_written(tmp_path, monkeypatch, data_dir):
    text = (ROOT / "docs" / "guides" / "lightly.md").read_text()
    section = text.split("# Use with lightly", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "no python snippet in the 'Use with lightly' section"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADVCL_DATA_DIR", str(data_dir))
    namespace: dict = {}
    exec(compile(blocks[0], "docs/guides/lightly.md", "exec"), namespace)
    assert torch.isfinite(namespace["loss"])
