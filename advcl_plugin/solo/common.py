"""Pieces shared by the solo-learn methods of this package: reading ``method_kwargs``, the pipeline's
normalisation, the original view, the online probe and k-NN on the exported route, and old checkpoints."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from typing import Any

import omegaconf
import torch
from lightning.pytorch.plugins.layer_sync import LayerSync
from torch import Tensor

from advcl_plugin.core.config import parse_number
from advcl_plugin.core.routed_bn import (
    bn_route,
    convert_legacy_routed_state_dict,
    is_legacy_routed_state_dict,
    routed_layer_sync,
)

__all__ = [
    "EXPORTED_ROUTE",
    "NEUTRAL_AUGMENTATION",
    "ORIGINAL_VIEW_HELP",
    "RoutedLayerSync",
    "RoutedMethodMixin",
    "exported_route_features",
    "keep_routes_under_sync_batchnorm",
    "pipeline_statistics",
    "probe_outputs",
    "refuse_dali",
    "split_method_kwargs",
    "split_original_view",
    "upgrade_legacy_checkpoint",
    "warm_start_backbones",
]

ORIGINAL_VIEW_HELP = (
    "declare AdvCL's original view as the last entry of `augmentations` with `original_view: true`, "
    "`crop_size: [32, 32]` (a list, so that solo-learn counts it apart from the large crops), `num_crops: 1`, "
    "rrc disabled, horizontal_flip 0.5 and every other probability 0 (recipes/solo/augmentations/advcl.yaml); "
    "the method adds the 4-pixel padded random crop itself"
)

#: an augmentations entry with every augmentation off: solo-learn's pipeline of it is just its normalisation
NEUTRAL_AUGMENTATION: dict[str, Any] = {
    "rrc": {"enabled": False},
    "crop_size": 32,
    "num_crops": 1,
    **{name: {"prob": 0.0} for name in ("color_jitter", "grayscale", "gaussian_blur", "solarization",
                                        "equalization", "horizontal_flip")},
}  # fmt: skip

#: the BN route a downstream user evaluates: main_linear.py loads it (native names, ``backbone.*``)
EXPORTED_ROUTE = "pgd"


def split_method_kwargs(
    cfg: omegaconf.DictConfig, own: Mapping[str, Any], method: str, core_keys: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``cfg.method_kwargs`` into the keys of ``core_keys`` (for the core's config) and this adapter's
    own keys (``own``: name -> default). Unknown keys are refused with the list of valid ones."""
    tree = omegaconf.OmegaConf.to_container(cfg.method_kwargs, resolve=True) if "method_kwargs" in cfg else {}
    given: dict[str, Any] = {str(k): parse_number(v) for k, v in dict(tree or {}).items()}  # type: ignore[arg-type]
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

    if "augmentations" in cfg and cfg.augmentations:
        augmentation = cfg.augmentations[0]
    else:  # a method built outside main_pretrain.py (solo-learn's own tests do): the table for the dataset
        augmentation = omegaconf.OmegaConf.create(NEUTRAL_AUGMENTATION)
    pipeline = build_transform_pipeline(cfg.data.dataset, augmentation)
    for step in pipeline.transforms:
        if isinstance(step, transforms.Normalize):
            return [float(v) for v in step.mean], [float(v) for v in step.std]
    return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]


def refuse_dali(cfg: omegaconf.DictConfig, method: str) -> None:
    """One clear error for ``data.format: dali`` (before any data is read)."""
    data_format = omegaconf.OmegaConf.select(cfg, "data.format", default="image_folder")
    if data_format == "dali":
        raise ValueError(
            f"method {method!r} does not support data.format=dali: the original view is declared with a list-valued "
            "crop_size that DALI's resize does not take, pseudo labels need each sample's dataset index (DALI "
            "delivers it only with dali.encode_indexes_into_labels) and the attack needs the pipeline's "
            "normalisation on the torchvision side; use data.format=image_folder (or h5)"
        )


