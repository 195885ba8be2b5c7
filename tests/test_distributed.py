"""Two CPU processes (gloo): gathered loss and gradients equal one process on the whole batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from advcl_plugin import MultiViewNTXentLoss

WORLD = 2
BATCH = 6  # per process


def make_inputs():
    generator = torch.Generator().manual_seed(0)
    views = [torch.randn(WORLD * BATCH, 10, generator=generator) for _ in range(3)]
    layer = torch.nn.Linear(10, 8)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(8, 10, generator=generator))
        layer.bias.copy_(torch.randn(8, generator=generator))
    return views, layer


def worker(rank: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        views, layer = make_inputs()
        model = DistributedDataParallel(layer)
        local = [v[rank * BATCH : (rank + 1) * BATCH].clone().requires_grad_(True) for v in views]
        loss = MultiViewNTXentLoss(gather_distributed=True)([model(v) for v in local])
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        torch.save(
            {
                "loss": (mean_loss / WORLD).item(),
                # DDP averages parameter gradients; inputs get the gradient of the summed loss
                "input_grads": [v.grad / WORLD for v in local],
                "param_grads": [p.grad.clone() for p in layer.parameters()],
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_gathered_loss_and_gradients_equal_single_process(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    views, layer = make_inputs()
    inputs = [v.clone().requires_grad_(True) for v in views]
    single = MultiViewNTXentLoss()([layer(v) for v in inputs])
    single.backward()
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for rank, result in enumerate(results):
        assert result["loss"] == pytest.approx(single.item(), rel=1e-5)
        for got, full in zip(result["input_grads"], inputs):
            torch.testing.assert_close(got, full.grad[rank * BATCH : (rank + 1) * BATCH], rtol=1e-4, atol=1e-6)
        for got, parameter in zip(result["param_grads"], layer.parameters()):
            torch.testing.assert_close(got, parameter.grad, rtol=1e-4, atol=1e-6)
    # the gathered loss differs from a per-process loss without gathering (negatives really are global)
    local_only = MultiViewNTXentLoss()([layer(v[:BATCH]) for v in views])
    assert abs(local_only.item() - single.item()) > 1e-3
