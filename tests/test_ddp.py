"""Data parallelism on 2 CPU processes (gloo): one DDP training step of the AdvCL objective gives the
loss and gradients of one process on the concatenated batch.

PyTorch's SyncBatchNorm has no CPU implementation, so here the batch norm layers run in eval
mode (fixed statistics); everything else is exercised: the attack (its input gradients go
through the cross-process gather), global negatives of the contrastive loss, the pseudo-label
loss, and DDP's gradient averaging.  On GPUs, Lightning converts every route of the routed
batch norm to SyncBatchNorm (tests/test_routed_bn.py checks that conversion and its export).
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from advcl_plugin import AdvCLConfig, AdvCLObjective, cifar_resnet18

WORLD, BATCH, KS = 2, 4, (2, 10)


def make():
    torch.manual_seed(0)
    config = AdvCLConfig(ks=KS, steps=2, random_start=False)
    objective = AdvCLObjective(cifar_resnet18(width=4), config, gather_distributed=True)
    return objective.eval()  # fixed BN statistics: SyncBatchNorm is GPU-only


def batch():
    generator = torch.Generator().manual_seed(1)
    images = [torch.rand(WORLD * BATCH, 3, 32, 32, generator=generator) for _ in range(3)]
    labels = torch.stack([torch.randint(0, k, (WORLD * BATCH,), generator=generator) for k in KS], 1)
    return images, labels


def worker(rank: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        objective = make()
        model = DistributedDataParallel(objective)
        (x, t1, t2), labels = batch()
        part = slice(rank * BATCH, (rank + 1) * BATCH)
        loss = model(x[part], t1[part], t2[part], labels[part]).loss
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        grads = {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}
        torch.save({"loss": (mean_loss / WORLD).item(), "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_one_ddp_step_equals_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    objective = make()
    (x, t1, t2), labels = batch()
    loss = objective(x, t1, t2, labels).loss
    loss.backward()
    expected = {n: p.grad for n, p in objective.named_parameters() if p.grad is not None}
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["loss"] == pytest.approx(loss.item(), rel=1e-5)
        assert result["grads"].keys() == expected.keys()
        for name, grad in expected.items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_lightning_ddp_on_two_cpu_processes(tmp_path, data_dir):
    """`advcl pretrain` with trainer.devices=2 trainer.strategy=ddp trains and checkpoints on CPU."""
    env = dict(os.environ, ADVCL_DATA_DIR=str(data_dir))
    result = subprocess.run(
        [sys.executable, "-m", "advcl_plugin.app.cli", "--quiet", "pretrain", "-c", "demo", "name=ddp", "model.width=4",
         "data.limit=128", "optim.batch_size=16", "optim.epochs=1", "method_kwargs.steps=1",
         "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "SyncBatchNorm needs GPUs" in result.stderr
    assert (tmp_path / "runs/ddp/encoder.pt").is_file()
    checkpoint = torch.load(tmp_path / "runs/ddp/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 128 // (16 * 2)  # each process sees half of every epoch
