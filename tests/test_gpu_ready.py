"""Ready for the machines users run on (issue 22), checked on a CPU where a CPU can show it: a DDP study on two
gloo processes, the devices stages choose, float32 logits under autocast, the float16 attack, per-rank random
states, host-device synchronisations in the hot loop, compiled graphs, and a device check that cannot lose
its results.  What only a GPU can show is measured by ``advcl bench --device-check`` (its ``gpu_checks`` part).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from torch.profiler import ProfilerActivity, profile

from advcl_plugin import AdvCLConfig, AdvCLObjective, cifar_resnet18, multi_view_contrastive_loss, pgd_linf
from advcl_plugin.app.lightning import AdvCLPretrainModule, rank_rng_state, stage_device
from advcl_plugin.app.recipe import TrainerConfig, load_recipe
from advcl_plugin.data.device_views import DeviceAdvCLViews
from benchmarks.device_check import DeviceCheckConfig, is_allocation_failure, run_device_check

TINY_DDP = [
    "model.width=4", "data.dataset=cifar10-offline", "data.limit=128", "optim.batch_size=16", "optim.epochs=1",
    "trainer.limit_train_batches=null", "trainer.precision=32-true", "trainer.channels_last=false",
    "finetune.data.dataset=cifar10-offline", "finetune.data.limit=128", "finetune.slf.epochs=1",
    "finetune.slf.batch_size=32", "evaluate.samples=32", "evaluate.eps_sweep=[]", "evaluate.steps_sweep=[]",
    "evaluate.tsne_samples=16", "method_kwargs.steps=1", "pseudo_labels.ks=[2,10]",
    "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
]  # fmt: skip


# ----------------------------------------------------------------- 1. a DDP study finishes, rank 0 writes once
@pytest.mark.slow
def test_a_study_on_two_ddp_processes_finishes_and_writes_each_file_once(tmp_path, data_dir):
    study = {
        "name": "ddp",
        "base": "study_base_cpu",
        "aa_samples": 8,
        "overrides": TINY_DDP,
        "arms": [
            {"name": "simclr", "method": "simclr"},
            {"name": "advcl", "method": "advcl", "autoattack": True},
            {"name": "own", "method": "advcl", "pseudo_labels_from": "simclr"},
        ],
    }
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(study))
    log = tmp_path / "writes.log"
    env = dict(os.environ, ADVCL_DATA_DIR=str(data_dir), ADVCL_WRITE_LOG=str(log))
    result = subprocess.run(
        [sys.executable, "-m", "advcl_plugin.app.cli", "--quiet", "study", "-c", "ddp.yaml"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    writes = [line.split(" ", 1) for line in log.read_text().splitlines()]
    assert len({pid for pid, _ in writes}) == 1  # one process (rank 0) wrote everything
    counts = Counter(Path(path).relative_to(tmp_path).as_posix() for _, path in writes)
    repeated = {path: n for path, n in counts.items() if n > 1 and not path.endswith("study_timings.json")}
    assert repeated == {}  # study_timings.json is updated after each stage, by design
    for arm in ("simclr", "advcl", "own"):
        for name in ("encoder.pt", "pretrain.json", "finetune-slf/classifier.pt", "eval-slf.json"):
            assert counts[f"runs/ddp-{arm}/{name}"] == 1, (arm, name)
    assert counts["runs/ddp-own/clusterfit_pseudo_labels.npz"] == 1
    report = json.loads((tmp_path / "runs/ddp-report/report.json").read_text())
    assert {r["method"] for r in report["results"]} == {"simclr", "advcl", "own"}
    assert "aa" in report["per_arm"]["advcl"]["slf"]
    checkpoint = torch.load(tmp_path / "runs/ddp-advcl/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert len(checkpoint["advcl_rng_state"]["ranks"]) == 2  # each process's random state, for its resume


# ----------------------------------------------------------------- the devices stages run on
@pytest.mark.parametrize(
    "accelerator,devices,local_rank,expected",
    [
        ("auto", 1, "0", "cuda:0"),
        ("gpu", 2, "1", "cuda:1"),  # a DDP process evaluates on its own GPU, not on GPU 0
        ("cuda", [2, 3], "1", "cuda:3"),
        ("auto", "0,1", "1", "cuda:1"),
        ("cpu", 2, "1", "cpu"),
    ],
)
def test_evaluation_runs_on_the_device_the_process_trains_on(monkeypatch, accelerator, devices, local_rank, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert str(stage_device(TrainerConfig(accelerator=accelerator, devices=devices))) == expected


def test_a_gpu_asked_for_without_one_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert str(stage_device(TrainerConfig(accelerator="auto"))) == "cpu"
    with pytest.raises(ValueError, match="sees no GPU"):
        stage_device(TrainerConfig(accelerator="gpu"))


def test_solo_evaluation_device(monkeypatch):
    pytest.importorskip("solo", reason="solo-learn is not installed")
    from advcl_plugin.solo.launcher import evaluation_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert str(evaluation_device(None)) == "cuda" and str(evaluation_device("cuda:1")) == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert str(evaluation_device(None)) == "cpu"
    with pytest.raises(ValueError, match="no GPU"):
        evaluation_device("cuda")


# ----------------------------------------------------------------- 3. logits in float32 under autocast
def test_contrastive_logits_are_float32_under_bf16_autocast():
    generator = torch.Generator().manual_seed(0)
    views = [torch.randn(64, 32, generator=generator).bfloat16() for _ in range(4)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = multi_view_contrastive_loss(views)
    reference = multi_view_contrastive_loss([v.float() for v in views])
    assert autocast.dtype == torch.float32
    assert float(autocast) == pytest.approx(float(reference), rel=1e-6)  # bf16 logits were off by ~1e-2


# ----------------------------------------------------------------- 4. the attack under float16 autocast
def test_the_attack_moves_under_float16_autocast_where_fp16_gradients_underflow():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 30 * 30, 10))
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))

    def loss(z):
        return 1e-6 * torch.nn.functional.cross_entropy(net(z), y)  # small: its fp16 input gradients underflow

    with torch.autocast("cpu", dtype=torch.float16):
        z = x.clone().requires_grad_(True)
        (raw,) = torch.autograd.grad(loss(z), [z])
        adversarial = pgd_linf(loss, x, steps=1, random_start=False)
    assert float((raw == 0).float().mean()) > 0.99  # what an unscaled attack steps with: sign(0) = 0
    assert float(((adversarial - x).abs() > 0).float().mean()) > 0.9
    with torch.autocast("cpu", dtype=torch.float16):  # overflow: the scale comes down until the gradient is finite
        big = pgd_linf(lambda z: 1e4 * torch.nn.functional.cross_entropy(net(z), y), x, steps=1, random_start=False)
    assert torch.isfinite(big).all() and float(((big - x).abs() > 0).float().mean()) > 0.9


def test_adversarial_solo_recipes_ship_bf16():
    recipes = Path(__file__).resolve().parents[1] / "recipes" / "solo"
    for path in recipes.glob("*_adv_cifar10.yaml"):
        assert yaml.safe_load(path.read_text())["precision"] == "bf16-mixed", path.name


# ----------------------------------------------------------------- 5. each rank's random state
def test_each_rank_resumes_with_its_own_random_state():
    states = {"ranks": [{"torch": "rank0"}, {"torch": "rank1"}]}
    assert rank_rng_state(states, 1) == {"torch": "rank1"}
    assert rank_rng_state({"torch": "old"}, 3) == {"torch": "old"}  # advcl-plugin 0.1: one state for all
    with pytest.raises(ValueError, match="as many devices"):
        rank_rng_state(states, 2)


def test_deterministic_is_a_trainer_setting():
    assert load_recipe("demo", ["trainer.deterministic=true"]).trainer.deterministic is True
    with pytest.raises(ValueError, match="trainer.deterministic"):
        load_recipe("demo", ["trainer.deterministic=sometimes"])


# ----------------------------------------------------------------- 8. host-device synchronisations
def _tensor_reads(work) -> int:
    """Reads of a tensor's value into Python (``aten::_local_scalar_dense``): each is a synchronisation on a GPU."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        work()
    return sum(event.count for event in profiler.key_averages() if event.key == "aten::_local_scalar_dense")


