"""AdvCL's total loss, eq. (10): ``l_CL^adv + lambda * l_CE``, as a function and as a loss module
in lightly's style (used by the lightly adapter and by any PyTorch training loop)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch import distributed as torch_dist

from advcl_plugin.core.config import PAPER
from advcl_plugin.core.contrastive import MultiViewNTXentLoss
from advcl_plugin.core.heads import pseudo_label_loss

__all__ = ["AdvCLLoss", "advcl_loss"]


def advcl_loss(contrastive_loss: Tensor, pseudo_label_loss: Tensor | None, weight: float) -> Tensor:
    """Total AdvCL objective of eq. (10): ``l_CL^adv + lambda * l_CE`` (pseudo-label term optional)."""
    if pseudo_label_loss is None:
        return contrastive_loss
    return contrastive_loss + weight * pseudo_label_loss


class AdvCLLoss(nn.Module):
    """AdvCL's training loss: eq. (9)'s multi-view contrastive loss plus lambda times eq. (10)'s
    pseudo-label cross-entropy (averaged over the K heads).

    Use it like lightly's ``NTXentLoss``, with any number of projected views, the adversarial
    view first: ``loss([z_adv, z_tau1, z_tau2, z_hfc], logits, labels)``.

    Attributes:
        temperature: t of the contrastive loss (0.5).
        base_temperature: the loss is scaled by ``temperature / base_temperature`` as in the
            authors' code (0.07); ``None`` for the paper's unscaled form.
        pseudo_label_weight: lambda of eq. (10) (0.2).
        gather_distributed: if True, negatives are gathered from all processes (lightly's
            convention; gradients flow back to their owners).

    Examples:
        >>> import torch
        >>> from advcl_plugin import AdvCLLoss
        >>> criterion = AdvCLLoss()
        >>> views = [torch.randn(8, 128) for _ in range(4)]            # m x (B, d) projections
        >>> logits = [torch.randn(8, 2), torch.randn(8, 10)]          # pseudo-label heads (B, K_i)
        >>> labels = torch.stack([torch.randint(0, 2, (8,)), torch.randint(0, 10, (8,))], dim=1)
        >>> loss = criterion(views, logits, labels)                   # scalar
        >>> contrastive_only = criterion(views)
    """

    def __init__(
        self,
        temperature: float = PAPER.temperature,
        base_temperature: float | None = PAPER.base_temperature,
        pseudo_label_weight: float = PAPER.pseudo_label_weight,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        if gather_distributed and not torch_dist.is_available():
            raise ValueError(
                "gather_distributed is True but torch.distributed is not available. Set gather_distributed=False "
                "or install a torch build with distributed support."
            )
        if pseudo_label_weight < 0:
            raise ValueError(f"pseudo_label_weight must be >= 0, got {pseudo_label_weight}")
        self.contrastive = MultiViewNTXentLoss(temperature, base_temperature, gather_distributed)
        self.pseudo_label_weight = pseudo_label_weight
        self.gather_distributed = gather_distributed

    def forward(
        self,
        views: Sequence[Tensor],
        pseudo_label_logits: Sequence[Tensor] | None = None,
        pseudo_labels: Tensor | None = None,
        reduction: str = "mean",
    ) -> Tensor:
        """Loss over ``views`` (m tensors (B, d)), plus the pseudo-label term if logits are given.

        Args:
            views: projected views, e.g. ``[z_adv, z_tau1, z_tau2, z_hfc]``.
            pseudo_label_logits: logits of the pseudo-label heads, one (B, K_i) tensor per K.
            pseudo_labels: (B, n_heads) int64 cluster labels, -1 = none.
            reduction: ``"mean"`` for training, ``"sum"`` inside the attack (authors' code).
        """
        contrastive = self.contrastive(views)
        if pseudo_label_logits is None:
            return contrastive
        if pseudo_labels is None:
            raise ValueError("pseudo_label_logits were given without pseudo_labels")
        return advcl_loss(
            contrastive, pseudo_label_loss(pseudo_label_logits, pseudo_labels, reduction), self.pseudo_label_weight
        )
