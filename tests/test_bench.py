"""`advcl bench` runs and reports every figure (the figures themselves are checked by reading them,
not by a timed test)."""

import json
import os
import subprocess
import sys

import torch

from advcl_plugin import AdvCLConfig, AdvCLObjective, cifar_resnet18
from benchmarks.bench import BenchConfig, attack_precision_check


def test_bench_command_reports_all_configurations(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "advcl_plugin.app.cli", "--quiet", "bench", "--width", "4", "--batch-size", "8",
         "--rounds", "1", "--warmup", "0", "--out", str(tmp_path / "bench.json")],
        capture_output=True, text=True, timeout=600, env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    names = [row["config"] for row in data["rows"]]
    assert names == [
        "advcl authors-loop fp32", "advcl optimised fp32", "simclr fp32",
        "advcl authors-loop bf16+cl", "advcl optimised bf16+cl", "simclr bf16+cl",
    ]  # fmt: skip
    for row in data["rows"]:
        assert row["median_step_s"] > 0 and row["images_per_s"] > 0 and row["gflop_per_step"] > 0
        assert row["peak_memory_mb"] >= 0
    # the authors' loop re-forwards the clean views at every attack step: more FLOPs per step
    flops = {row["config"]: row["gflop_per_step"] for row in data["rows"]}
    assert flops["advcl authors-loop fp32"] > 1.2 * flops["advcl optimised fp32"] > 1.2 * flops["simclr fp32"]
    assert {"optimised vs authors-loop (fp32)", "bf16+cl optimised vs fp32 optimised"} <= set(data["ratios"])
    assert 0.5 < data["attack_precision"]["delta_sign_agreement"] <= 1
    assert "| advcl optimised fp32 |" in result.stdout and (tmp_path / "bench.md").is_file()


def test_bf16_attack_stays_in_budget():
    check = attack_precision_check(BenchConfig(width=4, batch_size=8))
    assert check["delta_abs_max_bf16_x255"] <= 8 + 1e-3
    assert check["loss_relative_difference"] < 0.05


def test_cheaper_attack_options():
    torch.manual_seed(0)
    objective = AdvCLObjective(cifar_resnet18(width=4), AdvCLConfig(ks=(2,), steps=3))
    x, t1, t2 = (torch.rand(4, 3, 32, 32) for _ in range(3))
    labels = torch.zeros(4, 1, dtype=torch.long)
    logs = objective(x, t1, t2, labels, steps=0).logs  # a skipped batch: random start only
    assert "attack_loss" not in logs and 0 < logs["delta_abs_max"] <= 8 / 255 + 1e-6
    fixed = AdvCLObjective(cifar_resnet18(width=4), AdvCLConfig(ks=(2,), steps=0, random_start=False))
    logs = fixed(x, t1, t2, labels).logs
    assert logs["delta_abs_max"] == 0
    single = AdvCLObjective(cifar_resnet18(width=4), AdvCLConfig(ks=(2,), steps=1, step_size=10 / 255))  # FGSM-RS
    logs = single(x, t1, t2, labels).logs
    assert logs["delta_abs_max"] <= 8 / 255 + 1e-6


def test_device_check_runs_end_to_end_in_dry_mode(tmp_path, data_dir):
    """The prepared GPU check, with tiny sizes on the CPU: every part runs and is written down."""
    result = subprocess.run(
        [sys.executable, "-m", "advcl_plugin.app.cli", "bench", "--device-check", "--dry-run",
         "--out-dir", str(tmp_path), "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=900, env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "device_check_dry-cpu.json").read_text())
    assert [row["config"] for row in data["step"]["rows"]] == [
        "advcl authors-loop fp32", "advcl optimised fp32", "advcl optimised bf16+cl",
    ]  # fmt: skip
    assert data["complete"] and data["parts_failed"] == [] and data["data"]["train_images"] > 0
    assert data["parts_done"] == ["step", "largest_batch", "views", "pretrain", "autoattack", "gpu_checks"]
    assert data["largest_batch"]["largest_batch"] == 16  # doubled from 8 up to the dry limit
    assert data["views"]["images_per_s_per_worker"] > 0 and data["views"]["workers_needed"] > 0
    assert data["views"]["device_views_images_per_s"] > 0 and data["views"]["recommended_views"] in ("cpu", "device")
    for part in ("cpu_views", "device_views"):
        figures = data["pretrain"][part]
        assert figures["steps"] >= 1 and 0 <= figures["data_wait_share"] <= 1 and 0 <= figures["view_share"] <= 1
    assert data["pretrain"]["cpu_views"]["view_share"] < 1e-3  # CPU views come from the loader: no device time
    assert set(data["autoattack"]["seconds_per_attack_all_images"]) == {"apgd-ce", "apgd-t", "fab-t", "square"}
    assert data["autoattack"]["settings"].startswith("smoke")
    checks = data["gpu_checks"]
    assert checks["synchronisations"]["tensor_reads_per_step"] == 1
    assert checks["contrastive_logits_under_bf16"]["dtype"] == "torch.float32"
    moved = checks["fp16_attack_gradients"]["share_of_pixels_moved"]
    assert moved["unscaled"] < 0.01 < 0.9 < moved["scaled"]
    assert "Device check (dry-cpu)" in (tmp_path / "device_check_dry-cpu.md").read_text()
