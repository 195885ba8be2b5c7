"""Faithful to the RobustSSL benchmark's own code where it defines the protocol, and free of its defects
(issue 23): the head starts at zero under ``--protocol robustssl`` (as the authors' nn.Linear default under
theirs) and every record says which; the benchmark's files are read with the input normalisation they need
and told apart from torchvision's; AutoAttack counts test sets of any size, finetuning repeats exactly, and
an epoch of fewer than four batches trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from advcl_plugin.app.artifacts import load_classifier, load_encoder
from advcl_plugin.app.protocols import protocol_deviations
from advcl_plugin.app.recipe import load_recipe
from advcl_plugin.core.resnet import build_backbone
from advcl_plugin.evaluation.robustness import robustness_metrics

TINY = ["model.width=4", "data.limit=64", "optim.batch_size=32", "optim.epochs=1", "method=simclr",
        "finetune.slf.epochs=2", "finetune.slf.batch_size=128", "evaluate.samples=16", "evaluate.aa_samples=0",
        "evaluate.eps_sweep=[]", "evaluate.steps_sweep=[]", "evaluate.tsne_samples=0"]  # fmt: skip


def advcl(*args, cwd, env):
    result = subprocess.run([sys.executable, "-m", "advcl_plugin.app.cli", "--quiet", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, data_dir):
    cwd = tmp_path_factory.mktemp("faithful")
    env = dict(os.environ, ADVCL_DATA_DIR=str(data_dir))
    advcl("pretrain", "-c", "demo", *TINY, "name=enc", cwd=cwd, env=env)
    return cwd, env


# ----------------------------------------------------------------- 1. the head's start
def test_the_robustssl_protocol_starts_the_head_at_zero_and_the_authors_do_not():
    modes = ("slf", "alf", "aff")
    assert {getattr(load_recipe("demo", protocol="robustssl").finetune, m).head_init for m in modes} == {"zeros"}
    assert load_recipe("demo", ["method=acl"], protocol="robustssl").finetune.aff.head_init == "zeros"
    assert {getattr(load_recipe("demo").finetune, m).head_init for m in modes} == {"default"}
    changed = load_recipe("demo", ["finetune.slf.head_init=default"], protocol="robustssl")
    assert protocol_deviations(changed, ("slf",))["finetune.slf.head_init"] == ["zeros", "default"]
    with pytest.raises(ValueError, match="head_init must be one of"):
        load_recipe("demo", ["finetune.slf.head_init=ones"])


def test_the_lightly_classifiers_start_the_head_as_asked():
    pytest.importorskip("lightly")
    from advcl_plugin.lightly import AdversarialFinetuneClassifier, RobustLinearClassifier

    backbone = build_backbone("cifar_resnet18", 4)
    zero = RobustLinearClassifier(backbone, backbone.feature_dim, 10, head_init="zeros")
    assert all(float(p.abs().sum()) == 0 for p in zero.classification_head.parameters())
    default = AdversarialFinetuneClassifier(backbone, backbone.feature_dim, 10)
    assert float(default.classification_head.weight.abs().sum()) > 0


def test_every_record_says_how_the_head_started(encoder):
    cwd, env = encoder
    for protocol in ("authors", "robustssl"):
        flag = ["--protocol", protocol]
        advcl("finetune", "-c", "demo", *TINY, "name=enc", "finetune.slf.epochs=1", *flag, cwd=cwd, env=env)
        advcl("evaluate", "-c", "demo", *TINY, "name=enc", "evaluate.samples=null", *flag, cwd=cwd, env=env)
    tag = {"authors": "", "robustssl": "robustssl-"}
    for protocol, start in (("authors", "default"), ("robustssl", "zeros")):
        _, info = load_classifier(cwd / f"runs/enc/finetune-{tag[protocol]}slf/classifier.pt")
        record = json.loads((cwd / f"runs/enc/finetune-{tag[protocol]}slf/finetune.json").read_text())
        evaluation = json.loads((cwd / f"runs/enc/eval-{tag[protocol]}slf.json").read_text())
        assert info["head_init"] == record["head_init"] == evaluation["head_init"] == start, protocol


# ----------------------------------------------------------------- 2 and 3. the benchmark's files
def _benchmark_single_bn(reference: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict in the layout of the benchmark's single-BN ResNet (models/resnet.py): torchvision's names,
    a head, and the input-normalisation buffers it registers whether it applies them or not."""
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    state["module.fc.weight"], state["module.fc.bias"] = torch.zeros(10, 512), torch.zeros(10)
    state["module.normalize.mean"] = torch.tensor([0.485, 0.456, 0.406])
    state["module.normalize.std"] = torch.tensor([0.229, 0.224, 0.225])
    return state


