"""Heads on top of the encoder: the projection head g and the pseudo-label heads phi_i of eq. (10).

Examples:
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

__all__ = [
    "ProjectionHead",
    "PseudoLabelHeads",
    "check_pseudo_labels",
    "head_cross_entropy",
    "pseudo_label_loss",
    "pseudo_labels_in_range",
]


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


def pseudo_labels_in_range(labels: Tensor, ks: Sequence[int]) -> Tensor:
    """A 0-d bool tensor: every label of column ``i`` in ``-1..ks[i]-1`` (no synchronisation)."""
    bounds = torch.as_tensor(tuple(ks), device=labels.device)
    return ((labels >= -1) & (labels < bounds)).all()


def check_pseudo_labels(labels: Tensor, ks: Sequence[int], name: str = "pseudo_labels") -> None:
    """Refuse pseudo labels the heads cannot score: a non-integer tensor (9.6 would be truncated to 9), a
    shape other than (B, len(ks)), or a cluster id outside ``0..K-1`` (``-1`` marks a sample without label).

    One host-device synchronisation for the range check.
    """
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of cluster ids (int64), got {labels.dtype}")
    if labels.dim() != 2 or labels.shape[1] != len(ks):
        expected = f"(B, {len(ks)}) (one column per K in {tuple(ks)})"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(labels.shape)}")
    if not bool(pseudo_labels_in_range(labels, ks)):
        bounds = torch.as_tensor(tuple(ks), device=labels.device)
        bad = (labels < -1) | (labels >= bounds)
        column = int(bad.any(0).nonzero()[0])
        value = int(labels[:, column][bad[:, column]][0])
        raise ValueError(
            f"{name}[:, {column}] holds {value}, outside 0..{ks[column] - 1} for K = {ks[column]} "
            "(-1 marks a sample without a label)"
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
    check_pseudo_labels(labels, [head.shape[-1] for head in logits], "labels")
    return head_cross_entropy(logits, labels, reduction)


def head_cross_entropy(logits: Sequence[Tensor], labels: Tensor, reduction: str = "mean") -> Tensor:
    """:func:`pseudo_label_loss` without its checks, for callers that checked the labels once per batch
    (:class:`~advcl_plugin.core.objective.AdvCLObjective` calls it at every attack step)."""
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
