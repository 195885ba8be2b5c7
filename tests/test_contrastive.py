import math

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss

from advcl_plugin import MultiViewNTXentLoss


def direct_loss(views, temperature, base_temperature):
    """Eq. (5) written with explicit loops: mean over anchors of minus the mean log-prob of positives."""
    m, b = len(views), views[0].shape[0]
    z = [F.normalize(v.double(), dim=1) for v in views]
    total, anchors = 0.0, 0
    for v in range(m):
        for i in range(b):
            denominator = sum(
                math.exp(float(z[v][i] @ z[w][k]) / temperature) for w in range(m) for k in range(b) if (w, k) != (v, i)
            )
            positives = [float(z[v][i] @ z[w][i]) / temperature - math.log(denominator) for w in range(m) if w != v]
            total += -sum(positives) / len(positives)
            anchors += 1
    loss = total / anchors
    return loss * (temperature / base_temperature) if base_temperature else loss


@pytest.mark.parametrize("num_views", [2, 3, 4])
@pytest.mark.parametrize("base_temperature", [0.07, None])
def test_matches_direct_formula(num_views, base_temperature):
    views = [torch.randn(5, 7) for _ in range(num_views)]
    loss = MultiViewNTXentLoss(temperature=0.5, base_temperature=base_temperature)(views)
    assert loss.item() == pytest.approx(direct_loss(views, 0.5, base_temperature), rel=1e-5)


def test_scale_is_temperature_over_base_temperature():
    views = [torch.randn(6, 8) for _ in range(4)]
    scaled = MultiViewNTXentLoss(0.5, 0.07)(views)
    unscaled = MultiViewNTXentLoss(0.5, None)(views)
    assert scaled.item() == pytest.approx(unscaled.item() * 0.5 / 0.07, rel=1e-6)


def test_two_views_equal_lightly_ntxent():
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    ours = MultiViewNTXentLoss(temperature=0.2, base_temperature=None)([a, b])
    theirs = NTXentLoss(temperature=0.2)(a, b)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_invariant_to_scale_and_view_order():
    views = [torch.randn(4, 6) for _ in range(3)]
    loss = MultiViewNTXentLoss()
    assert loss(views).item() == pytest.approx(loss([3 * v for v in views[::-1]]).item(), rel=1e-5)


def test_gradients_flow_to_every_view():
    views = [torch.randn(4, 6, requires_grad=True) for _ in range(4)]
    MultiViewNTXentLoss()(views).backward()
    assert all(v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0 for v in views)


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2 views"):
        MultiViewNTXentLoss()([torch.randn(4, 3)])
    with pytest.raises(ValueError, match="same shape"):
        MultiViewNTXentLoss()([torch.randn(4, 3), torch.randn(5, 3)])
    with pytest.raises(ValueError, match="temperature"):
        MultiViewNTXentLoss(temperature=0)
