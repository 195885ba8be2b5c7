"""AdvCL as a solo-learn method (``method: advcl``).

Hyper-parameters live under ``method_kwargs`` (defaults: the authors' code, see
:data:`DEFAULTS`).  solo-learn's pipelines normalise images, so the method un-normalises
the batch with the pipeline's own statistics, attacks and builds the frequency view in
[0, 1] pixel space, and normalises again inside the model.  The recipe declares AdvCL's
original view as a small crop (see ``recipes/solo/``); the method applies the 4-pixel
padded random crop to it on the device.
"""

from __future__ import annotations

from typing import Any

import omegaconf
import torch
from solo.methods.base import BaseMethod
from torch import Tensor

from advcl_plugin.core.clusterfit import PseudoLabels
from advcl_plugin.core.heads import ProjectionHead, PseudoLabelHeads
from advcl_plugin.core.objective import AdvCLObjective
from advcl_plugin.core.pixels import NormalizedEncoder, random_padded_crop, unnormalize
from advcl_plugin.core.routed_bn import convert_to_multi_bn
from advcl_plugin.solo.common import (
    RoutedCheckpointMixin,
    class_step,
    method_kwargs,
    pipeline_statistics,
    split_original_view,
)

__all__ = ["DEFAULTS", "AdvCL"]

#: method_kwargs of ``method: advcl`` and their defaults (reference-facts sheet)
DEFAULTS: dict[str, Any] = {
    "proj_hidden_dim": None,  # default: the backbone's feature dimension
    "proj_output_dim": 128,
    "temperature": 0.5,
    "base_temperature": 0.07,
    "eps": 8 / 255,
    "steps": 5,
    "step_size": 2 / 255,
    "radius": 8,
    "pseudo_label_weight": 0.2,
    "pseudo_labels_path": None,
    "ks": [2, 10, 50, 100, 500],
    "use_pseudo_labels": True,
    "frequency_views": ["high"],
    "original_view_padding": 4,
    "naive": False,
    "gather_distributed": True,
}


class AdvCL(RoutedCheckpointMixin, BaseMethod):
    """AdvCL (Fan et al., NeurIPS 2021) on solo-learn's BaseMethod: eq. (9) + lambda * eq. (10)."""

    def __init__(self, cfg: omegaconf.DictConfig) -> None:
        kwargs = method_kwargs(cfg, DEFAULTS, "advcl")
        super().__init__(cfg)
        self.advcl_kwargs = kwargs
        self.original_view_index = split_original_view(self, cfg, required=True)
        self.pixel_mean, self.pixel_std = pipeline_statistics(cfg)
        routes = ("normal", "pgd", "pgd_ce") if kwargs["use_pseudo_labels"] else ("normal", "pgd")
        convert_to_multi_bn(self.backbone, routes)
        self.projector = ProjectionHead(
            self.features_dim, kwargs["proj_hidden_dim"] or self.features_dim, kwargs["proj_output_dim"]
        )
        self.pseudo_label_heads = (
            PseudoLabelHeads(self.features_dim, kwargs["ks"]) if kwargs["use_pseudo_labels"] else None
        )
        objective = AdvCLObjective(
            NormalizedEncoder(self.backbone, self.pixel_mean, self.pixel_std),
            self.projector,
            self.pseudo_label_heads,
            feature_dim=self.features_dim,
            eps=kwargs["eps"],
            steps=kwargs["steps"],
            step_size=kwargs["step_size"],
            radius=kwargs["radius"],
            pseudo_label_weight=kwargs["pseudo_label_weight"],
            temperature=kwargs["temperature"],
            base_temperature=kwargs["base_temperature"],
            frequency_views=tuple(kwargs["frequency_views"]),
            use_pseudo_labels=kwargs["use_pseudo_labels"],
            naive=kwargs["naive"],
            gather_distributed=kwargs["gather_distributed"],
            routes=("normal", "pgd", "pgd_ce"),
        )
        # not registered as a sub-module: it only references modules registered above
        object.__setattr__(self, "objective", objective)
        self.register_buffer("pseudo_labels", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        if kwargs["use_pseudo_labels"]:
            if not kwargs["pseudo_labels_path"]:
                raise ValueError(
                    "method advcl needs method_kwargs.pseudo_labels_path (a file from `advcl pseudo-labels`, or the "
                    "authors' CIFAR-10 file), or method_kwargs.use_pseudo_labels=false"
                )
            labels = PseudoLabels.load(kwargs["pseudo_labels_path"], ks=kwargs["ks"])
            self.pseudo_label_info = labels
            self.pseudo_labels = labels.as_tensor(kwargs["ks"])

    @staticmethod
    def add_and_assert_specific_cfg(cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        return super(AdvCL, AdvCL).add_and_assert_specific_cfg(cfg)

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
        original = random_padded_crop(
            self.pixels(views[self.original_view_index]), self.advcl_kwargs["original_view_padding"]
        )
        labels = self.pseudo_labels[indexes] if self.pseudo_labels.numel() else None
        loss, logs, features = self.objective(original, tau1, tau2, labels, return_features=True)
        class_loss = class_step(self, features[:2], targets)
        self.log_dict({f"train_{k}": v for k, v in logs.items()}, on_epoch=True, sync_dist=True)
        return loss + class_loss
