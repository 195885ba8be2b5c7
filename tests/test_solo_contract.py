"""Every solo-learn method this package registers meets the contract solo-learn's ``BaseMethod`` subclasses
meet (issue 23), written from solo-learn's stated expectations: built from a config without ``augmentations``
(as solo-learn's own method tests build theirs), ``add_and_assert_specific_cfg`` sets the method's defaults,
``learnable_params``, ``forward`` / ``multicrop_forward`` outputs and shapes (``logits``, ``feats``, ``z``), a fit
on dummy data of ImageNet and CIFAR sizes through solo-learn's own pipeline, its checkpointer's ``args.json``
and checkpoint keys, its auto-resumer finding the run, and a strict state-dict round trip."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

solo = pytest.importorskip("solo", reason="solo-learn is not installed (it must be installed from its source)")

import numpy as np  # noqa: E402
from lightning.pytorch import Trainer  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from solo.data.pretrain_dataloader import (  # noqa: E402
    FullTransformPipeline,
    NCropAugmentation,
    build_transform_pipeline,
    dataset_with_index,
    prepare_dataloader,
)
from solo.utils.auto_resumer import AutoResumer  # noqa: E402
from solo.utils.checkpointer import Checkpointer  # noqa: E402
from torchvision.datasets import FakeData  # noqa: E402

import advcl_plugin.solo  # noqa: E402,F401  (registers the methods)
from advcl_plugin import PseudoLabels  # noqa: E402
from advcl_plugin.solo.adversarial import ADVERSARIAL_DEFAULTS  # noqa: E402
from advcl_plugin.solo.compat import apply_lightning_compat  # noqa: E402

apply_lightning_compat()  # current Lightning / torchmetrics for solo-learn 1.0.6 (what advcl-solo does)

IMAGES = 64  # dummy training images
PROJECTION = {"proj_hidden_dim": 32, "proj_output_dim": 16}
VICREG = {"sim_loss_weight": 25.0, "var_loss_weight": 25.0, "cov_loss_weight": 1.0}
#: method -> (method_kwargs, momentum encoder, the output dimension of "z")
METHODS: dict[str, tuple[dict, bool, int]] = {
    "advcl": ({"ks": [2, 10], "proj_output_dim": 16, "steps": 1}, False, 16),
    "simclr_adv": ({**PROJECTION, "temperature": 0.2, "steps": 1}, False, 16),
    "byol_adv": ({**PROJECTION, "pred_hidden_dim": 32, "steps": 1}, True, 16),
    "mocov2plus_adv": ({**PROJECTION, "temperature": 0.2, "queue_size": 64, "steps": 1}, True, 16),
    "vicreg_adv": ({**PROJECTION, **VICREG, "steps": 1}, False, 16),
    "simsiam_adv": ({**PROJECTION, "pred_hidden_dim": 32, "steps": 1}, False, 16),
    "barlow_twins_adv": ({**PROJECTION, "lamb": 0.0051, "scale_loss": 0.1, "steps": 1}, False, 16),
}


#: the solo-learn method each variant adds the adversarial view to
PARENTS = {name: name.removesuffix("_adv") for name in METHODS if name.endswith("_adv")}


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("labels") / "pl.npz"
    rng = np.random.default_rng(0)
    PseudoLabels({k: rng.integers(0, k, IMAGES) for k in (2, 10)}, dataset="fake", num_samples=IMAGES).save(path)
    return path


def base_cfg(method: str, labels_file, dataset: str = "custom", num_classes: int = 10):
    kwargs, momentum, _ = METHODS[method]
    cfg = {
        "name": f"contract-{method}",
        "method": method,
        "backbone": {"name": "resnet18"},
        "data": {"dataset": dataset, "train_path": ".", "val_path": ".", "format": "image_folder",
                 "num_workers": 0, "num_large_crops": 2, "num_small_crops": 0, "num_classes": num_classes},
        "optimizer": {"name": "sgd", "batch_size": 4, "lr": 0.1, "classifier_lr": 0.1, "weight_decay": 1e-5,
                      "kwargs": {"momentum": 0.9}},
        "scheduler": {"name": "warmup_cosine"},
        "checkpoint": {"enabled": False},
        "auto_resume": {"enabled": False},
        "max_epochs": 1,
        "devices": 1,
        "accelerator": "cpu",
        "num_nodes": 1,
        "method_kwargs": dict(kwargs),
    }  # fmt: skip
    if method == "advcl":
        cfg["method_kwargs"]["pseudo_labels_path"] = str(labels_file)
    if momentum:
        cfg["momentum"] = {"base_tau": 0.99, "final_tau": 1.0}
    cfg = OmegaConf.create(cfg)
    OmegaConf.set_struct(cfg, False)
    return cfg


def build(cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # advcl warns that the first large crop stands in for its original view
        return solo.methods.METHODS[cfg.method](cfg)


def dummy_loaders(dataset: str, num_classes: int, batch_size: int = 4):
    """Training batches as solo-learn's pipeline makes them ([index, [crop, crop], label]) and a validation loader."""
    size = 32 if "cifar" in dataset else 224
    augmentation = OmegaConf.create({
        "rrc": {"enabled": True, "crop_min_scale": 0.08, "crop_max_scale": 1.0},
        "color_jitter": {"prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1},
        "grayscale": {"prob": 0.2}, "gaussian_blur": {"prob": 0.0}, "solarization": {"prob": 0.0},
        "equalization": {"prob": 0.0}, "horizontal_flip": {"prob": 0.5}, "crop_size": size, "num_crops": 2,
    })  # fmt: skip
    transform = FullTransformPipeline([NCropAugmentation(build_transform_pipeline(dataset, augmentation), 2)])
    train = dataset_with_index(FakeData)(image_size=(3, size, size), num_classes=num_classes, transform=transform,
                                         size=IMAGES)  # fmt: skip
    from torchvision import transforms

    mean, std = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)) if "cifar" in dataset else (
        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # fmt: skip
    val = FakeData(image_size=(3, size, size), num_classes=num_classes, size=8,
                   transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)]))  # fmt: skip
    return prepare_dataloader(train, batch_size=batch_size, num_workers=0), torch.utils.data.DataLoader(val, 4)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_outputs_and_parameters_follow_solo_learns_contract(method, labels_file):
    cfg = base_cfg(method, labels_file)
    model = build(cfg)
    assert model.add_and_assert_specific_cfg(cfg) is cfg
    assert model.learnable_params and all("params" in group for group in model.learnable_params)
    names = {group.get("name") for group in model.learnable_params}
    assert {"backbone", "classifier"} <= names
    batch, small = torch.randn(4, 3, 224, 224), torch.randn(4, 3, 96, 96)
    out, multicrop = model(batch), model.multicrop_forward(small)
    z_dim = METHODS[method][2]
    assert out["logits"].shape == (4, cfg.data.num_classes)
    assert out["feats"].shape == (4, model.features_dim)
    assert out["z"].shape == (4, z_dim)
    assert multicrop["feats"].shape == (4, model.features_dim)
    # what the parent method returns, the variant returns too, with the same shapes
    parent = PARENTS.get(method)
    if parent is None:  # advcl: BaseMethod's outputs plus the projection, as solo-learn's contrastive methods
        assert multicrop["z"].shape == (4, z_dim)
        return
    parent_cfg = base_cfg(method, None)
    parent_cfg.method = parent
    own = set(ADVERSARIAL_DEFAULTS)
    parent_cfg.method_kwargs = {k: v for k, v in parent_cfg.method_kwargs.items() if k not in own}
    reference = solo.methods.METHODS[parent](parent_cfg)
    for mine, theirs in ((out, reference(batch)), (multicrop, reference.multicrop_forward(small))):
        assert set(theirs) <= set(mine)
        assert all(mine[key].shape == theirs[key].shape for key in theirs if torch.is_tensor(theirs[key]))


