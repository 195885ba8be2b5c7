"""The processes of one distributed run (Lightning DDP): which one writes, and how they keep in step.

Lightning starts the other processes of a DDP run by running the same command again with ``LOCAL_RANK``
set, so every stage of ``advcl pretrain`` / ``finetune`` / ``evaluate`` / ``study`` runs in every process:
the processes train together, and only global rank 0 writes files (:func:`is_global_zero_process`).
A process that reads what rank 0 wrote waits for it at a :func:`barrier`, and a decision that depends on
files (is this stage done?) is taken by rank 0 and shared (:func:`rank_zero_decides`), so that every
process enters the same trainings in the same order.  With one process every helper is a no-op.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["barrier", "distributed", "is_global_zero_process", "local_rank", "rank_zero_decides"]

T = TypeVar("T")


def is_global_zero_process() -> bool:
    """Whether this process is (or will be) global rank 0 of a distributed run, read from the launchers'
    environment (Lightning's ``LOCAL_RANK`` / ``NODE_RANK``, torchrun's ``RANK``, SLURM's ``SLURM_PROCID``).

    Lightning starts the other processes of a DDP run by running the same command again with
    ``LOCAL_RANK`` set: those processes train but must not write (or lock) the run directory.
    """
    if distributed():
        return dist.get_rank() == 0
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        value = os.environ.get(variable, "0").strip() or "0"
        if value.isdigit() and int(value) != 0:
            return False
    return True


def local_rank() -> int:
    """This process's index on its machine (0 without distributed training)."""
    value = os.environ.get("LOCAL_RANK", "0").strip()
    return int(value) if value.isdigit() else 0


def distributed() -> bool:
    """Whether this process belongs to an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait until every process of the group gets here (e.g. until rank 0 has written a file the others read)."""
    if distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def rank_zero_decides(value: T) -> T:
    """Rank 0's ``value`` in every process (e.g. whether a stage's output exists), so that all processes
    take the same branch; ``value`` itself without distributed training."""
    if not distributed():
        return value
    shared: list[Any] = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]