def test_auto_detection_tells_the_benchmarks_single_bn_files_from_torchvisions(tmp_path):
    reference = build_backbone("torchvision_cifar_resnet18").eval()
    torch.save({"state_dict": _benchmark_single_bn(reference)}, tmp_path / "single.pt")
    torch.save(reference.state_dict(), tmp_path / "torchvision.pt")
    with pytest.raises(ValueError, match="single-BN ResNet: whether it expects normalised inputs"):
        load_encoder(tmp_path / "single.pt", arch="torchvision_cifar_resnet18")  # was: refused as torchvision
    encoder, info = load_encoder(tmp_path / "single.pt", arch="torchvision_cifar_resnet18", input_normalization="none")
    assert info["source_format"] == "robustssl" and "normalize.mean" in info["source_format_reason"]
    assert "considered advcl, robustssl, solo, torchvision" in info["source_format_reason"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(x), reference(x))
    _, info = load_encoder(tmp_path / "torchvision.pt", arch="torchvision_cifar_resnet18")
    assert info["source_format"] == "torchvision" and "torchvision / timm names" in info["source_format_reason"]


def test_a_wrong_auto_guess_says_which_format_was_chosen(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=r"format chosen by --source-format auto: torchvision / timm names"):
        load_encoder(tmp_path / "odd.pt", arch="torchvision_cifar_resnet18")


# ----------------------------------------------------------------- 5. the benchmark's defects, not ours
def test_autoattack_counts_a_test_set_of_any_size():
    """The benchmark batches AutoAttack by 10,000 with drop_last: a smaller test set reports 0.00."""
    pytest.importorskip("pyautoattack")
    images = torch.cat([torch.zeros(8, 3, 8, 8), torch.ones(8, 3, 8, 8)])
    labels = torch.cat([torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long)])

    class Brightness(torch.nn.Module):  # class by mean brightness, with a margin no 8/255 budget can cross
        def forward(self, x):
            score = 100 * (x.mean(dim=(1, 2, 3)) - 0.5)
            others = torch.full((len(x), 8), -1e3)  # ten classes, as AutoAttack's targeted attacks need
            return torch.cat([torch.stack([-score, score], 1), others], 1)

    loader = DataLoader(TensorDataset(images, labels), batch_size=16)
    result = robustness_metrics(Brightness(), loader, aa_samples=None, eps_sweep=(), steps_sweep=(), progress=False)
    assert result["aa_samples"] == 16 and result["aa"] == 1.0 and result["sa"] == 1.0


def test_resuming_a_finetuning_with_other_settings_is_refused(encoder):
    cwd, env = encoder
    advcl("finetune", "-c", "demo", *TINY, "name=enc", "--mode", "alf", "finetune.alf.epochs=1",
          "finetune.alf.attack_steps=1", cwd=cwd, env=env)  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "advcl_plugin.app.cli", "--quiet", "finetune", "-c", "demo", *TINY, "name=enc",
         "--mode", "alf", "finetune.alf.epochs=2", "finetune.alf.attack_steps=1", "finetune.alf.lr=0.5"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 2 and "finetuned with other settings" in result.stderr
    assert "finetune" in result.stderr and "resume=never" in result.stderr


def test_finetuning_repeats_exactly_and_trains_on_epochs_of_one_batch(encoder):
    """The benchmark never seeds (its runs cannot be repeated) and divides by zero (`batch_idx % int(len(loader)
    / 4)`) when an epoch has fewer than 4 batches; here: 64 images in batches of 128, one batch an epoch."""
    cwd, env = encoder
    weights = []
    for _ in range(2):
        advcl("finetune", "-c", "demo", *TINY, "name=enc", "--protocol", "robustssl", "finetune.slf.epochs=2",
              "finetune.slf.batch_size=128", "resume=never", cwd=cwd, env=env)  # fmt: skip
        classifier = cwd / "runs/enc/finetune-robustssl-slf/classifier.pt"
        weights.append(torch.load(classifier, weights_only=True)["state_dict"]["head.weight"])
    assert float(weights[0].abs().sum()) > 0  # it trained from its zero start
    assert torch.equal(weights[0], weights[1])