def test_advcl_sets_every_default_in_the_config(labels_file):
    cfg = base_cfg("advcl", labels_file)
    build(cfg)
    kwargs = cfg.method_kwargs
    assert kwargs.eps == pytest.approx(8 / 255) and kwargs.radius == 8.0 and list(kwargs.ks) == [2, 10]
    assert kwargs.projection_dim == 128 and kwargs.proj_output_dim == 16  # solo-learn's name wins for the head
    cfg = base_cfg("simclr_adv", labels_file)
    build(cfg)
    assert cfg.method_kwargs.eps == pytest.approx(8 / 255) and cfg.method_kwargs.steps == 1


def test_variants_still_read_the_old_adv_keys_with_a_warning(labels_file):
    cfg = base_cfg("simclr_adv", labels_file)
    cfg.method_kwargs = {k: v for k, v in cfg.method_kwargs.items() if k != "steps"} | {"adv_steps": 2}
    with pytest.warns(DeprecationWarning, match="method_kwargs.adv_steps is deprecated.*method_kwargs.steps"):
        method = solo.methods.METHODS[cfg.method](cfg)
    assert method.adversarial["steps"] == 2 and "adv_steps" not in cfg.method_kwargs
    both = base_cfg("simclr_adv", labels_file)
    both.method_kwargs = dict(both.method_kwargs) | {"adv_steps": 2}
    with pytest.raises(ValueError, match="both adv_steps and steps"):
        build(both)


@pytest.mark.parametrize("dataset", ["imagenet100", "cifar10"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_fits_solo_learn_style_dummy_data(method, dataset, labels_file, tmp_path):
    cfg = base_cfg(method, labels_file, dataset="custom" if dataset == "imagenet100" else dataset)
    model = build(cfg)
    train, val = dummy_loaders(dataset, cfg.data.num_classes)
    checkpointer = Checkpointer(cfg, logdir=tmp_path / "trained_models", frequency=1)
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[checkpointer])  # fmt: skip
    trainer.fit(model, train, val)
    # solo-learn's checkpointer: args.json with the method's whole setting, and a checkpoint main_linear.py reads
    (args_file,) = (tmp_path / "trained_models").rglob("args.json")
    args = json.loads(args_file.read_text())
    assert args["method"] == method and args["method_kwargs"]
    if method == "advcl":
        assert args["method_kwargs"]["eps"] == pytest.approx(8 / 255)
    else:
        assert args["method_kwargs"]["adversarial_weight"] == 1.0
    (checkpoint_file,) = (tmp_path / "trained_models").rglob("*.ckpt")
    state = torch.load(checkpoint_file, map_location="cpu", weights_only=True)["state_dict"]
    assert "backbone.conv1.weight" in state and "backbone.bn1.weight" in state  # the exported route, native names
    assert any(".aux_routes.normal." in k for k in state)
    # solo-learn's auto-resumer finds the run for the same settings
    found, _ = AutoResumer(tmp_path / "trained_models").find_checkpoint(cfg)
    assert found is not None and str(found) == str(checkpoint_file)
    # a strict state-dict round trip into a freshly built method
    again = build(base_cfg(method, labels_file, dataset=cfg.data.dataset))
    again.load_state_dict(torch.load(checkpoint_file, map_location="cpu", weights_only=True)["state_dict"])
