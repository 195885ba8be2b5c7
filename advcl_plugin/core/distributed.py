"""Helpers for gathering embeddings across processes with correct gradients."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["gather_with_grad", "rank", "world_size"]


def world_size() -> int:
    """Number of processes in the default group, 1 when torch.distributed is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """Rank of this process in the default group, 0 when torch.distributed is not initialised."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns, to each process, the sum over processes of the
    gradient for its slice (all_reduce of contiguous gradients, then the local slice)."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.batch = tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        # a contiguous copy: collectives read raw memory, and the incoming gradient is not ours to modify
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from every process along dim 0, keeping the autograd graph.

    The backward pass sums the gradient that every process computes for a slice and
    hands that sum to the slice's owner.  Each process therefore receives the gradient
    of the *sum* of the per-process losses; data-parallel training (DDP, Lightning)
    averages parameter gradients over processes, which yields the gradient of the mean
    loss, i.e. the same as one process on the concatenated batch.

    All processes must pass tensors of the same shape (use ``drop_last=True`` or a
    distributed sampler that pads).

    Args:
        tensor: shape (B, ...).

    Returns:
        Tensor of shape (world_size * B, ...), ordered by rank; ``tensor`` itself when
        torch.distributed is not initialised.
    """
    if world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)
