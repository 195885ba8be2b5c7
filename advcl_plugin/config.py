"""Recipes: YAML files with the paper's hyper-parameters, validated into dataclasses.

A recipe has the sections below; every key has a default (the authors' code, see the
reference-facts sheet), unknown keys are rejected, and ``key.sub=value`` overrides from
the command line are applied on top.  Fractions such as ``8/255`` are accepted wherever a
number is expected.

Example:
    >>> from advcl_plugin.config import load_recipe
    >>> recipe = load_recipe("demo", ["optim.epochs=1", "method=simclr"])
    >>> recipe.method, recipe.optim.epochs, round(recipe.evaluate.eps * 255)
    ('simclr', 1, 8)
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DataConfig",
    "EvalConfig",
    "FinetuneConfig",
    "FinetuneSection",
    "ModelConfig",
    "OptimConfig",
    "PseudoLabelConfig",
    "Recipe",
    "TrainerConfig",
    "available_recipes",
    "load_recipe",
    "recipe_path",
]


@dataclass
class DataConfig:
    """Where the images come from (see ``advcl_plugin.data.load_dataset``)."""

    dataset: str = "cifar10"
    root: str = "./data"  # torchvision root
    download: bool = False  # let torchvision download the dataset
    data_dir: str | None = None  # offline .npz folder (default: $ADVCL_DATA_DIR)
    image_size: int | None = None  # resize to this size (default: the dataset's own)
    num_workers: int = 2
    limit: int | None = None  # use only the first N training images (quick runs)


@dataclass
class ModelConfig:
    arch: str = "cifar_resnet18"
    width: int = 64


@dataclass
class PseudoLabelConfig:
    """``path``: a pseudo-label .npz, ``reference`` (the authors' file in the offline data folder),
    or null (needed only by methods with the pseudo-label term)."""

    path: str | None = "reference"
    ks: list[int] = field(default_factory=lambda: [2, 10, 50, 100, 500])


@dataclass
class OptimConfig:
    """SGD with linear warm-up and cosine decay (authors' code). ``lr`` and ``warmup_from`` are
    given for a global batch of ``reference_batch_size`` and scaled linearly with the real one."""

    batch_size: int = 512  # per device
    epochs: int = 1000
    lr: float = 0.5
    reference_batch_size: int = 512
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 10
    warmup_from: float = 0.01
    min_lr_ratio: float = 0.001  # cosine decays to lr * 0.1**3


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = 1  # int, list of ids, or "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"  # "bf16-mixed" for bfloat16 autocast
    channels_last: bool = False
    max_epochs: int | None = None  # stop after this many epochs (train in chunks; the schedule keeps optim.epochs)
    limit_train_batches: int | None = None  # batches per epoch (each epoch still shuffles the whole training set)
    save_every_n_epochs: int = 100  # keep a numbered checkpoint every N epochs (last.ckpt is written every epoch)
    log_every_n_steps: int = 10
    sync_batchnorm: bool = True  # with several devices
    compile: bool = False  # torch.compile the backbone


@dataclass
class FinetuneConfig:
    """One finetuning mode. Defaults: the authors' SLF script."""

    epochs: int = 25
    batch_size: int = 512
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 2e-4
    milestones: list[int] = field(default_factory=lambda: [15, 20])
    gamma: float = 0.1
    attack_steps: int = 10  # PGD steps while training (ALF, AFF)
    attack_eps: float = 8 / 255
    attack_step_size: float = 2 / 255
    val_fraction: float = 0.0  # >0: hold out this share of the train split and keep the best held-out RA epoch
    val_attack_steps: int = 10


@dataclass
class FinetuneSection:
    """Downstream data (default: the pretraining dataset) and the three modes."""

    data: DataConfig | None = None
    modes: list[str] = field(default_factory=lambda: ["slf"])  # modes the demo / pipeline runs
    slf: FinetuneConfig = field(default_factory=FinetuneConfig)
    alf: FinetuneConfig = field(default_factory=FinetuneConfig)
    aff: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(lr=0.01, epochs=25))


@dataclass
class EvalConfig:
    """SA / RA (PGD) / AA (AutoAttack) on the test split of the downstream dataset."""

    data: DataConfig | None = None  # default: the finetuning data (exact pixels recommended)
    eps: float = 8 / 255
    step_size: float = 2 / 255
    pgd_steps: int = 20
    samples: int | None = None  # SA/RA on N evenly spaced test images (null: all)
    aa_samples: int | None = 1000  # AutoAttack on N evenly spaced test images (0: skip, null: all)
    aa_version: str = "standard"
    eps_sweep: list[float] = field(default_factory=lambda: [2 / 255, 4 / 255, 8 / 255, 16 / 255])
    steps_sweep: list[int] = field(default_factory=lambda: [1, 5, 10, 20, 50])
    sweep_samples: int | None = 500
    tsne_samples: int = 1000
    batch_size: int = 256
    seed: int = 0


@dataclass
class Recipe:
    name: str = "advcl"
    method: str = "advcl"
    method_kwargs: dict[str, Any] = field(default_factory=dict)  # overrides of AdvCLObjective's arguments
    seed: int = 0
    attack_every: int = 1  # attack every k-th batch; the others use only the random start (cheaper, not the paper)
    output_dir: str = "runs"
    resume: str | None = "auto"  # "auto": continue from <run dir>/checkpoints/last.ckpt if present
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pseudo_labels: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    evaluate: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def finetune_data(self) -> DataConfig:
        return self.finetune.data or self.data

    def eval_data(self) -> DataConfig:
        return self.evaluate.data or self.finetune_data()


def parse_number(value: Any) -> Any:
    """``"8/255"`` -> 0.0313..., other values unchanged."""
    if isinstance(value, str) and "/" in value:
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            return value
    return value


def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, where)
            except (TypeError, ValueError) as error:
                errors.append(str(error))
        raise ValueError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return _from_dict(annotation, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return {k: parse_number(v) for k, v in value.items()}
    if annotation is float:
        value = parse_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def _from_dict(cls: type, values: dict[str, Any], where: str = "recipe") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(names)}")
    return cls(**{k: _convert(v, hints[k], f"{where}.{k}") for k, v in values.items()})


