"""Trust probes, table-driven: every file handed in is data, every bad setting is refused before work
starts, numbers stay finite, and API misuse gets the right message.  Each row is one probe that broke
(or held) once; it must keep giving one clear error or the right result."""

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from advcl_plugin import AdvCLConfig, AdvCLObjective, AdversarialView, PseudoLabels, cifar_resnet18, pgd_linf
from advcl_plugin.app.artifacts import load_classifier, load_encoder, read_checkpoint
from advcl_plugin.app.recipe import load_recipe
from advcl_plugin.core.frequency import check_radius

TINY = ["model.width=8", "data.limit=128", "optim.batch_size=64", "optim.epochs=1", "method_kwargs.steps=1"]


class RunsCode:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def advcl(*args, cwd, check=False):
    return subprocess.run(
        [sys.executable, "-m", "advcl_plugin.app.cli", "--quiet", *args],
        cwd=cwd, capture_output=True, text=True, env=dict(os.environ), timeout=600,
    )  # fmt: skip


@pytest.fixture
def malicious(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": RunsCode(marker)}, path)
    return path, marker


# ----------------------------------------------------------------- files are data
@pytest.mark.parametrize("loader", [read_checkpoint, load_encoder, load_classifier])
def test_a_pickle_that_runs_code_is_refused_by_every_loader(malicious, loader):
    path, marker = malicious
    with pytest.raises(ValueError, match="refuses to load"):
        loader(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["export", "--checkpoint", "{path}", "--out", "x.pt"],
        ["pseudo-labels", "--encoder", "{path}", "--dataset", "cifar10-offline", "--limit", "64", "--out", "p.npz"],
    ],
)
def test_a_pickle_that_runs_code_is_refused_by_every_command(malicious, command, data_dir):
    path, marker = malicious
    result = advcl(*[c.format(path=path) for c in command], cwd=path.parent)
    assert result.returncode == 2 and "refuses to load" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not marker.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated", b"not a checkpoint at all"])
def test_empty_or_truncated_checkpoints_get_one_message(tmp_path, content):
    path = tmp_path / "last.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=str(path)):
        read_checkpoint(path)


def test_a_corrupt_last_checkpoint_names_the_older_one(tmp_path, data_dir):
    checkpoints = tmp_path / "runs" / "r" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").write_bytes(b"PK\x03\x04")
    (checkpoints / "epoch-0002.ckpt").write_bytes(b"")
    result = advcl("pretrain", "-c", "demo", *TINY, "name=r", cwd=tmp_path)
    assert result.returncode == 2 and "last.ckpt" in result.stderr and "resume=" in result.stderr
    assert "epoch-0002.ckpt" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "write",
    [
        lambda p: p.write_bytes(b""),  # zero bytes
        lambda p: p.write_bytes(b"PK\x03\x04\x14\x00"),  # truncated zip
        lambda p: p.write_bytes(pickle.dumps({"k10": [1, 2]})),  # not a zip: a pickle
        lambda p: np.savez(open(p, "wb"), meta=np.array('{"num_samples": 2, "encoder": "x"}'), k2=np.zeros(2)),
    ],
    ids=["empty", "truncated", "pickle", "meta-without-dataset"],
)
def test_bad_pseudo_label_files_get_one_message(tmp_path, write):
    path = tmp_path / "labels.npz"
    write(path)
    with pytest.raises(ValueError, match="not a readable pseudo-label file") as error:
        PseudoLabels.load(path)
    assert "allow_pickle=True" not in str(error.value)


