"""Multi-view contrastive loss: eq. (5) of the AdvCL paper (eq. 4 for m = 2).

Every embedding of every view is an anchor.  The positives of an anchor are the
other ``m - 1`` views of the same image; the denominator runs over all other
``m * B - 1`` embeddings of the (global) batch.  Per anchor the loss is minus the
mean over its positives of the log-softmax of the cosine similarities divided by
the temperature ``t``; anchors are averaged.  As in the authors' code (a
supervised-contrastive loss without labels) the result is multiplied by
``t / base_temperature`` (``0.5 / 0.07 ~ 7.14`` with the defaults).  With
``base_temperature=None`` no factor is applied; eq. (5) itself sums instead of
averaging over the ``m`` anchors and ``m - 1`` positives, which only multiplies
the loss by the constant ``m * (m - 1)``.

Examples:
    >>> import torch
    >>> from advcl_plugin import MultiViewNTXentLoss
    >>> loss_fn = MultiViewNTXentLoss(temperature=0.5)
    >>> views = [torch.randn(8, 128) for _ in range(4)]   # m = 4 views of (B, d)
    >>> loss = loss_fn(views)                            # scalar tensor
    >>> loss.shape
    torch.Size([])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advcl_plugin.core.config import PAPER_BASE_TEMPERATURE, PAPER_TEMPERATURE
from advcl_plugin.core.distributed import gather_with_grad, rank, world_size

__all__ = ["MultiViewNTXentLoss", "multi_view_contrastive_loss"]


def multi_view_contrastive_loss(
    views: Sequence[Tensor],
    temperature: float = PAPER_TEMPERATURE,
    base_temperature: float | None = PAPER_BASE_TEMPERATURE,
    gather_distributed: bool = False,
    check_finite: bool = True,
) -> Tensor:
    """Multi-view NT-Xent loss of eq. (5), anchors from this process, negatives global.

    Args:
        views: ``m >= 2`` tensors of shape (B, d), view ``v`` of image ``i`` in row ``i``.
            They are L2-normalised here.
        temperature: t of eq. (5).
        base_temperature: the loss is scaled by ``temperature / base_temperature``
            (authors' code); ``None`` leaves it unscaled.
        gather_distributed: gather the other processes' embeddings as extra
            negatives (and positives of their own anchors), with gradients.
        check_finite: refuse NaN or infinite embeddings, naming the view (one host-device
            synchronisation; callers that check their inputs and loss elsewhere turn it off).

    Returns:
        Scalar tensor (float32 even under autocast).
    """
    if len(views) < 2:
        raise ValueError(f"the multi-view contrastive loss needs at least 2 views, got {len(views)}")
    shapes = {tuple(v.shape) for v in views}
    if len(shapes) != 1 or views[0].dim() != 2:
        raise ValueError(f"all views must have the same shape (B, d); got shapes {sorted(shapes)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    for index, view in enumerate(views):
        if not view.is_floating_point():
            raise TypeError(f"views[{index}] must be a float tensor of embeddings, got {view.dtype}")
    num_views = len(views)
    batch = views[0].shape[0]

    stacked = torch.stack([view.float() for view in views])  # (m, B, d)
    if check_finite and not bool(torch.isfinite(stacked).all()):
        bad = [i for i, view in enumerate(views) if not bool(torch.isfinite(view).all())]
        raise ValueError(f"views{bad} hold NaN or infinite values: the loss would be NaN")
    local = F.normalize(stacked, dim=-1)
    if gather_distributed and world_size() > 1:
        # (m, B, d) -> (B, m, d) so that one gather keeps each image's views together.
        everything = gather_with_grad(local.transpose(0, 1).contiguous()).transpose(0, 1)
        offset = rank() * batch
    else:
        everything = local
        offset = 0
    total = everything.shape[1]  # global batch size N
    if total < 2:
        raise ValueError(
            f"the contrastive loss needs at least 2 images in the batch (the other images are its negatives), got "
            f"{total}{' across all processes' if gather_distributed else ''}"
        )

    anchors = local.reshape(num_views * batch, -1)  # (m B, d)
    contrast = everything.reshape(num_views * total, -1)  # (m N, d)
    with torch.autocast(anchors.device.type, enabled=False):  # similarities in float32, also under autocast
        logits = anchors @ contrast.T / temperature  # (m B, m N)

    rows = torch.arange(num_views * batch, device=logits.device)
    anchor_view = torch.arange(num_views, device=logits.device).repeat_interleave(batch)
    anchor_image = torch.arange(batch, device=logits.device).repeat(num_views) + offset
    # an anchor is not its own negative: one entry per row, set in place (no (m B, m N) mask)
    logits = logits.index_put_((rows, anchor_view * total + anchor_image), logits.new_tensor(float("-inf")))
    log_prob = torch.log_softmax(logits, dim=1).view(num_views * batch, num_views, total)
    # Log-probability of the same image under every view, then drop the anchor's own view.
    same_image = log_prob[rows, :, anchor_image]
    # the other m - 1 views of each anchor, by index (a fixed-shape gather: no host-device synchronisation)
    slots = torch.arange(num_views - 1, device=logits.device)[None, :]
    positives = same_image.gather(1, slots + (slots >= anchor_view[:, None]).long())  # (m B, m - 1)
    loss = -positives.mean()
    if base_temperature is not None:
        loss = loss * (temperature / base_temperature)
    return loss


class MultiViewNTXentLoss(nn.Module):
    """Multi-view NT-Xent loss, eq. (5), as an ``nn.Module`` (see the module docstring).

    Args:
        temperature: t of eq. (5); 0.5 in AdvCL.
        base_temperature: scale ``temperature / base_temperature`` (0.07 in the
            authors' code); ``None`` for the paper's unscaled form.
        gather_distributed: use the global batch (all processes) for negatives.
        check_finite: refuse NaN or infinite embeddings (see :func:`multi_view_contrastive_loss`).

    Shapes:
        ``forward(views)``: ``views`` is a sequence of m tensors (B, d); returns a scalar.
    """

    def __init__(
        self,
        temperature: float = PAPER_TEMPERATURE,
        base_temperature: float | None = PAPER_BASE_TEMPERATURE,
        gather_distributed: bool = False,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if base_temperature is not None and base_temperature <= 0:
            raise ValueError(f"base_temperature must be > 0 or None, got {base_temperature}")
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.gather_distributed = gather_distributed
        self.check_finite = check_finite

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        return multi_view_contrastive_loss(
            views,
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            gather_distributed=self.gather_distributed,
            check_finite=self.check_finite,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, base_temperature={self.base_temperature}, "
            f"gather_distributed={self.gather_distributed}"
        )
