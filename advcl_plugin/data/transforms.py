"""AdvCL's data views (reference-facts sheet), as torchvision transforms without normalisation.

* ``tau1``, ``tau2``: RandomResizedCrop(size, scale 0.2-1), horizontal flip, colour jitter
  (0.4, 0.4, 0.4, 0.1) with p 0.8, random grayscale p 0.2.
* the "original" ``x``: RandomCrop(size, padding 4) + horizontal flip (the adversarial and
  frequency views start from it).

Pixels stay in [0, 1] (no mean/std normalisation): the attack budget is in pixel units.

Examples:
    >>> from PIL import Image
    >>> import numpy as np
    >>> from advcl_plugin.data import AdvCLViews
    >>> views = AdvCLViews(size=32)
    >>> tau1, tau2, x = views(Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)))
    >>> tuple(x.shape)
    (3, 32, 32)
"""

from __future__ import annotations

from torch import Tensor
from torchvision import transforms as T

from advcl_plugin.core.config import PAPER_VIEWS, ViewConfig

__all__ = ["AdvCLViews", "eval_transform", "original_view_transform", "strong_view_transform"]


def strong_view_transform(size: int = 32, min_scale: float | None = None, views: ViewConfig = PAPER_VIEWS) -> T.Compose:
    """tau: the SimCLR-style augmentation used for tau1 and tau2 (``min_scale`` overrides ``views.crop_min_scale``)."""
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(views.crop_min_scale if min_scale is None else min_scale, 1.0)),
            T.RandomHorizontalFlip(views.flip_prob),
            T.RandomApply([T.ColorJitter(*views.jitter)], p=views.jitter_prob),
            T.RandomGrayscale(p=views.grayscale_prob),
            T.ToTensor(),
        ]
    )


def original_view_transform(size: int = 32, padding: int | None = None, views: ViewConfig = PAPER_VIEWS) -> T.Compose:
    """The lightly augmented "original" x: padded random crop + horizontal flip."""
    padding = views.original_padding if padding is None else padding
    return T.Compose([T.RandomCrop(size, padding=padding), T.RandomHorizontalFlip(views.flip_prob), T.ToTensor()])


def eval_transform(size: int | None = None) -> T.Compose:
    """Evaluation transform: optional resize, then ToTensor (pixels in [0, 1])."""
    steps = [T.Resize(size), T.CenterCrop(size)] if size is not None else []
    return T.Compose([*steps, T.ToTensor()])


class AdvCLViews:
    """Maps one PIL image to ``[tau1, tau2, x_orig]`` tensors in [0, 1]."""

    def __init__(self, size: int = 32, min_scale: float | None = None, padding: int | None = None,
                 views: ViewConfig = PAPER_VIEWS) -> None:  # fmt: skip
        self.strong = strong_view_transform(size, min_scale, views)
        self.original = original_view_transform(size, padding, views)

    def __call__(self, image) -> list[Tensor]:
        return [self.strong(image), self.strong(image), self.original(image)]

    def __repr__(self) -> str:
        return f"AdvCLViews(strong={self.strong}, original={self.original})"
