"""What a pretraining run costs: floating-point operations per training step, counted by PyTorch's own
``torch.utils.flop_counter.FlopCounterMode`` on one step of the recipe's objective (its network, width,
batch and image size), split into the attack (the PGD iterations) and the rest.

* ``step_gflop``: one training step, forward and backward, attack included;
* ``attack_gflop``: the part the PGD iterations add (the step minus the same step with ``steps=0``, which
  keeps the random start): the adversarial compute.  SimCLR's is zero.

A study multiplies them by each arm's steps (``pretrain.json``) and, for an arm warm-started from another
arm, adds that arm's compute as the cost of its start (see :func:`arm_compute`).

Examples:
    >>> from advcl_plugin.app.recipe import load_recipe
    >>> from advcl_plugin.app.compute import step_flops
    >>> cost = step_flops(load_recipe("demo", ["model.width=4", "optim.batch_size=4", "method_kwargs.steps=2"]))
    >>> cost["attack_gflop"] > 0 and cost["step_gflop"] > cost["attack_gflop"]
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from advcl_plugin.app.data import target_image_size
from advcl_plugin.app.recipe import Recipe
from advcl_plugin.core.objective import AdvCLObjective
from advcl_plugin.core.resnet import build_backbone

__all__ = ["arm_compute", "step_flops"]


class _GlobalOnly:
    """A stand-in for ``FlopCounterMode``'s module tracker that attributes every FLOP to "Global": the tracker's
    backward hooks cannot run inside ``torch.autograd.grad``, which the attack calls."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *args: object) -> None:
        return None


def _flop_counter() -> FlopCounterMode:
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()  # type: ignore[assignment]
    return counter


def _one_step(recipe: Recipe, steps: int | None) -> int:
    config = recipe.objective_config()
    if steps is not None:
        config = config.replace(steps=steps)
    generator = torch.Generator().manual_seed(0)
    objective = AdvCLObjective(build_backbone(recipe.model.arch, recipe.model.width), config)
    size, batch = target_image_size(recipe.data), recipe.optim.batch_size
    x, tau1, tau2 = (torch.rand(batch, 3, size, size, generator=generator) for _ in range(3))
    labels = None
    if config.use_pseudo_labels:
        labels = torch.stack([torch.randint(0, k, (batch,), generator=generator) for k in config.ks], 1)
    with _flop_counter() as counter:
        objective(x, tau1, tau2, labels, generator=generator).loss.backward()
    return int(counter.get_total_flops())


def step_flops(recipe: Recipe) -> dict[str, Any]:
    """FLOPs of one training step of ``recipe`` (GFLOP, forward + backward), and of its attack's iterations."""
    total = _one_step(recipe, None)
    attacked = recipe.objective_config().attack != "none" and recipe.objective_config().steps > 0
    without_attack = _one_step(recipe, 0) if attacked else total
    return {
        "step_gflop": total / 1e9,
        "attack_gflop": (total - without_attack) / 1e9,
        "batch_size": recipe.optim.batch_size,
        "image_size": target_image_size(recipe.data),
        "counted_by": "torch.utils.flop_counter.FlopCounterMode",
    }


def arm_compute(per_step: dict[str, Any], steps: int, seconds: float | None,
                start: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """An arm's compute: ``steps`` steps of ``per_step`` (:func:`step_flops`), its pretraining wall time,
    and with ``start`` (the compute of the arm it was warm-started from) the total including that start."""
    own = per_step["step_gflop"] * steps / 1e3
    adversarial = per_step["attack_gflop"] * steps / 1e3
    result = {
        "steps": steps,
        "step_gflop": per_step["step_gflop"],
        "attack_gflop": per_step["attack_gflop"],
        "pretrain_tflop": own,
        "adversarial_tflop": adversarial,
        "clean_tflop": own - adversarial,
        "pretrain_seconds": seconds,
    }
    if start is not None:
        result["start_tflop"] = start["total_tflop"]
        result["start_seconds"] = start.get("total_seconds")
    result["total_tflop"] = own + (start["total_tflop"] if start else 0.0)
    if seconds is not None:
        before = start.get("total_seconds") if start else 0.0
        result["total_seconds"] = seconds + before if before is not None else None
    return result
