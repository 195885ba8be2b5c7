"""L-infinity projected gradient ascent: the inner maximisation of eqs. (2), (7), (9), (10).

Examples:
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

from collections.abc import Callable, Iterable, Sequence
from typing import overload

import torch
from torch import Tensor

__all__ = [
    "FP16_ATTACK_LOSS_SCALE",
    "check_pixel_range",
    "check_pixel_ranges",
    "input_gradients",
    "linf_ascent",
    "pgd_linf",
    "pixels_in_range",
]


def check_pixel_range(x: Tensor, name: str = "input", tolerance: float = 1e-6) -> None:
    """Raise ``ValueError`` unless every value of ``x`` is finite and lies in [0, 1].

    The attack budget eps = 8/255 is defined in [0, 1] pixel units; values outside
    that range almost always mean mean/std-normalised tensors reached the attack.
    NaN or infinite pixels are refused too (a NaN compares false with any bound).
    One host-device synchronisation (see :func:`check_pixel_ranges` for several tensors at once).
    """
    check_pixel_ranges({name: x}, tolerance)


def pixels_in_range(tensors: Iterable[Tensor], tolerance: float = 1e-6) -> Tensor:
    """A 0-d bool tensor on the tensors' device: every value finite and in [0, 1] (no synchronisation)."""
    present = [x.detach() for x in tensors if x.numel()]
    if not present:
        return torch.ones((), dtype=torch.bool)
    bounds = torch.stack([torch.stack(torch.aminmax(x)).float() for x in present])  # (n, 2); NaN propagates
    return ((bounds[:, 0] >= -tolerance) & (bounds[:, 1] <= 1 + tolerance)).all()


def check_pixel_ranges(tensors: dict[str, Tensor], tolerance: float = 1e-6) -> None:
    """:func:`check_pixel_range` for several named tensors with one host-device synchronisation in all
    (one min/max reduction per tensor; the message is worked out only when a check fails)."""
    present = {name: x for name, x in tensors.items() if x.numel()}
    if not present or bool(pixels_in_range(present.values(), tolerance)):
        return
    for name, x in present.items():
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


#: loss scale of the first try under float16 autocast (PGD needs only the gradient's sign)
FP16_ATTACK_LOSS_SCALE = 2.0**16


def input_gradients(loss: Tensor, inputs: Sequence[Tensor]) -> tuple[Tensor | None, ...]:
    """Gradients of a scalar ``loss`` with respect to ``inputs``, safe under float16 autocast.

    Under float16 autocast (Lightning's ``16-mixed``) small input gradients underflow to zero in the
    half-precision backward, and ``sign(0) = 0`` stops the attack where they do.  PGD uses only the sign,
    so the loss is scaled as a gradient scaler would scale it (:data:`FP16_ATTACK_LOSS_SCALE`, divided by
    16 while any gradient overflows, down to 1); the sign of each finite gradient is unchanged by the
    scale.  Outside float16 autocast this is one ``torch.autograd.grad`` call.
    """
    device_type = inputs[0].device.type
    half = torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16
    if not half:
        return torch.autograd.grad(loss, list(inputs), allow_unused=True)
    scale = FP16_ATTACK_LOSS_SCALE
    while True:
        gradients = torch.autograd.grad(loss * scale, list(inputs), allow_unused=True, retain_graph=scale > 1)
        finite = [torch.isfinite(g).all() for g in gradients if g is not None]
        if scale <= 1 or not finite or bool(torch.stack(finite).all()):
            return gradients
        scale = max(scale / 16, 1.0)


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
    clean: list[Tensor] = list(x) if joint else [x]  # type: ignore[list-item]
    if not clean:
        raise ValueError("pgd_linf needs at least one input tensor")
    if eps < 0 or step_size < 0 or steps < 0:
        raise ValueError(f"eps, step_size and steps must be >= 0 (got {eps}, {step_size}, {steps})")
    check_pixel_ranges({f"pgd_linf input {i}" if joint else "pgd_linf input": t for i, t in enumerate(clean)})
    result = linf_ascent(loss_fn, clean, eps, steps, step_size, random_start, generator)
    return result if joint else result[0]


def linf_ascent(
    loss_fn: Callable[..., Tensor],
    clean: Sequence[Tensor],
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, ...]:
    """The iterations of :func:`pgd_linf` on inputs already checked to be pixels in [0, 1] (callers that
    checked them once per batch, such as :class:`~advcl_plugin.core.objective.AdvCLObjective`, call
    this and add no host-device synchronisation per attack)."""
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
        gradients = input_gradients(loss, inputs)
        stepped = []
        for tensor, start, gradient in zip(inputs, clean, gradients, strict=True):
            tensor = tensor.detach()
            if gradient is not None:
                tensor = tensor + step_size * gradient.sign()
            tensor = torch.minimum(torch.maximum(tensor, start - eps), start + eps).clamp(0, 1)
            stepped.append(tensor)
        adversarial = stepped

    return tuple(tensor.detach() for tensor in adversarial)
