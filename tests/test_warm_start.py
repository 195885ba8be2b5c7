"""Warm start (issue: the cost of robustness) in the three front doors: the core/lightly function, the `advcl`
recipes (`model.init_from`) and solo-learn (`method_kwargs.init_from`). Each starts every BN route from the
clean encoder's weights and refuses, strictly, an encoder that does not fit."""

import pytest
import torch

from advcl_plugin import AdvCLConfig, AdvCLObjective, bn_route, cifar_resnet18, routed_bn_layers
from advcl_plugin.app.artifacts import save_encoder
from advcl_plugin.app.lightning import AdvCLPretrainModule
from advcl_plugin.app.recipe import load_recipe
from advcl_plugin.app.stages.pretrain import warm_start_from


def same_on_every_route(routed, clean, routes):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    clean.eval()(x)
    expected = clean(x)
    routed.eval()
    return all(torch.allclose(_route(routed, route, x), expected, atol=1e-6) for route in routes)


def _route(backbone, route, x):
    with bn_route(backbone, route):
        return backbone(x)


def test_core_and_lightly_warm_start_every_route_and_refuse_a_mismatch():
    from advcl_plugin.lightly import load_clean_encoder

    clean = cifar_resnet18(width=8)
    for module in clean.modules():  # running statistics that differ from a fresh network's
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    objective = AdvCLObjective(cifar_resnet18(width=8), AdvCLConfig(ks=(2,), steps=1))
    load_clean_encoder(objective.backbone, clean.state_dict())
    assert same_on_every_route(objective.backbone, clean, ("normal", "pgd", "pgd_ce"))
    wide = cifar_resnet18(width=16).state_dict()
    with pytest.raises(ValueError, match="does not fit this backbone: shape mismatch"):
        load_clean_encoder(AdvCLObjective(cifar_resnet18(width=8), AdvCLConfig(ks=(2,))).backbone, wide)
    partial = {k: v for k, v in clean.state_dict().items() if not k.startswith("layer4")}
    with pytest.raises(ValueError, match="missing"):
        load_clean_encoder(AdvCLObjective(cifar_resnet18(width=8), AdvCLConfig(ks=(2,))).backbone, partial)


def test_recipe_warm_start_routes_equal_the_clean_encoder_at_step_zero(tmp_path):
    clean = cifar_resnet18(width=8)
    info = {"arch": "cifar_resnet18", "width": 8, "feature_dim": 64, "route": None, "method": "simclr"}
    path = save_encoder(clean, tmp_path / "encoder.pt", info)
    recipe = load_recipe("demo", ["model.width=8", f"model.init_from={path}", f"output_dir={tmp_path}"])
    module = AdvCLPretrainModule(recipe)
    record = warm_start_from(recipe, module)
    assert record["path"] == str(path) and record["method"] == "simclr" and record["width"] == 8
    routes = routed_bn_layers(module.objective.backbone)[0].route_names
    assert set(routes) == {"normal", "pgd", "pgd_ce"}
    assert same_on_every_route(module.objective.backbone, clean, routes)
    narrow = load_recipe("demo", ["model.width=16", f"model.init_from={path}", f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="width 8; this run trains a cifar_resnet18 of width 16"):
        warm_start_from(narrow, AdvCLPretrainModule(narrow))
    missing = load_recipe("demo", ["model.init_from=no-such-run", f"output_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="neither a file nor a finished run"):
        warm_start_from(missing, AdvCLPretrainModule(missing))


@pytest.mark.parametrize("method", ["advcl", "byol_adv"])
def test_solo_method_kwargs_init_from(method, tmp_path):
    pytest.importorskip("solo", reason="solo-learn is not installed")
    from test_solo_contract import base_cfg, build

    from advcl_plugin import PseudoLabels

    labels = tmp_path / "pl.npz"
    PseudoLabels({k: torch.randint(0, k, (64,)).numpy() for k in (2, 10)}, dataset="fake", num_samples=64).save(labels)
    reference = build(base_cfg(method, labels))  # a solo-learn backbone of this recipe, as a clean encoder
    clean = reference.backbone
    from advcl_plugin.core.routed_bn import export_bn_route

    plain = export_bn_route(clean, "normal")
    for module in plain.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
    path = tmp_path / "clean.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in plain.state_dict().items()}}, path)
    cfg = base_cfg(method, labels)
    cfg.method_kwargs.init_from = str(path)
    warm = build(cfg)
    routes = routed_bn_layers(warm.backbone)[0].route_names
    x = torch.rand(2, 3, 32, 32)
    expected = plain.eval()(x)
    for backbone in [warm.backbone, *([warm.momentum_backbone] if hasattr(warm, "momentum_backbone") else [])]:
        backbone.eval()
        assert all(torch.allclose(_route(backbone, route, x), expected, atol=1e-5) for route in routes)
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, tmp_path / "bad.ckpt")
    bad = base_cfg(method, labels)
    bad.method_kwargs.init_from = str(tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="does not fit this backbone"):
        build(bad)
