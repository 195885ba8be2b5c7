"""The lab's protocols: the finetuning and evaluation settings a protocol fixes, as a recipe tree, and the
settings of a recipe that depart from its protocol.

The settings themselves are typed objects of the evaluation room (:mod:`advcl_plugin.evaluation.protocols`);
this module only lays them out as recipe keys, field by field, so a new schedule field reaches recipes,
presets and deviation records without an edit here.

Examples:
    >>> from advcl_plugin.app.protocols import protocol_settings
    >>> tree = protocol_settings("robustssl", "advcl")
    >>> tree["finetune"]["aff"]["loss"], tree["finetune"]["slf"]["head_init"], tree["evaluate"]["pgd_steps"]
    ('trades', 'zeros', 20)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from advcl_plugin.app.recipe_files import flat_keys
from advcl_plugin.evaluation.protocols import PAPER_EVALUATION, PAPER_FINETUNE, robustssl_protocol

__all__ = ["LAB_DEFAULTS", "PROTOCOLS", "protocol_deviations", "protocol_settings"]

PROTOCOLS = ("authors", "robustssl")
#: lab-only settings a protocol also fixes: every mode is finetuned on the whole train split, evaluation
#: covers the whole test set
LAB_DEFAULTS: dict[str, dict[str, Any]] = {
    "finetune": {"val_fraction": 0.0},
    "evaluate": {"samples": None, "aa_samples": None},
}


def protocol_settings(protocol: str, method: str) -> dict[str, Any]:
    """The finetuning and evaluation settings a protocol fixes, as a recipe tree.

    ``"authors"``: the AdvCL authors' finetuning script (:data:`~advcl_plugin.evaluation.protocols.PAPER_FINETUNE`
    for every mode) and the paper's evaluation; ``"robustssl"``: the RobustSSL benchmark's
    (:func:`~advcl_plugin.evaluation.protocols.robustssl_protocol` of the method).  Both evaluate the whole test set.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "robustssl":
        settings = robustssl_protocol(method)
        schedules, evaluation = {m: settings.schedule(m) for m in ("slf", "alf", "aff")}, settings.evaluation
    else:
        schedules, evaluation = dict.fromkeys(("slf", "alf", "aff"), PAPER_FINETUNE), PAPER_EVALUATION
    finetune = {mode: dataclasses.asdict(s) | LAB_DEFAULTS["finetune"] for mode, s in schedules.items()}
    return {"finetune": finetune, "evaluate": dataclasses.asdict(evaluation) | LAB_DEFAULTS["evaluate"]}


def protocol_deviations(recipe: Any, modes: tuple[str, ...] = ("slf", "alf", "aff")) -> dict[str, list[Any]]:
    """Every setting of ``recipe.protocol`` that the recipe (a :class:`~advcl_plugin.app.recipe.Recipe`) changes
    (``key: [protocol's, used]``), for the finetuning ``modes`` named and the evaluation; empty when the run
    follows its protocol exactly."""
    used = flat_keys(dataclasses.asdict(recipe))
    deviations = {}
    for key, expected in flat_keys(protocol_settings(recipe.protocol, recipe.method)).items():
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
