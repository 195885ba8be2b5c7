import pytest
import torch
import torch.nn.functional as F

from advcl_plugin import pgd_linf


@pytest.fixture
def classifier():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))


def images(n=16):
    x = torch.rand(n, 3, 8, 8)
    x[:, 0] = 0.0  # pixels on the boundaries of [0, 1]
    x[:, 1, :4] = 1.0
    return x


@pytest.mark.parametrize("eps,steps,random_start", [(8 / 255, 5, True), (16 / 255, 10, True), (4 / 255, 3, False)])
def test_stays_in_ball_and_pixel_range(classifier, eps, steps, random_start):
    x, y = images(), torch.randint(0, 5, (16,))
    x_adv = pgd_linf(lambda z: F.cross_entropy(classifier(z), y), x, eps, steps, 2 / 255, random_start)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_raises_the_loss(classifier):
    x, y = images(64), torch.randint(0, 5, (64,))

    def loss(z):
        return F.cross_entropy(classifier(z), y)

    x_adv = pgd_linf(loss, x, eps=8 / 255, steps=10)
    assert loss(x_adv) > loss(x) + 0.05


def test_one_step_without_random_start_is_fgsm(classifier):
    x, y = images(), torch.randint(0, 5, (16,))
    x_req = x.clone().requires_grad_(True)
    F.cross_entropy(classifier(x_req), y).backward()
    expected = (x + 2 / 255 * x_req.grad.sign()).clamp(x - 8 / 255, x + 8 / 255).clamp(0, 1)
    x_adv = pgd_linf(lambda z: F.cross_entropy(classifier(z), y), x, 8 / 255, 1, 2 / 255, random_start=False)
    torch.testing.assert_close(x_adv, expected)


def test_joint_attack_perturbs_each_input_in_its_own_ball(classifier):
    a, b = images(), images()
    y = torch.randint(0, 5, (16,))
    calls = []

    def loss(za, zb):
        calls.append((za.requires_grad, zb.requires_grad))
        return F.cross_entropy(classifier(za), y) + F.cross_entropy(classifier(zb), y, reduction="sum")

    a_adv, b_adv = pgd_linf(loss, (a, b), steps=4)
    assert len(calls) == 4 and all(all(c) for c in calls)
    for clean, adv in ((a, a_adv), (b, b_adv)):
        assert (adv - clean).abs().max() <= 8 / 255 + 1e-6 and (adv != clean).any()


def test_generator_makes_it_reproducible(classifier):
    x, y = images(), torch.randint(0, 5, (16,))

    def run(seed):
        return pgd_linf(
            lambda z: F.cross_entropy(classifier(z), y), x, steps=2, generator=torch.Generator().manual_seed(seed)
        )

    torch.testing.assert_close(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_zero_steps_returns_random_start_in_ball():
    x = images()
    x_adv = pgd_linf(lambda z: z.sum(), x, eps=8 / 255, steps=0)
    assert 0 < (x_adv - x).abs().max() <= 8 / 255 + 1e-6


def test_parameter_gradients_untouched(classifier):
    x, y = images(), torch.randint(0, 5, (16,))
    pgd_linf(lambda z: F.cross_entropy(classifier(z), y), x)
    assert all(p.grad is None for p in classifier.parameters())


def test_rejects_normalised_inputs(classifier):
    normalised = (images() - 0.5) / 0.25
    with pytest.raises(ValueError, match=r"\[0, 1\].*normalised"):
        pgd_linf(lambda z: classifier(z).sum(), normalised)
    with pytest.raises(ValueError, match="input 1"):
        pgd_linf(lambda a, b: a.sum() + b.sum(), (images(), images() + 2))


def test_rejects_non_scalar_loss(classifier):
    with pytest.raises(ValueError, match="scalar"):
        pgd_linf(lambda z: classifier(z), images())
