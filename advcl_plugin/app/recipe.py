"""Recipes of the ``advcl`` lab: OmegaConf structured configs (typed dataclasses, dotted overrides), parsed and
validated once.

A recipe has the sections below; every key has a default (the authors' code: the numbers come from
:mod:`advcl_plugin.core.config` and :mod:`advcl_plugin.evaluation.protocols`, whose classes the ``optim``,
``finetune.<mode>`` and ``evaluate`` sections extend with lab-only fields), unknown keys are listed, values are
type-checked, and ``key.sub=value`` overrides from the command line are applied on top.  Any YAML float form
(``5e-4``) and fractions such as ``8/255`` are accepted wherever a number is expected.  The objective's
settings (``method_kwargs``) become the recipe's :class:`~advcl_plugin.core.config.AdvCLConfig` when it is
read (:meth:`Recipe.objective_config`), before any file is written or data loaded; the stages and the
Lightning module take the :class:`Recipe` object as it is.

Examples:
    >>> from advcl_plugin.app.recipe import load_recipe
    >>> recipe = load_recipe("demo", ["optim.epochs=1", "method=simclr", "optim.weight_decay=5e-4"])
    >>> recipe.method, recipe.optim.epochs, round(recipe.evaluate.eps * 255), recipe.optim.weight_decay
    ('simclr', 1, 8, 0.0005)
    >>> recipe.objective_config().attack
    'none'
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advcl_plugin.app.protocols import PROTOCOLS, protocol_settings
from advcl_plugin.app.recipe_files import load_structured, read_yaml, recipe_path
from advcl_plugin.app.rundir import check_run_name
from advcl_plugin.core.config import AdvCLConfig, PretrainSchedule
from advcl_plugin.core.methods import build_config, get_method
from advcl_plugin.evaluation.protocols import EvaluationProtocol, FinetuneSchedule

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
    "load_recipe",
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
    views: str = "cpu"  # pretraining views made by the loader's workers ("cpu") or in batches on the device ("device")


@dataclass
class ModelConfig:
    arch: str = "cifar_resnet18"
    width: int = 64
    # warm start: a clean encoder (an encoder.pt, another run's name, or another tool's file) whose weights every
    # BN route starts from; read weights-only and strictly (it must be this arch and width)
    init_from: str | None = None


@dataclass
class PseudoLabelConfig:
    """``path``: a pseudo-label .npz, ``reference`` (the authors' file in the offline data folder),
    or null (needed only by methods with the pseudo-label term)."""

    path: str | None = "reference"
    ks: list[int] | None = None  # default: the method's (AdvCLConfig.ks, the paper's ensemble)


@dataclass
class OptimConfig(PretrainSchedule):
    """SGD with linear warm-up and cosine decay: the authors' :class:`~advcl_plugin.core.config.PretrainSchedule`
    (``batch_size`` per device; ``lr`` and ``warmup_from`` for a global batch of ``reference_batch_size``,
    scaled linearly with the real one), checked as a recipe section."""

    def validate(self) -> OptimConfig:
        if self.batch_size < 2:
            raise ValueError("optim.batch_size must be >= 2 (the contrastive loss needs negatives)")
        if self.epochs < 1:
            raise ValueError("optim.epochs must be >= 1")
        _positive("recipe.optim.lr", self.lr)
        _positive("recipe.optim.reference_batch_size", self.reference_batch_size)
        for name in ("momentum", "weight_decay", "warmup_epochs", "warmup_from", "min_lr_ratio"):
            _positive(f"recipe.optim.{name}", getattr(self, name), allow_zero=True)
        return self


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
    deterministic: Any = False  # Lightning's: true (deterministic algorithms; exact GPU resume), "warn", false


@dataclass
class FinetuneConfig(FinetuneSchedule):
    """One finetuning mode: the :class:`~advcl_plugin.evaluation.protocols.FinetuneSchedule` (defaults: the
    authors' SLF script) plus the lab's held-out split: ``val_fraction > 0`` holds out this share of the train
    split and keeps the epoch with the best held-out PGD-``val_attack_steps`` accuracy."""

    val_fraction: float = 0.0

    def validate(self, where: str | None = None, mode: str | None = None) -> FinetuneConfig:
        super().validate(where, mode)
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"{where or 'FinetuneConfig'}.val_fraction must lie in [0, 1), got {self.val_fraction}")
        return self

    def schedule(self) -> FinetuneSchedule:
        """The schedule the classifiers train with (this section without the lab's fields)."""
        return self.as_schedule(FinetuneSchedule)


@dataclass
class FinetuneSection:
    """Downstream data (default: the pretraining dataset) and the three modes."""

    data: DataConfig | None = None
    modes: list[str] = field(default_factory=lambda: ["slf"])  # modes the demo / pipeline runs
    slf: FinetuneConfig = field(default_factory=FinetuneConfig)
    alf: FinetuneConfig = field(default_factory=FinetuneConfig)
    aff: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class EvalConfig(EvaluationProtocol):
    """SA / RA (PGD) / AA (AutoAttack) on the test split of the downstream dataset: the
    :class:`~advcl_plugin.evaluation.protocols.EvaluationProtocol` (the paper's) plus which images, the sweeps
    and the t-SNE plot."""

    data: DataConfig | None = None  # default: the finetuning data (exact pixels recommended)
    samples: int | None = None  # SA/RA on N evenly spaced test images (null: all)
    aa_samples: int | None = 1000  # AutoAttack on N evenly spaced test images (0: skip, null: all)
    eps_sweep: list[float] = field(default_factory=lambda: [2 / 255, 4 / 255, 8 / 255, 16 / 255])
    steps_sweep: list[int] = field(default_factory=lambda: [1, 5, 10, 20, 50])
    sweep_samples: int | None = 500
    tsne_samples: int = 1000
    batch_size: int = 256
    seed: int = 0

    def validate(self, where: str | None = None) -> EvalConfig:
        at = where or "evaluate"
        super().validate(at)
        _positive(f"{at}.samples", self.samples)
        _positive(f"{at}.aa_samples", self.aa_samples, allow_zero=True)
        _positive(f"{at}.sweep_samples", self.sweep_samples)
        _positive(f"{at}.tsne_samples", self.tsne_samples, allow_zero=True)
        _positive(f"{at}.batch_size", self.batch_size)
        for eps in self.eps_sweep:
            if not 0 <= eps <= 1:
                raise ValueError(f"{at}.eps_sweep must lie in [0, 1] (pixel units), got {eps}")
        for steps in self.steps_sweep:
            _positive(f"{at}.steps_sweep", steps, allow_zero=True)
        return self


@dataclass
class Recipe:
    name: str = "advcl"
    method: str = "advcl"
    method_kwargs: dict[str, Any] = field(default_factory=dict)  # changes to the method's AdvCLConfig
    seed: int = 0
    protocol: str = "authors"  # finetuning/evaluation protocol: "authors" (AdvCL's scripts) or "robustssl"
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

    def objective_config(self) -> AdvCLConfig:
        """The method's validated :class:`AdvCLConfig` with ``method_kwargs`` (and ``pseudo_labels.ks``) applied:
        built once when the recipe is read, built again only if those settings have changed since."""
        changes = dict(self.method_kwargs)
        if self.pseudo_labels.ks is not None and "ks" not in changes and "ks" not in get_method(self.method).changes:
            changes["ks"] = self.pseudo_labels.ks
        key = json.dumps([self.method, changes], sort_keys=True, default=str)
        cached = self.__dict__.get("_objective")
        if cached is None or cached[0] != key:
            cached = (key, build_config(self.method, changes))
            self.__dict__["_objective"] = cached
        return cached[1]


def load_recipe(
    name_or_path: str | os.PathLike | dict, overrides: list[str] | None = None, protocol: str | None = None
) -> Recipe:
    """Read a recipe (file, shipped name or dict), apply ``key=value`` overrides and validate all of it,
    including the objective's settings.

    ``protocol="robustssl"`` (or ``protocol: robustssl`` in the recipe) puts the benchmark's finetuning and
    evaluation settings over the recipe's; ``overrides`` still come last, and every setting they change is
    named by :func:`protocol_deviations` in the records the run writes.
    """
    tree = dict(name_or_path) if isinstance(name_or_path, dict) else read_yaml(recipe_path(name_or_path))
    recipe = load_structured(Recipe, tree, overrides)
    if protocol is not None:
        overridden = [o.partition("=")[2].strip() for o in overrides or [] if o.partition("=")[0].strip() == "protocol"]
        if overridden and overridden[-1] != protocol:
            raise ValueError(
                f"--protocol {protocol} and the override protocol={overridden[-1]} contradict each other; give one"
            )
        recipe.protocol = protocol
    if recipe.protocol not in PROTOCOLS:
        where = "recipe.protocol" if protocol is None else "protocol"
        raise ValueError(f"{where} must be one of {PROTOCOLS}, got {recipe.protocol!r}")
    if recipe.protocol == "robustssl":
        preset = protocol_settings("robustssl", recipe.method) | {"protocol": "robustssl"}
        recipe = load_structured(Recipe, tree, overrides, between=[preset])
    _validate(recipe)
    return recipe


def _positive(where: str, value: float | int | None, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ValueError(f"{where} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _validate(recipe: Recipe) -> None:
    """Every check that does not need data: ranges, choices, and the objective's config."""
    check_run_name(recipe.name, "recipe.name")
    config = recipe.objective_config()
    if config.frequency_views:
        from advcl_plugin.core.frequency import check_radius
        from advcl_plugin.data.datasets import dataset_image_size

        size = recipe.data.image_size or dataset_image_size(recipe.data.dataset)
        try:
            check_radius(config.radius, size, size)
        except ValueError as error:
            raise ValueError(f"recipe.method_kwargs.radius: {error}") from None
    if recipe.trainer.deterministic not in (True, False, "warn"):
        raise ValueError(f"trainer.deterministic must be true, false or 'warn', got {recipe.trainer.deterministic!r}")
    if recipe.data.views not in ("cpu", "device"):
        raise ValueError(f"data.views must be 'cpu' or 'device', got {recipe.data.views!r}")
    for name in recipe.finetune.modes:
        if name not in ("slf", "alf", "aff"):
            raise ValueError(f"finetune.modes may hold 'slf', 'alf', 'aff'; got {name!r}")
    recipe.optim.validate()
    if recipe.attack_every < 1:
        raise ValueError("attack_every must be >= 1")
    for mode in ("slf", "alf", "aff"):
        getattr(recipe.finetune, mode).validate(f"recipe.finetune.{mode}", mode)
    recipe.evaluate.validate("recipe.evaluate")
    sections = {"data": recipe.data, "finetune.data": recipe.finetune.data, "evaluate.data": recipe.evaluate.data}
    for where, data in sections.items():
        if data is not None:
            _positive(f"recipe.{where}.limit", data.limit)
            _positive(f"recipe.{where}.num_workers", data.num_workers, allow_zero=True)
            _positive(f"recipe.{where}.image_size", data.image_size)
    if recipe.resume not in (None, "auto", "never") and not Path(recipe.resume).is_file():
        raise ValueError(f"recipe.resume must be 'auto', 'never' or an existing checkpoint, got {recipe.resume!r}")
