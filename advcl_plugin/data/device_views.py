"""AdvCL's three views made in batches on the training device (``data.views: device``).

The CPU pipeline (:class:`~advcl_plugin.data.transforms.AdvCLViews`, PIL per image) makes about 500
images/s of AdvCL's three views per data-loader worker on a 2-core EPYC VM (``advcl bench
--device-check`` measures it on any host), while one GPU trains thousands of images/s.  Here the
loader only delivers uint8 images and the same augmentations run as batched tensor operations
where the model runs:

* tau1, tau2: RandomResizedCrop (scale ``(crop_min_scale, 1)``, ratio ``(3/4, 4/3)``, torchvision's
  10-attempt sampling with its centre-crop fallback; resampled by ``roi_align``, bilinear with
  2x2 samples per output pixel), horizontal flip, colour jitter (brightness, contrast,
  saturation, hue in a random order per image) with probability ``jitter_prob``, grayscale with
  probability ``grayscale_prob``;
* the original view: zero padding ``original_padding``, random crop back to the size, flip.

The distributions match the CPU views (``tests/test_device_views.py`` compares crop areas and
aspect ratios, flip rate, colour statistics and grayscale rate); the pixels differ in detail
(tensor colour maths instead of PIL's uint8 maths, bilinear sampling instead of PIL's resize).

Examples:
    >>> import torch
    >>> views = DeviceAdvCLViews(32)
    >>> images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    >>> tau1, tau2, original = views(images, torch.Generator().manual_seed(0))
    >>> tau1.shape, tau1.dtype, bool(0 <= tau1.min() and tau1.max() <= 1)
    (torch.Size([4, 3, 32, 32]), torch.float32, True)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from advcl_plugin.core.config import PAPER_VIEWS, ViewConfig

__all__ = [
    "DeviceAdvCLViews",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "color_jitter",
    "grayscale",
    "padded_random_crop",
    "random_resized_crop",
    "sample_crop_boxes",
]

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def sample_crop_boxes(
    n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
    generator: torch.Generator, device: torch.device, attempts: int = 10,
) -> Tensor:  # fmt: skip
    """Crop boxes ``(x1, y1, x2, y2)`` in pixels, drawn as torchvision's ``RandomResizedCrop.get_params``
    draws them (``attempts`` tries of area and log-uniform aspect ratio, else a centre crop)."""
    area = height * width
    target = area * _uniform(n * attempts, *scale, generator, device).view(n, attempts)
    log_ratio = _uniform(n * attempts, math.log(ratio[0]), math.log(ratio[1]), generator, device).view(n, attempts)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(valid.int(), dim=1)  # first valid attempt (0 when none is valid)
    w, h = w.gather(1, first[:, None])[:, 0], h.gather(1, first[:, None])[:, 0]
    found = valid.any(dim=1)
    top = torch.floor(torch.rand(n, generator=generator, device=device) * (height - h + 1))
    left = torch.floor(torch.rand(n, generator=generator, device=device) * (width - w + 1))
    # torchvision's fallback: the whole image, cut to the nearest allowed aspect ratio, centred
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    top = torch.where(found, top, torch.full_like(top, (height - fh) // 2))
    left = torch.where(found, left, torch.full_like(left, (width - fw) // 2))
    return torch.stack([left, top, left + w, top + h], dim=1)


def random_resized_crop(images: Tensor, size: int, scale: tuple[float, float], generator: torch.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:  # fmt: skip
    """RandomResizedCrop of a float batch (N, C, H, W), resampled bilinearly to ``size`` x ``size``."""
    n, _, height, width = images.shape
    boxes = sample_crop_boxes(n, height, width, scale, ratio, generator, images.device)
    indexed = torch.cat([torch.arange(n, device=images.device, dtype=images.dtype)[:, None], boxes.to(images.dtype)], 1)
    return roi_align(images, indexed, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)


def random_flip(images: Tensor, prob: float, generator: torch.Generator) -> Tensor:
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < prob
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def grayscale(images: Tensor) -> Tensor:
    """ITU-R 601 luma, repeated over the three channels (weights as scalars: no host-to-device copy)."""
    r, g, b = images.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1).expand_as(images)


def _rgb_to_hsv(images: Tensor) -> Tensor:
    r, g, b = images.unbind(1)
    high, _ = images.max(1)
    low, _ = images.min(1)
    delta = high - low
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(high == r, ((g - b) / safe) % 6, torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    saturation = torch.where(
        high > 0, delta / torch.where(high > 0, high, torch.ones_like(high)), torch.zeros_like(high)
    )
    return torch.stack([hue, saturation, high], 1)


def _hsv_to_rgb(images: Tensor) -> Tensor:
    hue, saturation, value = images.unbind(1)
    k = (torch.stack([hue * 6 + 5.0, hue * 6 + 3.0, hue * 6 + 1.0], 1)) % 6
    return value[:, None] - value[:, None] * saturation[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    return (images * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    f = factor.view(-1, 1, 1, 1)
    mean = grayscale(images)[:, :1].mean(dim=(1, 2, 3), keepdim=True)
    return (f * images + (1 - f) * mean).clamp(0, 1)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * images + (1 - f) * grayscale(images)).clamp(0, 1)


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    hsv = _rgb_to_hsv(images)
    hsv = torch.stack([(hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
    return _hsv_to_rgb(hsv).clamp(0, 1)


_ADJUSTMENTS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
_NEUTRAL = (1.0, 1.0, 1.0, 0.0)  # the factor of each adjustment that leaves an image as it is


def color_jitter(images: Tensor, strength: tuple[float, float, float, float], prob: float,
                 generator: torch.Generator) -> Tensor:  # fmt: skip
    """torchvision's ``RandomApply([ColorJitter(b, c, s, h)], p=prob)`` on a batch: per image, with
    probability ``prob``, brightness, contrast, saturation and hue factors drawn as ColorJitter draws
    them, applied in a random order (each adjustment as torchvision's tensor functions compute it)."""
    n, device = images.shape[0], images.device
    brightness, contrast, saturation, hue = strength
    applied = torch.rand(n, generator=generator, device=device) < prob
    order = torch.argsort(torch.rand(n, 4, generator=generator, device=device), dim=1)
    factors = [
        _uniform(n, max(0.0, 1 - brightness), 1 + brightness, generator, device),
        _uniform(n, max(0.0, 1 - contrast), 1 + contrast, generator, device),
        _uniform(n, max(0.0, 1 - saturation), 1 + saturation, generator, device),
        _uniform(n, -hue, hue, generator, device),
    ]
    # Every adjustment runs on the whole batch at every position, with its neutral factor (1, 1, 1, hue 0) for
    # the images that do not take it there: no data-dependent indexing, so no host-device synchronisation.
    out = images
    for position in range(4):
        for op, adjust in enumerate(_ADJUSTMENTS):
            chosen = applied & (order[:, position] == op)
            out = adjust(out, torch.where(chosen, factors[op], _NEUTRAL[op]))
    return out


def random_grayscale(images: Tensor, prob: float, generator: torch.Generator) -> Tensor:
    gray = torch.rand(images.shape[0], generator=generator, device=images.device) < prob
    return torch.where(gray[:, None, None, None], grayscale(images), images)


def padded_random_crop(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """RandomCrop(size, padding) with zero padding on a batch (each image its own offset)."""
    n, _, height, width = images.shape
    padded = nn.functional.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=images.device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=images.device)
    rows = (top[:, None] + torch.arange(height, device=images.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(width, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channels, rows, cols]


class DeviceAdvCLViews(nn.Module):
    """Maps a uint8 batch (N, 3, H, W) to AdvCL's ``(tau1, tau2, x_orig)`` in [0, 1], on the batch's device."""

    def __init__(self, size: int = 32, views: ViewConfig = PAPER_VIEWS) -> None:
        super().__init__()
        self.size, self.views = size, views

    def strong(self, images: Tensor, generator: torch.Generator) -> Tensor:
        v = self.views
        x = random_resized_crop(images, self.size, (v.crop_min_scale, 1.0), generator)
        x = random_flip(x, v.flip_prob, generator)
        x = color_jitter(x, v.jitter, v.jitter_prob, generator)
        return random_grayscale(x, v.grayscale_prob, generator)

    def original(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if images.shape[-1] != self.size or images.shape[-2] != self.size:
            images = nn.functional.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True)
        x = padded_random_crop(images, self.views.original_padding, generator)
        return random_flip(x, self.views.flip_prob, generator)

    def forward(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"DeviceAdvCLViews takes uint8 batches (N, 3, H, W), not {images.dtype} {tuple(images.shape)}"
            )
        x = images.float() / 255
        return self.strong(x, generator), self.strong(x, generator), self.original(x, generator)