def split_original_view(module: Any, cfg: omegaconf.DictConfig, required: bool, multicrop: bool) -> int | None:
    """Find AdvCL's original view (the ``augmentations`` entry marked ``original_view: true``) and hide it
    from the parent class, which then sees only its own crops.

    Args:
        module: the solo-learn method being built (its crop counters are adjusted).
        cfg: the recipe.
        required: refuse a recipe whose `augmentations` lack the original view (``advcl``; a config without
            `augmentations`, built outside main_pretrain.py, takes the first large crop, with a warning).
        multicrop: whether the method takes solo-learn's extra small crops (multi-crop); when not, a recipe
            with small crops beside the original view is refused.

    Returns:
        The index of the original view in the batch's list of crops, or ``None`` when the recipe has none.
    """
    method = cfg.method
    if "augmentations" not in cfg or not cfg.augmentations:
        # built outside main_pretrain.py (no augmentations in the config): crops are counted by cfg.data
        small = int(omegaconf.OmegaConf.select(cfg, "data.num_small_crops", default=0) or 0)
        if small and not multicrop:
            raise ValueError(f"method {method!r} does not take solo-learn's small crops (multi-crop): "
                             f"data.num_small_crops is {small}")  # fmt: skip
        if required:
            warnings.warn(
                f"method {method!r} was built from a config without `augmentations`: AdvCL's original view x is "
                f"then the first large crop (a strong augmentation, not the paper's mild one); {ORIGINAL_VIEW_HELP}",
                stacklevel=3,
            )
        return None
    entries = list(cfg.augmentations)
    marked = [i for i, a in enumerate(entries) if bool(a.get("original_view", False))]
    if len(marked) > 1:
        raise ValueError(f"{len(marked)} augmentations entries are marked original_view: true; mark one")
    large_size = entries[0].crop_size
    small_crops = [a for a in entries if a.crop_size != large_size]
    if marked:
        entry = entries[marked[0]]
        if marked[0] != len(entries) - 1 or entry.crop_size == large_size or entry.num_crops != 1:
            raise ValueError(f"the entry marked original_view is not declared as expected: {ORIGINAL_VIEW_HELP}")
    elif required:
        raise ValueError(f"method {method!r} needs AdvCL's original (mildly augmented) view: {ORIGINAL_VIEW_HELP}")
    multicrops = sum(int(a.num_crops) for a in small_crops) - (1 if marked else 0)
    if multicrops and not multicrop:
        raise ValueError(
            f"method {method!r} does not take solo-learn's small crops (multi-crop): the recipe has {multicrops} small "
            "crop(s) besides the original view. "
            + (
                "AdvCL's loss (eq. 9) is defined over its fixed views; remove the small crops"
                if required
                else "its parent method uses exactly its large crops; remove the small crops, or use simclr_adv / "
                "byol_adv, whose parents take them"
            )
        )
    if not marked:
        return None
    module.num_small_crops -= 1
    module.num_crops -= 1
    module.multicrop = module.num_small_crops != 0
    return module.num_crops


def clean_backbone_state(path: str) -> dict[str, Tensor]:
    """The clean encoder's weights in ``path`` (``method_kwargs.init_from``), read weights-only: a solo-learn
    checkpoint of a clean method (its ``backbone.*``, e.g. SimCLR's), this package's ``encoder.pt``, or a
    plain state dict of the backbone."""
    from advcl_plugin._io import read_weights

    payload = read_weights(path)
    if not isinstance(payload, dict):
        raise ValueError(f"method_kwargs.init_from={path} holds a {type(payload).__name__}, not a checkpoint")
    state = payload.get("state_dict", payload)
    if not isinstance(state, dict):
        raise ValueError(f"method_kwargs.init_from={path} holds no state dict")
    if any(key.startswith("backbone.") for key in state):  # a solo-learn checkpoint: its backbone only
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    if any(".aux_routes." in key for key in state):
        raise ValueError(
            f"method_kwargs.init_from={path} holds a routed (adversarially trained) backbone; a warm start takes a "
            "clean encoder (export one route first, or continue that run with solo-learn's resume)"
        )
    return state


