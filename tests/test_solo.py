"""solo-learn integration, run against the real solo-learn when it is installed from its source.

CI cannot install solo-learn (only its stale 2021 release is on the package index), so these
tests skip there with a message saying so.  Locally: install solo-learn from its source and set
SOLO_LEARN_ROOT to the checkout holding main_pretrain.py (README, "Use with solo-learn").
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

solo = pytest.importorskip(
    "solo", reason="solo-learn is not installed (it must be installed from its source; CI cannot) - skipping"
)
SOLO_ROOT = os.environ.get("SOLO_LEARN_ROOT")
if not SOLO_ROOT or not (Path(SOLO_ROOT) / "main_pretrain.py").is_file():
    pytest.skip(
        "SOLO_LEARN_ROOT does not point at a solo-learn checkout with main_pretrain.py", allow_module_level=True
    )

from advcl_plugin import PseudoLabels, cluster_pseudo_labels  # noqa: E402
from advcl_plugin.app.config import DataConfig  # noqa: E402
from advcl_plugin.app.stages.make_folder import write_image_folder  # noqa: E402
from advcl_plugin.core.routed_bn import bn_route, export_bn_route  # noqa: E402
from advcl_plugin.data import load_dataset  # noqa: E402

PKG = "pkg://advcl_plugin.recipes.solo"


@pytest.fixture(scope="module")
def folder(tmp_path_factory, data_dir):
    """A tiny ImageFolder (train/val) written from the exact-pixel CIFAR-10 copy, and pseudo labels for it."""
    root = tmp_path_factory.mktemp("solo")
    write_image_folder(DataConfig(dataset="cifar10-offline", data_dir=str(data_dir)), root, train=96, test=32)
    train = load_dataset(f"folder:{root}", "train")
    features = (
        train.images if hasattr(train, "images") else np.stack([np.asarray(train.image(i)) for i in range(len(train))])
    )
    labels = cluster_pseudo_labels(features.reshape(len(train), -1).astype(np.float32), ks=(2, 10, 50), seed=0)
    PseudoLabels(labels, dataset=train.identity, num_samples=len(train), encoder="raw pixels").save(root / "pl.npz")
    return root


def solo_run(*args, cwd):
    env = dict(os.environ, SOLO_LEARN_ROOT=SOLO_ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "advcl_plugin.solo.launcher", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def only_checkpoint(directory: Path) -> Path:
    checkpoints = sorted(directory.rglob("*.ckpt"))
    assert checkpoints, f"no checkpoint under {directory}"
    return checkpoints[-1]


def test_main_pretrain_with_advcl_then_main_linear(folder, tmp_path):
    solo_run(
        "pretrain", "--config-path", PKG, "--config-name", "advcl_tiny_cpu", f"data.train_path={folder / 'train'}",
        f"method_kwargs.pseudo_labels_path={folder / 'pl.npz'}", "method_kwargs.ks=[2,10,50]",
        f"checkpoint.dir={tmp_path / 'models'}", cwd=tmp_path,
    )  # fmt: skip
    ckpt_path = only_checkpoint(tmp_path / "models" / "advcl")
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    state = checkpoint["state_dict"]
    # backbone.* holds the "pgd" route under the native names, the other routes beside it
    assert any(k.startswith("backbone.") and ".aux_routes.pgd_ce." in k for k in state)
    pgd_weight = state["backbone.bn1.running_mean"]
    assert not torch.equal(pgd_weight, state["backbone.bn1.aux_routes.normal.running_mean"])

    linear = solo_run(
        "linear", "--config-path", PKG, "--config-name", "linear_tiny_cpu",
        f"pretrained_feature_extractor='{ckpt_path}'",  # solo-learn's checkpoint names hold '=': quote for Hydra
        f"data.train_path={folder / 'train'}", f"data.val_path={folder / 'val'}",
        f"checkpoint.dir={tmp_path / 'models'}", cwd=tmp_path,
    )  # fmt: skip
    linear_ckpt = only_checkpoint(tmp_path / "models" / "linear")
    loaded = torch.load(linear_ckpt, map_location="cpu", weights_only=False)["state_dict"]
    # main_linear.py kept the adversarial BN of the AdvCL checkpoint
    torch.testing.assert_close(loaded["backbone.bn1.running_mean"], pgd_weight)
    assert "Loaded" in linear.stdout + linear.stderr or linear_ckpt.exists()

    evaluation = solo_run(
        "evaluate", "--checkpoint", str(linear_ckpt), "--dataset", f"folder:{folder}", "--samples", "16",
        "--aa-samples", "8", "--quiet",
        "--out", str(tmp_path / "eval.json"), cwd=tmp_path,
    )  # fmt: skip
    result = json.loads((tmp_path / "eval.json").read_text())
    assert {"sa", "ra", "aa"} <= set(result) and result["samples"] == 16 and result["aa_samples"] == 8
    # solo-learn's own validation pipeline for custom data (ImageNet statistics, 224 pixels) was used
    assert result["solo_pipeline"] == "custom" and result["mean"] == pytest.approx([0.485, 0.456, 0.406], abs=1e-3)
    assert "ra" in evaluation.stdout


@pytest.mark.parametrize("method", ["byol_adv", "simclr_adv"])
def test_adversarial_variant_trains(folder, tmp_path, method):
    solo_run(
        "pretrain", "--config-path", PKG, "--config-name", f"{method}_cifar10", "data.dataset=custom",
        f"data.train_path={folder / 'train'}", "data.val_path=null", "data.num_workers=0", "optimizer.batch_size=16",
        "max_epochs=1", "+limit_train_batches=2", "accelerator=cpu", "devices=1", "sync_batchnorm=false",
        "precision=32-true", "method_kwargs.adv_steps=2", "+performance.disable_channel_last=true",
        f"checkpoint.dir={tmp_path / 'models'}", cwd=tmp_path,
    )  # fmt: skip
    state = torch.load(only_checkpoint(tmp_path / "models" / method), map_location="cpu", weights_only=False)[
        "state_dict"
    ]
    assert any(k.startswith("backbone.") and ".aux_routes.normal." in k for k in state)
    if method == "byol_adv":  # the momentum encoder is routed too, parameter for parameter
        assert any(k.startswith("momentum_backbone.") and ".aux_routes.normal." in k for k in state)


def compose(name: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    from advcl_plugin.solo.launcher import apply_lightning_compat

    apply_lightning_compat()
    import solo.args.pretrain

    with initialize_config_module("advcl_plugin.recipes.solo", version_base="1.2"):
        cfg = hydra_compose(name, overrides=overrides)
    OmegaConf.set_struct(cfg, False)
    return solo.args.pretrain.parse_cfg(cfg)


@pytest.mark.parametrize(
    "dataset,mean,std",
    [
        ("cifar10", None, None),
        ("custom", [0.5, 0.5, 0.5], [0.1, 0.2, 0.3]),
        ("custom", [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]),
    ],
)
def test_perturbation_is_eps_in_pixels_whatever_the_normalisation(folder, dataset, mean, std, monkeypatch):
    import advcl_plugin.solo  # noqa: F401
    from advcl_plugin.core import objective as objective_module
    from advcl_plugin.core.pixels import normalize
    from advcl_plugin.solo.advcl import AdvCL

    overrides = [f"data.train_path={folder / 'train'}", f"method_kwargs.pseudo_labels_path={folder / 'pl.npz'}",
                 "method_kwargs.ks=[2,10,50]", f"data.dataset={dataset}", "method_kwargs.steps=3"]  # fmt: skip
    if mean is not None:
        overrides += [f"+augmentations.0.mean={mean}", f"+augmentations.0.std={std}"]
    cfg = compose("advcl_tiny_cpu", overrides)
    model = AdvCL(cfg)
    expected_mean = mean or [0.4914, 0.4822, 0.4465]
    assert np.allclose(model.pixel_mean, expected_mean, atol=1e-4)
    seen = []
    original = objective_module.pgd_linf

    def spy(loss_fn, x, *args, **kwargs):
        result = original(loss_fn, x, *args, **kwargs)
        seen.append((x, result))
        return result

    monkeypatch.setattr(objective_module, "pgd_linf", spy)
    pixels = [torch.rand(8, 3, 32, 32) for _ in range(3)]
    views = [normalize(p, model.pixel_mean, model.pixel_std) for p in pixels]
    model.log_dict = lambda *a, **k: None  # no trainer attached
    model.training_step([torch.arange(8), views, torch.zeros(8, dtype=torch.long)], 0)
    ((clean, adversarial),) = seen
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # views normalised with other statistics are refused
        model.training_step([torch.arange(8), [(p - 0.5) / 0.05 for p in pixels], torch.zeros(8, dtype=torch.long)], 0)
    for start, attacked in zip(clean, adversarial):
        assert 0 <= float(start.min()) and float(start.max()) <= 1  # the attack ran on pixels
        delta = (attacked - start).abs().max().item()
        assert delta == pytest.approx(8 / 255, abs=1e-6)  # 8/255 in pixel units, for every normalisation


def test_bad_method_kwargs_and_missing_view(folder):
    import advcl_plugin.solo  # noqa: F401
    from advcl_plugin.solo.advcl import AdvCL

    base = [f"data.train_path={folder / 'train'}", f"method_kwargs.pseudo_labels_path={folder / 'pl.npz'}",
            "method_kwargs.ks=[2,10,50]"]  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown method_kwargs \['epsilon'\]"):
        AdvCL(compose("advcl_tiny_cpu", [*base, "+method_kwargs.epsilon=0.1"]))
    cfg = compose("advcl_tiny_cpu", base)
    cfg.augmentations = [cfg.augmentations[0]]  # no original view declared
    cfg.data.num_small_crops = 0
    with pytest.raises(ValueError, match="original"):
        AdvCL(cfg)


def test_registration_and_routes(folder):
    import solo.methods

    import advcl_plugin.solo

    assert {"advcl", "simclr_adv", "byol_adv", "mocov2plus_adv", "vicreg_adv"} <= set(solo.methods.METHODS)
    assert solo.methods.METHODS["advcl"] is advcl_plugin.solo.AdvCL
    cfg = compose("advcl_tiny_cpu", [f"data.train_path={folder / 'train'}", "+method_kwargs.use_pseudo_labels=false"])
    model = advcl_plugin.solo.AdvCL(cfg).eval()
    x = torch.rand(2, 3, 32, 32)
    with bn_route(model.backbone, "pgd"):
        expected = model.backbone(x)
    torch.testing.assert_close(export_bn_route(model.backbone, "pgd").eval()(x), expected)
