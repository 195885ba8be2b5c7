"""The RobustSSL benchmark's protocol (settings, TRADES) and encoders of other tools (weights-only, strict)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from advcl_plugin import cifar_resnet18
from advcl_plugin.app.artifacts import load_encoder, robustssl_state_dict
from advcl_plugin.app.protocols import protocol_deviations
from advcl_plugin.app.recipe import load_recipe
from advcl_plugin.core.resnet import build_backbone
from advcl_plugin.evaluation.trades import trades_kl_attack, trades_loss
from advcl_plugin.lightly.classifiers import AdversarialFinetuneClassifier


def test_robustssl_settings_follow_the_benchmark():
    advcl = load_recipe("demo", protocol="robustssl")
    assert advcl.protocol == "robustssl"
    slf, alf, aff = advcl.finetune.slf, advcl.finetune.alf, advcl.finetune.aff
    assert (slf.lr, slf.batch_size, slf.epochs, slf.milestones, slf.weight_decay) == (0.01, 512, 25, [15, 20], 2e-4)
    assert (alf.attack_steps, alf.loss, alf.val_fraction) == (10, "ce", 0.0)
    assert (aff.lr, aff.batch_size, aff.epochs, aff.milestones, aff.loss, aff.trades_beta) == (
        0.1, 128, 25, [15, 20], "trades", 6.0,
    )  # fmt: skip
    evaluation = advcl.evaluate
    assert (evaluation.samples, evaluation.aa_samples, evaluation.pgd_steps, evaluation.aa_version) == (
        None, None, 20, "standard",
    )  # fmt: skip
    acl = load_recipe("demo", ["method=acl"], protocol="robustssl")
    assert acl.finetune.slf.milestones == [10, 20] and (acl.finetune.aff.epochs, acl.finetune.aff.milestones) == (
        100, [40, 60],
    )  # fmt: skip
    assert protocol_deviations(advcl) == {} and protocol_deviations(acl) == {}


def test_overrides_win_over_the_protocol_and_are_named():
    recipe = load_recipe("demo", ["finetune.slf.epochs=2", "evaluate.aa_samples=16"], protocol="robustssl")
    assert recipe.finetune.slf.epochs == 2 and recipe.evaluate.aa_samples == 16
    assert protocol_deviations(recipe) == {"finetune.slf.epochs": [25, 2], "evaluate.aa_samples": [None, 16]}
    assert protocol_deviations(recipe, ("aff",)) == {"evaluate.aa_samples": [None, 16]}
    # the authors' protocol is the default and its deviations are named the same way
    demo = load_recipe("demo")
    assert demo.protocol == "authors" and protocol_deviations(demo, ("slf",))["finetune.slf.epochs"][0] == 25


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["protocol=leaderboard"], "protocol must be one of"),
        (["finetune.aff.loss=hinge"], "loss must be 'ce' or 'trades'"),
        (["finetune.slf.loss=trades"], "only aff takes it"),
    ],
)
def test_bad_protocol_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_recipe("demo", overrides)


def test_a_bad_protocol_argument_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^protocol must be one of .*'leaderboard'"):
        load_recipe("demo", protocol="leaderboard")
    with pytest.raises(ValueError, match=r"^recipe.protocol must be one of"):
        load_recipe("demo", ["protocol=leaderboard"])


def test_trades_loss_is_clean_cross_entropy_plus_beta_kl():
    natural, adversarial = torch.randn(6, 4), torch.randn(6, 4)
    targets = torch.randint(0, 4, (6,))
    p = natural.softmax(1)
    kl = (p * (p.log() - adversarial.log_softmax(1))).sum(1).mean()
    expected = F.cross_entropy(natural, targets) + 6.0 * kl
    torch.testing.assert_close(trades_loss(natural, adversarial, targets, beta=6.0), expected)
    assert float(trades_loss(natural, natural, targets, beta=6.0)) == pytest.approx(
        float(F.cross_entropy(natural, targets)), abs=1e-6
    )


def test_trades_attack_raises_the_kl_term_inside_the_ball():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5))
    x = torch.rand(8, 3, 4, 4)
    adversarial = trades_kl_attack(net, x, eps=8 / 255, steps=5, step_size=2 / 255)
    assert float((adversarial - x).abs().max()) <= 8 / 255 + 1e-6 and 0 <= float(adversarial.min())
    assert float(adversarial.max()) <= 1
    p = net(x).softmax(1).detach()

    @torch.no_grad()
    def kl(z):
        return float(F.kl_div(net(z).log_softmax(1), p, reduction="batchmean"))

    assert kl(adversarial) > kl(x + 0.001 * torch.randn_like(x)) + 1e-6


def test_trades_aff_step_trains_the_encoder_and_restores_its_mode():
    backbone = cifar_resnet18(width=4)
    classifier = AdversarialFinetuneClassifier(backbone, 32, 10, loss="trades", attack_steps=2, batch_size=8)
    classifier.train()
    images, targets = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    loss = classifier.training_step((images, targets), 0)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert backbone.training and classifier.classification_head.training
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())
    with pytest.raises(ValueError, match="'ce' or 'trades'"):
        AdversarialFinetuneClassifier(backbone, 32, 10, loss="mart")


def _features(encoder, x):
    return encoder.eval()(x)


def test_torchvision_and_timm_state_dicts_load_strictly(tmp_path):
    timm = pytest.importorskip("timm")
    x = torch.rand(2, 3, 32, 32)
    source = timm.create_model("resnet18", pretrained=False, num_classes=10)  # timm's names, with its fc
    torch.save(source.state_dict(), tmp_path / "timm.pt")
    encoder, info = load_encoder(tmp_path / "timm.pt", arch="resnet18", source_format="timm")
    source.reset_classifier(0)
    torch.testing.assert_close(_features(encoder, x), source.eval()(x))
    assert info["source_format"] == "timm" and info["method"] == "external"

    cifar = build_backbone("torchvision_cifar_resnet18")
    torch.save({"state_dict": {f"module.{k}": v for k, v in cifar.state_dict().items()}}, tmp_path / "tv.pt")
    encoder, info = load_encoder(tmp_path / "tv.pt", arch="torchvision_cifar_resnet18")  # auto
    assert info["source_format"] == "torchvision"
    torch.testing.assert_close(_features(encoder, x), _features(cifar, x))

    with pytest.raises(ValueError, match="say which network it is with --arch"):
        load_encoder(tmp_path / "tv.pt")
    with pytest.raises(ValueError, match=r"does not fit resnet18: shape mismatch .* \[conv1.weight \(64, 3, 3, 3\) vs"):
        load_encoder(tmp_path / "tv.pt", arch="resnet18")  # ImageNet stem: a 7x7 first convolution


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _robustssl_checkpoint(plain: dict[str, torch.Tensor], stats=IMAGENET) -> dict[str, torch.Tensor]:
    """A dual-BN state dict as the RobustSSL benchmark's dual-BN ResNet (models/resnet_multi_bn.py) holds it:
    BN routes under bn_list.0 (normal) and bn_list.1 (adversarial), shortcuts as downsample.conv /
    downsample.bn, a head and the input-normalisation buffers the model always applies (ImageNet's), under
    DataParallel's module. prefix (``stats=None``: no buffers, as AdvCL's own pretraining code saves it)."""
    dual = {}
    for key, value in plain.items():
        key = key.replace("downsample.0.", "downsample.conv.").replace("downsample.1.", "downsample.bn.")
        module, _, name = key.rpartition(".")
        if "bn" in module.rpartition(".")[2] or module.endswith("downsample.bn"):
            dual[f"module.{module}.bn_list.0.{name}"] = torch.zeros_like(value) if value.is_floating_point() else value
            dual[f"module.{module}.bn_list.1.{name}"] = value
        else:
            dual[f"module.{key}"] = value
    dual["module.fc.weight"], dual["module.fc.bias"] = torch.zeros(10, 512), torch.zeros(10)
    if stats is not None:
        dual["module.normalize.mean"], dual["module.normalize.std"] = torch.tensor(stats[0]), torch.tensor(stats[1])
    return dual


def test_robustssl_checkpoints_load_the_adversarial_route_and_refuse_mismatches(tmp_path):
    reference = build_backbone("torchvision_cifar_resnet18")
    for module in reference.modules():  # BN statistics that differ from a fresh layer's
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    dual = _robustssl_checkpoint(reference.state_dict(), stats=None)  # AdvCL's own checkpoint: no buffers
    torch.save({"epoch": 1000, "state_dict": dual}, tmp_path / "advcl_robustssl.pt")
    with pytest.raises(ValueError, match="pass --input-normalization none .* or imagenet"):
        load_encoder(tmp_path / "advcl_robustssl.pt", arch="torchvision_cifar_resnet18")  # the file cannot say
    encoder, info = load_encoder(tmp_path / "advcl_robustssl.pt", arch="torchvision_cifar_resnet18",
                                 input_normalization="none")  # auto format  # fmt: skip
    assert info["source_format"] == "robustssl" and info["route"] == "pgd"
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(_features(encoder, x), _features(reference, x))
    converted = robustssl_state_dict(dual, "normal")
    assert float(converted["bn1.running_var"].abs().sum()) == 0  # bn_list.0 kept: the zeros written above

    # the benchmark's dual-BN ResNet always normalises with its buffers' (ImageNet) statistics: read from the file
    torch.save({"state_dict": _robustssl_checkpoint(reference.state_dict())}, tmp_path / "dual.pt")
    normalized, info = load_encoder(tmp_path / "dual.pt", arch="torchvision_cifar_resnet18")
    mean, std = (torch.tensor(IMAGENET[0]).view(1, 3, 1, 1), torch.tensor(IMAGENET[1]).view(1, 3, 1, 1))
    torch.testing.assert_close(_features(normalized, x), _features(reference, (x - mean) / std))
    assert info["input_normalization"] == "imagenet"
    with pytest.raises(ValueError, match="always normalises its input with the imagenet statistics"):
        load_encoder(tmp_path / "dual.pt", arch="torchvision_cifar_resnet18", input_normalization="none")

    broken = {k: v for k, v in dual.items() if "layer4.1.bn2" not in k}
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError) as error:
        load_encoder(tmp_path / "broken.pt", arch="torchvision_cifar_resnet18", source_format="robustssl",
                     input_normalization="none")  # fmt: skip
    for key in ("layer4.1.bn2.weight", "layer4.1.bn2.running_mean"):
        assert key in str(error.value)
    assert "missing 5 [" in str(error.value)


def test_outside_encoders_are_read_as_data(tmp_path):
    import argparse

    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "args": argparse.Namespace()}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="refuses to load"):
        load_encoder(tmp_path / "pickled.pt", arch="resnet18", source_format="robustssl", input_normalization="none")


def test_classifier_hyperparameters_stay_plain_data_for_weights_only_checkpoints(tmp_path):
    """lightly's save_hyperparameters() collects our init arguments too: the schedule must be saved as plain
    values, or a checkpoint (e.g. the best held-out epoch) cannot be read weights-only."""
    import torch

    from advcl_plugin.evaluation import robustssl_protocol
    from advcl_plugin.lightly import AdversarialFinetuneClassifier, RobustLinearClassifier

    backbone = cifar_resnet18(width=4)
    for module in (
        RobustLinearClassifier(backbone, 32, 10, robustssl_protocol("advcl").schedule("slf"), adversarial=True),
        AdversarialFinetuneClassifier(backbone, 32, 10, lr=0.05),
    ):
        torch.save({"hyper_parameters": dict(module.hparams)}, tmp_path / "h.pt")
        saved = torch.load(tmp_path / "h.pt", weights_only=True)["hyper_parameters"]
        assert saved["schedule"]["lr"] == module.schedule.lr and "changes" not in saved
