"""solo-learn integration, run against the real solo-learn (1.0.6, built from its source).

CI installs the vendored wheel of solo-learn's current source and points SOLO_LEARN_ROOT at its
scripts (``.ci/run``), so these tests run on every submission.  Locally: install solo-learn from
its source and set SOLO_LEARN_ROOT to the checkout holding main_pretrain.py (README, "Use with
solo-learn").
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
from advcl_plugin.app.artifacts import load_encoder  # noqa: E402
from advcl_plugin.app.recipe import DataConfig  # noqa: E402
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


VARIANTS = ["simclr_adv", "byol_adv", "mocov2plus_adv", "vicreg_adv", "simsiam_adv", "barlow_twins_adv"]
QUIET = ("Warning", "warn(", "register_model", "custom_fwd")


def _check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    log = "\n".join(line for line in (result.stdout + result.stderr).splitlines() if not any(q in line for q in QUIET))
    assert result.returncode == 0, log[-6000:]
    return result


def solo_run(*args, cwd):
    """``advcl-solo`` (registration + apply_lightning_compat, then solo-learn's own script)."""
    env = dict(os.environ, SOLO_LEARN_ROOT=SOLO_ROOT)
    return _check(subprocess.run(
        [sys.executable, "-m", "advcl_plugin.solo.launcher", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=900,
    ))  # fmt: skip


def stock_script(script: str, *args, cwd):
    """solo-learn's unmodified script with nothing but the registration import before it."""
    code = (
        "import runpy, sys\n"
        "import advcl_plugin.solo  # registers method: advcl and the variants\n"
        f"sys.argv = {[script, *args]!r}\n"
        f"runpy.run_path({str(Path(SOLO_ROOT) / script)!r}, run_name='__main__')\n"
    )
    return _check(subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=900))


def only_checkpoint(directory: Path) -> Path:
    checkpoints = sorted(directory.rglob("*.ckpt"))
    assert checkpoints, f"no checkpoint under {directory}"
    return checkpoints[-1]


def logged(cwd: Path, name: str) -> list[float]:
    """Values of metric ``name`` in the CSV log Lightning writes when solo-learn's wandb logger is off."""
    import csv

    (metrics,) = cwd.glob("lightning_logs/version_*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    return [float(row[name]) for row in rows if row.get(name)]


@pytest.mark.slow
def test_stock_scripts_with_only_the_registration_import(folder, tmp_path, data_dir):
    """main_pretrain.py and main_linear.py, unmodified, with `import advcl_plugin.solo` and no compat patch."""
    stock_script(
        "main_pretrain.py", "--config-path", PKG, "--config-name", "advcl_tiny_cpu",
        f"data.train_path={folder / 'train'}", f"method_kwargs.pseudo_labels_path={folder / 'pl.npz'}",
        "method_kwargs.ks=[2,10,50]", f"checkpoint.dir={tmp_path / 'models'}", cwd=tmp_path,
    )  # fmt: skip
    ckpt_path = only_checkpoint(tmp_path / "models" / "advcl")
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    # backbone.* holds the "pgd" route under the native names, the other routes beside it
    assert any(k.startswith("backbone.") and ".aux_routes.pgd_ce." in k for k in state)
    assert not torch.equal(state["backbone.bn1.running_mean"], state["backbone.bn1.aux_routes.normal.running_mean"])

    # the same checkpoint, finetuned and evaluated by the advcl lab as another tool's encoder (solo-learn's
    # ImageNet-stem resnet18 for custom data, trained on ImageNet-normalised images)
    env = dict(os.environ, ADVCL_DATA_DIR=str(data_dir))
    tiny = [
        "data.limit=64", "finetune.slf.epochs=1", "finetune.slf.batch_size=64", "evaluate.samples=16",
        "evaluate.aa_samples=0", "evaluate.eps_sweep=[]", "evaluate.steps_sweep=[]", "evaluate.tsne_samples=0",
        "name=from-solo",
    ]  # fmt: skip
    for command in (
        ["finetune", "--encoder", str(ckpt_path), "--source-format", "solo", "--arch", "resnet18",
         "--input-normalization", "imagenet"],
        ["evaluate"],
    ):  # fmt: skip
        _check(subprocess.run([sys.executable, "-m", "advcl_plugin.app.cli", "--quiet", *command, "-c", "demo", *tiny],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600))  # fmt: skip
    outside = json.loads((tmp_path / "runs" / "from-solo" / "eval-slf.json").read_text())
    assert outside["method"] == "external" and outside["samples"] == 16
    encoder, info = load_encoder(ckpt_path, arch="resnet18", input_normalization="imagenet")
    assert info["source_format"] == "solo" and info["input_normalization"] == "imagenet"
    for key, value in encoder.encoder.state_dict().items():  # the "pgd" route under the native names
        torch.testing.assert_close(value, state[f"backbone.{key}"], msg=key)
    normal, _ = load_encoder(ckpt_path, arch="resnet18", route="normal")
    torch.testing.assert_close(
        normal.state_dict()["bn1.running_mean"], state["backbone.bn1.aux_routes.normal.running_mean"]
    )

    stock_script(
        "main_linear.py", "--config-path", PKG, "--config-name", "linear_tiny_cpu",
        f"pretrained_feature_extractor='{ckpt_path}'",  # solo-learn's checkpoint names hold '=': quote for Hydra
        f"data.train_path={folder / 'train'}", f"data.val_path={folder / 'val'}",
        f"checkpoint.dir={tmp_path / 'models'}", cwd=tmp_path,
    )  # fmt: skip
    loaded = torch.load(only_checkpoint(tmp_path / "models" / "linear"), map_location="cpu", weights_only=True)
    linear_backbone = {k: v for k, v in loaded["state_dict"].items() if k.startswith("backbone.")}
    exported = {k: v for k, v in state.items() if k.startswith("backbone.") and ".aux_routes." not in k}
    # main_linear.py received every weight of the "pgd" route, and nothing else (0 missing keys)
    assert linear_backbone.keys() == exported.keys()
    for key, value in exported.items():
        torch.testing.assert_close(linear_backbone[key], value, msg=key)

    linear_ckpt = only_checkpoint(tmp_path / "models" / "linear")
    evaluation = solo_run(
        "evaluate", "--checkpoint", str(linear_ckpt), "--dataset", f"folder:{folder}", "--samples", "16",
        "--aa-samples", "8", "--image-size", "32", "--quiet", "--out", str(tmp_path / "eval.json"), cwd=tmp_path,
    )  # fmt: skip
    result = json.loads((tmp_path / "eval.json").read_text())
    assert {"sa", "ra", "aa"} <= set(result) and result["samples"] == 16 and result["aa_samples"] == 8
    # solo-learn's normalisation for custom data (ImageNet statistics), at the requested resolution
    assert result["solo_pipeline"] == "custom" and result["mean"] == pytest.approx([0.485, 0.456, 0.406], abs=1e-3)
    assert result["image_size"] == 32 and "ra" in evaluation.stdout


@pytest.mark.parametrize("method", ["advcl", *VARIANTS])
def test_every_method_trains_with_knn_and_probe_on_the_exported_route(folder, tmp_path, method):
    """Each method under main_pretrain.py with validation and solo-learn's online k-NN switched on."""
    common = [
        f"data.train_path={folder / 'train'}", f"data.val_path={folder / 'val'}", "knn_eval.enabled=true",
        "++knn_eval.k=5", "++limit_val_batches=2", f"checkpoint.dir={tmp_path / 'models'}",
    ]  # fmt: skip
    if method == "advcl":
        recipe = ["--config-name", "advcl_tiny_cpu", f"method_kwargs.pseudo_labels_path={folder / 'pl.npz'}",
                  "method_kwargs.ks=[2,10,50]"]  # fmt: skip
    else:
        recipe = ["--config-name", f"{method}_cifar10", "data.dataset=custom", "data.num_workers=0",
                  "optimizer.batch_size=16", "max_epochs=1", "+limit_train_batches=2", "accelerator=cpu", "devices=1",
                  "sync_batchnorm=false", "precision=32-true", "method_kwargs.steps=2",
                  "+performance.disable_channel_last=true"]  # fmt: skip
        if method == "mocov2plus_adv":
            recipe.append("method_kwargs.queue_size=64")
    solo_run("pretrain", "--config-path", PKG, *recipe, *common, cwd=tmp_path)
    knn = logged(tmp_path, "val_knn_acc1")
    assert knn and all(0 <= value <= 100 for value in knn)  # -1 would mean the k-NN was never fed
    assert logged(tmp_path, "val_acc1")
    state = torch.load(only_checkpoint(tmp_path / "models" / method), map_location="cpu", weights_only=True)[
        "state_dict"
    ]
    assert any(k.startswith("backbone.") and ".aux_routes.normal." in k for k in state)
    if method in ("byol_adv", "mocov2plus_adv"):  # the momentum encoder is routed too, parameter for parameter
        assert any(k.startswith("momentum_backbone.") and ".aux_routes.normal." in k for k in state)


@pytest.mark.slow
def test_interrupted_run_resumes_with_solo_learns_auto_resume(folder, tmp_path):
    args = [
        "pretrain", "--config-path", PKG, "--config-name", "advcl_tiny_cpu", f"data.train_path={folder / 'train'}",
        f"method_kwargs.pseudo_labels_path={folder / 'pl.npz'}", "method_kwargs.ks=[2,10,50]", "max_epochs=2",
        f"checkpoint.dir={tmp_path / 'models'}",
    ]  # fmt: skip
    solo_run(*args, "+max_steps=2", cwd=tmp_path)  # stops after the first epoch, as an interrupted run would
    first = only_checkpoint(tmp_path / "models" / "advcl")
    saved = torch.load(first, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 0 and saved["global_step"] == 2
    resumed = solo_run(*args, cwd=tmp_path)
    assert "Resuming from previous checkpoint" in resumed.stdout and first.name in resumed.stdout
    final = torch.load(only_checkpoint(tmp_path / "models" / "advcl"), map_location="cpu", weights_only=True)
    assert final["epoch"] == 1 and final["global_step"] == 4  # one more epoch, counted on from the checkpoint
    assert not torch.equal(final["state_dict"]["backbone.conv1.weight"], saved["state_dict"]["backbone.conv1.weight"])


def compose(name: str, overrides: list[str], edit=None):
    """A recipe as main_pretrain.py sees it (Hydra compose + solo-learn's parse_cfg); ``edit`` changes the raw
    config before parse_cfg counts the crops."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    from advcl_plugin.solo import apply_lightning_compat

    apply_lightning_compat()
    import solo.args.pretrain

    with initialize_config_module("advcl_plugin.recipes.solo", version_base="1.2"):
        cfg = hydra_compose(name, overrides=overrides)
    OmegaConf.set_struct(cfg, False)
    if edit is not None:
        edit(cfg)
    return solo.args.pretrain.parse_cfg(cfg)


def variant_cfg(method: str, folder: Path, overrides=(), edit=None):
    tiny = [f"data.train_path={folder / 'train'}", "data.dataset=custom", "data.val_path=null", "accelerator=cpu",
            "devices=1", "method_kwargs.steps=1", "++knn_eval.enabled=true"]  # fmt: skip
    if method == "mocov2plus_adv":
        tiny.append("method_kwargs.queue_size=64")
    return compose(f"{method}_cifar10", [*tiny, *overrides], edit)


def advcl_cfg(folder: Path, overrides=(), edit=None):
    base = [f"data.train_path={folder / 'train'}", f"method_kwargs.pseudo_labels_path={folder / 'pl.npz'}",
            "method_kwargs.ks=[2,10,50]", "++knn_eval.enabled=true"]  # fmt: skip
    return compose("advcl_tiny_cpu", [*base, *overrides], edit)


def pixel_batch(model, n: int, views: int = 3, size: int = 32):
    """A batch as solo-learn's pipeline delivers it: indexes, normalised views, targets."""
    from advcl_plugin.core.pixels import normalize
    from advcl_plugin.solo.common import pipeline_statistics

    mean, std = pipeline_statistics(model.cfg)
    torch.manual_seed(0)
    crops = [normalize(torch.rand(n, 3, size, size), mean, std) for _ in range(views)]
    return [torch.arange(n), crops, torch.arange(n) % 2]


def quiet(model):
    model.log_dict = lambda *a, **k: None  # no trainer attached
    model.log = lambda *a, **k: None
    return model


def add_small_crops(cfg, count: int = 2) -> None:
    """Insert solo-learn multi-crop entries (16-pixel crops) before the original view."""
    from omegaconf import OmegaConf

    small = OmegaConf.to_container(cfg.augmentations[0])
    small.update(crop_size=16, num_crops=count)
    entries = list(cfg.augmentations)
    cfg.augmentations = [*entries[:-1], OmegaConf.create(small), entries[-1]]


def unmark_original_view(cfg) -> None:
    del cfg.augmentations[-1]["original_view"]


def original_view_first(cfg) -> None:
    entries = list(cfg.augmentations)
    cfg.augmentations = [entries[-1], *entries[:-1]]


def use_dali(cfg) -> None:
    cfg.data.format = "dali"


@pytest.mark.parametrize(
    "method,edit,message",
    [
        ("advcl", add_small_crops, r"does not take solo-learn's small crops .*eq\. 9"),
        ("mocov2plus_adv", add_small_crops, r"does not take solo-learn's small crops .*simclr_adv"),
        ("vicreg_adv", add_small_crops, "does not take solo-learn's small crops"),
        ("advcl", unmark_original_view, "needs AdvCL's original .*original_view: true"),
        ("advcl", original_view_first, "not declared as expected"),
        ("advcl", use_dali, "does not support data.format=dali"),
        ("byol_adv", use_dali, "does not support data.format=dali"),
    ],
)
def test_unsupported_recipes_are_refused_before_training(folder, method, edit, message):
    import advcl_plugin.solo

    cfg = advcl_cfg(folder, edit=edit) if method == "advcl" else variant_cfg(method, folder, edit=edit)
    with pytest.raises(ValueError, match=message):
        advcl_plugin.solo.METHODS[method](cfg)


@pytest.mark.parametrize("method", ["simclr_adv", "byol_adv"])
def test_multicrop_goes_to_parents_that_take_it(folder, method):
    import advcl_plugin.solo

    model = quiet(advcl_plugin.solo.METHODS[method](variant_cfg(method, folder, edit=add_small_crops)))
    assert (model.num_large_crops, model.num_small_crops, model.original_view_index) == (2, 2, 4)
    indexes, crops, targets = pixel_batch(model, 8, views=5)
    crops[2:4] = [torch.nn.functional.interpolate(c, size=16) for c in crops[2:4]]  # the two small crops
    out = model.training_step([indexes, crops, targets], 0)
    loss = out["loss"] if isinstance(out, dict) else out
    assert torch.isfinite(loss)


def test_a_single_unmarked_small_crop_is_multicrop_not_the_original_view(folder):
    import advcl_plugin.solo

    def one_small_crop(cfg):
        unmark_original_view(cfg)
        cfg.augmentations[-1].crop_size = 16  # an ordinary solo-learn small crop

    model = advcl_plugin.solo.METHODS["simclr_adv"](variant_cfg("simclr_adv", folder, edit=one_small_crop))
    assert model.original_view_index is None and model.num_small_crops == 1 and model.multicrop


def test_moco_adversarial_view_sees_the_queue_before_this_batchs_keys(folder, monkeypatch):
    import advcl_plugin.solo
    from advcl_plugin.solo import adversarial

    model = quiet(advcl_plugin.solo.METHODS["mocov2plus_adv"](variant_cfg("mocov2plus_adv", folder)))
    before = model.queue.clone()
    seen = []
    original = adversarial.mocov2plus_loss_func

    def spy(query, key, queue, temperature):
        seen.append(queue.clone())
        return original(query, key, queue, temperature)

    monkeypatch.setattr(adversarial, "mocov2plus_loss_func", spy)
    model.training_step(pixel_batch(model, 8), 0)
    assert not torch.equal(model.queue, before)  # MoCo enqueued this batch's keys during the step
    assert seen and all(torch.equal(queue, before[0]) for queue in seen)  # the attack and the loss read the old queue


@pytest.mark.parametrize("method", ["advcl", "simclr_adv", "byol_adv"])
def test_probe_and_knn_see_the_exported_route(folder, method, monkeypatch):
    import advcl_plugin.solo
    from advcl_plugin.solo import common

    cfg = advcl_cfg(folder) if method == "advcl" else variant_cfg(method, folder)
    model = quiet(advcl_plugin.solo.METHODS[method](cfg))
    seen, fed = [], []
    original = common.exported_route_features

    def spy(backbone, images):
        features = original(backbone, images)
        reference = export_bn_route(backbone, "pgd").eval()(images)  # what main_linear.py's backbone computes
        with torch.no_grad():
            clean_route = backbone(images)  # the route the clean crops train with, in train mode
        seen.append((features, reference, clean_route))
        return features

    monkeypatch.setattr(common, "exported_route_features", spy)
    monkeypatch.setattr(model.knn, "update", lambda train_features=None, **k: fed.append(train_features))
    model.train()
    model.training_step(pixel_batch(model, 8), 0)
    assert len(seen) == 2  # the two large crops
    for features, reference, clean_route in seen:
        torch.testing.assert_close(features, reference)
        assert not torch.allclose(features, clean_route, atol=1e-3)
    torch.testing.assert_close(fed[0], torch.cat([features for features, _, _ in seen]))

    model.eval()
    images = pixel_batch(model, 8)[1][0]
    out = model.base_validation_step(images, torch.arange(8) % 2)
    torch.testing.assert_close(out["feats"], export_bn_route(model.backbone, "pgd").eval()(images))


def test_sync_batchnorm_keeps_every_route(folder):
    from lightning.pytorch import Trainer
    from lightning.pytorch.plugins import TorchSyncBatchNorm

    import advcl_plugin.solo
    from advcl_plugin.core.routed_bn import RoutedSyncBatchNorm as RoutedSyncLayer
    from advcl_plugin.solo.common import RoutedLayerSync

    model = advcl_plugin.solo.AdvCL(advcl_cfg(folder, ["+method_kwargs.use_pseudo_labels=false"]))
    trainer = Trainer(accelerator="cpu", devices=1, strategy="ddp", sync_batchnorm=True, logger=False)
    assert isinstance(trainer.strategy._layer_sync, TorchSyncBatchNorm)  # what sync_batchnorm: true sets up
    routes = model.backbone.bn1.route_names
    assert routes == ("normal", "pgd")
    model.trainer = trainer
    model.setup("fit")
    assert isinstance(trainer.strategy._layer_sync, RoutedLayerSync)
    converted = trainer.strategy._layer_sync.apply(model)
    assert isinstance(converted.backbone.bn1, RoutedSyncLayer)
    assert converted.backbone.bn1.route_names == routes and converted.backbone.bn1.primary_route == "pgd"


def test_evaluate_resolution_option():
    from torchvision import transforms

    from advcl_plugin.solo.launcher import solo_validation_pipeline

    default, mean, _ = solo_validation_pipeline("custom")
    assert any(isinstance(t, transforms.CenterCrop) and t.size == (224, 224) for t in default.transforms)
    assert mean == pytest.approx([0.485, 0.456, 0.406], abs=1e-3)
    small, _, _ = solo_validation_pipeline("custom", 32)
    from PIL import Image

    assert small(Image.new("RGB", (40, 40))).shape == (3, 32, 32)
    assert not any(isinstance(t, transforms.Normalize) for t in small.transforms)  # pixels stay in [0, 1]


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
    original = objective_module.linf_ascent

    def spy(loss_fn, x, *args, **kwargs):
        result = original(loss_fn, x, *args, **kwargs)
        seen.append((x, result))
        return result

    monkeypatch.setattr(objective_module, "linf_ascent", spy)
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
    with pytest.raises(ValueError, match="original"):
        AdvCL(compose("advcl_tiny_cpu", base, edit=lambda cfg: setattr(cfg, "augmentations", [cfg.augmentations[0]])))


def test_registration_and_routes(folder):
    import solo.methods

    import advcl_plugin.solo

    assert {"advcl", *VARIANTS} <= set(solo.methods.METHODS)
    assert solo.methods.METHODS["advcl"] is advcl_plugin.solo.AdvCL
    cfg = compose("advcl_tiny_cpu", [f"data.train_path={folder / 'train'}", "+method_kwargs.use_pseudo_labels=false"])
    model = advcl_plugin.solo.AdvCL(cfg).eval()
    x = torch.rand(2, 3, 32, 32)
    with bn_route(model.backbone, "pgd"):
        expected = model.backbone(x)
    torch.testing.assert_close(export_bn_route(model.backbone, "pgd").eval()(x), expected)
