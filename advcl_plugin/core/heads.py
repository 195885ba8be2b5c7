"""Heads on top of the encoder: the projection head g and the pseudo-label heads phi_i of eq. (10).

Example:
    >>> import torch
    >>> from advcl_plugin import PseudoLabelHeads, ProjectionHead
    >>> features = torch.randn(6, 512)                          # (B, feature_dim)
    >>> ProjectionHead(512)(features).shape                     # (B, 128)
    torch.Size([6, 128])
    >>> heads = PseudoLabelHeads(512, ks=(2, 10))
    >>> logits = heads(features)                                # [(B, 2), (B, 10)]
    >>> labels = torch.stack([torch.randint(0, 2, (6,)), torch.randint(0, 10, (6,))], dim=1)
    >>> loss = heads.loss(logits, labels)                       # (B, n_heads) labels -> scalar
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advcl_plugin.core.config import KS_ENSEMBLE

__all__ = ["ProjectionHead", "PseudoLabelHeads", "pseudo_label_loss"]


class ProjectionHead(nn.Sequential):
    """Projection head g: Linear(d, d) - BatchNorm1d - ReLU - Linear(d, out_dim) (not routed).

    The output is not normalised; the contrastive loss normalises it.

    Shapes:
        (B, input_dim) -> (B, output_dim)
    """

    def __init__(self, input_dim: int, hidden_dim: int | None = None, output_dim: int = 128) -> None:
        hidden_dim = input_dim if hidden_dim is None else hidden_dim
        super().__init__(
            nn.Linear(input_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, output_dim),
        )


def pseudo_label_loss(logits: Sequence[Tensor], labels: Tensor, reduction: str = "mean") -> Tensor:
    """Ensemble pseudo-classification loss of eq. (10): mean over heads of the cross-entropy.

    ``l_CE(phi_i o f(x + delta_ce), c_i)`` for each cluster count ``K_i``, averaged over the
    ``n`` heads (the paper's ensemble version).  Labels equal to -1 are ignored.

    Args:
        logits: ``n`` tensors, head ``i`` of shape (B, K_i).
        labels: (B, n) int64 cluster labels, column ``i`` for head ``i``; -1 = no label.
        reduction: ``"mean"`` over the labelled samples of each head (training step) or
            ``"sum"`` over the batch (the authors' attack objective).

    Returns:
        Scalar tensor. A head whose labels are all -1 contributes 0.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if labels.dim() != 2 or labels.shape[1] != len(logits):
        raise ValueError(f"labels must have shape (B, {len(logits)}) (one column per head), got {tuple(labels.shape)}")
    total = logits[0].new_zeros((), dtype=torch.float32)
    for index, head_logits in enumerate(logits):
        target = labels[:, index].long()
        summed = F.cross_entropy(head_logits.float(), target, ignore_index=-1, reduction="sum")
        if reduction == "mean":
            summed = summed / (target != -1).sum().clamp(min=1)
        total = total + summed
    return total / len(logits)


class PseudoLabelHeads(nn.Module):
    """One linear classifier phi_i per cluster count K_i (eq. 10, ensemble version).

    Args:
        feature_dim: dimension of the encoder's pooled features.
        ks: cluster counts; default: the paper's ensemble ``KS_ENSEMBLE``.

    Shapes:
        ``forward``: (B, feature_dim) -> list of (B, K_i).
    """

    def __init__(self, feature_dim: int, ks: Sequence[int] = KS_ENSEMBLE) -> None:
        super().__init__()
        ks = tuple(int(k) for k in ks)
        if not ks or min(ks) < 2:
            raise ValueError(f"ks must be a non-empty list of cluster counts >= 2, got {ks}")
        self.ks = ks
        self.heads = nn.ModuleList(nn.Linear(feature_dim, k) for k in ks)

    def forward(self, features: Tensor) -> list[Tensor]:
        return [head(features) for head in self.heads]

    def loss(self, logits: Sequence[Tensor], labels: Tensor, reduction: str = "mean") -> Tensor:
        """See :func:`pseudo_label_loss`."""
        return pseudo_label_loss(logits, labels, reduction)