def warm_start_backbones(module: Any, path: str | None) -> None:
    """``method_kwargs.init_from``: every BN route of the method's backbone (and of its momentum backbone, which
    must start equal) starts from the clean encoder at ``path`` (strict; see
    :func:`advcl_plugin.core.routed_bn.load_clean_encoder`).  solo-learn itself has no such option for
    pretraining (only ``resume_from_checkpoint``, which continues a run of the same method)."""
    if not path:
        return
    from advcl_plugin._io import check_weights
    from advcl_plugin.core.routed_bn import load_clean_encoder

    state = clean_backbone_state(str(path))
    check_weights(state, path)
    for name in ("backbone", "momentum_backbone"):
        if hasattr(module, name):
            load_clean_encoder(getattr(module, name), state, source=f"method_kwargs.init_from={path}")


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


@torch.no_grad()
def exported_route_features(backbone: torch.nn.Module, images: Tensor) -> Tensor:
    """The backbone's features as ``main_linear.py`` computes them from the exported checkpoint: BN route
    ``"pgd"`` (:data:`EXPORTED_ROUTE`), eval mode (running statistics), no gradient.  Nothing of the
    backbone changes (its mode and routes are restored)."""
    was_training = backbone.training
    backbone.eval()
    try:
        with bn_route(backbone, EXPORTED_ROUTE):
            return backbone(images)
    finally:
        backbone.train(was_training)


def probe_outputs(module: Any, images: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """solo-learn's online linear probe on the exported route: its loss, accuracies, logits and the
    features (``"feats"``, what solo-learn's k-NN is fed)."""
    from solo.utils.metrics import accuracy_at_k

    features = exported_route_features(module.backbone, images)
    logits = module.classifier(features)
    loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-1)
    acc1, acc5 = accuracy_at_k(logits, targets, top_k=(1, min(5, logits.size(1))))
    return {"loss": loss, "acc1": acc1, "acc5": acc5, "logits": logits, "feats": features}


#: Lightning's ``sync_batchnorm: true`` for routed BN (every route of every routed layer synchronised)
RoutedLayerSync = routed_layer_sync(LayerSync)


def keep_routes_under_sync_batchnorm(trainer: Any) -> None:
    """Swap the trainer's SyncBatchNorm plugin (set by ``sync_batchnorm: true``, applied by DDP/FSDP after
    the module's ``setup`` hook) for :class:`RoutedLayerSync`."""
    strategy = trainer.strategy
    if getattr(strategy, "_layer_sync", None) is not None and not isinstance(strategy._layer_sync, RoutedLayerSync):
        strategy._layer_sync = RoutedLayerSync()


class RoutedMethodMixin:
    """What every solo-learn method of this package adds around its routed BN:

    * the online linear probe (``train_acc1``, ``val_acc1``) and the k-NN (``val_knn_acc1``) see the
      exported route ``"pgd"`` in eval mode, the encoder that ``main_linear.py`` receives (not the
      route the clean crops train with);
    * ``sync_batchnorm: true`` keeps every route (:class:`RoutedLayerSync`);
    * checkpoints of advcl-plugin <= 0.1 load (:func:`upgrade_legacy_checkpoint`);
    * checkpoints hold data only, so that ``main_linear.py`` (``torch.load``, weights only by default
      since PyTorch 2.6) reads them: solo-learn's fixed-lr patch of the scheduler (a
      ``functools.partial``, e.g. SimSiam's predictor) is left out and re-applied by
      ``configure_optimizers`` on resume.
    """

    def base_validation_step(self, X: Tensor, targets: Tensor) -> dict[str, Any]:
        with bn_route(self.backbone, EXPORTED_ROUTE):  # type: ignore[attr-defined]
            return super().base_validation_step(X, targets)  # type: ignore[misc]

    def setup(self, stage: str) -> None:
        super().setup(stage)  # type: ignore[misc]
        keep_routes_under_sync_batchnorm(self.trainer)  # type: ignore[attr-defined]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        for state in checkpoint.get("lr_schedulers", []):
            if isinstance(state.get("get_lr"), functools.partial):
                del state["get_lr"]  # code, not state: configure_optimizers patches it in again

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_legacy_checkpoint(checkpoint)
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
