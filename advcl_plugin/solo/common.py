"""Pieces shared by the solo-learn methods of this package."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import omegaconf
import torch
from torch import Tensor, nn

from advcl_plugin.config import parse_number
from advcl_plugin.core.routed_bn import export_bn_route, routed_bn_layers

__all__ = [
    "ORIGINAL_VIEW_HELP",
    "RoutedCheckpointMixin",
    "class_step",
    "method_kwargs",
    "pipeline_statistics",
    "split_original_view",
]

ORIGINAL_VIEW_HELP = (
    "declare AdvCL's original view as the last entry of `augmentations` with `crop_size: [32, 32]` "
    "(a list, so that solo-learn counts it as a small crop), rrc disabled, horizontal_flip 0.5 and "
    "every other probability 0; the method adds the 4-pixel padded random crop itself"
)


def method_kwargs(cfg: omegaconf.DictConfig, defaults: Mapping[str, Any], method: str) -> dict[str, Any]:
    """``cfg.method_kwargs`` merged over ``defaults``; unknown keys are rejected with the valid ones."""
    given = omegaconf.OmegaConf.to_container(cfg.method_kwargs, resolve=True) if "method_kwargs" in cfg else {}
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown method_kwargs {unknown} for method {method!r}; valid keys: {sorted(defaults)}")
    merged = {**defaults, **given}
    return {k: parse_number(v) for k, v in merged.items()}


def pipeline_statistics(cfg: omegaconf.DictConfig) -> tuple[list[float], list[float]]:
    """The mean and std that solo-learn's pipeline normalises with for this recipe.

    Read from the pipeline solo-learn itself builds (for cifar10/100 and stl10 it ignores the
    recipe's mean/std and uses its own table), so the attack's pixel space always matches.
    """
    from solo.data.pretrain_dataloader import build_transform_pipeline
    from torchvision import transforms

    pipeline = build_transform_pipeline(cfg.data.dataset, cfg.augmentations[0])
    for step in pipeline.transforms:
        if isinstance(step, transforms.Normalize):
            return [float(v) for v in step.mean], [float(v) for v in step.std]
    return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]


def split_original_view(module: Any, cfg: omegaconf.DictConfig, required: bool) -> int | None:
    """Find AdvCL's original view among solo-learn's small crops and hide it from the parent class.

    Returns the index of that view in the batch's list of crops (or ``None`` when the recipe has
    no such view and ``required`` is false).
    """
    small = [a for a in cfg.augmentations if a.crop_size != cfg.augmentations[0].crop_size]
    if not small:
        if required:
            raise ValueError(f"this method needs the original (mildly augmented) view: {ORIGINAL_VIEW_HELP}")
        return None
    if len(small) != 1 or small[0].num_crops != 1 or cfg.augmentations[-1].crop_size == cfg.augmentations[0].crop_size:
        raise ValueError(f"expected exactly one original view after the large crops: {ORIGINAL_VIEW_HELP}")
    module.num_small_crops -= 1
    module.num_crops -= 1
    module.multicrop = module.num_small_crops != 0
    return module.num_crops


class RoutedCheckpointMixin:
    """Checkpoints whose ``backbone.*`` keys hold one BN route as plain BatchNorm.

    solo-learn's ``main_linear.py`` keeps the ``backbone.*`` keys of a checkpoint and loads them
    non-strictly into a plain backbone; the routed tensors would be silently ignored.  So the
    saved ``backbone.*`` entries are the export of ``downstream_route`` (the adversarial BN, as
    the authors evaluate) and the routed backbone is stored under ``routed_backbone.*``;
    loading a checkpoint for resuming reverses this.
    """

    downstream_route: str = "pgd"
    backbone: nn.Module

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state: dict[str, Tensor] = checkpoint["state_dict"]
        routed = {k: v for k, v in state.items() if k.startswith("backbone.")}
        for key in routed:
            del state[key]
        for key, value in routed.items():
            state["routed_" + key] = value
        plain = export_bn_route(self.backbone, self.downstream_route).state_dict()
        for key, value in plain.items():
            state["backbone." + key] = value.detach().clone()
        checkpoint["advcl_downstream_route"] = self.downstream_route
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state: dict[str, Tensor] = checkpoint["state_dict"]
        if any(k.startswith("routed_backbone.") for k in state):
            for key in [k for k in state if k.startswith("backbone.")]:
                del state[key]
            for key in [k for k in state if k.startswith("routed_backbone.")]:
                state[key[len("routed_") :]] = state.pop(key)
        elif routed_bn_layers(self.backbone):
            raise ValueError("this checkpoint has no routed backbone: it was not written by an advcl-plugin method")
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]


def class_step(module: Any, features: list[Tensor], targets: Tensor) -> Tensor:
    """solo-learn's online linear probe on detached clean features; logs its loss and accuracy."""
    from solo.utils.metrics import accuracy_at_k

    losses, top1, top5 = [], [], []
    for feature in features:
        logits = module.classifier(feature.detach())
        losses.append(torch.nn.functional.cross_entropy(logits, targets, ignore_index=-1))
        acc1, acc5 = accuracy_at_k(logits, targets, top_k=(1, min(5, logits.size(1))))
        top1.append(acc1)
        top5.append(acc5)
    loss = sum(losses) / len(losses)
    module.log_dict(
        {"train_class_loss": loss, "train_acc1": sum(top1) / len(top1), "train_acc5": sum(top5) / len(top5)},
        on_epoch=True,
        sync_dist=True,
    )
    return loss
