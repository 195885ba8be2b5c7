"""Frequency views of an image: eq. (8) of the AdvCL paper.

An image ``x`` is split into a high-frequency component (HFC) ``x_h`` and a
low-frequency component (LFC) ``x_l`` by a hard radial threshold on its centred
2-D spectrum.  Following the authors' code (reference-facts sheet): per image and
channel, take the 2-D FFT, shift the zero frequency to the centre ``(H // 2, W // 2)``,
zero every coefficient whose Euclidean distance from the centre is ``< radius``
(HFC) or ``>= radius`` (LFC), shift back, inverse FFT and keep the real part.
Because the two masks are complementary, ``x_h + x_l == x``.

Examples:
    >>> import torch
    >>> from advcl_plugin import high_frequency, low_frequency
    >>> x = torch.rand(4, 3, 32, 32)                 # (B, C, H, W) in [0, 1]
    >>> x_h = high_frequency(x, radius=8)            # (4, 3, 32, 32)
    >>> x_l = low_frequency(x, radius=8)
    >>> bool(torch.allclose(x_h + x_l, x, atol=1e-5))
    True
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor, nn

from advcl_plugin.core.config import PAPER_RADIUS

__all__ = [
    "HighFrequencyView",
    "LowFrequencyView",
    "check_radius",
    "frequency_mask",
    "high_frequency",
    "low_frequency",
]


@functools.lru_cache(maxsize=64)
def _cached_low_pass_mask(height: int, width: int, radius: float, device: torch.device) -> Tensor:
    # Move the centred mask to the FFT's natural (uncentred) layout once, so that no
    # fftshift/ifftshift of the spectrum is needed per call, and keep only the
    # non-negative column frequencies that the real FFT stores.
    uncentred = torch.fft.ifftshift(frequency_mask(height, width, radius), dim=(-2, -1))
    return uncentred[:, : width // 2 + 1].contiguous().to(device)


def frequency_mask(height: int, width: int, radius: float, device: torch.device | str = "cpu") -> Tensor:
    """Return the centred low-pass mask of eq. (8): 1 where distance to (H//2, W//2) < radius.

    Args:
        height: image height H.
        width: image width W.
        radius: threshold r of eq. (8) (the paper uses r = 8 on 32x32 images).
        device: device of the returned mask.

    Returns:
        Tensor of shape (H, W), dtype float32, in the centred (fftshift-ed) layout.
    """
    rows = torch.arange(height, dtype=torch.float64).view(-1, 1) - (height // 2)
    cols = torch.arange(width, dtype=torch.float64).view(1, -1) - (width // 2)
    return ((rows**2 + cols**2).sqrt() < radius).to(device=device, dtype=torch.float32)


#: below this share of removed spectrum the HFC view is almost the whole image
_MIN_REMOVED_SHARE = 0.05


@functools.lru_cache(maxsize=64)
def check_radius(radius: float, height: int, width: int) -> float:
    """Check radius r of eq. (8) for (H, W) images; returns the share of the spectrum removed from the HFC.

    Raises ``ValueError`` when the low-frequency disk is empty (r <= 0: the HFC is the image) or
    covers the whole spectrum (the HFC is all zero), and warns when the HFC keeps almost all of
    the image.  r scales with the image side: the paper's r = 8 on 32x32 images removes about
    20% of the spectrum; keep that share with ``r = 8 * side / 32`` (e.g. 24 for 96x96).
    """
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}: the low-frequency disk would be empty")
    removed = float(frequency_mask(int(height), int(width), float(radius)).mean())
    if removed >= 1.0:
        raise ValueError(
            f"radius {radius} covers the whole {height}x{width} spectrum: the high-frequency view would be all "
            f"zero; use a radius below {((height // 2) ** 2 + (width // 2) ** 2) ** 0.5:.1f} (8 for 32x32 images)"
        )
    if removed < _MIN_REMOVED_SHARE:
        warnings.warn(
            f"radius {radius} removes only {100 * removed:.1f}% of the {height}x{width} spectrum: the HFC view is "
            f"almost the whole image. The paper's r = 8 on 32x32 removes about 20%; for this size use about "
            f"{8 * min(height, width) / 32:g}",
            stacklevel=2,
        )
    return removed


def _check_image_batch(x: Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(
            f"x must be a float tensor of images (float32, float64, bfloat16 or float16), got {x.dtype}: the "
            "high-frequency component has negative values, which an integer tensor cannot hold (convert uint8 "
            "images with x.float() / 255)"
        )
    if x.dim() != 4:
        raise ValueError(
            f"expected a batch of images of shape (B, C, H, W), got shape {tuple(x.shape)}; "
            "use HighFrequencyView for a single (C, H, W) image"
        )


def _split_frequencies(x: Tensor, radius: float, keep_low: bool) -> Tensor:
    _check_image_batch(x)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    height, width = x.shape[-2:]
    mask = _cached_low_pass_mask(height, width, float(radius), x.device)
    if not keep_low:
        mask = 1.0 - mask
    # FFTs need float32/float64; bf16/fp16 inputs are computed in float32 and cast back.
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    spectrum = torch.fft.rfft2(work, dim=(-2, -1))
    # The radial mask is symmetric under (u, v) -> (-u, -v), so the filtered spectrum is
    # Hermitian and irfft2 equals the real part of the full inverse FFT (eq. 8).
    filtered = torch.fft.irfft2(spectrum * mask.to(spectrum.real.dtype), s=(height, width), dim=(-2, -1))
    # irfft2 returns contiguous NCHW; give the view the input's memory format (channels_last stays channels_last,
    # so a compiled backbone sees one layout and builds no extra graph for this view)
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return filtered.to(x.dtype).contiguous(memory_format=layout)


def high_frequency(x: Tensor, radius: float = PAPER_RADIUS) -> Tensor:
    """High-frequency component x_h of eq. (8): spectrum at distance >= radius from the centre.

    Args:
        x: images, shape (B, C, H, W), a float dtype (integer images are refused), any device.
        radius: threshold r of eq. (8); 8 in the paper.

    Returns:
        Tensor of shape (B, C, H, W), same dtype and device, differentiable w.r.t. ``x``.
        Values are not confined to [0, 1] (the HFC has zero mean).
    """
    return _split_frequencies(x, radius, keep_low=False)


def low_frequency(x: Tensor, radius: float = PAPER_RADIUS) -> Tensor:
    """Low-frequency component x_l of eq. (8): spectrum at distance < radius from the centre.

    Args:
        x: images, shape (B, C, H, W).
        radius: threshold r of eq. (8).

    Returns:
        Tensor of shape (B, C, H, W); ``high_frequency(x) + low_frequency(x) == x``.
    """
    return _split_frequencies(x, radius, keep_low=True)


class HighFrequencyView(nn.Module):
    """Per-image transform returning the high-frequency component (eq. 8).

    Use it after ``ToTensor()`` in a torchvision or lightly pipeline; it accepts a single
    image (C, H, W) or a batch (B, C, H, W).

    Examples:
        >>> import torch
        >>> from advcl_plugin import HighFrequencyView
        >>> view = HighFrequencyView(radius=8)
        >>> view(torch.rand(3, 32, 32)).shape
        torch.Size([3, 32, 32])
    """

    keep_low = False

    def __init__(self, radius: float = PAPER_RADIUS) -> None:
        super().__init__()
        self.radius = radius

    def forward(self, image: Tensor) -> Tensor:
        if not isinstance(image, Tensor):
            raise TypeError(
                f"{type(self).__name__} expects a tensor image (apply ToTensor() first), got {type(image).__name__}"
            )
        if image.dim() == 3:
            return _split_frequencies(image.unsqueeze(0), self.radius, self.keep_low).squeeze(0)
        return _split_frequencies(image, self.radius, self.keep_low)

    def extra_repr(self) -> str:
        return f"radius={self.radius}"


class LowFrequencyView(HighFrequencyView):
    """Per-image transform returning the low-frequency component (eq. 8)."""

    keep_low = True