def test_one_training_step_reads_one_value_from_the_device():
    objective = AdvCLObjective(cifar_resnet18(width=4), AdvCLConfig(ks=(2, 10), steps=5))
    x, t1, t2 = (torch.rand(8, 3, 32, 32) for _ in range(3))
    labels = torch.stack([torch.randint(0, 2, (8,)), torch.randint(0, 10, (8,))], 1)
    objective(x, t1, t2, labels).loss.backward()  # first call fills the radius check's cache
    assert _tensor_reads(lambda: objective(x, t1, t2, labels).loss.backward()) == 1  # was 53


def test_device_views_never_read_from_the_device():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    assert _tensor_reads(lambda: DeviceAdvCLViews(32)(images, torch.Generator().manual_seed(0))) == 0  # was 32


def test_the_pretraining_step_checks_the_loss_without_reading_it_every_step(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("ADVCL_DATA_DIR", str(data_dir))
    recipe = load_recipe("demo", ["model.width=4", "method_kwargs.steps=1", "trainer.log_every_n_steps=4"])
    module = AdvCLPretrainModule(recipe.to_dict())
    images = tuple(torch.rand(8, 3, 32, 32) for _ in range(3))
    module.set_pseudo_labels(torch.zeros(8, len(module.pseudo_label_ks), dtype=torch.long))
    batch = (list(images), torch.zeros(8), torch.arange(8))
    module.training_step(batch, 0)  # fills the caches
    monkeypatch.setattr(module, "log", lambda *a, **k: None)  # Lightning's logging needs a Trainer
    assert _tensor_reads(lambda: module.training_step(batch, 1)) == 1  # the objective's value check only
    assert _tensor_reads(lambda: module.training_step(batch, 3)) == 2  # every 4th step: the loss check too


# ----------------------------------------------------------------- 9. compiled graphs, memory layout
def test_a_compiled_step_builds_one_graph_per_route_and_gradient_mode():
    graphs = []

    def counting_backend(graph, inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    objective = AdvCLObjective(cifar_resnet18(width=4), AdvCLConfig(ks=(2, 10), steps=2))
    objective.to(memory_format=torch.channels_last)
    objective.backbone.compile(backend=counting_backend)
    for _ in range(2):
        x, t1, t2 = (torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last) for _ in range(3))
        labels = torch.stack([torch.randint(0, 2, (8,)), torch.randint(0, 10, (8,))], 1)
        objective(x, t1, t2, labels).loss.backward()
    # normal (clean views), pgd and pgd_ce with input gradients (attack) and without (loss): 5 (was 6: the
    # HFC view came back from irfft2 in NCHW among channels_last views)
    assert len(graphs) == 5
    torch._dynamo.reset()


def test_channels_last_is_applied_before_the_trainer_wraps_the_module():
    recipe = load_recipe("demo", ["model.width=4", "method=simclr", "trainer.channels_last=true"])
    module = AdvCLPretrainModule(recipe.to_dict())
    weight = module.objective.backbone.conv1.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)


