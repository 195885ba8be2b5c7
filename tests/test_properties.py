"""Property-based tests (hypothesis) of the core's invariants: the attack stays in the eps-ball and in
[0, 1] for any input and budget, HFC + LFC = x for any image and radius, the contrastive loss does not
depend on the order of the batch, and outputs are finite."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advcl_plugin import MultiViewNTXentLoss, high_frequency, low_frequency, pgd_linf

FAST = settings(max_examples=25, deadline=None)


@FAST
@given(
    seed=st.integers(0, 2**16),
    eps=st.floats(0, 1),
    steps=st.integers(0, 4),
    step_size=st.floats(0, 1),
    shape=st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
    edge=st.sampled_from(["none", "zeros", "ones"]),
)
def test_pgd_stays_in_the_ball_and_in_pixel_range(seed, eps, steps, step_size, shape, edge):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=generator)
    if edge == "zeros":
        x[..., 0] = 0
    elif edge == "ones":
        x[..., -1] = 1
    weights = torch.randn(shape[1:], generator=generator)
    adversarial = pgd_linf(lambda z: (z * weights).sum(), x, eps, steps, step_size, generator=generator)
    assert torch.isfinite(adversarial).all()
    assert (adversarial - x).abs().max() <= eps + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1


@FAST
@given(
    seed=st.integers(0, 2**16),
    size=st.tuples(st.integers(2, 24), st.integers(2, 24)),
    radius=st.floats(0.1, 40),
)
def test_hfc_plus_lfc_is_the_image(seed, size, radius):
    x = torch.rand((2, 3, *size), generator=torch.Generator().manual_seed(seed))
    high, low = high_frequency(x, radius), low_frequency(x, radius)
    assert torch.isfinite(high).all() and torch.isfinite(low).all()
    torch.testing.assert_close(high + low, x, atol=1e-5, rtol=1e-5)


@FAST
@given(seed=st.integers(0, 2**16), batch=st.integers(2, 8), views=st.integers(2, 5), dim=st.integers(2, 16))
def test_contrastive_loss_is_invariant_to_the_order_of_the_batch(seed, batch, views, dim):
    generator = torch.Generator().manual_seed(seed)
    embeddings = [torch.randn(batch, dim, generator=generator) for _ in range(views)]
    order = torch.randperm(batch, generator=generator)
    loss = MultiViewNTXentLoss()
    original, permuted = loss(embeddings), loss([e[order] for e in embeddings])
    assert torch.isfinite(original)
    torch.testing.assert_close(original, permuted, atol=1e-5, rtol=1e-5)
