import copy

import pytest
import torch

from advcl_plugin import AdvCLConfig, AdvCLObjective, MultiViewNTXentLoss, bn_route, cifar_resnet18, high_frequency
from advcl_plugin.core.routed_bn import routed_bn_layers
from advcl_plugin.testing import AuthorsLoopObjective

KS = (2, 10, 50, 100, 500)


def batch(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, t1, t2 = (torch.rand(b, 3, 32, 32, generator=g) for _ in range(3))
    labels = torch.stack([torch.randint(0, k, (b,), generator=g) for k in KS], dim=1)
    return x, t1, t2, labels


def make(cls=AdvCLObjective, **kwargs):
    torch.manual_seed(0)
    return cls(cifar_resnet18(width=4), AdvCLConfig(ks=KS, **kwargs))


def reference_copy(objective):
    """The authors' loop with the same weights."""
    reference = AuthorsLoopObjective(copy.deepcopy(objective.backbone), objective.config)
    reference.load_state_dict(objective.state_dict())
    return reference


def test_optimised_objective_and_authors_loop_agree():
    optimised = make(steps=3)
    authors_loop = reference_copy(optimised)
    x, t1, t2, labels = batch()
    results = []
    for objective in (optimised, authors_loop):
        out = objective(x, t1, t2, labels, generator=torch.Generator().manual_seed(7))
        loss, logs = out.loss, out.logs
        loss.backward()
        results.append((loss, logs, {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}))
    (loss_a, logs_a, grads_a), (loss_b, logs_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-5)
    for key in ("attack_loss", "contrastive_loss", "pseudo_label_loss", "delta_abs_mean"):
        torch.testing.assert_close(logs_a[key], logs_b[key], rtol=1e-5, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == len(list(optimised.parameters()))
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-5, msg=name)
    # the downstream ("pgd") route sees the same forward passes in both loops
    for layer_a, layer_b in zip(routed_bn_layers(optimised.backbone), routed_bn_layers(authors_loop.backbone)):
        torch.testing.assert_close(layer_a.route_layer("pgd").running_mean, layer_b.route_layer("pgd").running_mean)


def test_loss_is_eq9_plus_lambda_eq10_at_the_found_perturbation():
    objective = make(steps=2)
    x, t1, t2, labels = batch()
    out = objective(x, t1, t2, labels, generator=torch.Generator().manual_seed(1))
    loss, logs = out.loss, out.logs
    assert logs["delta_abs_max"] <= 8 / 255 + 1e-6 and logs["delta_abs_mean"] > 0
    torch.testing.assert_close(loss, logs["contrastive_loss"] + 0.2 * logs["pseudo_label_loss"])
    # the training loss at the adversarial point exceeds the loss at delta = 0 (the attack ascends)
    clean = make(steps=0, eps=0.0)
    clean.load_state_dict(objective.state_dict())
    clean_loss = clean(x, t1, t2, labels).loss
    assert loss > clean_loss


def count_views(objective, *args, **kwargs):
    seen = []
    original = objective.contrastive_loss.forward

    def spy(views):
        seen.append(len(views))
        return original(views)

    objective.contrastive_loss.forward = spy
    objective(*args, **kwargs)
    return seen[-1]


@pytest.mark.parametrize(
    "kwargs,views",
    [
        ({}, 4),  # [x_cl, tau1, tau2, x_h]
        ({"frequency_views": ()}, 3),  # no HFC
        ({"frequency_views": ("low",)}, 4),  # LFC instead of HFC
        ({"frequency_views": ("low", "high")}, 5),
        ({"attack": "paired", "frequency_views": (), "use_pseudo_labels": False}, 2),
        ({"attack": "paired", "paired_clean_views": True, "frequency_views": ()}, 4),
        ({"attack": "none", "frequency_views": (), "use_pseudo_labels": False}, 2),  # SimCLR
    ],
)
def test_ablation_views(kwargs, views):
    objective = make(steps=1, **kwargs)
    x, t1, t2, labels = batch()
    labels = labels if objective.config.use_pseudo_labels else None
    assert count_views(objective, x, t1, t2, labels) == views


def test_without_attack_equals_direct_computation():
    objective = make(attack="none", use_pseudo_labels=False)
    x, t1, t2, _ = batch()
    out = objective(x, t1, t2)
    loss, logs = out.loss, out.logs
    assert "attack_loss" not in logs
    with torch.no_grad():
        z = [objective.projection_head(objective.features(v, "normal")) for v in (t1, t2, high_frequency(x, 8))]
    torch.testing.assert_close(loss, MultiViewNTXentLoss(0.5, 0.07)(z))


def test_every_route_is_used():
    objective = make(steps=1)
    layer = routed_bn_layers(objective.backbone)[0]
    before = {r: layer.route_layer(r).running_mean.clone() for r in layer.route_names}
    objective(*batch())
    for route in ("normal", "pgd", "pgd_ce"):
        assert not torch.equal(layer.route_layer(route).running_mean, before[route]), route


def test_converts_plain_backbone_with_needed_routes_only():
    config = AdvCLConfig(attack="none", use_pseudo_labels=False, frequency_views=())
    objective = AdvCLObjective(cifar_resnet18(width=4), config)
    assert routed_bn_layers(objective.backbone)[0].route_names == ("normal",)
    with pytest.raises(ValueError, match="lacks routes"):
        AdvCLObjective(objective.backbone)


def test_input_errors():
    objective = make(steps=1)
    x, t1, t2, labels = batch()
    with pytest.raises(ValueError, match="pseudo_labels are required"):
        objective(x, t1, t2)
    with pytest.raises(ValueError, match=r"shape \(8, 5\)"):
        objective(x, t1, t2, labels[:, :2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        objective((x - 0.5) / 0.25, t1, t2, labels)
    with pytest.raises(ValueError, match="needs an attack"):
        make(attack="none")
    with pytest.raises(ValueError, match="frequency_views"):
        make(frequency_views=("mid",))
    with pytest.raises(TypeError, match="AdvCLConfig"):
        AdvCLObjective(cifar_resnet18(width=4), {"steps": 2})


def test_feature_dim_inferred_for_torchvision_backbone():
    import torchvision

    backbone = torchvision.models.resnet18()
    backbone.fc = torch.nn.Identity()
    objective = AdvCLObjective(backbone, AdvCLConfig(ks=(2, 10), steps=1))
    assert objective.feature_dim == 512
    x, t1, t2, _ = batch(4)
    loss = objective(x, t1, t2, torch.zeros(4, 2, dtype=torch.long)).loss
    assert torch.isfinite(loss)
    with bn_route(objective.backbone, "pgd"):
        assert objective.backbone(x).shape == (4, 512)


def test_output_gives_the_clean_views_backbone_features():
    optimised = make(steps=1)
    authors_loop = reference_copy(optimised)
    x, t1, t2, labels = batch()
    outputs = [o(x, t1, t2, labels, generator=torch.Generator().manual_seed(3)) for o in (optimised, authors_loop)]
    for out in outputs:
        assert len(out.clean_features) == 3 and out.clean_features[0].shape == (8, optimised.feature_dim)
        assert len(out.adversarial) == 2 and out.adversarial[0].shape == x.shape
    for a, b in zip(outputs[0].clean_features, outputs[1].clean_features):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        expected = optimised.features(t1, "normal")
    torch.testing.assert_close(outputs[0].clean_features[0].detach(), expected, rtol=1e-4, atol=1e-5)


def test_feature_maps_are_refused():
    class Maps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x))

    with pytest.raises(ValueError, match="pooled features"):
        AdvCLObjective(Maps(), AdvCLConfig(ks=(2,), steps=1))