# ----------------------------------------------------------------- refused before work starts
@pytest.mark.parametrize(
    "overrides,message",
    [
        (["method_kwargs.epsilon=0.1"], r"unknown key\(s\) \['epsilon'\]"),
        (["method_kwargs.eps=abc"], "eps must be a number, got 'abc'"),
        (["method_kwargs.eps=-0.1"], r"eps must lie in \[0, 1\]"),
        (["method_kwargs.radius=100"], "covers the whole 32x32 spectrum"),
        (["optim.lr=-0.5"], "optim.lr must be > 0"),
        (["optim.momentum=-1"], "optim.momentum must be >= 0"),
        (["finetune.slf.val_fraction=1.5"], "val_fraction"),
        (["resume=/no/such.ckpt"], "resume must be"),
    ],
)
def test_meaningless_settings_are_refused_when_read(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_recipe("demo", overrides)


def test_any_float_form_is_a_float():
    assert load_recipe("demo", ["optim.weight_decay=5e-4"]).optim.weight_decay == 5e-4


def test_radius_scales_with_the_image_size():
    assert 0.15 < check_radius(8, 32, 32) < 0.25
    with pytest.warns(UserWarning, match="almost the whole image"):
        check_radius(8, 96, 96)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_radius(24, 96, 96)


def test_a_refused_command_leaves_the_run_directory_as_it_was(tmp_path, data_dir):
    first = advcl("pretrain", "-c", "demo", *TINY, "name=r", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    recipe = (tmp_path / "runs/r/recipe.yaml").read_text()
    for change in (["model.width=16"], ["optim.batch_size=32"], ["seed=1"], ["optim.lr=0.1"], ["data.limit=96"]):
        refused = advcl("pretrain", "-c", "demo", *TINY, "name=r", "optim.epochs=2", *change, cwd=tmp_path)
        key = change[0].split("=")[0]
        assert refused.returncode == 2 and "other settings" in refused.stderr and key in refused.stderr, change
        assert "resume=never" in refused.stderr
        assert (tmp_path / "runs/r/recipe.yaml").read_text() == recipe


# ----------------------------------------------------------------- numbers stay finite
def test_nan_pixels_are_refused():
    x = torch.rand(2, 3, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        pgd_linf(lambda z: z.sum(), x)
    objective = AdvCLObjective(cifar_resnet18(width=4), AdvCLConfig(ks=(2,), steps=1))
    images = torch.rand(4, 3, 32, 32)
    images[1, 2, 3, 4] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        objective(images, torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), torch.zeros(4, 1, dtype=torch.long))


def test_a_diverging_run_stops_with_a_clear_error_and_keeps_no_nan_encoder(tmp_path, data_dir):
    result = advcl("pretrain", "-c", "demo", *TINY, "name=nan", "optim.lr=1e8", "optim.epochs=3", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "training loss became" in result.stderr or "NaN or infinite" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "runs/nan/encoder.pt").exists()


# ----------------------------------------------------------------- API misuse
def test_backbones_without_batch_norm_are_told_what_is_needed():
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten())  # fmt: skip
    with pytest.raises(ValueError, match="needs a backbone with BatchNorm"):
        AdvCLObjective(backbone, AdvCLConfig(ks=(2,)))


def test_feature_maps_are_refused_before_building_a_huge_head():
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    with pytest.raises(ValueError, match=r"pooled features \(B, d\)"):
        AdvCLObjective(backbone, AdvCLConfig(ks=(2,)))


def test_mean_std_given_to_a_pipeline_that_does_not_normalise():
    backbone = cifar_resnet18(width=4)
    view = AdversarialView(backbone, backbone, lambda z, r: (z - r).pow(2).sum(), mean=(0.49, 0.48, 0.45),
                           std=(0.25, 0.24, 0.26))  # fmt: skip
    pixels = torch.rand(8, 3, 32, 32)  # not normalised
    with pytest.raises(ValueError, match="drop mean/std"):
        view(pixels, torch.zeros(8, 32))


def test_a_pickle_that_runs_code_is_refused_by_the_solo_learn_evaluator(malicious):
    pytest.importorskip("solo", reason="solo-learn is not installed")
    from advcl_plugin.solo.launcher import solo_linear_classifier

    path, marker = malicious
    with pytest.raises(ValueError, match="cannot be read as data"):
        solo_linear_classifier(str(path))
    assert not marker.exists()
