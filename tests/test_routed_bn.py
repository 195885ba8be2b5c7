import pytest
import torch
import torchvision

from advcl_plugin import (
    MultiRouteBatchNorm,
    bn_route,
    cifar_resnet18,
    convert_to_multi_bn,
    export_bn_route,
    plain_state_dict,
    routed_bn_layers,
)
from advcl_plugin.core.routed_bn import (
    convert_legacy_routed_state_dict,
    convert_routed_sync_batchnorm,
    is_legacy_routed_state_dict,
)


def count_bn(module):
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


def make_nets():
    return {
        "torchvision": lambda: torchvision.models.resnet18(num_classes=10),
        "cifar": lambda: cifar_resnet18(width=8),
    }


@pytest.mark.parametrize("name", ["torchvision", "cifar"])
def test_converts_every_bn_and_copies_state(name):
    net = make_nets()[name]()
    for m in net.modules():  # distinct, non-trivial statistics to copy
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.weight.data.uniform_(0.5, 1.5)
    originals = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    states = [{k: v.clone() for k, v in m.state_dict().items()} for m in originals]
    converted = convert_to_multi_bn(net)
    layers = routed_bn_layers(converted)
    assert converted is net and len(layers) == len(originals)
    for layer, state in zip(layers, states):
        assert layer.route_names == ("normal", "pgd", "pgd_ce")
        for route in layer.route_names:
            for key, value in layer.route_layer(route).state_dict().items():
                torch.testing.assert_close(value, state[key])
        # routes hold independent tensors; the primary route ("pgd") keeps the native names
        assert layer.primary_route == "pgd" and layer.aux_routes["normal"].weight.data_ptr() != layer.weight.data_ptr()


def test_train_forward_updates_only_the_active_route():
    net = convert_to_multi_bn(cifar_resnet18(width=8))
    net.train()
    layer = routed_bn_layers(net)[0]
    before = {r: layer.route_layer(r).running_mean.clone() for r in layer.route_names}
    with bn_route(net, "normal"):
        net(torch.rand(4, 3, 32, 32))
    assert not torch.equal(layer.route_layer("normal").running_mean, before["normal"])
    torch.testing.assert_close(layer.route_layer("pgd").running_mean, before["pgd"])
    torch.testing.assert_close(layer.route_layer("pgd_ce").running_mean, before["pgd_ce"])
    assert layer.route == "normal"  # restored: the first route is active by default


@pytest.mark.parametrize("name", ["torchvision", "cifar"])
@pytest.mark.parametrize("route", ["normal", "pgd", "pgd_ce"])
def test_export_matches_routed_module_in_eval(name, route):
    net = convert_to_multi_bn(make_nets()[name]())
    net.train()
    for r in ("normal", "pgd", "pgd_ce"):  # give each route different statistics
        with bn_route(net, r):
            net(torch.rand(8, 3, 32, 32) * (0.3 + 0.3 * ("normal", "pgd", "pgd_ce").index(r)))
    net.eval()
    x = torch.rand(3, 3, 32, 32)
    with bn_route(net, route):
        expected = net(x)
    plain = export_bn_route(net, route).eval()
    assert not routed_bn_layers(plain) and count_bn(plain) == len(routed_bn_layers(net))
    torch.testing.assert_close(plain(x), expected)
    # the exported state dict loads strictly into the unconverted architecture
    fresh = make_nets()[name]()
    fresh.load_state_dict(plain.state_dict(), strict=True)
    torch.testing.assert_close(fresh.eval()(x), expected)
    # other routes give other outputs (so the test can tell them apart)
    other = "normal" if route != "normal" else "pgd"
    assert not torch.allclose(export_bn_route(net, other).eval()(x), expected)


