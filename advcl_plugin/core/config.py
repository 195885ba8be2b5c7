"""The one typed home of AdvCL's numbers: the objective's hyper-parameters, the views and the pretraining
schedule (the finetuning and evaluation protocols live in :mod:`advcl_plugin.evaluation.protocols`).

Defaults follow the authors' public code (the reference-facts sheet), which produced the
published tables; where the paper's own form differs it is one field away (e.g.
``base_temperature=None`` for eq. 5 without the ``t / 0.07`` scale).  Every field is checked
when a config is built, so a bad value is refused with the field's name before any work starts.

Every host maps onto these classes in one place: :func:`advcl_plugin.core.methods.build_config`
(the method registry and the ``advcl`` recipes' ``method_kwargs``), the solo-learn adapter's
``method_kwargs``, and the lightly components' arguments.

Examples:
    >>> from advcl_plugin.core.config import PAPER, AdvCLConfig
    >>> PAPER.ks, round(PAPER.eps * 255), PAPER.steps
    ((2, 10, 50, 100, 500), 8, 5)
    >>> cheaper = PAPER.replace(steps=2)               # a variant: a new, validated config
    >>> AdvCLConfig(eps=-0.1)
    Traceback (most recent call last):
    ...
    ValueError: AdvCLConfig.eps must lie in [0, 1] (pixel units; 8/255 in the paper), got -0.1
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "ATTACK_MODES",
    "FREQUENCY_VIEWS",
    "KS_ENSEMBLE",
    "PAPER",
    "PAPER_BASE_TEMPERATURE",
    "PAPER_RADIUS",
    "PAPER_SCHEDULE",
    "PAPER_TEMPERATURE",
    "PAPER_VIEWS",
    "AdvCLConfig",
    "PretrainSchedule",
    "ViewConfig",
    "parse_number",
]

#: the paper's pseudo-label ensemble: one head per cluster count K (Table 5)
KS_ENSEMBLE: tuple[int, ...] = (2, 10, 50, 100, 500)
#: ``attack`` values: AdvCL's single view x + delta (eq. 7), paired views (eq. 6), none (SimCLR)
ATTACK_MODES: tuple[str, ...] = ("advcl", "paired", "none")
#: frequency components that can be added as clean views (eq. 8)
FREQUENCY_VIEWS: tuple[str, ...] = ("high", "low")
#: r of eq. (8) for 32x32 images (the frequency functions' default; scale it with the image side)
PAPER_RADIUS: float = 8.0
#: t of eq. (5), and the authors' ``t / base_temperature`` scale of the contrastive loss
PAPER_TEMPERATURE: float = 0.5
PAPER_BASE_TEMPERATURE: float = 0.07


def parse_number(value: Any) -> Any:
    """Numbers as a user may write them, the one parser of the package: ``"8/255"`` -> 0.0313...,
    ``"1.5/2"`` -> 0.75, ``"5e-4"`` -> 0.0005; other values (and strings that are no number) are returned
    unchanged, so that a check can name them.

    Examples:
        >>> parse_number("8/255") == 8 / 255, parse_number(" 5e-4 "), parse_number("runs/x"), parse_number(3)
        (True, 0.0005, 'runs/x', 3)
    """
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            if "/" in text:
                numerator, denominator = text.split("/")
                return float(numerator) / float(denominator)
            return float(text)
        except (ValueError, ZeroDivisionError):
            return value
    return value


def _number(owner: str, name: str, value: Any, *, integer: bool = False, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    value = parse_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{owner}.{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be finite, got {value!r}")
    if integer:
        if value != int(value):
            raise ValueError(f"{owner}.{name} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _flag(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be true or false, got {value!r}")
    return value


class _Checked:
    """Shared helpers of the frozen configs: ``replace``, ``from_mapping``, ``to_dict``."""

    _owner: ClassVar[str]

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` applied (validated again); unknown names are refused."""
        return type(self).from_mapping({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str | None = None) -> Any:
        """Build from a mapping (a recipe section, solo-learn's ``method_kwargs``); unknown keys are
        refused with the list of valid ones."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"unknown key(s) {unknown} in {where or cls._owner}; valid keys: {sorted(cls.field_names())}"
            )
        return cls(**dict(values))


@dataclass(frozen=True)
class AdvCLConfig(_Checked):
    """Every hyper-parameter of AdvCL's objective (eqs. 5-10), validated when built.

    Attributes:
        ks: cluster counts of the pseudo-label heads (eq. 10, ensemble version).
        projection_dim: output size of the projection head g (128).
        eps, steps, step_size, random_start: L-inf PGD of the pretraining attack (8/255, 5,
            2/255, uniform start in the eps-ball). ``steps=1`` with ``step_size=1.25 * eps`` is
            the cheaper single-step attack with random start; ``steps=0`` keeps only the start.
        radius: r of the frequency views (eq. 8; 8 for 32x32 images, scale it with the image side).
        pseudo_label_weight: lambda of eq. (10) (0.2).
        temperature: t of eq. (5) (0.5).
        base_temperature: the contrastive loss is scaled by ``t / base_temperature`` (0.07, the
            authors' code); ``None`` for the paper's unscaled form.
        frequency_views: frequency components of x added as clean views: ``("high",)`` is AdvCL,
            ``()`` drops the HFC view, ``("low",)`` uses the LFC (Table 4).
        use_pseudo_labels: include the pseudo-label term of eq. (10).
        attack: ``"advcl"`` (one adversarial view x + delta, eq. 7), ``"paired"`` (eq. 6:
            tau1 + delta1 and tau2 + delta2) or ``"none"`` (no attack, SimCLR).
        paired_clean_views: with ``attack="paired"``, keep tau1 and tau2 as views too (Table 4, row 3).
    """

    _owner: ClassVar[str] = "AdvCLConfig"

    ks: tuple[int, ...] = KS_ENSEMBLE
    projection_dim: int = 128
    eps: float = 8 / 255
    steps: int = 5
    step_size: float = 2 / 255
    random_start: bool = True
    radius: float = PAPER_RADIUS
    pseudo_label_weight: float = 0.2
    temperature: float = PAPER_TEMPERATURE
    base_temperature: float | None = PAPER_BASE_TEMPERATURE
    frequency_views: tuple[str, ...] = ("high",)
    use_pseudo_labels: bool = True
    attack: str = "advcl"
    paired_clean_views: bool = False

    def __post_init__(self) -> None:
        owner = self._owner
        ks = self.ks
        if isinstance(ks, (int, str)) or not isinstance(ks, Sequence):
            raise ValueError(f"{owner}.ks must be a list of cluster counts, got {ks!r}")
        ks = tuple(_number(owner, "ks", k, integer=True) for k in ks)
        if not ks or min(ks) < 2 or len(set(ks)) != len(ks):
            raise ValueError(f"{owner}.ks must be distinct cluster counts >= 2 (e.g. {list(KS_ENSEMBLE)}), got {ks}")
        self._set("ks", ks)
        self._set("projection_dim", _number(owner, "projection_dim", self.projection_dim, integer=True))
        if self.projection_dim < 1:
            raise ValueError(f"{owner}.projection_dim must be >= 1, got {self.projection_dim}")
        self._set("eps", _number(owner, "eps", self.eps))
        if not 0 <= self.eps <= 1:
            raise ValueError(f"{owner}.eps must lie in [0, 1] (pixel units; 8/255 in the paper), got {self.eps}")
        self._set("steps", _number(owner, "steps", self.steps, integer=True))
        if self.steps < 0:
            raise ValueError(f"{owner}.steps must be >= 0, got {self.steps}")
        self._set("step_size", _number(owner, "step_size", self.step_size))
        if not 0 <= self.step_size <= 1:
            raise ValueError(f"{owner}.step_size must lie in [0, 1] (pixel units), got {self.step_size}")
        self._set("random_start", _flag(owner, "random_start", self.random_start))
        self._set("radius", _number(owner, "radius", self.radius))
        if self.radius <= 0:
            raise ValueError(f"{owner}.radius must be > 0 (8 for 32x32 images), got {self.radius}")
        self._set("pseudo_label_weight", _number(owner, "pseudo_label_weight", self.pseudo_label_weight))
        if self.pseudo_label_weight < 0:
            raise ValueError(f"{owner}.pseudo_label_weight must be >= 0, got {self.pseudo_label_weight}")
        self._set("temperature", _number(owner, "temperature", self.temperature))
        if self.temperature <= 0:
            raise ValueError(f"{owner}.temperature must be > 0, got {self.temperature}")
        self._set("base_temperature", _number(owner, "base_temperature", self.base_temperature, optional=True))
        if self.base_temperature is not None and self.base_temperature <= 0:
            raise ValueError(f"{owner}.base_temperature must be > 0 or null, got {self.base_temperature}")
        views = self.frequency_views
        if isinstance(views, str) or not isinstance(views, Sequence):
            raise ValueError(f"{owner}.frequency_views must be a list from {list(FREQUENCY_VIEWS)}, got {views!r}")
        views = tuple(views)
        if any(v not in FREQUENCY_VIEWS for v in views) or len(set(views)) != len(views):
            raise ValueError(f"{owner}.frequency_views must be distinct, from {list(FREQUENCY_VIEWS)}, got {views}")
        self._set("frequency_views", views)
        self._set("use_pseudo_labels", _flag(owner, "use_pseudo_labels", self.use_pseudo_labels))
        if self.attack not in ATTACK_MODES:
            raise ValueError(f"{owner}.attack must be one of {list(ATTACK_MODES)}, got {self.attack!r}")
        self._set("paired_clean_views", _flag(owner, "paired_clean_views", self.paired_clean_views))
        if self.attack == "none" and self.use_pseudo_labels:
            raise ValueError(
                f"{owner}: the pseudo-label term is adversarial (eq. 10) and needs an attack; "
                "set use_pseudo_labels=false with attack='none'"
            )

    @property
    def bn_routes(self) -> tuple[str, ...]:
        """The BN routes this objective uses: ``normal`` (clean views), ``pgd`` (the contrastive
        adversarial view, used downstream) and ``pgd_ce`` (the pseudo-label adversarial view)."""
        routes = ["normal"]
        if self.attack != "none":
            routes.append("pgd")
        if self.use_pseudo_labels:
            routes.append("pgd_ce")
        return tuple(routes)

    @property
    def downstream_route(self) -> str:
        """The route evaluated downstream: ``pgd`` (the authors' choice) when there is an attack."""
        return "pgd" if self.attack != "none" else "normal"


@dataclass(frozen=True)
class ViewConfig(_Checked):
    """AdvCL's data views (reference-facts sheet).

    tau1, tau2: RandomResizedCrop(size, scale (crop_min_scale, 1)), horizontal flip, colour
    jitter (brightness, contrast, saturation, hue) with probability ``jitter_prob``, grayscale
    with ``grayscale_prob``. The "original" x: RandomCrop(size, padding ``original_padding``)
    and flip.
    """

    _owner: ClassVar[str] = "ViewConfig"

    crop_min_scale: float = 0.2
    flip_prob: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    original_padding: int = 4

    def __post_init__(self) -> None:
        owner = self._owner
        for name in ("crop_min_scale", "flip_prob", "jitter_prob", "grayscale_prob"):
            value = _number(owner, name, getattr(self, name))
            if not 0 <= value <= 1:
                raise ValueError(f"{owner}.{name} must lie in [0, 1], got {value}")
            self._set(name, value)
        if self.crop_min_scale <= 0:
            raise ValueError(f"{owner}.crop_min_scale must be > 0, got {self.crop_min_scale}")
        jitter = tuple(_number(owner, "jitter", v) for v in self.jitter)
        if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
            raise ValueError(f"{owner}.jitter must be (brightness, contrast, saturation, hue <= 0.5), >= 0: {jitter}")
        self._set("jitter", jitter)
        self._set("original_padding", _number(owner, "original_padding", self.original_padding, integer=True))
        if self.original_padding < 0:
            raise ValueError(f"{owner}.original_padding must be >= 0, got {self.original_padding}")


#: the objective as the authors ran it (Table 1)
PAPER = AdvCLConfig()
#: the views as the authors made them
PAPER_VIEWS = ViewConfig()


@dataclass
class PretrainSchedule:
    """The authors' pretraining optimiser: SGD, linear warm-up from ``warmup_from`` over
    ``warmup_epochs``, cosine decay to ``lr * min_lr_ratio``.  ``batch_size`` is the batch per device;
    ``lr`` and ``warmup_from`` are for a global batch of ``reference_batch_size`` (scaled linearly with
    the real one).  The ``advcl`` lab's ``optim`` section is this class."""

    lr: float = 0.5
    batch_size: int = 512
    reference_batch_size: int = 512
    epochs: int = 1000
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 10
    warmup_from: float = 0.01
    min_lr_ratio: float = 1e-3


#: the authors' pretraining schedule (copy it with ``dataclasses.replace`` to change it)
PAPER_SCHEDULE = PretrainSchedule()
