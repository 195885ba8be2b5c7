"""Recipes of the ``advcl`` lab: OmegaConf structured configs (typed dataclasses, dotted overrides).

A recipe has the sections below; every key has a default (the authors' code: the numbers come
from :mod:`advcl_plugin.core.config`), unknown keys are listed, values are type-checked, and
``key.sub=value`` overrides from the command line are applied on top.  Any YAML float form
(``5e-4``) and fractions such as ``8/255`` are accepted wherever a number is expected.  The
objective's settings (``method_kwargs``) become an :class:`~advcl_plugin.core.config.AdvCLConfig`
through :func:`advcl_plugin.core.methods.build_config`, so they are validated when the recipe is
read, before any file is written or data loaded.

Example:
    >>> from advcl_plugin.app.config import load_recipe
    >>> recipe = load_recipe("demo", ["optim.epochs=1", "method=simclr", "optim.weight_decay=5e-4"])
    >>> recipe.method, recipe.optim.epochs, round(recipe.evaluate.eps * 255), recipe.optim.weight_decay
    ('simclr', 1, 8, 0.0005)
    >>> recipe.objective_config().attack
    'none'
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from advcl_plugin.app.rundir import check_run_name
from advcl_plugin.core.config import (
    HEAD_INITS,
    PAPER_EVALUATION,
    PAPER_FINETUNE,
    PAPER_SCHEDULE,
    AdvCLConfig,
    robustssl_protocol,
)
from advcl_plugin.core.methods import build_config

__all__ = [
    "PROTOCOLS",
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
    "available_studies",
    "load_recipe",
    "load_structured",
    "protocol_deviations",
    "protocol_settings",
    "read_yaml",
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
class OptimConfig:
    """SGD with linear warm-up and cosine decay (authors' code). ``lr`` and ``warmup_from`` are
    given for a global batch of ``reference_batch_size`` and scaled linearly with the real one."""

    batch_size: int = PAPER_SCHEDULE.batch_size  # per device
    epochs: int = PAPER_SCHEDULE.epochs
    lr: float = PAPER_SCHEDULE.lr
    reference_batch_size: int = PAPER_SCHEDULE.batch_size
    momentum: float = PAPER_SCHEDULE.momentum
    weight_decay: float = PAPER_SCHEDULE.weight_decay
    warmup_epochs: float = PAPER_SCHEDULE.warmup_epochs
    warmup_from: float = PAPER_SCHEDULE.warmup_from
    min_lr_ratio: float = PAPER_SCHEDULE.min_lr_ratio  # cosine decays to lr * 0.1**3


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
class FinetuneConfig:
    """One finetuning mode. Defaults: the authors' SLF script."""

    epochs: int = PAPER_FINETUNE.epochs
    batch_size: int = PAPER_FINETUNE.batch_size
    lr: float = PAPER_FINETUNE.lr
    momentum: float = PAPER_FINETUNE.momentum
    weight_decay: float = PAPER_FINETUNE.weight_decay
    milestones: list[int] = field(default_factory=lambda: list(PAPER_FINETUNE.milestones))
    gamma: float = PAPER_FINETUNE.gamma
    attack_steps: int = PAPER_FINETUNE.attack_steps  # PGD steps while training (ALF, AFF)
    attack_eps: float = PAPER_EVALUATION.eps
    attack_step_size: float = PAPER_EVALUATION.step_size
    val_fraction: float = 0.0  # >0: hold out this share of the train split and keep the best held-out RA epoch
    val_attack_steps: int = 10
    loss: str = PAPER_FINETUNE.loss  # AFF: "ce" (PGD cross-entropy, the authors') or "trades" (RobustSSL's)
    trades_beta: float = PAPER_FINETUNE.trades_beta
    head_init: str = PAPER_FINETUNE.head_init  # "default" (nn.Linear's, the authors') or "zeros" (RobustSSL's)


@dataclass
class FinetuneSection:
    """Downstream data (default: the pretraining dataset) and the three modes."""

    data: DataConfig | None = None
    modes: list[str] = field(default_factory=lambda: ["slf"])  # modes the demo / pipeline runs
    slf: FinetuneConfig = field(default_factory=FinetuneConfig)
    alf: FinetuneConfig = field(default_factory=FinetuneConfig)
    aff: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class EvalConfig:
    """SA / RA (PGD) / AA (AutoAttack) on the test split of the downstream dataset."""

    data: DataConfig | None = None  # default: the finetuning data (exact pixels recommended)
    eps: float = PAPER_EVALUATION.eps
    step_size: float = PAPER_EVALUATION.step_size
    pgd_steps: int = PAPER_EVALUATION.pgd_steps
    samples: int | None = None  # SA/RA on N evenly spaced test images (null: all)
    aa_samples: int | None = 1000  # AutoAttack on N evenly spaced test images (0: skip, null: all)
    aa_version: str = PAPER_EVALUATION.aa_version
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
        """The method's validated :class:`AdvCLConfig` with ``method_kwargs`` (and ``pseudo_labels.ks``) applied."""
        changes = dict(self.method_kwargs)
        if self.pseudo_labels.ks is not None and "ks" not in changes and "ks" not in _method_changes(self.method):
            changes["ks"] = self.pseudo_labels.ks
        return build_config(self.method, changes)


def _method_changes(method: str) -> dict[str, Any]:
    from advcl_plugin.core.methods import get_method

    return get_method(method).changes


_FRACTION = re.compile(r"^\s*[-+]?\d+(\.\d*)?\s*/\s*\d+(\.\d*)?\s*$")
_OMEGACONF_TYPES = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def _fractions(node: Any) -> Any:
    """``"8/255"`` -> 0.0313... everywhere in a YAML tree (OmegaConf itself reads ``5e-4`` as a float)."""
    if isinstance(node, dict):
        return {k: _fractions(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fractions(v) for v in node]
    if isinstance(node, str) and _FRACTION.match(node):
        numerator, denominator = node.split("/")
        if float(denominator) != 0:
            return float(numerator) / float(denominator)
    return node


#: recipes are small: a file larger than this, or one whose aliases expand to more YAML nodes, is refused
MAX_RECIPE_BYTES = 1 << 20
MAX_YAML_NODES = 100_000


def _check_yaml_size(text: str, where: str) -> None:
    """Refuse YAML whose aliases expand beyond :data:`MAX_YAML_NODES` nodes (an "alias bomb": a few hundred
    bytes that expand to millions of nodes and exhaust memory or crash the parser), before it is loaded."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise ValueError(f"{where} is larger than {MAX_RECIPE_BYTES // 1024} KiB; recipes are small YAML files")
    if "*" not in text:  # no alias: the nodes are the text's own
        return
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return  # a syntax error: the loader names it
    except RecursionError:
        raise ValueError(f"{where} is nested too deeply to be a recipe") from None
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def expanded(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ValueError(f"{where} holds a recursive YAML alias (a value that contains itself)")
        open_nodes.add(key)
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [item for pair in node.value for item in pair]
        else:
            children = []
        total = 1
        for child in children:
            total += expanded(child)
            if total > MAX_YAML_NODES:
                raise ValueError(
                    f"{where}: its YAML aliases expand to more than {MAX_YAML_NODES:,} values (an alias bomb?); "
                    "recipes are small, write the values out"
                )
        open_nodes.discard(key)
        sizes[key] = total
        return total

    if root is not None:
        try:
            expanded(root)
        except RecursionError:
            raise ValueError(f"{where} is nested too deeply to be a recipe") from None


def _dotlist(overrides: list[str], where: str) -> dict[str, Any]:
    import yaml

    for assignment in overrides:
        if "=" not in assignment:
            raise ValueError(f"override {assignment!r} must look like key.sub=value")
        _check_yaml_size(assignment.partition("=")[2], f"the override {assignment[:80]!r}")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))  # type: ignore[return-value]
    except (OmegaConfBaseException, yaml.YAMLError) as error:
        message = str(error).splitlines()[0]
        if isinstance(error, yaml.constructor.ConstructorError):
            message = "a value with a YAML tag (!!python/... and the like) is refused: values are plain data"
        raise ValueError(f"{where}: cannot read the overrides {overrides}: {message}") from None


def load_structured(
    schema: type,
    tree: dict[str, Any],
    overrides: list[str] | None = None,
    where: str = "recipe",
    between: list[dict[str, Any]] | None = None,
) -> Any:
    """Validate ``tree`` (+ the ``between`` layers, + dotted ``overrides``) against the dataclass ``schema``
    with OmegaConf and return the dataclass instance; every problem becomes one ``ValueError`` naming the key."""
    layers = [_fractions(tree), *(between or []), _fractions(_dotlist(overrides or [], where))]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), *layers)
        return OmegaConf.to_object(merged)
    except (ConfigKeyError, ConfigAttributeError) as error:
        full_key = str(getattr(error, "full_key", "") or "")
        parent = full_key.rpartition(".")[0]
        owner = getattr(error, "object_type", None)
        valid = sorted(f.name for f in dataclasses.fields(owner)) if dataclasses.is_dataclass(owner) else []
        key = getattr(error, "key", None) or full_key.rpartition(".")[2]
        raise ValueError(
            f"unknown key(s) [{str(key)!r}] in {where}{'.' + parent if parent else ''}; valid keys: {valid}"
        ) from None
    except ValidationError as error:
        message = str(error).splitlines()[0]
        kind = re.search(r"could not be converted to (\w+)", message)
        value = re.search(r"Value '(.*)' of type", message)
        full_key = getattr(error, "full_key", "")
        if kind and kind.group(1) in _OMEGACONF_TYPES:
            got = f", got {value.group(1)!r}" if value else ""
            raise ValueError(f"{where}.{full_key} must be {_OMEGACONF_TYPES[kind.group(1)]}{got}") from None
        raise ValueError(f"{where}.{full_key}: {message}") from None
    except OmegaConfBaseException as error:
        raise ValueError(f"{where}: {str(error).splitlines()[0]}") from None


def read_yaml(path: Path) -> dict[str, Any]:
    """A recipe or study file as a plain tree (refused with one message if it is not small, valid YAML)."""
    import io

    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise ValueError(f"{path} is larger than {MAX_RECIPE_BYTES // 1024} KiB; recipes are small YAML files")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a text (UTF-8) YAML file: {error}") from None
    _check_yaml_size(text, str(path))
    try:
        tree = OmegaConf.to_container(OmegaConf.load(io.StringIO(text)))
    except OmegaConfBaseException as error:
        raise ValueError(f"{path} is not a valid YAML mapping: {str(error).splitlines()[0]}") from None
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply to be a recipe") from None
    except Exception as error:  # a YAML syntax error
        raise ValueError(f"{path} is not a valid YAML file: {error}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ValueError(f"{path} must hold a mapping of recipe sections, got {type(tree).__name__}")
    return tree


def _shipped(folder: str = "") -> list[str]:
    root = resources.files("advcl_plugin.recipes")
    node = root.joinpath(folder) if folder else root
    if not node.is_dir():
        return []
    prefix = f"{folder}/" if folder else ""
    return sorted(prefix + c.name[: -len(".yaml")] for c in node.iterdir() if c.name.endswith(".yaml"))


def available_recipes() -> list[str]:
    """Names of the recipes shipped with the package (``demo``, ``cifar10``, ``study_base_cpu`` ...)."""
    return _shipped()


def available_studies() -> list[str]:
    """Names of the shipped studies (``study/cpu``, ``study/demo`` ...), which list arms for ``advcl study``."""
    return _shipped("study")


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """A recipe or study file: an existing path, or the name of a shipped one (``demo``, ``study/cpu`` ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = resources.files("advcl_plugin.recipes").joinpath(f"{name_or_path}.yaml")
    if shipped.is_file():
        return Path(str(shipped))
    raise FileNotFoundError(
        f"recipe {str(name_or_path)!r} not found; shipped recipes: {available_recipes()}, "
        f"studies: {available_studies()}"
    )


PROTOCOLS = ("authors", "robustssl")


def protocol_settings(protocol: str, method: str) -> dict[str, Any]:
    """The finetuning and evaluation settings a protocol fixes, as a recipe tree.

    ``"authors"``: the AdvCL authors' finetuning script (:data:`~advcl_plugin.core.config.PAPER_FINETUNE`
    for every mode) and the paper's evaluation; ``"robustssl"``: the RobustSSL benchmark's
    (:func:`~advcl_plugin.core.config.robustssl_protocol` of the method).  Both evaluate the whole test set.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "robustssl":
        settings = robustssl_protocol(method)
        schedules, evaluation = {m: getattr(settings, m) for m in ("slf", "alf", "aff")}, settings.evaluation
    else:
        schedules, evaluation = dict.fromkeys(("slf", "alf", "aff"), PAPER_FINETUNE), PAPER_EVALUATION
    finetune = {
        mode: {
            "epochs": s.epochs,
            "batch_size": s.batch_size,
            "lr": s.lr,
            "momentum": s.momentum,
            "weight_decay": s.weight_decay,
            "milestones": list(s.milestones),
            "gamma": s.gamma,
            "attack_steps": s.attack_steps,
            "attack_eps": evaluation.eps,
            "attack_step_size": evaluation.step_size,
            "val_fraction": 0.0,
            "loss": s.loss,
            "trades_beta": s.trades_beta,
            "head_init": s.head_init,
        }
        for mode, s in schedules.items()
    }
    evaluate = {
        "eps": evaluation.eps, "step_size": evaluation.step_size, "pgd_steps": evaluation.pgd_steps,
        "samples": None, "aa_samples": None, "aa_version": evaluation.aa_version,
    }  # fmt: skip
    return {"finetune": finetune, "evaluate": evaluate}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def protocol_deviations(recipe: Recipe, modes: tuple[str, ...] = ("slf", "alf", "aff")) -> dict[str, list[Any]]:
    """Every setting of ``recipe.protocol`` that the recipe changes (``key: [protocol's, used]``), for the
    finetuning ``modes`` named and the evaluation; empty when the run follows its protocol exactly."""
    used = _flatten(dataclasses.asdict(recipe))
    deviations = {}
    for key, expected in _flatten(protocol_settings(recipe.protocol, recipe.method)).items():
        section, _, rest = key.partition(".")
        if section == "finetune" and rest.partition(".")[0] not in modes:
            continue
        value = used[key]
        same = (
            value == expected
            if not isinstance(expected, float) or not isinstance(value, int | float)
            else abs(value - expected) <= 1e-9 * max(1.0, abs(expected))
        )
        if not same:
            deviations[key] = [expected, value]
    return deviations


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
        raise ValueError(f"recipe.{where} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _in_unit_interval(where: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"recipe.{where} must lie in [0, 1] (pixel units), got {value}")


def _validate_finetune(mode: str, section: FinetuneConfig) -> None:
    where = f"finetune.{mode}"
    _positive(f"{where}.lr", section.lr)
    _positive(f"{where}.epochs", section.epochs)
    _positive(f"{where}.batch_size", section.batch_size)
    _positive(f"{where}.momentum", section.momentum, allow_zero=True)
    _positive(f"{where}.weight_decay", section.weight_decay, allow_zero=True)
    _positive(f"{where}.gamma", section.gamma)
    _positive(f"{where}.attack_steps", section.attack_steps, allow_zero=True)
    _positive(f"{where}.val_attack_steps", section.val_attack_steps, allow_zero=True)
    _in_unit_interval(f"{where}.attack_eps", section.attack_eps)
    _in_unit_interval(f"{where}.attack_step_size", section.attack_step_size)
    if any(m < 0 for m in section.milestones):
        raise ValueError(f"recipe.{where}.milestones must be epochs >= 0, got {section.milestones}")
    if section.loss not in ("ce", "trades"):
        raise ValueError(f"recipe.{where}.loss must be 'ce' or 'trades', got {section.loss!r}")
    if section.loss == "trades" and mode != "aff":
        raise ValueError(f"recipe.{where}.loss: TRADES trains the whole network, so only aff takes it")
    if section.trades_beta < 0:
        raise ValueError(
            f"recipe.{where}.trades_beta must be >= 0 (the weight of the robustness term; a negative one rewards "
            f"the divergence it should penalise), got {section.trades_beta}"
        )
    if not 0 <= section.val_fraction < 1:
        raise ValueError(f"recipe.{where}.val_fraction must lie in [0, 1), got {section.val_fraction}")
    if section.head_init not in HEAD_INITS:
        raise ValueError(f"recipe.{where}.head_init must be one of {list(HEAD_INITS)}, got {section.head_init!r}")


#: AutoAttack's versions (pyautoattack)
AA_VERSIONS = ("standard", "plus", "rand")


def _validate_evaluation(evaluation: EvalConfig) -> None:
    _in_unit_interval("evaluate.eps", evaluation.eps)
    _in_unit_interval("evaluate.step_size", evaluation.step_size)
    _positive("evaluate.pgd_steps", evaluation.pgd_steps, allow_zero=True)
    _positive("evaluate.samples", evaluation.samples)
    _positive("evaluate.aa_samples", evaluation.aa_samples, allow_zero=True)
    _positive("evaluate.sweep_samples", evaluation.sweep_samples)
    _positive("evaluate.tsne_samples", evaluation.tsne_samples, allow_zero=True)
    _positive("evaluate.batch_size", evaluation.batch_size)
    if evaluation.aa_version not in AA_VERSIONS:
        raise ValueError(f"recipe.evaluate.aa_version must be one of {AA_VERSIONS}, got {evaluation.aa_version!r}")
    for eps in evaluation.eps_sweep:
        _in_unit_interval("evaluate.eps_sweep", eps)
    for steps in evaluation.steps_sweep:
        _positive("evaluate.steps_sweep", steps, allow_zero=True)


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
    if recipe.optim.batch_size < 2:
        raise ValueError("optim.batch_size must be >= 2 (the contrastive loss needs negatives)")
    if recipe.optim.epochs < 1:
        raise ValueError("optim.epochs must be >= 1")
    if recipe.attack_every < 1:
        raise ValueError("attack_every must be >= 1")
    optim = recipe.optim
    _positive("optim.lr", optim.lr)
    _positive("optim.reference_batch_size", optim.reference_batch_size)
    _positive("optim.momentum", optim.momentum, allow_zero=True)
    _positive("optim.weight_decay", optim.weight_decay, allow_zero=True)
    _positive("optim.warmup_epochs", optim.warmup_epochs, allow_zero=True)
    _positive("optim.warmup_from", optim.warmup_from, allow_zero=True)
    _positive("optim.min_lr_ratio", optim.min_lr_ratio, allow_zero=True)
    for mode in ("slf", "alf", "aff"):
        _validate_finetune(mode, getattr(recipe.finetune, mode))
    _validate_evaluation(recipe.evaluate)
    sections = {"data": recipe.data, "finetune.data": recipe.finetune.data, "evaluate.data": recipe.evaluate.data}
    for where, data in sections.items():
        if data is not None:
            _positive(f"{where}.limit", data.limit)
            _positive(f"{where}.num_workers", data.num_workers, allow_zero=True)
            _positive(f"{where}.image_size", data.image_size)
    if recipe.resume not in (None, "auto", "never") and not Path(recipe.resume).is_file():
        raise ValueError(f"recipe.resume must be 'auto', 'never' or an existing checkpoint, got {recipe.resume!r}")
