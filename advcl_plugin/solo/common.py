"""Pieces shared by the solo-learn methods of this package: reading ``method_kwargs``, the pipeline's
normalisation, the original view, the online linear probe and old checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import omegaconf
import torch
from torch import Tensor

from advcl_plugin.core.config import parse_number
from advcl_plugin.core.routed_bn import convert_legacy_routed_state_dict, is_legacy_routed_state_dict

__all__ = [
    "ORIGINAL_VIEW_HELP",
    "class_step",
    "pipeline_statistics",
    "split_method_kwargs",
    "split_original_view",
    "upgrade_legacy_checkpoint",
]

ORIGINAL_VIEW_HELP = (
    "declare AdvCL's original view as the last entry of `augmentations` with `crop_size: [32, 32]` "
    "(a list, so that solo-learn counts it as a small crop), rrc disabled, horizontal_flip 0.5 and "
    "every other probability 0; the method adds the 4-pixel padded random crop itself"
)


def split_method_kwargs(
    cfg: omegaconf.DictConfig, own: Mapping[str, Any], method: str, core_keys: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``cfg.method_kwargs`` into the keys of ``core_keys`` (for the core's config) and this adapter's
    own keys (``own``: name -> default). Unknown keys are refused with the list of valid ones."""
    given = omegaconf.OmegaConf.to_container(cfg.method_kwargs, resolve=True) if "method_kwargs" in cfg else {}
    given = {k: parse_number(v) for k, v in dict(given or {}).items()}
    valid = set(own) | set(core_keys)
    unknown = sorted(set(given) - valid)
    if unknown:
        raise ValueError(f"unknown method_kwargs {unknown} for method {method!r}; valid keys: {sorted(valid)}")
    core = {k: v for k, v in given.items() if k in core_keys}
    return core, {**own, **{k: v for k, v in given.items() if k in own}}


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


def upgrade_legacy_checkpoint(checkpoint: dict[str, Any]) -> None:
    """Rewrite, in place, a checkpoint of advcl-plugin <= 0.1 (plain ``backbone.*`` beside a
    ``routed_backbone.*`` copy, routes under ``.routes.``) to this version's layout."""
    state: dict[str, Tensor] = checkpoint["state_dict"]
    if any(k.startswith("routed_backbone.") for k in state):
        for key in [k for k in state if k.startswith("backbone.")]:
            del state[key]
        for key in [k for k in state if k.startswith("routed_backbone.")]:
            state[key[len("routed_") :]] = state.pop(key)
    if is_legacy_routed_state_dict(state):
        checkpoint["state_dict"] = convert_legacy_routed_state_dict(state)


def class_step(module: Any, features: list[Tensor], targets: Tensor) -> Tensor:
    """solo-learn's online linear probe on detached features; logs its loss and accuracy."""
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
