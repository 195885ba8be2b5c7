"""AdvCL's views as a lightly ``MultiViewTransform``."""

from __future__ import annotations

from lightly.transforms.multi_view_transform import MultiViewTransform

from advcl_plugin.core.config import PAPER_VIEWS, ViewConfig
from advcl_plugin.data.transforms import original_view_transform, strong_view_transform

__all__ = ["AdvCLTransform"]


class AdvCLTransform(MultiViewTransform):
    """Returns ``[tau1, tau2, x_orig]`` for one image, as tensors in [0, 1].

    ``tau1``, ``tau2``: RandomResizedCrop(input_size, scale (min_scale, 1)), horizontal flip,
    colour jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2; ``x_orig``: RandomCrop
    (input_size, padding) and flip (the authors' views).  There is deliberately no mean/std
    normalisation: the attack budget is in pixel units.  To feed a backbone trained on
    normalised images, normalise inside the model (``advcl_plugin.core.pixels.NormalizedEncoder``).
    The HFC view is computed on the device from ``x_orig`` (``advcl_plugin.high_frequency``).

    Examples:
        >>> from PIL import Image
        >>> from advcl_plugin.lightly import AdvCLTransform
        >>> tau1, tau2, x = AdvCLTransform(input_size=32)(Image.new("RGB", (32, 32)))
        >>> tuple(tau1.shape), float(x.max()) <= 1.0
        ((3, 32, 32), True)
    """

    def __init__(
        self,
        input_size: int = 32,
        min_scale: float | None = None,
        padding: int | None = None,
        views: ViewConfig = PAPER_VIEWS,
    ) -> None:
        strong = strong_view_transform(input_size, min_scale, views)
        super().__init__(transforms=[strong, strong, original_view_transform(input_size, padding, views)])
