"""The adversarial view for solo-learn's other methods: ``simclr_adv``, ``byol_adv``,
``mocov2plus_adv``, ``vicreg_adv``, ``simsiam_adv``, ``barlow_twins_adv``.

Each variant trains its parent method exactly as solo-learn does (clean crops, BN route
``"normal"``) and adds one view ``x + delta`` from the core's
:class:`~advcl_plugin.core.adversarial_view.AdversarialView` (the same implementation the lightly
adapter exports): ``delta`` is found by L-inf PGD in [0, 1] pixel space against the method's own
loss between ``x + delta`` and the first crop (for BYOL and MoCo v2+, the momentum encoder's
output of that crop), through the backbone's ``"pgd"`` BN route, and the same loss at
``x + delta`` is added to the training loss with weight ``adversarial_weight``.  The attack's keys are named as
``method: advcl`` names them (``eps``, ``steps``, ``step_size``; the 0.1 names ``adv_eps`` ... still work,
with a deprecation warning).  ``x`` is AdvCL's original
view when the recipe declares one (as a small crop, see
:data:`advcl_plugin.solo.common.ORIGINAL_VIEW_HELP`), else the first crop.  Extra small crops
(multi-crop) go to the parent for ``simclr_adv`` and ``byol_adv``, whose parents use them; the other
variants refuse them.  Momentum encoders get
the same routed BN, so the momentum update pairs parameters one to one.
"""

from __future__ import annotations

import warnings
from typing import Any

import omegaconf
import torch
from solo.losses.barlow import barlow_loss_func
from solo.losses.byol import byol_loss_func
from solo.losses.mocov2plus import mocov2plus_loss_func
from solo.losses.simclr import simclr_loss_func
from solo.losses.simsiam import simsiam_loss_func
from solo.losses.vicreg import vicreg_loss_func
from solo.methods.barlow_twins import BarlowTwins
from solo.methods.byol import BYOL
from solo.methods.mocov2plus import MoCoV2Plus
from solo.methods.simclr import SimCLR
from solo.methods.simsiam import SimSiam
from solo.methods.vicreg import VICReg
from torch import Tensor

from advcl_plugin.core.adversarial_view import AdversarialView
from advcl_plugin.core.config import PAPER, PAPER_VIEWS
from advcl_plugin.core.pixels import random_padded_crop
from advcl_plugin.core.references import Unowned
from advcl_plugin.core.routed_bn import convert_to_multi_bn
from advcl_plugin.solo.common import (
    RoutedMethodMixin,
    pipeline_statistics,
    probe_outputs,
    refuse_dali,
    split_method_kwargs,
    split_original_view,
    warm_start_backbones,
)

__all__ = [
    "ADVERSARIAL_DEFAULTS",
    "BYOLAdv",
    "BarlowTwinsAdv",
    "MoCoV2PlusAdv",
    "SimCLRAdv",
    "SimSiamAdv",
    "VICRegAdv",
    "renamed_method_kwargs",
]

#: extra method_kwargs of the adversarial variants (the parent's own keys stay as they are), named as
#: ``method: advcl`` and :class:`~advcl_plugin.core.config.AdvCLConfig` name them
ADVERSARIAL_DEFAULTS: dict[str, Any] = {
    "eps": PAPER.eps,
    "steps": PAPER.steps,
    "step_size": PAPER.step_size,
    "adversarial_weight": 1.0,
    "original_view_padding": PAPER_VIEWS.original_padding,
    "init_from": None,  # warm start: every BN route from a clean encoder (solo checkpoint, encoder.pt, state dict)
}
#: the names of advcl-plugin 0.1, still read (with a DeprecationWarning naming the new key)
DEPRECATED_KEYS: dict[str, str] = {
    "adv_eps": "eps",
    "adv_steps": "steps",
    "adv_step_size": "step_size",
    "adv_weight": "adversarial_weight",
    "adv_original_view_padding": "original_view_padding",
}


