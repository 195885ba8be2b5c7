"""The AdvCL training objective: eq. (9) + lambda * eq. (10), with its ablations.

For a batch of images ``x`` (lightly augmented: padded crop + flip) and two strong
augmentations ``tau1(x)``, ``tau2(x)``:

1. the frequency view ``x_h`` (or ``x_l``) is computed from ``x`` (eq. 8);
2. two copies of ``x`` are perturbed jointly by PGD (eq. 7 / the inner max of eqs. 9
   and 10): ``x_cl`` through BN route ``"pgd"`` enters the contrastive loss over
   ``[x_cl, tau1, tau2, x_h]``, ``x_ce`` through route ``"pgd_ce"`` enters only the
   pseudo-label loss (summed over the batch while attacking);
3. the training loss is the contrastive loss over ``[x_cl, tau1, tau2, x_h]`` plus
   ``lambda`` times the pseudo-label loss on ``x_ce`` (batch mean).

The clean views' embeddings do not depend on delta, so they are computed once per
batch; ``naive=True`` reproduces the authors' loop, which re-forwards all five inputs
at every attack step.  Both give the same loss and parameter gradients; the naive loop
additionally updates the running BN statistics of the ``"normal"`` route and of the
projection head at every attack step (train mode), which the optimised loop does once
per batch.  The ``"pgd"`` route used downstream is updated identically.

Example:
    >>> import torch
    >>> from advcl_plugin import AdvCLObjective, cifar_resnet18
    >>> objective = AdvCLObjective(cifar_resnet18(width=8), ks=(2, 10), steps=2)
    >>> x, t1, t2 = (torch.rand(4, 3, 32, 32) for _ in range(3))
    >>> labels = torch.stack([torch.randint(0, 2, (4,)), torch.randint(0, 10, (4,))], 1)
    >>> loss, logs = objective(x, t1, t2, labels)
    >>> loss.backward()
    >>> sorted(logs)[:3]
    ['attack_loss', 'contrastive_loss', 'delta_abs_max']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from advcl_plugin.core.attack import check_pixel_range, pgd_linf
from advcl_plugin.core.contrastive import MultiViewNTXentLoss
from advcl_plugin.core.frequency import high_frequency, low_frequency
from advcl_plugin.core.heads import ProjectionHead, PseudoLabelHeads
from advcl_plugin.core.routed_bn import bn_route, convert_to_multi_bn, routed_bn_layers

__all__ = ["AdvCLObjective", "advcl_loss"]

AttackMode = Literal["advcl", "paired", "none"]
FrequencyView = Literal["high", "low"]

_FREQUENCY_FUNCTIONS = {"high": high_frequency, "low": low_frequency}


def advcl_loss(contrastive_loss: Tensor, pseudo_label_loss: Tensor | None, weight: float) -> Tensor:
    """Total AdvCL objective of eq. (10): ``l_CL^adv + lambda * l_CE`` (pseudo-label term optional)."""
    if pseudo_label_loss is None:
        return contrastive_loss
    return contrastive_loss + weight * pseudo_label_loss


class AdvCLObjective(nn.Module):
    """AdvCL's objective (eqs. 7-10) around a backbone with routed batch norm.

    Args:
        backbone: encoder mapping (B, C, H, W) images in [0, 1] to (B, d) features. Its BN
            layers are converted in place to routed BN (``convert_to_multi_bn``) if they are
            not routed yet.
        projection_head: head g for the contrastive loss; default
            ``ProjectionHead(d, d, projection_dim)``.
        pseudo_label_heads: heads phi_i of eq. (10); default ``PseudoLabelHeads(d, ks)``.
            Ignored when ``use_pseudo_labels=False``.
        feature_dim: d, inferred from ``backbone.feature_dim`` or a dummy forward if omitted.
        ks: cluster counts of the default pseudo-label heads.
        projection_dim: output size of the default projection head (128).
        eps, steps, step_size: L-inf PGD of the pretraining attack (8/255, 5, 2/255). ``steps=1``
            with ``step_size=1.25 * eps`` is the cheaper single-step attack with random start
            (Wong et al., 2020); ``steps=0`` keeps only the random start.
        random_start: start the attack from a uniform point of the eps-ball (authors: yes).
        radius: radius r of the frequency views (eq. 8).
        pseudo_label_weight: lambda of eq. (10) (0.2).
        temperature, base_temperature: of the contrastive loss (0.5 and 0.07, see
            :class:`MultiViewNTXentLoss`).
        frequency_views: frequency components of x added as clean views: ``("high",)`` is
            AdvCL; ``()`` drops the HFC view, ``("low",)`` uses the LFC instead and
            ``("low", "high")`` adds both (Table 4).
        use_pseudo_labels: include the pseudo-label term of eq. (10).
        attack: ``"advcl"`` (one adversarial view x + delta, eq. 7), ``"paired"`` (earlier
            work, eq. 6: views tau1 + delta1 and tau2 + delta2) or ``"none"`` (no attack:
            SimCLR-style, or HFC-only ablations).
        paired_clean_views: with ``attack="paired"``, also keep tau1 and tau2 themselves
            as views (Table 4, row 3).
        naive: re-forward every input at every attack step (the authors' loop), for
            comparison and benchmarking.
        gather_distributed: take negatives from all processes.
        routes: BN route names for (clean, contrastive adversarial, pseudo-label adversarial).

    Shapes:
        ``forward(x_orig, tau1, tau2, pseudo_labels)``: images (B, C, H, W) in [0, 1];
        ``pseudo_labels`` (B, n_heads) int64 (-1 = none). Returns ``(loss, logs)`` with a
        scalar loss and a dict of detached scalar tensors.
    """

    def __init__(
        self,
        backbone: nn.Module,
        projection_head: nn.Module | None = None,
        pseudo_label_heads: PseudoLabelHeads | None = None,
        *,
        feature_dim: int | None = None,
        ks: Sequence[int] = (2, 10, 50, 100, 500),
        projection_dim: int = 128,
        eps: float = 8 / 255,
        steps: int = 5,
        step_size: float = 2 / 255,
        random_start: bool = True,
        radius: float = 8,
        pseudo_label_weight: float = 0.2,
        temperature: float = 0.5,
        base_temperature: float | None = 0.07,
        frequency_views: Sequence[FrequencyView] = ("high",),
        use_pseudo_labels: bool = True,
        attack: AttackMode = "advcl",
        paired_clean_views: bool = False,
        naive: bool = False,
        gather_distributed: bool = False,
        routes: tuple[str, str, str] = ("normal", "pgd", "pgd_ce"),
    ) -> None:
        super().__init__()
        if attack not in ("advcl", "paired", "none"):
            raise ValueError(f"attack must be 'advcl', 'paired' or 'none', got {attack!r}")
        unknown = [view for view in frequency_views if view not in _FREQUENCY_FUNCTIONS]
        if unknown:
            raise ValueError(f"frequency_views must be drawn from ('high', 'low'), got {unknown}")
        if attack == "none" and use_pseudo_labels:
            raise ValueError("the pseudo-label term is adversarial (eq. 10): it needs an attack")
        self.clean_route, self.adversarial_route, self.pseudo_label_route = routes
        needed = [self.clean_route]
        if attack != "none":
            needed.append(self.adversarial_route)
        if use_pseudo_labels:
            needed.append(self.pseudo_label_route)
        layers = routed_bn_layers(backbone)
        if not layers:
            convert_to_multi_bn(backbone, tuple(needed))
        else:
            missing = [r for r in needed if r not in layers[0].route_names]
            if missing:
                raise ValueError(f"the backbone's routed BN lacks routes {missing} (it has {layers[0].route_names})")
        self.backbone = backbone
        if feature_dim is None:
            feature_dim = getattr(backbone, "feature_dim", None) or _infer_feature_dim(backbone)
        self.feature_dim = int(feature_dim)
        self.projection_head = projection_head or ProjectionHead(self.feature_dim, output_dim=projection_dim)
        self.pseudo_label_heads = (
            (pseudo_label_heads or PseudoLabelHeads(self.feature_dim, ks)) if use_pseudo_labels else None
        )
        self.contrastive_loss = MultiViewNTXentLoss(temperature, base_temperature, gather_distributed)
        self.eps, self.steps, self.step_size, self.random_start = eps, steps, step_size, random_start
        self.radius = radius
        self.pseudo_label_weight = pseudo_label_weight
        self.frequency_views = tuple(frequency_views)
        self.use_pseudo_labels = use_pseudo_labels
        self.attack = attack
        self.paired_clean_views = paired_clean_views
        self.naive = naive

    # ------------------------------------------------------------------ pieces
    def features(self, x: Tensor, route: str) -> Tensor:
        """Backbone features (B, d) of ``x`` through BN route ``route``."""
        with bn_route(self.backbone, route):
            return self.backbone(x).flatten(1)

    def project(self, x: Tensor, route: str) -> Tensor:
        """Projection g(f(x)) (B, projection_dim) through BN route ``route``."""
        return self.projection_head(self.features(x, route))

    def pseudo_label_logits(self, x: Tensor) -> list[Tensor]:
        assert self.pseudo_label_heads is not None
        return self.pseudo_label_heads(self.features(x, self.pseudo_label_route))

    def clean_views(self, x_orig: Tensor, tau1: Tensor, tau2: Tensor) -> list[Tensor]:
        """Views that are not attacked, in the order they enter the contrastive loss."""
        views = []
        if self.attack != "paired" or self.paired_clean_views:
            views += [tau1, tau2]
        views += [_FREQUENCY_FUNCTIONS[name](x_orig, self.radius) for name in self.frequency_views]
        return views

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x_orig: Tensor,
        tau1: Tensor,
        tau2: Tensor,
        pseudo_labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        return_features: bool = False,
        steps: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]] | tuple[Tensor, dict[str, Tensor], list[Tensor]]:
        """Compute eq. (9) + lambda * eq. (10) for one batch; see the class docstring.

        ``steps`` overrides the number of PGD steps for this batch (e.g. 0 on the batches that
        "attack every k-th batch" skips: the views then get only the random start).

        With ``return_features=True`` a third element holds the backbone features (B, d) of
        the clean views in loss order (tau1, tau2, frequency views), e.g. for an online
        linear probe; they are part of the autograd graph (detach them for a probe).
        """
        clean_inputs, attacked_clean = self._checked_inputs(x_orig, tau1, tau2, pseudo_labels)
        clean_features: list[Tensor] | None = None
        clean_embeddings: list[Tensor] | None = None
        if not self.naive:
            clean_features = [self.features(view, self.clean_route) for view in clean_inputs]
            clean_embeddings = [self.projection_head(f) for f in clean_features]

        logs: dict[str, Tensor] = {}
        adversarial: tuple[Tensor, ...] = ()
        if self.attack != "none":
            adversarial = self._perturb(
                attacked_clean, clean_inputs, clean_embeddings, pseudo_labels, generator, steps, logs
            )

        contrastive, pseudo, naive_features = self._losses(
            adversarial, clean_inputs if self.naive else None, clean_embeddings, pseudo_labels, "mean"
        )
        loss = advcl_loss(contrastive, pseudo, self.pseudo_label_weight)
        logs["contrastive_loss"] = contrastive.detach()
        if pseudo is not None:
            logs["pseudo_label_loss"] = pseudo.detach()
        logs["loss"] = loss.detach()
        if return_features:
            return loss, logs, clean_features if clean_features is not None else naive_features  # type: ignore[return-value]
        return loss, logs

    def perturb(
        self,
        x_orig: Tensor,
        tau1: Tensor,
        tau2: Tensor,
        pseudo_labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        steps: int | None = None,
    ) -> tuple[Tensor, ...]:
        """Only the attack of :meth:`forward`: the adversarial inputs of this batch (``x_cl`` and, with
        pseudo labels, ``x_ce``; ``tau1 + delta1``, ``tau2 + delta2`` for the paired attack)."""
        if self.attack == "none":
            return ()
        clean_inputs, attacked_clean = self._checked_inputs(x_orig, tau1, tau2, pseudo_labels)
        clean_embeddings = None
        if not self.naive:
            with torch.no_grad():
                clean_embeddings = [self.project(view, self.clean_route) for view in clean_inputs]
        return self._perturb(attacked_clean, clean_inputs, clean_embeddings, pseudo_labels, generator, steps, {})

    # ------------------------------------------------------------------ helpers
    def _checked_inputs(
        self, x_orig: Tensor, tau1: Tensor, tau2: Tensor, pseudo_labels: Tensor | None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The clean views and the attack's starting points of a batch, after checking the pseudo
        labels' shape and that the attacked inputs are pixels in [0, 1]."""
        if self.use_pseudo_labels:
            if pseudo_labels is None:
                raise ValueError("pseudo_labels are required (or build the objective with use_pseudo_labels=False)")
            expected = (x_orig.shape[0], len(self.pseudo_label_heads.ks))  # type: ignore[union-attr]
            if tuple(pseudo_labels.shape) != expected:
                raise ValueError(f"pseudo_labels must have shape {expected}, got {tuple(pseudo_labels.shape)}")
        attacked_clean = self._attacked_inputs(x_orig, tau1, tau2)
        for index, tensor in enumerate(attacked_clean):
            check_pixel_range(tensor, name=f"attacked input {index}")
        return self.clean_views(x_orig, tau1, tau2), attacked_clean

    def _perturb(
        self,
        attacked_clean: list[Tensor],
        clean_inputs: list[Tensor],
        clean_embeddings: list[Tensor] | None,
        pseudo_labels: Tensor | None,
        generator: torch.Generator | None,
        steps: int | None,
        logs: dict[str, Tensor],
    ) -> tuple[Tensor, ...]:
        """Joint PGD on the attacked inputs ascending eq. (9) + lambda * eq. (10) (CE summed); fills ``logs``."""
        last_attack_loss: list[Tensor] = []

        def attack_loss(*perturbed: Tensor) -> Tensor:
            if self.naive:  # the authors' loop: every input re-forwarded at every step
                contrastive, pseudo, _ = self._losses(perturbed, clean_inputs, None, pseudo_labels, "sum")
            else:
                frozen = [z.detach() for z in clean_embeddings]  # type: ignore[union-attr]
                contrastive, pseudo, _ = self._losses(perturbed, None, frozen, pseudo_labels, "sum")
            loss = advcl_loss(contrastive, pseudo, self.pseudo_label_weight)
            last_attack_loss[:] = [loss.detach()]
            return loss

        adversarial = pgd_linf(
            attack_loss,
            attacked_clean,
            self.eps,
            self.steps if steps is None else steps,
            self.step_size,
            self.random_start,
            generator=generator,
        )
        if last_attack_loss:
            logs["attack_loss"] = last_attack_loss[0]
        deltas = torch.cat([(a - c).abs().flatten() for a, c in zip(adversarial, attacked_clean, strict=True)])
        logs["delta_abs_mean"] = deltas.mean().detach()
        logs["delta_abs_max"] = deltas.max().detach()
        return adversarial

    def _attacked_inputs(self, x_orig: Tensor, tau1: Tensor, tau2: Tensor) -> list[Tensor]:
        """Clean starting points of the attack: contrastive ones first, then x_ce."""
        if self.attack == "none":
            return []
        starts = [x_orig] if self.attack == "advcl" else [tau1, tau2]
        if self.use_pseudo_labels:
            starts.append(x_orig)
        return starts

    def _losses(
        self,
        adversarial: Sequence[Tensor],
        clean_inputs: Sequence[Tensor] | None,
        clean_embeddings: Sequence[Tensor] | None,
        pseudo_labels: Tensor | None,
        reduction: str,
    ) -> tuple[Tensor, Tensor | None, list[Tensor] | None]:
        """Contrastive loss over [adversarial views, clean views], the pseudo-label loss, and the
        clean views' features when they were computed here (``clean_embeddings`` not given)."""
        adversarial = list(adversarial)
        x_ce = adversarial.pop() if self.use_pseudo_labels else None
        embeddings = [self.project(view, self.adversarial_route) for view in adversarial]
        pseudo = None
        if x_ce is not None:
            features = self.features(x_ce, self.pseudo_label_route)
            if self.naive:  # the authors' model also projects x_ce (unused, but it costs time)
                self.projection_head(features)
            pseudo = self.pseudo_label_heads.loss(  # type: ignore[union-attr]
                self.pseudo_label_heads(features),
                pseudo_labels,
                reduction,  # type: ignore[union-attr,arg-type]
            )
        clean_features = None
        if clean_embeddings is None:
            assert clean_inputs is not None
            clean_features = [self.features(view, self.clean_route) for view in clean_inputs]
            clean_embeddings = [self.projection_head(f) for f in clean_features]
        contrastive = self.contrastive_loss(embeddings + list(clean_embeddings))
        return contrastive, pseudo, clean_features


def _infer_feature_dim(backbone: nn.Module) -> int:
    was_training = backbone.training
    backbone.eval()
    try:
        parameter = next(backbone.parameters())
        with torch.no_grad():
            output = backbone(torch.zeros(2, 3, 32, 32, device=parameter.device, dtype=parameter.dtype))
    finally:
        backbone.train(was_training)
    return int(output.flatten(1).shape[1])
