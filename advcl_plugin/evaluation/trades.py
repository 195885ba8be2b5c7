"""TRADES (Zhang et al., ICML 2019): the adversarial full finetuning (AFF) loss of the RobustSSL benchmark.

``loss = CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x'))``, with ``x'`` the point of the
eps-ball around ``x`` that maximises the KL term (signed-gradient steps from ``x`` plus a small
Gaussian start).  The benchmark finds ``x'`` with the network in eval mode and computes the
loss in train mode; :class:`advcl_plugin.lightly.AdversarialFinetuneClassifier` does the same.

Examples:
    >>> import torch
    >>> from advcl_plugin.evaluation.trades import trades_kl_attack, trades_loss
    >>> net = torch.nn.Linear(12, 3)
    >>> x, y = torch.rand(5, 12), torch.randint(0, 3, (5,))
    >>> x_adv = trades_kl_attack(net, x, eps=8 / 255, steps=3)
    >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)
    True
    >>> trades_loss(net(x), net(x_adv), y, beta=6.0).dim()
    0
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from advcl_plugin.core.attack import check_pixel_range, input_gradients

__all__ = ["TRADES_START_STD", "trades_kl_attack", "trades_loss"]

#: standard deviation of TRADES' Gaussian start around the clean input (pixel units)
TRADES_START_STD = 0.001


def trades_kl_attack(
    logits_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    eps: float = 8 / 255,
    steps: int = 10,
    step_size: float = 2 / 255,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The inner maximisation of TRADES: ``max_{||x' - x||_inf <= eps} KL(softmax f(x) || softmax f(x'))``.

    Starts at ``x + 0.001 * N(0, 1)``; each step moves by ``step_size * sign(grad)`` and projects onto
    the eps-ball around ``x`` and onto [0, 1].  The caller chooses the network's mode (eval, as the
    benchmark does).  Returns a detached tensor shaped like ``x``.
    """
    if eps < 0 or step_size < 0 or steps < 0:
        raise ValueError(f"eps, step_size and steps must be >= 0 (got {eps}, {step_size}, {steps})")
    check_pixel_range(x, name="trades_kl_attack input")
    clean = x.detach()
    with torch.no_grad():
        natural = F.softmax(logits_fn(clean), dim=1)
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    adversarial = clean + TRADES_START_STD * noise
    for _ in range(steps):
        adversarial.requires_grad_(True)
        with torch.enable_grad():
            divergence = F.kl_div(F.log_softmax(logits_fn(adversarial), dim=1), natural, reduction="sum")
        (gradient,) = input_gradients(divergence, [adversarial])
        gradient = torch.zeros_like(adversarial) if gradient is None else gradient
        adversarial = adversarial.detach() + step_size * gradient.sign()
        adversarial = torch.minimum(torch.maximum(adversarial, clean - eps), clean + eps).clamp(0, 1)
    return adversarial.clamp(0, 1).detach()


def trades_loss(natural_logits: Tensor, adversarial_logits: Tensor, targets: Tensor, beta: float = 6.0) -> Tensor:
    """TRADES' objective (Zhang et al. 2019, eq. 5): cross-entropy on clean inputs plus ``beta`` times
    the batch-mean KL divergence of the adversarial prediction from the clean one (gradients reach both)."""
    if beta < 0:
        raise ValueError(f"beta must be >= 0 (a negative weight rewards the divergence it should penalise), got {beta}")
    natural = F.cross_entropy(natural_logits, targets)
    divergence = F.kl_div(
        F.log_softmax(adversarial_logits, dim=1), F.softmax(natural_logits, dim=1), reduction="batchmean"
    )
    return natural + beta * divergence
