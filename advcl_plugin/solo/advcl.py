"""AdvCL as a solo-learn method (``method: advcl``).

``method_kwargs`` hold the fields of :class:`~advcl_plugin.core.config.AdvCLConfig` (defaults: the
authors' code) and this adapter's own keys (:data:`SOLO_KWARGS`).  solo-learn's pipelines normalise
images, so the method un-normalises the batch with the pipeline's own statistics, attacks and
builds the frequency view in [0, 1] pixel space, and normalises again inside the model.  The
recipe declares AdvCL's original view as a small crop (see ``recipes/solo/``); the method applies
the padded random crop to it on the device.
"""

from __future__ import annotations

from typing import Any

import omegaconf
import torch
from solo.methods.base import BaseMethod
from solo.utils.misc import omegaconf_select
from torch import Tensor

from advcl_plugin.core.config import PAPER, PAPER_VIEWS, AdvCLConfig
from advcl_plugin.core.heads import ProjectionHead, PseudoLabelHeads
from advcl_plugin.core.objective import AdvCLObjective
from advcl_plugin.core.pixels import NormalizedEncoder, random_padded_crop, unnormalize
from advcl_plugin.core.references import Unowned
from advcl_plugin.core.routed_bn import convert_to_multi_bn
from advcl_plugin.data.pseudo_labels import pseudo_labels_for_file
from advcl_plugin.solo.common import (
    RoutedMethodMixin,
    pipeline_statistics,
    probe_outputs,
    refuse_dali,
    split_method_kwargs,
    split_original_view,
    warm_start_backbones,
)

__all__ = ["SOLO_KWARGS", "AdvCL"]

#: method_kwargs of ``method: advcl`` beside the AdvCLConfig fields, with their defaults
SOLO_KWARGS: dict[str, Any] = {
    "proj_hidden_dim": None,  # default: the backbone's feature dimension
    "proj_output_dim": None,  # solo-learn's name for AdvCLConfig.projection_dim
    "pseudo_labels_path": None,  # a file from `advcl pseudo-labels`, or the authors' CIFAR-10 file
    "original_view_padding": PAPER_VIEWS.original_padding,
    "gather_distributed": True,
    "init_from": None,  # warm start: every BN route from a clean encoder (solo checkpoint, encoder.pt, state dict)
}


