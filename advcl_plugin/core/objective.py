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

The clean views' embeddings do not depend on delta, so they are computed once per batch.
The authors' loop, which re-forwards all five inputs at every attack step, lives in
:class:`advcl_plugin.testing.AuthorsLoopObjective` as a test and benchmark oracle: both give the
same loss and parameter gradients.

Examples:
    >>> import torch
    >>> from advcl_plugin import AdvCLConfig, AdvCLObjective, cifar_resnet18
    >>> objective = AdvCLObjective(cifar_resnet18(width=8), AdvCLConfig(ks=(2, 10), steps=2))
    >>> x, t1, t2 = (torch.rand(4, 3, 32, 32) for _ in range(3))
    >>> labels = torch.stack([torch.randint(0, 2, (4,)), torch.randint(0, 10, (4,))], 1)
    >>> out = objective(x, t1, t2, labels)
    >>> out.loss.backward()
    >>> sorted(out.logs)[:3]
    ['attack_loss', 'contrastive_loss', 'delta_abs_max']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from advcl_plugin.core.advcl_loss import advcl_loss
from advcl_plugin.core.attack import check_pixel_ranges, linf_ascent, pixels_in_range
from advcl_plugin.core.config import PAPER, AdvCLConfig
from advcl_plugin.core.contrastive import MultiViewNTXentLoss
from advcl_plugin.core.frequency import check_radius, high_frequency, low_frequency
from advcl_plugin.core.heads import ProjectionHead, PseudoLabelHeads, check_pseudo_labels, head_cross_entropy
from advcl_plugin.core.routed_bn import bn_route, convert_to_multi_bn, routed_bn_layers

__all__ = ["AdvCLObjective", "AdvCLOutput", "advcl_loss"]

_FREQUENCY_FUNCTIONS = {"high": high_frequency, "low": low_frequency}


@dataclass
class AdvCLOutput:
    """What one call of :class:`AdvCLObjective` returns.

    Attributes:
        loss: the scalar training loss (eq. 9 + lambda * eq. 10), with its graph.
        logs: detached scalars: ``contrastive_loss``, ``pseudo_label_loss`` (with pseudo labels),
            ``attack_loss``, ``delta_abs_mean``, ``delta_abs_max`` (with an attack), ``loss``.
        clean_features: backbone features (B, d) of the clean views in loss order (tau1, tau2,
            frequency views), part of the graph (detach them for an online probe).
        adversarial: the attacked inputs (detached): ``x_cl`` (and ``x_ce``), or the paired views.
    """

    loss: Tensor
    logs: dict[str, Tensor]
    clean_features: list[Tensor] = field(default_factory=list)
    adversarial: tuple[Tensor, ...] = ()