def renamed_method_kwargs(cfg: omegaconf.DictConfig, method: str) -> None:
    """Rename the 0.1 keys (``adv_eps`` ...) of ``cfg.method_kwargs`` in place, warning once per key; both
    spellings of one setting are refused."""
    if "method_kwargs" not in cfg or cfg.method_kwargs is None:
        return
    for old, new in DEPRECATED_KEYS.items():
        if old not in cfg.method_kwargs:
            continue
        if new in cfg.method_kwargs:
            raise ValueError(f"method {method!r}: method_kwargs has both {old} and {new}; give {new} only")
        warnings.warn(
            f"method_kwargs.{old} is deprecated (advcl-plugin 0.2): write method_kwargs.{new}",
            DeprecationWarning,
            stacklevel=3,
        )
        cfg.method_kwargs[new] = cfg.method_kwargs[old]
        del cfg.method_kwargs[old]


class AdversarialViewMixin(RoutedMethodMixin):
    """Adds ``x + delta`` (PGD against the method's own loss, BN route ``pgd``) as a view.

    The online probe and k-NN see the exported route ``"pgd"`` (:class:`RoutedMethodMixin`).
    """

    #: whether the parent method takes solo-learn's extra small crops (multi-crop)
    takes_small_crops: bool = False

    def __init__(self, cfg: omegaconf.DictConfig) -> None:
        refuse_dali(cfg, str(cfg.method))
        renamed_method_kwargs(cfg, str(cfg.method))
        tree = omegaconf.OmegaConf.to_container(cfg.method_kwargs, resolve=True) or {}
        given: dict[str, Any] = {str(k): v for k, v in dict(tree).items()}  # type: ignore[arg-type]
        parent_keys = tuple(k for k in given if k not in ADVERSARIAL_DEFAULTS)
        _, adversarial = split_method_kwargs(cfg, ADVERSARIAL_DEFAULTS, type(self).__name__, parent_keys)
        cfg.method_kwargs = omegaconf.OmegaConf.create({k: given[k] for k in parent_keys})  # the parent's own keys
        super().__init__(cfg)  # type: ignore[call-arg]
        for key in ADVERSARIAL_DEFAULTS:  # back in the config, with their defaults: args.json holds the whole setting
            cfg.method_kwargs[key] = adversarial[key]
        self.adversarial = adversarial
        self.original_view_index = split_original_view(self, cfg, required=False, multicrop=self.takes_small_crops)
        mean, std = pipeline_statistics(cfg)
        convert_to_multi_bn(self.backbone, ("normal", "pgd"))  # type: ignore[attr-defined]
        if hasattr(self, "momentum_backbone"):
            convert_to_multi_bn(self.momentum_backbone, ("normal", "pgd"))
        warm_start_backbones(self, adversarial["init_from"])
        view = AdversarialView(
            self.backbone,  # type: ignore[attr-defined]
            self,  # type: ignore[arg-type]  # solo-learn's forward: normalised images -> {"z": ..., "p": ...}
            self.adversarial_view_loss,
            eps=float(adversarial["eps"]),
            steps=int(adversarial["steps"]),
            step_size=float(adversarial["step_size"]),
            mean=mean,
            std=std,
        )
        self._adversarial_view = Unowned(view)  # it only uses modules registered above

    @property
    def adversarial_view(self) -> AdversarialView:
        return self._adversarial_view.target

    # -- method-specific pieces ---------------------------------------------------------
    def adversarial_reference(self, view: Tensor) -> Tensor:
        """What the adversarial view is compared with (from the clean first crop)."""
        raise NotImplementedError

    def adversarial_view_loss(self, out: dict[str, Tensor], reference: Tensor, indexes: Tensor) -> Tensor:
        """The method's own loss between the adversarial view's outputs and ``reference``."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------
    def base_training_step(self, X: Tensor, targets: Tensor) -> dict[str, Any]:
        """The parent's outputs for one large crop, with the online probe and the k-NN's features taken
        from the exported route (the parent's projections, which carry the gradient, are unchanged)."""
        out = super().base_training_step(X, targets)  # type: ignore[misc]
        out.update(probe_outputs(self, X, targets))
        return out

    def training_step(self, batch: list[Any], batch_idx: int) -> Tensor:
        indexes, views, targets = batch
        crops = list(views[: self.num_crops])  # type: ignore[attr-defined]
        loss = super().training_step([indexes, crops, targets], batch_idx)  # type: ignore[misc]
        view = self.adversarial_view
        if self.original_view_index is not None:
            start = view.to_pixels(views[self.original_view_index].float())
            start = random_padded_crop(start, int(self.adversarial["original_view_padding"]))
        else:
            start = view.to_pixels(crops[0].float())
        reference = self.adversarial_reference(crops[0])
        adversarial = view.perturb_pixels(start, reference, indexes)
        adversarial_loss = self.adversarial_view_loss(
            view.embed_adversarial(view.from_pixels(adversarial)), reference, indexes
        )
        self.log_dict(  # type: ignore[attr-defined]
            {
                "train_adv_view_loss": adversarial_loss,
                "train_adv_delta_abs_max": (adversarial - start).abs().max(),
            },
            on_epoch=True,
            sync_dist=True,
        )
        return loss + self.adversarial["adversarial_weight"] * adversarial_loss


class SimCLRAdv(AdversarialViewMixin, SimCLR):
    """SimCLR + adversarial view: NT-Xent between x + delta and the first crop."""

    takes_small_crops = True  # solo-learn's SimCLR contrasts every crop

    def adversarial_reference(self, view: Tensor) -> Tensor:
        return self(view)["z"]

    def adversarial_view_loss(self, out: dict[str, Tensor], reference: Tensor, indexes: Tensor) -> Tensor:
        return simclr_loss_func(
            torch.cat([out["z"], reference]), indexes=torch.cat([indexes, indexes]), temperature=self.temperature
        )


class BYOLAdv(AdversarialViewMixin, BYOL):
    """BYOL + adversarial view: prediction of x + delta against the momentum projection of the first crop."""

    takes_small_crops = True  # solo-learn's BYOL predicts the large crops' momentum projections from every crop

    def adversarial_reference(self, view: Tensor) -> Tensor:
        return self.momentum_forward(view)["z"]

    def adversarial_view_loss(self, out: dict[str, Tensor], reference: Tensor, indexes: Tensor) -> Tensor:
        return byol_loss_func(out["p"], reference)


class MoCoV2PlusAdv(AdversarialViewMixin, MoCoV2Plus):
    """MoCo v2+ + adversarial view: query x + delta, key = momentum projection of the first crop,
    negatives = the first crop's queue as it was before this batch's keys were enqueued (as for
    MoCo's own queries; the adversarial view reads the queue and never updates it)."""

    def training_step(self, batch: list[Any], batch_idx: int) -> Tensor:
        self.negatives = self.queue[0].clone().detach()  # the parent's step enqueues this batch's keys
        return super().training_step(batch, batch_idx)

    def adversarial_reference(self, view: Tensor) -> Tensor:
        return self.momentum_forward(view)["z"]

    def adversarial_view_loss(self, out: dict[str, Tensor], reference: Tensor, indexes: Tensor) -> Tensor:
        return mocov2plus_loss_func(out["z"], reference, self.negatives, self.temperature)


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


class SimSiamAdv(AdversarialViewMixin, SimSiam):
    """SimSiam + adversarial view: prediction of x + delta against the (stop-gradient) projection of the
    first crop."""

    def adversarial_reference(self, view: Tensor) -> Tensor:
        return self(view)["z"].detach()

    def adversarial_view_loss(self, out: dict[str, Tensor], reference: Tensor, indexes: Tensor) -> Tensor:
        return simsiam_loss_func(out["p"], reference)


class BarlowTwinsAdv(AdversarialViewMixin, BarlowTwins):
    """Barlow Twins + adversarial view: Barlow Twins loss between x + delta and the first crop."""

    def adversarial_reference(self, view: Tensor) -> Tensor:
        return self(view)["z"]

    def adversarial_view_loss(self, out: dict[str, Tensor], reference: Tensor, indexes: Tensor) -> Tensor:
        return barlow_loss_func(out["z"], reference, lamb=self.lamb, scale_loss=self.scale_loss)
