"""The finetuning and evaluation protocols: one typed schedule per protocol, used as it is by the lightly
classifiers and by the ``advcl`` lab (whose recipe sections *are* these classes plus lab-only fields).

* :data:`PAPER_FINETUNE` / :data:`PAPER_EVALUATION`: the AdvCL authors' finetuning script (SLF; ALF and AFF
  train on PGD-10 examples with the same optimiser) and the paper's robust accuracy (PGD-20, AutoAttack
  ``standard``, eps 8/255 on [0, 1] pixels).
* :data:`ROBUSTSSL`: the RobustSSL benchmark's settings per pretraining family (:func:`robustssl_protocol`).

Adding a finetuning option is one field of :class:`FinetuneSchedule` (with its check in
:meth:`FinetuneSchedule.validate`) and the code that uses it: the recipe key, the protocol presets, the
deviation records and the resume check all follow the fields.

Examples:
    >>> from advcl_plugin.evaluation import PAPER_FINETUNE, robustssl_protocol
    >>> PAPER_FINETUNE.lr, PAPER_FINETUNE.milestones, robustssl_protocol("advcl").slf.head_init
    (0.01, [15, 20], 'zeros')
    >>> PAPER_FINETUNE.replace(lr=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: FinetuneSchedule.lr must be > 0, got -1.0
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "AA_VERSIONS",
    "FINETUNE_LOSSES",
    "HEAD_INITS",
    "PAPER_EVALUATION",
    "PAPER_FINETUNE",
    "ROBUSTSSL",
    "EvaluationProtocol",
    "FinetuneSchedule",
    "RobustSSLProtocol",
    "robustssl_protocol",
]

#: head starts a finetuning schedule may name: nn.Linear's own (the AdvCL authors') or zero weight and bias
#: (the RobustSSL benchmark's ``get_model``, in every mode)
HEAD_INITS: tuple[str, ...] = ("default", "zeros")
#: adversarial finetuning losses: cross-entropy on PGD examples (the authors' ALF/AFF), TRADES (RobustSSL's AFF)
FINETUNE_LOSSES: tuple[str, ...] = ("ce", "trades")
#: AutoAttack's versions (pyautoattack)
AA_VERSIONS: tuple[str, ...] = ("standard", "plus", "rand")

_S = TypeVar("_S")


def _at_least(where: str, value: float | int | None, *, zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not zero)):
        raise ValueError(f"{where} must be {'>= 0' if zero else '> 0'}, got {value}")


def _pixels(where: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{where} must lie in [0, 1] (pixel units), got {value}")


class _Schedule:
    """``replace`` (a validated copy) and ``fields`` for the schedule dataclasses."""

    def replace(self: _S, **changes: Any) -> _S:
        """A copy with ``changes`` applied and validated; unknown names are refused with the valid ones."""
        names = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown} of {type(self).__name__}; valid: {sorted(names)}")
        copy = dataclasses.replace(self, **changes)  # type: ignore[type-var]
        copy.validate()  # type: ignore[attr-defined]
        return copy

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def as_schedule(self, kind: type[_S]) -> _S:
        """The ``kind`` part of this object (a lab section without its lab-only fields)."""
        return kind(**{name: getattr(self, name) for name in kind.fields()})  # type: ignore[attr-defined]


@dataclass
class FinetuneSchedule(_Schedule):
    """One finetuning mode: the optimiser, the lr steps, the attack it trains on, the loss and the head's start.

    Defaults are the AdvCL authors' SLF script (SGD lr 0.01, momentum 0.9, weight decay 2e-4, 25 epochs, lr / 10
    at epochs 15 and 20); ALF and AFF train on PGD-``attack_steps`` examples at ``attack_eps`` with steps of
    ``attack_step_size``; validation (when there is a held-out split) uses PGD-``val_attack_steps``.
    ``loss``: ``"ce"`` (cross-entropy on PGD examples) or ``"trades"`` (TRADES with ``trades_beta``, AFF only).
    ``head_init``: ``"default"`` (nn.Linear's initialisation) or ``"zeros"`` (the RobustSSL benchmark's).
    """

    lr: float = 0.01
    batch_size: int = 512
    epochs: int = 25
    momentum: float = 0.9
    weight_decay: float = 2e-4
    milestones: list[int] = field(default_factory=lambda: [15, 20])
    gamma: float = 0.1
    attack_steps: int = 10
    attack_eps: float = 8 / 255
    attack_step_size: float = 2 / 255
    val_attack_steps: int = 10
    loss: str = "ce"
    trades_beta: float = 6.0
    head_init: str = "default"

    def validate(self, where: str | None = None, mode: str | None = None) -> FinetuneSchedule:
        """Refuse an impossible schedule with one message naming ``where.<field>``; ``mode`` (slf, alf, aff)
        also checks that TRADES is asked of AFF only.  Returns the schedule."""
        at = where or type(self).__name__
        _at_least(f"{at}.lr", self.lr)
        _at_least(f"{at}.epochs", self.epochs)
        _at_least(f"{at}.batch_size", self.batch_size)
        _at_least(f"{at}.momentum", self.momentum, zero=True)
        _at_least(f"{at}.weight_decay", self.weight_decay, zero=True)
        _at_least(f"{at}.gamma", self.gamma)
        _at_least(f"{at}.attack_steps", self.attack_steps, zero=True)
        _at_least(f"{at}.val_attack_steps", self.val_attack_steps, zero=True)
        _pixels(f"{at}.attack_eps", self.attack_eps)
        _pixels(f"{at}.attack_step_size", self.attack_step_size)
        if any(m < 0 for m in self.milestones):
            raise ValueError(f"{at}.milestones must be epochs >= 0, got {list(self.milestones)}")
        if self.loss not in FINETUNE_LOSSES:
            raise ValueError(f"{at}.loss must be 'ce' or 'trades', got {self.loss!r}")
        if self.loss == "trades" and mode is not None and mode != "aff":
            raise ValueError(f"{at}.loss: TRADES trains the whole network, so only aff takes it")
        if self.trades_beta < 0:
            raise ValueError(
                f"{at}.trades_beta must be >= 0 (the weight of the robustness term; a negative one rewards "
                f"the divergence it should penalise), got {self.trades_beta}"
            )
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"{at}.head_init must be one of {list(HEAD_INITS)}, got {self.head_init!r}")
        return self


@dataclass
class EvaluationProtocol(_Schedule):
    """Robust accuracy as the paper reports it: PGD-``pgd_steps`` with steps of ``step_size`` (RA) and
    AutoAttack ``aa_version`` (AA) at ``eps``, on [0, 1] pixels (PGD-20, 2/255, ``standard``, 8/255)."""

    eps: float = 8 / 255
    step_size: float = 2 / 255
    pgd_steps: int = 20
    aa_version: str = "standard"

    def validate(self, where: str | None = None) -> EvaluationProtocol:
        """Refuse an impossible protocol with one message naming ``where.<field>``; returns the protocol."""
        at = where or type(self).__name__
        _pixels(f"{at}.eps", self.eps)
        _pixels(f"{at}.step_size", self.step_size)
        _at_least(f"{at}.pgd_steps", self.pgd_steps, zero=True)
        if self.aa_version not in AA_VERSIONS:
            raise ValueError(f"{at}.aa_version must be one of {AA_VERSIONS}, got {self.aa_version!r}")
        return self


#: the AdvCL authors' finetuning script, for every mode
PAPER_FINETUNE = FinetuneSchedule()
#: the paper's robust accuracy
PAPER_EVALUATION = EvaluationProtocol()


@dataclass(frozen=True)
class RobustSSLProtocol:
    """The RobustSSL benchmark's finetuning and evaluation (GodXuxilie/RobustSSL_Benchmark,
    ``Finetuning_Methods/Vanilla_Finetuning``), for one pretraining family.

    SLF and ALF: frozen encoder in eval mode, SGD (momentum 0.9, weight decay 2e-4), 25 epochs,
    lr / 10 at ``milestones``, RandomCrop(32, padding 4) + flip, ALF on PGD-10 (eps 8/255, step
    2/255) cross-entropy examples; the linear head starts at zero (weight and bias) in every mode.  AFF: the
    whole network trained with TRADES (beta 6, KL attack of 10 steps from a 0.001 Gaussian start, attack in
    eval mode, loss in train mode).  The last epoch is kept (the script's optional test-set selection is off
    by default), and SA, PGD-20 (RA) and AutoAttack ``standard`` (AA) are measured on the whole test set.
    ``input_normalization``: the benchmark's ResNet normalises inputs with ImageNet's mean and
    std for every pretraining method except AdvCL and A-InfoNCE.
    """

    family: str
    slf: FinetuneSchedule
    alf: FinetuneSchedule
    aff: FinetuneSchedule
    evaluation: EvaluationProtocol = field(default_factory=EvaluationProtocol)
    input_normalization: str = "none"
    selection: str = "last epoch"
    test_images: str = "all"

    def schedule(self, mode: str) -> FinetuneSchedule:
        """A copy of the schedule of ``mode`` (slf, alf, aff)."""
        if mode not in ("slf", "alf", "aff"):
            raise ValueError(f"mode must be 'slf', 'alf' or 'aff', got {mode!r}")
        return dataclasses.replace(getattr(self, mode))


def _family(family: str, slf_alf: FinetuneSchedule, aff: FinetuneSchedule, **rest: Any) -> RobustSSLProtocol:
    return RobustSSLProtocol(family, slf=slf_alf, alf=dataclasses.replace(slf_alf), aff=aff, **rest)


#: the benchmark's settings per pretraining family, CIFAR-10 (its ``setup_hyperparameter``)
ROBUSTSSL: dict[str, RobustSSLProtocol] = {
    "advcl": _family(  # AdvCL, A-InfoNCE, DeACL
        "advcl",
        FinetuneSchedule(lr=0.01, batch_size=512, milestones=[15, 20], head_init="zeros"),
        FinetuneSchedule(lr=0.1, batch_size=128, milestones=[15, 20], loss="trades", head_init="zeros"),
    ),
    "acl": _family(  # ACL
        "acl",
        FinetuneSchedule(lr=0.01, batch_size=512, milestones=[10, 20], head_init="zeros"),
        FinetuneSchedule(lr=0.1, batch_size=128, epochs=100, milestones=[40, 60], loss="trades", head_init="zeros"),
        input_normalization="imagenet",
    ),
}


def robustssl_protocol(method: str) -> RobustSSLProtocol:
    """The benchmark's settings for a method of this package: ACL's for ``acl``, AdvCL's otherwise
    (AdvCL, its ablations, and methods the benchmark does not list, such as SimCLR)."""
    return ROBUSTSSL["acl" if method == "acl" else "advcl"]
