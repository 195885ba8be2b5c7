"""The adversarial view for solo-learn's other methods: ``simclr_adv``, ``byol_adv``,
``mocov2plus_adv``, ``vicreg_adv``.

Each variant trains its parent method exactly as solo-learn does (clean crops, BN route
``"normal"``) and adds one view ``x + delta`` that goes through the backbone's ``"pgd"`` BN
route: ``delta`` is found by L-inf PGD in [0, 1] pixel space against the method's own loss
between ``x + delta`` and the first crop (for BYOL and MoCo v2+, the momentum encoder's
output of that crop), and the same loss at ``x + delta`` is added to the training loss with
weight ``adv_weight``.  ``x`` is AdvCL's original view when the recipe declares one (as a
small crop, see :data:`advcl_plugin.solo.common.ORIGINAL_VIEW_HELP`), else the first crop.
Momentum encoders get the same routed BN, so the momentum update pairs parameters one to one.
"""

from __future__ import annotations

from typing import Any

import omegaconf
import torch
from solo.losses.byol import byol_loss_func
from solo.losses.mocov2plus import mocov2plus_loss_func
from solo.losses.simclr import simclr_loss_func
from solo.losses.vicreg import vicreg_loss_func
from solo.methods.byol import BYOL
from solo.methods.mocov2plus import MoCoV2Plus
from solo.methods.simclr import SimCLR
from solo.methods.vicreg import VICReg
from torch import Tensor

from advcl_plugin.config import parse_number
from advcl_plugin.core.attack import pgd_linf
from advcl_plugin.core.pixels import normalize, random_padded_crop, unnormalize
from advcl_plugin.core.routed_bn import bn_route, convert_to_multi_bn
from advcl_plugin.solo.common import RoutedCheckpointMixin, pipeline_statistics, split_original_view

__all__ = ["ADVERSARIAL_DEFAULTS", "BYOLAdv", "MoCoV2PlusAdv", "SimCLRAdv", "VICRegAdv"]

#: extra method_kwargs of the adversarial variants (the parent's own keys stay as they are)
ADVERSARIAL_DEFAULTS: dict[str, Any] = {
    "adv_eps": 8 / 255,
    "adv_steps": 5,
    "adv_step_size": 2 / 255,
    "adv_weight": 1.0,
    "adv_original_view_padding": 4,
}


class AdversarialViewMixin(RoutedCheckpointMixin):
    """Adds ``x + delta`` (PGD against the method's own loss, BN route ``pgd``) as a view."""

    def __init__(self, cfg: omegaconf.DictConfig) -> None:
        given = omegaconf.OmegaConf.to_container(cfg.method_kwargs, resolve=True) or {}
        adversarial = {k: parse_number(given.pop(k, v)) for k, v in ADVERSARIAL_DEFAULTS.items()}
        cfg.method_kwargs = omegaconf.OmegaConf.create(given)  # the parent sees only its own keys
        super().__init__(cfg)  # type: ignore[call-arg]
        self.adversarial = adversarial
        self.original_view_index = split_original_view(self, cfg, required=False)
        self.pixel_mean, self.pixel_std = pipeline_statistics(cfg)
        convert_to_multi_bn(self.backbone, ("normal", "pgd"))
        if hasattr(self, "momentum_backbone"):
            convert_to_multi_bn(self.momentum_backbone, ("normal", "pgd"))

    # -- method-specific pieces ---------------------------------------------------------
    def adversarial_reference(self, view: Tensor) -> Tensor:
        """What the adversarial view is compared with (from the clean first crop)."""
        raise NotImplementedError

    def adversarial_view_loss(self, out: dict[str, Tensor], reference: Tensor, indexes: Tensor) -> Tensor:
        """The method's own loss between the adversarial view's outputs and ``reference``."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------
    def adversarial_forward(self, pixels: Tensor) -> dict[str, Tensor]:
        with bn_route(self.backbone, "pgd"):
            return self(normalize(pixels, self.pixel_mean, self.pixel_std))  # type: ignore[operator]

    def training_step(self, batch: list[Any], batch_idx: int) -> Tensor:
        indexes, views, targets = batch
        crops = list(views[: self.num_crops])  # type: ignore[attr-defined]
        loss = super().training_step([indexes, crops, targets], batch_idx)  # type: ignore[misc]
        if self.original_view_index is not None:
            start = unnormalize(views[self.original_view_index].float(), self.pixel_mean, self.pixel_std)
            start = random_padded_crop(start, int(self.adversarial["adv_original_view_padding"]))
        else:
            start = unnormalize(crops[0].float(), self.pixel_mean, self.pixel_std)
        reference = self.adversarial_reference(crops[0])
        frozen = reference.detach()
        adversarial = pgd_linf(
            lambda x: self.adversarial_view_loss(self.adversarial_forward(x), frozen, indexes),
            start,
            eps=self.adversarial["adv_eps"],
            steps=int(self.adversarial["adv_steps"]),
            step_size=self.adversarial["adv_step_size"],
        )
        adversarial_loss = self.adversarial_view_loss(self.adversarial_forward(adversarial), reference, indexes)
        self.log_dict(  # type: ignore[attr-defined]
            {
                "train_adv_view_loss": adversarial_loss,
                "train_adv_delta_abs_max": (adversarial - start).abs().max(),
            },
            on_epoch=True,
            sync_dist=True,
        )
        return loss + self.adversarial["adv_weight"] * adversarial_loss


class SimCLRAdv(AdversarialViewMixin, SimCLR):
    """SimCLR + adversarial view: NT-Xent between x + delta and the first crop."""

    def adversarial_reference(self, view: Tensor) -> Tensor:
        return self(view)["z"]

    def adversarial_view_loss(self, out: dict[str, Tensor], reference: Tensor, indexes: Tensor) -> Tensor:
        return simclr_loss_func(
            torch.cat([out["z"], reference]), indexes=torch.cat([indexes, indexes]), temperature=self.temperature
        )


class BYOLAdv(AdversarialViewMixin, BYOL):
    """BYOL + adversarial view: prediction of x + delta against the momentum projection of the first crop."""

    def adversarial_reference(self, view: Tensor) -> Tensor:
        return self.momentum_forward(view)["z"]

    def adversarial_view_loss(self, out: dict[str, Tensor], reference: Tensor, indexes: Tensor) -> Tensor:
        return byol_loss_func(out["p"], reference)


class MoCoV2PlusAdv(AdversarialViewMixin, MoCoV2Plus):
    """MoCo v2+ + adversarial view: query x + delta, key = momentum first crop, negatives = the queue
    (read, not updated, by the adversarial view)."""

    def adversarial_reference(self, view: Tensor) -> Tensor:
        return self.momentum_forward(view)["z"]

    def adversarial_view_loss(self, out: dict[str, Tensor], reference: Tensor, indexes: Tensor) -> Tensor:
        return mocov2plus_loss_func(out["z"], reference, self.queue[1].clone().detach(), self.temperature)


class VICRegAdv(AdversarialViewMixin, VICReg):
    """VICReg + adversarial view: VICReg loss between x + delta and the first crop."""

    def adversarial_reference(self, view: Tensor) -> Tensor:
        return self(view)["z"]

    def adversarial_view_loss(self, out: dict[str, Tensor], reference: Tensor, indexes: Tensor) -> Tensor:
        return vicreg_loss_func(
            out["z"],
            reference,
            sim_loss_weight=self.sim_loss_weight,
            var_loss_weight=self.var_loss_weight,
            cov_loss_weight=self.cov_loss_weight,
        )
