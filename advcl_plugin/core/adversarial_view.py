"""An adversarial view for any self-supervised method: ``x + delta`` found by PGD against the
method's own loss (the inner maximisation of eqs. 2 and 7), through the backbone's ``"pgd"`` BN route.

One implementation serves every host: the lightly adapter re-exports it, and solo-learn's
adversarial variants (``simclr_adv``, ``byol_adv``, ...) build one around their parent's loss.

Examples:
    >>> import torch
    >>> from advcl_plugin import AdversarialView, MultiViewNTXentLoss, ProjectionHead, cifar_resnet18
    >>> backbone, head = cifar_resnet18(width=8), ProjectionHead(64)
    >>> contrastive = MultiViewNTXentLoss()
    >>> view = AdversarialView(backbone, lambda x: head(backbone(x)), lambda z, r: contrastive([z, r]), steps=2)
    >>> x0, x1 = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    >>> z1 = head(backbone(x1))                       # clean view, BN route "normal"
    >>> x_adv = view(x0, z1)                          # x0 + delta, ||delta|| <= 8/255
    >>> loss = contrastive([view.embed_adversarial(x_adv), z1])   # through BN route "pgd"
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from advcl_plugin.core.attack import check_pixel_range, pgd_linf, pixels_in_range
from advcl_plugin.core.config import PAPER
from advcl_plugin.core.pixels import normalize, unnormalize
from advcl_plugin.core.references import Unowned
from advcl_plugin.core.routed_bn import bn_route, convert_to_multi_bn, routed_bn_layers

__all__ = ["AdversarialView"]


def _detach(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detach(v) for v in value)
    return value


class AdversarialView(nn.Module):
    """Finds ``x + delta`` (L-inf PGD in [0, 1] pixels) that maximises a self-supervised loss, to be
    added as an extra view; the backbone's batch norm is routed so that adversarial and clean
    views keep separate statistics (route ``"pgd"`` and ``"normal"``).

    The loss is any callable ``loss_fn(embed(x + delta), *references)``: a two-view loss (lightly's
    ``NTXentLoss``, ``VICRegLoss``, ``NegativeCosineSimilarity`` for BYOL / SimSiam, solo-learn's
    loss functions ...) with the other view's output as the reference, or a multi-view loss.
    References are detached during the attack (they do not depend on delta).

    Args:
        backbone: the module whose BN layers get one route per view kind; converted in place
            if it is not routed yet. It is referenced, not registered (it stays a sub-module of
            your model only). For momentum encoders, route the momentum copy too (create this
            view before ``copy.deepcopy(backbone)``, or ``convert_to_multi_bn(momentum_backbone,
            ("normal", "pgd"))``) so that momentum updates pair parameters one to one.
        embed: maps model inputs to what ``loss_fn`` takes, e.g. ``lambda x: head(backbone(x))``.
        loss_fn: the method's loss, called as ``loss_fn(embed(x_adv), *references)``.
        eps: the L-inf budget of the PGD attack in pixel units (default: the paper's 8/255).
        steps: PGD steps (default 5).
        step_size: PGD step (default 2/255).
        random_start: start from a uniform point of the eps-ball (default: yes).
        route: BN route of the adversarial view (``"pgd"``).
        clean_route: BN route of the clean views (``"normal"``).
        mean: if your pipeline normalises images, its mean: inputs and outputs of :meth:`forward` are then
            normalised, while the budget stays in pixel units. Inputs that do not un-normalise to [0, 1]
            pixels with ``mean`` and ``std`` are refused.
        std: the pipeline's standard deviation (with ``mean``).

    Shapes:
        ``forward(x, *references)``: x (B, C, H, W) -> (B, C, H, W), detached.
    """

    def __init__(
        self,
        backbone: nn.Module,
        embed: Callable[[Tensor], Any],
        loss_fn: Callable[..., Tensor],
        eps: float = PAPER.eps,
        steps: int = PAPER.steps,
        step_size: float = PAPER.step_size,
        random_start: bool = PAPER.random_start,
        route: str = "pgd",
        clean_route: str = "normal",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (the pipeline's normalisation) or neither")
        if not 0 <= eps <= 1 or step_size < 0 or steps < 0:
            raise ValueError(
                f"need 0 <= eps <= 1 (pixel units), step_size >= 0 and steps >= 0; got {eps}, {step_size}, {steps}"
            )
        layers = routed_bn_layers(backbone)
        if not layers:
            convert_to_multi_bn(backbone, (clean_route, route), primary=route)
        elif route not in layers[0].route_names or clean_route not in layers[0].route_names:
            raise ValueError(
                f"the backbone is routed with {layers[0].route_names}; it needs {clean_route!r} and {route!r}"
            )
        # used, not owned: the method that holds this view registers them (no parameters twice)
        self._uses = Unowned((backbone, embed, loss_fn))
        self.eps, self.steps, self.step_size, self.random_start = eps, steps, step_size, random_start
        self.route, self.clean_route = route, clean_route
        self.mean, self.std = mean, std

    @property
    def backbone(self) -> nn.Module:
        return self._uses.target[0]

    @property
    def embed(self) -> Callable[[Tensor], Any]:
        return self._uses.target[1]

    @property
    def loss_fn(self) -> Callable[..., Tensor]:
        return self._uses.target[2]

    @contextlib.contextmanager
    def adversarial_route(self) -> Iterator[None]:
        """Run the backbone on its adversarial BN route inside this context."""
        with bn_route(self.backbone, self.route):
            yield

    def embed_adversarial(self, x_adv: Tensor) -> Any:
        """``embed(x_adv)`` through the adversarial BN route, with gradients (for the training loss)."""
        with self.adversarial_route():
            return self.embed(x_adv)

    def to_pixels(self, x: Tensor) -> Tensor:
        """Model inputs -> [0, 1] pixels (un-normalised with the pipeline's statistics, if given).

        With mean/std given, a batch whose values all lie in [0, 1] is refused: normalised natural
        images have values below 0 (pixels darker than the mean), so such a batch comes from a
        pipeline that does not normalise, and un-normalising it would attack the wrong pixels.
        """
        if self.mean is None:
            return x
        if x.numel() >= 3 * 32 * 32 * 2 and bool(pixels_in_range([x], tolerance=0.0)):  # one synchronisation
            raise ValueError(
                "AdversarialView was given mean/std, but this batch lies in [0, 1] like un-normalised pixels: "
                "drop mean/std if your pipeline does not normalise (otherwise the budget would be wrong)"
            )
        return unnormalize(x, self.mean, self.std)  # type: ignore[arg-type]

    def from_pixels(self, pixels: Tensor) -> Tensor:
        """[0, 1] pixels -> model inputs (normalised with the pipeline's statistics, if given)."""
        return pixels if self.mean is None else normalize(pixels, self.mean, self.std)  # type: ignore[arg-type]

    def perturb_pixels(self, pixels: Tensor, *references: Any, generator: torch.Generator | None = None) -> Tensor:
        """``pixels + delta`` in [0, 1] maximising ``loss_fn(embed(normalised(pixels + delta)), *references)``."""
        frozen = _detach(references)
        self._check_batch(pixels)
        check_pixel_range(
            pixels,
            name="the adversarial view's start" + ("" if self.mean is None else " (un-normalised with mean/std)"),
        )

        def attack_loss(candidate: Tensor) -> Tensor:
            return self.loss_fn(self.embed_adversarial(self.from_pixels(candidate)), *frozen)

        return pgd_linf(
            attack_loss, pixels, self.eps, self.steps, self.step_size, self.random_start, generator=generator
        )

    def _check_batch(self, x: Tensor) -> None:
        if not x.is_floating_point():
            raise TypeError(f"x must be float images, got {x.dtype} (convert uint8 images with x.float() / 255)")
        if self.backbone.training and x.shape[0] < 2:
            raise ValueError(
                f"x holds a batch of {x.shape[0]} image(s): in training mode batch norm needs at least 2 "
                "(put the backbone in eval mode to attack single images)"
            )

    def forward(self, x: Tensor, *references: Any, generator: torch.Generator | None = None) -> Tensor:
        """``x + delta`` maximising ``loss_fn(embed(x + delta), *references)``; same space as ``x``."""
        self._check_batch(x)
        return self.from_pixels(self.perturb_pixels(self.to_pixels(x), *references, generator=generator))

    def extra_repr(self) -> str:
        return f"eps={self.eps:.5f}, steps={self.steps}, step_size={self.step_size:.5f}, route={self.route!r}"