def test_compiling_raises_the_recompile_limit():
    from advcl_plugin._platform import COMPILE_RECOMPILE_LIMIT, compile_backbone

    compile_backbone(torch.nn.Linear(2, 2), backend="eager")
    config = torch._dynamo.config
    limit = config.recompile_limit if hasattr(config, "recompile_limit") else config.cache_size_limit
    assert limit >= COMPILE_RECOMPILE_LIMIT


def test_the_hfc_view_keeps_the_memory_format():
    from advcl_plugin import high_frequency

    x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert high_frequency(x).is_contiguous(memory_format=torch.channels_last)
    assert high_frequency(x.contiguous()).is_contiguous()


# ----------------------------------------------------------------- 2. a device check that cannot lose its results
def test_a_failing_part_is_recorded_and_the_others_still_run(tmp_path, data_dir, monkeypatch):
    from benchmarks import device_check

    def broken(check):
        raise RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED (a part that breaks)")

    monkeypatch.setattr(device_check, "view_figures", lambda check, needed: broken(check))
    saved = []
    real_write = device_check.atomic_write_text
    monkeypatch.setattr(
        device_check,
        "atomic_write_text",
        lambda path, text: (
            (saved.append(json.loads(text)) if str(path).endswith(".json") else None) or real_write(path, text)
        ),
    )
    check = DeviceCheckConfig.dry(data_dir=str(data_dir))
    result = run_device_check(check, tmp_path, mode="dry-cpu", parts=("step", "views", "autoattack"))
    assert result["parts_done"] == ["step", "autoattack"] and result["parts_failed"] == ["views"]
    assert "CUBLAS_STATUS_EXECUTION_FAILED" in result["views"]["error"]["message"] and not result["complete"]
    assert result["parts_skipped"] == ["largest_batch", "pretrain", "gpu_checks"]
    # written before the first part and after every part: a check cut short keeps what it measured
    assert [s["parts_done"] for s in saved] == [[], ["step"], ["step"], ["step", "autoattack"], ["step", "autoattack"]]
    on_disk = json.loads((tmp_path / "device_check_dry-cpu.json").read_text())
    assert on_disk["parts_failed"] == ["views"] and "failed" in (tmp_path / "device_check_dry-cpu.md").read_text()


def test_the_data_is_opened_before_any_part(tmp_path):
    check = DeviceCheckConfig.dry(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_device_check(check, tmp_path / "out", mode="dry-cpu")
    assert not (tmp_path / "out").exists()


def test_the_budget_sizes_the_parts():
    full = DeviceCheckConfig()
    small = full.for_budget(150)
    assert small.pretrain_seconds <= 0.25 * 150 and small.aa_samples < full.aa_samples
    assert not small.compile and not small.largest_batch and small.rounds <= 2
    assert full.for_budget(10_000) == full  # a large budget changes nothing
    with pytest.raises(ValueError, match="budget"):
        full.for_budget(0)


@pytest.mark.parametrize(
    "error,allocation",
    [
        (torch.OutOfMemoryError("CUDA out of memory"), True),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"), True),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_allocation_failures_of_every_library_end_the_batch_search(error, allocation):
    assert is_allocation_failure(error) is allocation


def test_the_device_check_options_reach_the_check(tmp_path, data_dir):
    result = subprocess.run(
        [sys.executable, "-m", "advcl_plugin.app.cli", "bench", "--device-check", "--dry-run", "--out-dir",
         str(tmp_path), "--data-dir", str(data_dir), "--parts", "views,autoattack", "--aa-samples", "4",
         "--view-seconds", "0.5"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "device_check_dry-cpu.json").read_text())
    assert data["parts_done"] == ["views", "autoattack"] and data["autoattack"]["images"] == 4
    assert data["settings"]["view_seconds"] == 0.5
