import pytest
import torch
import torchvision

from advcl_plugin import (
    MultiRouteBatchNorm,
    bn_route,
    cifar_resnet18,
    convert_to_multi_bn,
    export_bn_route,
    routed_bn_layers,
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
        for route in layer.routes.values():
            for key, value in route.state_dict().items():
                torch.testing.assert_close(value, state[key])
        # routes hold independent tensors
        assert layer.routes["normal"].weight.data_ptr() != layer.routes["pgd"].weight.data_ptr()


def test_train_forward_updates_only_the_active_route():
    net = convert_to_multi_bn(cifar_resnet18(width=8))
    net.train()
    layer = routed_bn_layers(net)[0]
    before = {r: layer.routes[r].running_mean.clone() for r in layer.route_names}
    with bn_route(net, "pgd"):
        net(torch.rand(4, 3, 32, 32))
    assert not torch.equal(layer.routes["pgd"].running_mean, before["pgd"])
    torch.testing.assert_close(layer.routes["normal"].running_mean, before["normal"])
    torch.testing.assert_close(layer.routes["pgd_ce"].running_mean, before["pgd_ce"])
    assert layer.route == "normal"  # restored


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
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    plain = export_bn_route(synced, "pgd")
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in plain.modules())
    cifar_resnet18(width=8).load_state_dict(plain.state_dict(), strict=True)
