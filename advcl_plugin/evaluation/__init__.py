"""Evaluation room, framework-agnostic like the core (plain PyTorch; it imports only the core): the finetuning
and evaluation protocols (the AdvCL authors' and the RobustSSL benchmark's), robust accuracy (SA, PGD RA,
AutoAttack AA, sweeps) and TRADES.  The core holds the method only; the lightly classifiers and the ``advcl``
lab use these objects as they are.
"""

from advcl_plugin.evaluation.protocols import (
    AA_VERSIONS,
    FINETUNE_LOSSES,
    HEAD_INITS,
    PAPER_EVALUATION,
    PAPER_FINETUNE,
    ROBUSTSSL,
    EvaluationProtocol,
    FinetuneSchedule,
    RobustSSLProtocol,
    robustssl_protocol,
)
from advcl_plugin.evaluation.robustness import (
    autoattack_accuracy,
    evaluation_subset,
    pgd_accuracy,
    robustness_metrics,
)
from advcl_plugin.evaluation.trades import TRADES_START_STD, trades_kl_attack, trades_loss

__all__ = [
    "AA_VERSIONS",
    "FINETUNE_LOSSES",
    "HEAD_INITS",
    "PAPER_EVALUATION",
    "PAPER_FINETUNE",
    "ROBUSTSSL",
    "TRADES_START_STD",
    "EvaluationProtocol",
    "FinetuneSchedule",
    "RobustSSLProtocol",
    "autoattack_accuracy",
    "evaluation_subset",
    "pgd_accuracy",
    "robustness_metrics",
    "robustssl_protocol",
    "trades_kl_attack",
    "trades_loss",
]
