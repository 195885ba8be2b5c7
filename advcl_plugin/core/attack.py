"""L-infinity projected gradient ascent: the inner maximisation of eqs. (2), (7), (9), (10).

Example:
    >>> import torch
    >>> from advcl_plugin import pgd_linf
    >>> net = torch.nn.Linear(12, 3)
    >>> x = torch.rand(5, 12)                                  # pixels in [0, 1]
    >>> y = torch.randint(0, 3, (5,))
    >>> x_adv = pgd_linf(lambda z: torch.nn.functional.cross_entropy(net(z), y), x)
    >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import overload

import torch
from torch import Tensor

__all__ = ["check_pixel_range", "pgd_linf"]


def check_pixel_range(x: Tensor, name: str = "input", tolerance: float = 1e-6) -> None:
    """Raise ``ValueError`` unless every value of ``x`` is finite and lies in [0, 1].

    The attack budget eps = 8/255 is defined in [0, 1] pixel units; values outside
    that range almost always mean mean/std-normalised tensors reached the attack.
    NaN or infinite pixels are refused too (a NaN compares false with any bound).
    """
    if x.numel() == 0:
        return
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{name} holds {bad} NaN or infinite value(s): pixels must be finite numbers in [0, 1]")
    low, high = float(x.min()), float(x.max())
    if low < -tolerance or high > 1 + tolerance:
        raise ValueError(
            f"{name} must hold pixel values in [0, 1] (the attack budget is in pixel units), "
            f"but its values span [{low:.3f}, {high:.3f}]. This usually means mean/std-"
            "normalised images reached the attack: attack un-normalised images and normalise "
            "inside the model."
        )


@overload
def pgd_linf(
    loss_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    eps: float = ...,
    steps: int = ...,
    step_size: float = ...,
    random_start: bool = ...,
    generator: torch.Generator | None = ...,
) -> Tensor: ...


@overload
def pgd_linf(
    loss_fn: Callable[..., Tensor],
    x: Sequence[Tensor],
    eps: float = ...,
    steps: int = ...,
    step_size: float = ...,
    random_start: bool = ...,
    generator: torch.Generator | None = ...,
) -> tuple[Tensor, ...]: ...


def pgd_linf(
    loss_fn: Callable[..., Tensor],
    x: Tensor | Sequence[Tensor],
    eps: float = 8 / 255,
    steps: int = 5,
    step_size: float = 2 / 255,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor | tuple[Tensor, ...]:
    """Find ``x + delta`` with ``||delta||_inf <= eps`` that ascends ``loss_fn`` (PGD, Madry et al.).

    Solves the inner ``max_{||delta||_inf <= eps}`` of eqs. (2), (7), (9) and (10) with
    ``steps`` signed-gradient steps, each followed by projection onto the eps-ball
    around ``x`` and onto [0, 1].  Several inputs can be attacked jointly against
    one loss (AdvCL perturbs ``x_cl`` and ``x_ce`` together): pass a sequence and
    ``loss_fn`` receives the perturbed tensors as positional arguments.  Each input
    gets its own random start, uniform in [-eps, eps] and clipped to [0, 1].
    Gradients are taken only with respect to the inputs (model parameters'
    ``.grad`` are left untouched).  The model's mode (train/eval) is the caller's
    choice.

    Args:
        loss_fn: maps the perturbed input(s) to a scalar loss to maximise.
        x: clean input(s) with values in [0, 1], any shape.
        eps: L-inf budget in [0, 1] pixel units (8/255 in the paper).
        steps: number of PGD iterations (5 for pretraining, 20 for evaluation).
        step_size: size of each signed step (2/255).
        random_start: start from a uniform random point of the eps-ball.
        generator: random generator for the start (on the inputs' device).

    Returns:
        Detached adversarial tensor(s), same structure, shape, dtype and device as ``x``.
    """
    joint = not isinstance(x, Tensor)
    clean = list(x) if joint else [x]
    if not clean:
        raise ValueError("pgd_linf needs at least one input tensor")
    if eps < 0 or step_size < 0 or steps < 0:
        raise ValueError(f"eps, step_size and steps must be >= 0 (got {eps}, {step_size}, {steps})")
    for index, tensor in enumerate(clean):
        check_pixel_range(tensor, name=f"pgd_linf input {index}" if joint else "pgd_linf input")

    clean = [tensor.detach() for tensor in clean]
    adversarial = []
    for tensor in clean:
        if random_start and eps > 0:
            noise = torch.rand(tensor.shape, generator=generator, device=tensor.device, dtype=tensor.dtype)
            tensor = (tensor + (2 * noise - 1) * eps).clamp(0, 1)
        adversarial.append(tensor.clone())

    for _ in range(steps):
        inputs = [tensor.requires_grad_(True) for tensor in adversarial]
        with torch.enable_grad():
            loss = loss_fn(*inputs)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        gradients = torch.autograd.grad(loss, inputs, allow_unused=True)
        stepped = []
        for tensor, start, gradient in zip(inputs, clean, gradients, strict=True):
            tensor = tensor.detach()
            if gradient is not None:
                tensor = tensor + step_size * gradient.sign()
            tensor = torch.minimum(torch.maximum(tensor, start - eps), start + eps).clamp(0, 1)
            stepped.append(tensor)
        adversarial = stepped

    result = tuple(tensor.detach() for tensor in adversarial)
    return result if joint else result[0]