class AdvCL(RoutedMethodMixin, BaseMethod):
    """AdvCL (Fan et al., NeurIPS 2021) on solo-learn's BaseMethod: eq. (9) + lambda * eq. (10).

    The online probe and k-NN see the exported route ``"pgd"`` (:class:`RoutedMethodMixin`); solo-learn's
    multi-crop and DALI are refused with a message (AdvCL's loss has fixed views; DALI cannot carry the
    original view or the sample indexes the pseudo labels need).
    """

    def __init__(self, cfg: omegaconf.DictConfig) -> None:
        refuse_dali(cfg, "advcl")
        core, own = split_method_kwargs(cfg, SOLO_KWARGS, "advcl", AdvCLConfig.field_names())
        if own["proj_output_dim"] is not None:
            core["projection_dim"] = own["proj_output_dim"]
        config = AdvCLConfig.from_mapping(core, where="method_kwargs")
        super().__init__(cfg)
        self.config, self.solo_kwargs = config, own
        self.original_view_index = split_original_view(self, cfg, required=True, multicrop=False)
        self.pixel_mean, self.pixel_std = pipeline_statistics(cfg)
        convert_to_multi_bn(self.backbone, config.bn_routes)
        warm_start_backbones(self, own["init_from"])
        self.projector = ProjectionHead(
            self.features_dim, own["proj_hidden_dim"] or self.features_dim, config.projection_dim
        )
        self.pseudo_label_heads = PseudoLabelHeads(self.features_dim, config.ks) if config.use_pseudo_labels else None
        objective = AdvCLObjective(
            NormalizedEncoder(self.backbone, self.pixel_mean, self.pixel_std),
            config,
            projection_head=self.projector,
            pseudo_label_heads=self.pseudo_label_heads,
            feature_dim=self.features_dim,
            gather_distributed=bool(own["gather_distributed"]),
        )
        self._objective = Unowned(objective)  # it only uses modules registered above
        self.register_buffer("pseudo_labels", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        if config.use_pseudo_labels:
            if not own["pseudo_labels_path"]:
                raise ValueError(
                    "method advcl needs method_kwargs.pseudo_labels_path (a file from `advcl pseudo-labels`, or the "
                    "authors' CIFAR-10 file), or method_kwargs.use_pseudo_labels=false"
                )
            self.pseudo_label_info, self.pseudo_labels = pseudo_labels_for_file(own["pseudo_labels_path"], config.ks)

    @property
    def objective(self) -> AdvCLObjective:
        """The core's objective over this method's backbone, projector and heads (not a sub-module of its own)."""
        return self._objective.target

    @staticmethod
    def add_and_assert_specific_cfg(cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        """solo-learn's hook for method defaults: every ``method_kwargs`` key of ``method: advcl`` is set in the
        config (the authors' value where the recipe gives none), so that the checkpointer's ``args.json`` holds
        the whole setting."""
        cfg = super(AdvCL, AdvCL).add_and_assert_specific_cfg(cfg)
        defaults = {**PAPER.to_dict(), **SOLO_KWARGS}
        for key, value in defaults.items():
            value = list(value) if isinstance(value, tuple) else value
            cfg.method_kwargs[key] = omegaconf_select(cfg, f"method_kwargs.{key}", value)
        return cfg

    def forward(self, X: Tensor) -> dict[str, Any]:
        """solo-learn's outputs (``logits`` of the online probe, ``feats``) and the projection ``z``."""
        out = super().forward(X)
        return {**out, "z": self.projector(out["feats"])}

    def multicrop_forward(self, X: Tensor) -> dict[str, Any]:
        out = super().multicrop_forward(X)
        return {**out, "z": self.projector(out["feats"])}

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        extra = [{"name": "projector", "params": self.projector.parameters()}]
        if self.pseudo_label_heads is not None:
            extra.append({"name": "pseudo_label_heads", "params": self.pseudo_label_heads.parameters()})
        return super().learnable_params + extra

    def on_train_start(self) -> None:
        if self.pseudo_labels.numel():
            dataset = self.trainer.train_dataloader.dataset
            if len(dataset) != self.pseudo_labels.shape[0]:
                raise ValueError(
                    f"the pseudo labels ({self.pseudo_label_info}) hold {self.pseudo_labels.shape[0]} samples but the "
                    f"training set has {len(dataset)}; make labels for this dataset with `advcl pseudo-labels`"
                )
        super().on_train_start()

    def pixels(self, views: Tensor) -> Tensor:
        """Undo the pipeline's normalisation: [0, 1] pixels."""
        return unnormalize(views.float(), self.pixel_mean, self.pixel_std)

    def training_step(self, batch: list[Any], batch_idx: int) -> Tensor:
        indexes, views, targets = batch
        tau1, tau2 = self.pixels(views[0]), self.pixels(views[1])
        if self.original_view_index is None:  # no `augmentations` in the config: the first large crop stands in
            original = tau1
        else:
            original = random_padded_crop(
                self.pixels(views[self.original_view_index]), int(self.solo_kwargs["original_view_padding"])
            )
        labels = self.pseudo_labels[indexes] if self.pseudo_labels.numel() else None
        out = self.objective(original, tau1, tau2, labels)
        self.log_dict({f"train_{k}": v for k, v in out.logs.items()}, on_epoch=True, sync_dist=True)
        return out.loss + self.online_evaluation_step(views[:2], targets)

    def online_evaluation_step(self, views: list[Tensor], targets: Tensor) -> Tensor:
        """solo-learn's online linear probe and k-NN on the exported route for the two large crops, logged as
        solo-learn's built-in methods log them; returns the probe's loss (it trains only the classifier)."""
        outs = [probe_outputs(self, view, targets) for view in views]
        loss: Tensor = sum(out["loss"] for out in outs) / len(outs)  # type: ignore[assignment]
        self.log_dict(
            {
                "train_class_loss": loss,
                "train_acc1": sum(out["acc1"] for out in outs) / len(outs),
                "train_acc5": sum(out["acc5"] for out in outs) / len(outs),
            },
            on_epoch=True,
            sync_dist=True,
        )
        if self.knn_eval:
            repeated = targets.repeat(len(outs))
            mask = repeated != -1
            self.knn(train_features=torch.cat([out["feats"] for out in outs])[mask], train_targets=repeated[mask])
        return loss
