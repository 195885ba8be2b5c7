"""Keeping the attack in [0, 1] pixel space when a pipeline normalises images with mean/std.

AdvCL's budget eps = 8/255 is in pixel units.  Frameworks that normalise images in the
data pipeline (solo-learn always does) hand the model ``(x - mean) / std``; the attack
must then run on ``x`` itself: un-normalise the batch, attack, and normalise again inside
the model (:class:`NormalizedEncoder`).  ``random_padded_crop`` applies AdvCL's mild
augmentation of the "original" view (RandomCrop with zero padding) to a batch on its device.

Examples:
    >>> import torch
    >>> from advcl_plugin.core.pixels import NormalizedEncoder, normalize, unnormalize
    >>> mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    >>> pixels = torch.rand(2, 3, 8, 8)
    >>> torch.allclose(unnormalize(normalize(pixels, mean, std), mean, std), pixels, atol=1e-6)
    True
    >>> encoder = NormalizedEncoder(torch.nn.Flatten(), mean, std)   # takes pixels, normalises inside
    >>> encoder(pixels).shape
    torch.Size([2, 192])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["INPUT_NORMALIZATIONS", "NormalizedEncoder", "normalize", "random_padded_crop", "unnormalize"]

#: per-channel (mean, std) an encoder may expect its input normalised with ("none": pixels in [0, 1])
INPUT_NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "none": None,
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision, timm, the RobustSSL ResNet
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


#: per-channel statistics already on a device, by (values, device, dtype): no host-to-device copy per call
_ON_DEVICE: dict[tuple[tuple[float, ...], torch.device, torch.dtype], Tensor] = {}


def _stats(values: Sequence[float] | Tensor, like: Tensor) -> Tensor:
    if isinstance(values, Tensor):
        return values.to(dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    key = (tuple(float(v) for v in values), like.device, like.dtype)
    if key not in _ON_DEVICE:
        _ON_DEVICE[key] = torch.as_tensor(key[0], dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    return _ON_DEVICE[key]


def normalize(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """(B, C, H, W) pixels in [0, 1] -> ``(x - mean) / std`` per channel."""
    return (x - _stats(mean, x)) / _stats(std, x)


def unnormalize(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """Inverse of :func:`normalize`: ``x * std + mean`` per channel.

    Not clipped: if the statistics do not match the pipeline's, the result leaves [0, 1] and the
    attack refuses it with a clear error instead of silently attacking the wrong pixels."""
    return x * _stats(std, x) + _stats(mean, x)


class NormalizedEncoder(nn.Module):
    """Wraps an encoder that expects normalised images so that it takes pixels in [0, 1].

    The wrapped ``encoder`` is shared, not copied: its parameters stay where they are.

    Shapes:
        (B, C, H, W) pixels -> whatever ``encoder`` returns.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, encoder: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.feature_dim = getattr(encoder, "feature_dim", None)

    def forward(self, pixels: Tensor) -> Tensor:
        if self.mean.device != pixels.device or self.mean.dtype != pixels.dtype:
            # moved once, when the module was not moved with the model (a host that does not register it)
            self.mean = self.mean.to(device=pixels.device, dtype=pixels.dtype)
            self.std = self.std.to(device=pixels.device, dtype=pixels.dtype)
        return self.encoder((pixels - self.mean) / self.std)


def random_padded_crop(x: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Per-image random crop of the zero-padded batch (torchvision's ``RandomCrop(size, padding)``).

    Args:
        x: (B, C, H, W) images in pixel space.
        padding: zero padding on every side; each image is shifted by up to ``padding`` pixels.
        generator: random generator (on ``x``'s device).

    Returns:
        (B, C, H, W) tensor.
    """
    if padding <= 0:
        return x
    batch, _, height, width = x.shape
    padded = nn.functional.pad(x, (padding, padding, padding, padding))
    shifts = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator, device=x.device)
    rows = shifts[0].view(-1, 1) + torch.arange(height, device=x.device)  # (B, H)
    cols = shifts[1].view(-1, 1) + torch.arange(width, device=x.device)  # (B, W)
    index = torch.arange(batch, device=x.device).view(-1, 1, 1)
    cropped = padded.permute(0, 2, 3, 1)[index, rows.unsqueeze(2), cols.unsqueeze(1)]  # (B, H, W, C)
    return cropped.permute(0, 3, 1, 2).contiguous(memory_format=torch.contiguous_format)