def _set_override(tree: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} must look like key.sub=value")
    key, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"override {assignment!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def available_recipes(studies: bool = False) -> list[str]:
    """Names of the recipes shipped with the package (``demo``, ``cifar10``, ``study/base_cpu`` ...), or
    with ``studies=True`` of the study files (``study/cpu`` ..., which list arms for ``advcl study``)."""
    root = resources.files("advcl_plugin.recipes")
    names = []

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir() and child.name == "solo":
                continue  # solo-learn's Hydra recipes (advcl-solo), not recipes of the advcl command
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".yaml"):
                is_study = "arms" in (yaml.safe_load(child.read_text()) or {})
                if is_study == studies:
                    names.append(prefix + child.name[: -len(".yaml")])

    if root.is_dir():
        walk(root, "")
    return sorted(names)


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """A recipe file: an existing path, or the name of a shipped recipe (``demo``, ``cifar10``...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = resources.files("advcl_plugin.recipes").joinpath(f"{name_or_path}.yaml")
    if shipped.is_file():
        return Path(str(shipped))
    raise FileNotFoundError(f"recipe {name_or_path!r} not found; shipped recipes: {available_recipes()}")


def load_recipe(name_or_path: str | os.PathLike | dict, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe (file, shipped name or dict), apply ``key=value`` overrides and validate it."""
    if isinstance(name_or_path, dict):
        tree = dict(name_or_path)
    else:
        with open(recipe_path(name_or_path)) as handle:
            tree = yaml.safe_load(handle) or {}
    for assignment in overrides or []:
        _set_override(tree, assignment)
    recipe = _from_dict(Recipe, tree)
    _validate(recipe)
    return recipe


def _validate(recipe: Recipe) -> None:
    from advcl_plugin.core.methods import get_method

    get_method(recipe.method)
    for name in recipe.finetune.modes:
        if name not in ("slf", "alf", "aff"):
            raise ValueError(f"finetune.modes may hold 'slf', 'alf', 'aff'; got {name!r}")
    if recipe.optim.batch_size < 2:
        raise ValueError("optim.batch_size must be >= 2 (the contrastive loss needs negatives)")
    if recipe.optim.epochs < 1:
        raise ValueError("optim.epochs must be >= 1")
    if recipe.attack_every < 1:
        raise ValueError("attack_every must be >= 1")
