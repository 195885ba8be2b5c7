"""Testing helpers for people who extend AdvCL: the authors' training loop as an oracle.

:class:`AuthorsLoopObjective` is :class:`~advcl_plugin.core.objective.AdvCLObjective` computed the way the
authors' loop computes it.  A change to the objective (a new view, a cheaper attack schedule at identical
math) can be proven equal to it: same loss, same parameter gradients.

The public code keeps the model in train mode during the attack and re-runs the forward pass of
all five inputs (x_cl, x_ce, tau1, tau2, x_hfc) at every attack step, although only x_cl and x_ce
change; it also projects x_ce, whose projection no loss uses.  :class:`AuthorsLoopObjective`
does exactly that (the package calls it "the authors' loop" everywhere).  It gives the same loss and
parameter gradients as the optimised objective
(tests/test_objective.py), and the repository's timing benchmark runs it as the stand-in for the authors' step.
Beyond the cost, the only difference is that the running BN statistics of the ``"normal"`` route
and of the projection head move at every attack step instead of once per batch.

Examples:
    >>> import torch
    >>> from advcl_plugin import AdvCLConfig, cifar_resnet18
    >>> from advcl_plugin.testing import AuthorsLoopObjective
    >>> reference = AuthorsLoopObjective(cifar_resnet18(width=4), AdvCLConfig(ks=(2,), steps=1))
    >>> x, t1, t2 = (torch.rand(4, 3, 32, 32) for _ in range(3))
    >>> reference(x, t1, t2, torch.zeros(4, 1, dtype=torch.long)).loss.backward()
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from advcl_plugin.core.advcl_loss import advcl_loss
from advcl_plugin.core.objective import AdvCLObjective

__all__ = ["AuthorsLoopObjective"]


class AuthorsLoopObjective(AdvCLObjective):
    """:class:`AdvCLObjective` computed as the authors' loop does (every input re-forwarded per attack step)."""

    def _clean_pass_before_attack(self, clean_inputs: Sequence[Tensor]) -> None:
        return None  # the authors embed the clean views inside every attack step and again after it

    def _attack_loss(
        self,
        perturbed: Sequence[Tensor],
        clean_inputs: Sequence[Tensor],
        before: object,
        pseudo_labels: Tensor | None,
    ) -> Tensor:
        _, embeddings = self._clean_pass(clean_inputs)
        contrastive, pseudo = self._losses(perturbed, embeddings, pseudo_labels, "sum")
        return advcl_loss(contrastive, pseudo, self.config.pseudo_label_weight)

    def _pseudo_label_loss(self, x_ce: Tensor, pseudo_labels: Tensor | None, reduction: str) -> Tensor:
        assert self.pseudo_label_heads is not None and pseudo_labels is not None
        features = self.features(x_ce, self.pseudo_label_route)
        self.projection_head(features)  # the authors' model also projects x_ce (unused, but it costs time)
        return self.pseudo_label_heads.loss(self.pseudo_label_heads(features), pseudo_labels, reduction)