class AdvCLObjective(nn.Module):
    """AdvCL's objective (eqs. 7-10) around a backbone with routed batch norm.

    Args:
        backbone: encoder mapping (B, C, H, W) images in [0, 1] to pooled (B, d) features. Its
            BN layers are converted in place to routed BN (``convert_to_multi_bn``) if they are
            not routed yet.
        config: every hyper-parameter (:class:`~advcl_plugin.core.config.AdvCLConfig`; default:
            the authors' settings, ``PAPER``).
        projection_head: head g for the contrastive loss; default
            ``ProjectionHead(d, d, config.projection_dim)``.
        pseudo_label_heads: heads phi_i of eq. (10); default ``PseudoLabelHeads(d, config.ks)``.
            Unused when ``config.use_pseudo_labels`` is false.
        feature_dim: d, inferred from ``backbone.feature_dim`` or a dummy forward if omitted.
        gather_distributed: take negatives from all processes.

    Shapes:
        ``forward(x_orig, tau1, tau2, pseudo_labels)``: images (B, C, H, W) in [0, 1];
        ``pseudo_labels`` (B, len(ks)) int64 (-1 = none). Returns an :class:`AdvCLOutput`.
    """

    clean_route, adversarial_route, pseudo_label_route = "normal", "pgd", "pgd_ce"

    def __init__(
        self,
        backbone: nn.Module,
        config: AdvCLConfig = PAPER,
        *,
        projection_head: nn.Module | None = None,
        pseudo_label_heads: PseudoLabelHeads | None = None,
        feature_dim: int | None = None,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(config, AdvCLConfig):
            raise TypeError(f"config must be an AdvCLConfig, got {type(config).__name__}")
        self.config = config
        needed = config.bn_routes
        layers = routed_bn_layers(backbone)
        if not layers:
            convert_to_multi_bn(backbone, needed)
        else:
            missing = [r for r in needed if r not in layers[0].route_names]
            if missing:
                raise ValueError(f"the backbone's routed BN lacks routes {missing} (it has {layers[0].route_names})")
        self.backbone = backbone
        if feature_dim is None:
            feature_dim = getattr(backbone, "feature_dim", None) or _infer_feature_dim(backbone)
        self.feature_dim = int(feature_dim)
        self.projection_head = projection_head or ProjectionHead(self.feature_dim, output_dim=config.projection_dim)
        self.pseudo_label_heads = (
            (pseudo_label_heads or PseudoLabelHeads(self.feature_dim, config.ks)) if config.use_pseudo_labels else None
        )
        # the embeddings' values are checked through the images (above) and the training loss (by the trainer)
        self.contrastive_loss = MultiViewNTXentLoss(
            config.temperature, config.base_temperature, gather_distributed, check_finite=False
        )
        ks = self.pseudo_label_heads.ks if self.pseudo_label_heads is not None else ()
        self._label_bounds: Tensor
        self.register_buffer("_label_bounds", torch.tensor(ks, dtype=torch.long), persistent=False)

    # ------------------------------------------------------------------ pieces
    def features(self, x: Tensor, route: str) -> Tensor:
        """Backbone features (B, d) of ``x`` through BN route ``route``."""
        with bn_route(self.backbone, route):
            features = self.backbone(x)
        if features.dim() != 2:
            raise ValueError(
                f"the backbone must return pooled features (B, d), got shape {tuple(features.shape)}; "
                "end it with global pooling and flatten (e.g. torchvision's ResNet with fc = Identity())"
            )
        return features

    def project(self, x: Tensor, route: str) -> Tensor:
        """Projection g(f(x)) (B, projection_dim) through BN route ``route``."""
        return self.projection_head(self.features(x, route))

    def clean_views(self, x_orig: Tensor, tau1: Tensor, tau2: Tensor) -> list[Tensor]:
        """Views that are not attacked, in the order they enter the contrastive loss."""
        config = self.config
        views = []
        if config.attack != "paired" or config.paired_clean_views:
            views += [tau1, tau2]
        views += [_FREQUENCY_FUNCTIONS[name](x_orig, config.radius) for name in config.frequency_views]
        return views

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x_orig: Tensor,
        tau1: Tensor,
        tau2: Tensor,
        pseudo_labels: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        steps: int | None = None,
    ) -> AdvCLOutput:
        """Compute eq. (9) + lambda * eq. (10) for one batch; see the class docstring.

        ``steps`` overrides the number of PGD steps for this batch (e.g. 0 on the batches that
        "attack every k-th batch" skips: the views then get only the random start).
        """
        clean_inputs, starts = self._checked_inputs(x_orig, tau1, tau2, pseudo_labels)
        before = self._clean_pass_before_attack(clean_inputs)
        logs: dict[str, Tensor] = {}
        adversarial: tuple[Tensor, ...] = ()
        if self.config.attack != "none":
            adversarial, logs = self._perturb(starts, clean_inputs, before, pseudo_labels, generator, steps)
        features, embeddings = before if before is not None else self._clean_pass(clean_inputs)
        contrastive, pseudo = self._losses(adversarial, embeddings, pseudo_labels, "mean")
        loss = advcl_loss(contrastive, pseudo, self.config.pseudo_label_weight)
        logs["contrastive_loss"] = contrastive.detach()
        if pseudo is not None:
            logs["pseudo_label_loss"] = pseudo.detach()
        logs["loss"] = loss.detach()
        return AdvCLOutput(loss, logs, features, adversarial)

    def perturb(
        self,
        x_orig: Tensor,
        tau1: Tensor,
        tau2: Tensor,
        pseudo_labels: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        steps: int | None = None,
    ) -> tuple[Tensor, ...]:
        """Only the attack of :meth:`forward`: the adversarial inputs of this batch (``x_cl`` and, with
        pseudo labels, ``x_ce``; ``tau1 + delta1``, ``tau2 + delta2`` for the paired attack)."""
        if self.config.attack == "none":
            return ()
        clean_inputs, starts = self._checked_inputs(x_orig, tau1, tau2, pseudo_labels)
        with torch.no_grad():
            before = self._clean_pass_before_attack(clean_inputs)
        return self._perturb(starts, clean_inputs, before, pseudo_labels, generator, steps)[0]

    # ------------------------------------------------------------------ steps of forward
    def _checked_inputs(
        self, x_orig: Tensor, tau1: Tensor, tau2: Tensor, pseudo_labels: Tensor | None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The clean views and the attack's starting points of a batch, after checking the pseudo
        labels' shape and that the images are pixels in [0, 1]."""
        images = {"x_orig": x_orig, "tau1": tau1, "tau2": tau2}
        self._check_images(images)
        if self.pseudo_label_heads is not None:
            if pseudo_labels is None:
                raise ValueError("pseudo_labels are required (or build the objective with use_pseudo_labels=False)")
            expected = (x_orig.shape[0], len(self.pseudo_label_heads.ks))
            if tuple(pseudo_labels.shape) != expected:
                raise ValueError(f"pseudo_labels must have shape {expected}, got {tuple(pseudo_labels.shape)}")
            if pseudo_labels.is_floating_point() or pseudo_labels.dtype == torch.bool:
                check_pseudo_labels(pseudo_labels, self.pseudo_label_heads.ks)  # refuses the dtype
        # one host-device synchronisation for every value check of the batch; the messages only on failure
        valid = pixels_in_range(images.values())
        if pseudo_labels is not None and self.pseudo_label_heads is not None:
            valid = valid & ((pseudo_labels >= -1) & (pseudo_labels < self._label_bounds)).all()
        if not bool(valid):
            check_pixel_ranges(images)
            if pseudo_labels is not None and self.pseudo_label_heads is not None:
                check_pseudo_labels(pseudo_labels, self.pseudo_label_heads.ks)
        if self.config.frequency_views:
            check_radius(self.config.radius, *x_orig.shape[-2:])
        return self.clean_views(x_orig, tau1, tau2), self._attack_starts(x_orig, tau1, tau2)

    def _check_images(self, images: dict[str, Tensor]) -> None:
        """Refuse images this objective cannot train on, naming the argument: not float pixels, of mixed dtypes
        or of a dtype other than the backbone's (outside autocast), of different shapes, or a batch of one
        image in training mode (batch norm and the contrastive loss need at least two)."""
        for name, tensor in images.items():
            if not tensor.is_floating_point():
                raise TypeError(
                    f"{name} must be float pixels in [0, 1], got dtype {tensor.dtype} (convert uint8 images with "
                    "x.float() / 255)"
                )
            if tensor.dim() != 4:
                raise ValueError(f"{name} must be a batch of images (B, C, H, W), got shape {tuple(tensor.shape)}")
        dtypes = {name: tensor.dtype for name, tensor in images.items()}
        if len(set(dtypes.values())) > 1:
            listed = ", ".join(f"{name} {str(dtype).removeprefix('torch.')}" for name, dtype in dtypes.items())
            raise TypeError(f"x_orig, tau1 and tau2 must share one dtype, got {listed}")
        shapes = {name: tuple(tensor.shape) for name, tensor in images.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"x_orig, tau1 and tau2 must have the same shape, got {shapes}")
        weights = next(self.backbone.parameters(), None)
        dtype = next(iter(dtypes.values()))
        device = next(iter(images.values())).device
        if weights is not None and dtype != weights.dtype and not torch.is_autocast_enabled(device.type):
            raise TypeError(
                f"the images are {str(dtype).removeprefix('torch.')} but the backbone's weights are "
                f"{str(weights.dtype).removeprefix('torch.')}: convert one to the other (images.to(...)) or train "
                "under autocast"
            )
        batch = shapes["x_orig"][0]
        if self.training and batch < 2:
            raise ValueError(
                f"x_orig holds a batch of {batch} image(s): training needs at least 2 (batch norm in training mode "
                "normalises over the batch, and the contrastive loss needs negatives)"
            )

    def _attack_starts(self, x_orig: Tensor, tau1: Tensor, tau2: Tensor) -> list[Tensor]:
        """Clean starting points of the attack: contrastive ones first, then x_ce."""
        if self.config.attack == "none":
            return []
        starts = [x_orig] if self.config.attack == "advcl" else [tau1, tau2]
        if self.pseudo_label_heads is not None:
            starts.append(x_orig)
        return starts

    def _clean_pass(self, clean_inputs: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Backbone features and projections of the clean views (route ``"normal"``)."""
        features = [self.features(view, self.clean_route) for view in clean_inputs]
        return features, [self.projection_head(f) for f in features]

    def _clean_pass_before_attack(self, clean_inputs: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]] | None:
        """The clean views do not depend on delta: embed them once, before the attack."""
        return self._clean_pass(clean_inputs)

    def _attack_loss(
        self,
        perturbed: Sequence[Tensor],
        clean_inputs: Sequence[Tensor],
        before: tuple[list[Tensor], list[Tensor]] | None,
        pseudo_labels: Tensor | None,
    ) -> Tensor:
        """What PGD ascends: eq. (9) + lambda * eq. (10) with the cross-entropy summed over the batch."""
        assert before is not None
        frozen = [z.detach() for z in before[1]]
        contrastive, pseudo = self._losses(perturbed, frozen, pseudo_labels, "sum")
        return advcl_loss(contrastive, pseudo, self.config.pseudo_label_weight)

    def _perturb(
        self,
        starts: list[Tensor],
        clean_inputs: list[Tensor],
        before: tuple[list[Tensor], list[Tensor]] | None,
        pseudo_labels: Tensor | None,
        generator: torch.Generator | None,
        steps: int | None,
    ) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        """Joint PGD on the attacked inputs: the adversarial inputs, and logs of the attack's loss and |delta|."""
        last_loss: list[Tensor] = []

        def attack_loss(*perturbed: Tensor) -> Tensor:
            loss = self._attack_loss(perturbed, clean_inputs, before, pseudo_labels)
            last_loss[:] = [loss.detach()]
            return loss

        config = self.config
        adversarial = linf_ascent(  # the starts were checked with the batch (_checked_inputs)
            attack_loss,
            starts,
            config.eps,
            config.steps if steps is None else steps,
            config.step_size,
            config.random_start,
            generator=generator,
        )
        logs = {"attack_loss": last_loss[0]} if last_loss else {}
        deltas = torch.cat([(a - c).abs().flatten() for a, c in zip(adversarial, starts, strict=True)])
        logs["delta_abs_mean"] = deltas.mean().detach()
        logs["delta_abs_max"] = deltas.max().detach()
        return adversarial, logs

    def _pseudo_label_loss(self, x_ce: Tensor, pseudo_labels: Tensor | None, reduction: str) -> Tensor:
        """Eq. (10) on ``x_ce`` through route ``"pgd_ce"``."""
        assert self.pseudo_label_heads is not None and pseudo_labels is not None
        features = self.features(x_ce, self.pseudo_label_route)
        return head_cross_entropy(self.pseudo_label_heads(features), pseudo_labels, reduction)

    def _losses(
        self,
        adversarial: Sequence[Tensor],
        clean_embeddings: Sequence[Tensor],
        pseudo_labels: Tensor | None,
        reduction: str,
    ) -> tuple[Tensor, Tensor | None]:
        """Contrastive loss over [adversarial views, clean views] and the pseudo-label loss."""
        adversarial = list(adversarial)
        x_ce = adversarial.pop() if self.pseudo_label_heads is not None and adversarial else None
        embeddings = [self.project(view, self.adversarial_route) for view in adversarial]
        pseudo = self._pseudo_label_loss(x_ce, pseudo_labels, reduction) if x_ce is not None else None
        return self.contrastive_loss(embeddings + list(clean_embeddings)), pseudo


def _infer_feature_dim(backbone: nn.Module) -> int:
    was_training = backbone.training
    backbone.eval()
    try:
        parameter = next(backbone.parameters())
        with torch.no_grad():
            output = backbone(torch.zeros(2, 3, 32, 32, device=parameter.device, dtype=parameter.dtype))
    finally:
        backbone.train(was_training)
    if output.dim() != 2:
        raise ValueError(
            f"the backbone must return pooled features (B, d), got shape {tuple(output.shape)}; "
            "end it with global pooling and flatten (e.g. torchvision's ResNet with fc = Identity())"
        )
    return int(output.shape[1])