def test_route_errors_and_restoration():
    net = cifar_resnet18(width=8)
    with pytest.raises(ValueError, match="convert_to_multi_bn"):
        with bn_route(net, "pgd"):
            pass
    with pytest.raises(ValueError, match="needs a backbone with BatchNorm"):
        convert_to_multi_bn(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4)))
    convert_to_multi_bn(net)
    with pytest.raises(KeyError, match="unknown BN route 'adv'"):
        with bn_route(net, "adv"):
            pass
    with pytest.raises(RuntimeError):
        with bn_route(net, "pgd"):
            raise RuntimeError("boom")
    assert all(layer.route == "normal" for layer in routed_bn_layers(net))
    with pytest.raises(ValueError, match="already routed"):
        convert_to_multi_bn(net, routes=("a", "b"))
    assert convert_to_multi_bn(net) is net  # idempotent with the same routes


def test_single_layer_and_batchnorm1d():
    layer = convert_to_multi_bn(torch.nn.BatchNorm1d(4), routes=("a", "b"))
    assert isinstance(layer, MultiRouteBatchNorm) and layer.route_names == ("a", "b")
    out = layer(torch.randn(5, 4))
    assert out.shape == (5, 4)
    assert isinstance(export_bn_route(layer, "b"), torch.nn.BatchNorm1d)


def test_sync_batchnorm_exports_plain_batchnorm():
    net = convert_to_multi_bn(cifar_resnet18(width=8))
    synced = convert_routed_sync_batchnorm(net)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    plain = export_bn_route(synced, "pgd")
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in plain.modules())
    cifar_resnet18(width=8).load_state_dict(plain.state_dict(), strict=True)


@pytest.mark.parametrize("name", ["torchvision", "cifar"])
def test_routed_state_dict_holds_the_plain_backbone_with_native_names(name):
    plain = make_nets()[name]()
    routed = convert_to_multi_bn(make_nets()[name]())
    routed_state, plain_state = routed.state_dict(), plain.state_dict()
    for key, value in plain_state.items():
        assert key in routed_state and routed_state[key].shape == value.shape, key
    extra = set(routed_state) - set(plain_state)
    assert extra and all(".aux_routes." in k for k in extra)
    # non-strict loading (solo-learn's main_linear.py) takes the "pgd" route; strict after plain_state_dict
    net = convert_to_multi_bn(make_nets()[name]())
    net.train()
    with bn_route(net, "pgd"):
        net(torch.rand(8, 3, 32, 32))
    fresh = make_nets()[name]()
    missing, _ = fresh.load_state_dict(net.state_dict(), strict=False)
    assert not missing
    fresh.load_state_dict(plain_state_dict(net), strict=True)
    x = torch.rand(2, 3, 32, 32)
    with bn_route(net.eval(), "pgd"):
        torch.testing.assert_close(fresh.eval()(x), net(x))


def test_legacy_routed_checkpoints_convert():
    net = convert_to_multi_bn(cifar_resnet18(width=8))
    state = net.state_dict()
    legacy = {}  # the 0.1 layout: every route under <bn>.routes.<route>.
    for module_name, layer in net.named_modules():
        if isinstance(layer, MultiRouteBatchNorm):
            for route in layer.route_names:
                for leaf, value in layer.route_layer(route).state_dict().items():
                    legacy[f"{module_name}.routes.{route}.{leaf}"] = value
    legacy |= {k: v for k, v in state.items() if not any(k.startswith(f"{m}.") for m in _routed_names(net))}
    assert is_legacy_routed_state_dict(legacy) and not is_legacy_routed_state_dict(state)
    converted = convert_legacy_routed_state_dict(legacy)
    assert converted.keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(converted[key], value, msg=key)


def _routed_names(net):
    return [name for name, m in net.named_modules() if isinstance(m, MultiRouteBatchNorm)]


def test_routed_sync_conversion_keeps_every_route():
    net = convert_to_multi_bn(cifar_resnet18(width=8))
    synced = convert_routed_sync_batchnorm(net)
    layers = routed_bn_layers(synced)
    assert layers and all(isinstance(layer, torch.nn.SyncBatchNorm) for layer in layers)
    assert all(isinstance(bn, torch.nn.SyncBatchNorm) for layer in layers for bn in layer.aux_routes.values())
    assert layers[0].route_names == ("normal", "pgd", "pgd_ce")
    cifar_resnet18(width=8).load_state_dict(export_bn_route(synced, "normal").state_dict(), strict=True)
