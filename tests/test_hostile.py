"""Hostile input, third round (issue 21): nothing lost, nothing written outside its place, every bad input named.

Table-driven like tests/test_trust.py: each row is one probe that once failed (a half-written record that
stopped a study, two runs in one folder, a name escaping ``output_dir``, NaN weights finetuned, uint8 images
wrapped, a negative TRADES beta, corrupt data and images, a full disk, a YAML alias bomb, tracebacks for bad
overrides, core API misuse) and must keep giving one clear error or the right result.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from advcl_plugin import (
    AdvCLConfig,
    AdvCLLoss,
    AdvCLObjective,
    AdversarialView,
    MultiViewNTXentLoss,
    PseudoLabels,
    _io,
    cifar_resnet18,
    high_frequency,
    pseudo_label_loss,
)
from advcl_plugin.app.artifacts import load_classifier, load_encoder, save_encoder
from advcl_plugin.app.recipe import load_recipe
from advcl_plugin.app.rundir import LOCK_NAME, check_run_name, is_global_zero_process, run_directory_lock
from advcl_plugin.data import load_dataset

TINY = ["model.width=4", "data.limit=128", "optim.batch_size=64", "optim.epochs=1", "method_kwargs.steps=1",
        "evaluate.samples=32", "evaluate.aa_samples=0", "evaluate.eps_sweep=[]", "evaluate.steps_sweep=[]",
        "evaluate.tsne_samples=16", "finetune.slf.epochs=1", "finetune.slf.batch_size=128"]  # fmt: skip


def advcl(*args, cwd, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "advcl_plugin.app.cli", "--quiet", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        timeout=timeout,
    )


def refused(result, *fragments):
    """Exit code 2, one message holding every fragment, and no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout[-1500:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr[-3000:])


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
    """A tiny simclr run, SLF-finetuned and evaluated: (cwd, env)."""
    cwd = tmp_path_factory.mktemp("hostile")
    env = dict(os.environ, ADVCL_DATA_DIR=str(data_dir))
    for stage in (["pretrain"], ["finetune", "--mode", "slf"], ["evaluate", "--mode", "slf"]):
        result = advcl(*stage, "-c", "demo", *TINY, "method=simclr", "name=done", cwd=cwd, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    return cwd, env


# ----------------------------------------------------------------- 1. every file written atomically
@pytest.mark.parametrize(
    "write",
    [
        lambda p: _io.atomic_write_json(p, {"new": list(range(1000))}),
        lambda p: _io.atomic_write_text(p, "new " * 1000),
        lambda p: _io.atomic_torch_save({"new": torch.zeros(1000)}, p),
        lambda p: _io.atomic_savez(p, new=np.zeros(1000)),
    ],
    ids=["json", "text", "torch", "npz"],
)
def test_a_write_killed_half_way_leaves_the_previous_file(tmp_path, monkeypatch, write):
    path = tmp_path / "record"
    path.write_text("previous, complete")
    real_fsync = os.fsync

    def crash(descriptor):  # the process dies after the data reached the temporary file, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(_io.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        write(path)
    monkeypatch.setattr(_io.os, "fsync", real_fsync)
    assert path.read_text() == "previous, complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record"]  # no temporary file left behind
    write(path)
    assert path.read_bytes() != b"previous, complete"


def test_a_half_written_study_record_is_named_with_what_to_do(finished, tmp_path):
    """The probe: cut a finished arm's eval-slf.json to half and run the study again."""
    cwd, env = finished
    study = {"name": "s", "base": "demo", "overrides": [*TINY, "output_dir=runs"],
             "arms": [{"name": "simclr", "method": "simclr"}]}  # fmt: skip
    (cwd / "s.yaml").write_text(yaml.safe_dump(study))
    first = advcl("study", "-c", "s.yaml", cwd=cwd, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    record = cwd / "runs/s-simclr/eval-slf.json"
    text = record.read_text()
    assert json.loads(text)["method"] == "simclr"
    record.write_text(text[: len(text) // 2])
    again = advcl("study", "-c", "s.yaml", cwd=cwd, env=env)
    refused(again, str(Path("runs/s-simclr/eval-slf.json")), "is damaged", "delete it")
    record.unlink()  # what the message says: the study evaluates that classifier again and finishes
    third = advcl("study", "-c", "s.yaml", cwd=cwd, env=env)
    assert third.returncode == 0 and "=== s-simclr evaluate slf ===" in third.stdout, third.stderr[-3000:]
    assert "=== s-simclr pretrain" not in third.stdout  # the pretrained encoder was kept
    timings = cwd / "runs/s-simclr/study_timings.json"
    timings.write_text("{")
    refused(advcl("study", "-c", "s.yaml", cwd=cwd, env=env), "study_timings.json", "only the stage times")


# ----------------------------------------------------------------- 2. one process per run directory
def test_a_run_directory_in_use_is_refused_naming_its_owner(tmp_path, data_dir):
    env = dict(os.environ, ADVCL_DATA_DIR=str(data_dir))
    with run_directory_lock(tmp_path / "runs/x"):  # this process is "the first run"
        second = advcl("pretrain", "-c", "demo", *TINY, "name=x", "seed=1", cwd=tmp_path, env=env)
        refused(second, "runs/x is in use by process", str(os.getpid()), "pick another name")
        assert sorted(p.name for p in (tmp_path / "runs/x").iterdir()) == [LOCK_NAME]
    assert not (tmp_path / "runs/x").exists()  # released, and the folder it made for the lock is gone


def test_two_runs_started_at_once_with_one_name_do_not_mix(tmp_path, data_dir):
    env = dict(os.environ, ADVCL_DATA_DIR=str(data_dir))
    command = [sys.executable, "-m", "advcl_plugin.app.cli", "--quiet", "pretrain", "-c", "demo", *TINY, "name=x"]
    first = subprocess.Popen([*command, "seed=0"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen([*command, "seed=1"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    errors = [first.communicate(timeout=600)[1], second.communicate(timeout=600)[1]]
    codes = [first.returncode, second.returncode]
    assert sorted(codes) == [0, 2], (codes, errors)
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    # the loser met the winner's lock, or (if the winner had already finished) its checkpoint's other seed
    assert "is in use by" in errors[loser] or "other settings" in errors[loser], errors[loser]
    assert yaml.safe_load((tmp_path / "runs/x/recipe.yaml").read_text())["seed"] == winner
    checkpoint = torch.load(tmp_path / "runs/x/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["recipe"]["seed"] == winner


HOLD_THE_LOCK = """
import sys, time
from advcl_plugin.app.rundir import run_directory_lock
with run_directory_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, data_dir):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(tmp_path / "runs/x")], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ValueError, match=f"in use by process {holder.pid}"):
        with run_directory_lock(tmp_path / "runs/x"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "runs/x" / LOCK_NAME).is_file()  # SIGKILL left the file; its lock went with the process
    env = dict(os.environ, ADVCL_DATA_DIR=str(data_dir))
    result = advcl("pretrain", "-c", "demo", *TINY, "name=x", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "runs/x" / LOCK_NAME).exists()


HOLD_AND_FORK = """
import os, sys, time
from advcl_plugin.app.rundir import run_directory_lock
with run_directory_lock(sys.argv[1]):
    if os.fork() == 0:  # a data-loader worker: forked while the lock is held, outlives its parent
        time.sleep(600)
        os._exit(0)
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_forked_worker_of_a_killed_run_does_not_keep_its_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK, str(tmp_path / "x")], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with run_directory_lock(tmp_path / "x"):  # the worker still runs; the lock went with its parent
            pass
    finally:
        os.killpg(holder.pid, signal.SIGKILL)


def test_other_ranks_of_a_distributed_run_neither_lock_nor_write(tmp_path, monkeypatch):
    assert is_global_zero_process()
    monkeypatch.setenv("LOCAL_RANK", "1")  # what Lightning sets for the processes it starts for DDP
    assert not is_global_zero_process()
    with run_directory_lock(tmp_path / "x"):
        assert not (tmp_path / "x").exists()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with run_directory_lock(tmp_path / "x"), run_directory_lock(tmp_path / "x"):
        assert (tmp_path / "x" / LOCK_NAME).is_file()
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------- 3. run names stay inside output_dir
@pytest.mark.parametrize("name", ["../../elsewhere", "/tmp/abs", ".", "..", "a/b", "a\\b", "", "x\x00y", "tab\there"])
def test_a_run_name_that_is_not_one_folder_name_is_refused(name):
    with pytest.raises(ValueError, match="recipe.name"):
        load_recipe({"name": name})
    if name.isprintable() and name:
        with pytest.raises(ValueError, match="recipe.name"):
            load_recipe("demo", [f"name={name}"])


def test_a_shared_recipe_cannot_write_outside_output_dir(tmp_path, data_dir):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "shared.yaml").write_text(yaml.safe_dump({"name": "../elsewhere", "method": "simclr"}))
    env = dict(os.environ, ADVCL_DATA_DIR=str(data_dir))
    refused(advcl("pretrain", "-c", "shared.yaml", *TINY, cwd=tmp_path, env=env), "recipe.name")
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "runs").exists()


@settings(max_examples=200, deadline=None)
@given(name=st.text(min_size=0, max_size=40))
def test_any_run_name_stays_inside_output_dir_or_is_refused(name):
    output_dir = Path("/srv/runs")
    try:
        check_run_name(name)
    except ValueError:
        return
    resolved = Path(os.path.normpath(output_dir / name))
    assert resolved.parent == output_dir and resolved != output_dir


def test_study_and_arm_names_are_names(tmp_path):
    from advcl_plugin.app.study import load_study

    for study in ({"name": "../x", "base": "demo", "arms": []},
                  {"name": "s", "base": "demo", "arms": [{"name": "../a", "method": "simclr"}]}):  # fmt: skip
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
        with pytest.raises(ValueError, match="name"):
            load_study(str(tmp_path / "s.yaml"))


# ----------------------------------------------------------------- 4 and 10. a full disk
@pytest.fixture
def full_disk(monkeypatch):
    """Writes whose temporary file matches ``targets`` go to /dev/full (the kernel's full device: ENOSPC)."""
    targets: list[str] = []
    real_open = os.open

    def open_(path, flags, mode=0o777, *args, **kwargs):
        if any(target in os.fspath(path) for target in targets):
            return real_open("/dev/full", os.O_WRONLY)
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(_io.os, "open", open_)
    return targets


def test_a_full_disk_leaves_the_previous_file_and_names_it(tmp_path, full_disk):
    path = tmp_path / "features-slf.npz"
    _io.atomic_savez(path, features=np.ones(3))
    full_disk.append("features-slf.npz")
    with pytest.raises(_io.DiskFullError, match=f"no space left on the device while writing {path}"):
        _io.atomic_savez(path, features=np.zeros(100_000))
    assert np.load(path)["features"].tolist() == [1, 1, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features-slf.npz"]


@pytest.mark.parametrize(
    "stage,target",
    [
        (["pretrain", "name=chunks", "optim.epochs=2", "trainer.max_epochs=2"], "last.ckpt"),
        (["finetune", "--mode", "slf", "resume=never"], "classifier.pt"),
        (["evaluate", "--mode", "slf"], "features-slf.npz"),
    ],
    ids=["pretrain", "finetune", "evaluate"],
)
def test_a_full_disk_gets_one_message_and_damages_nothing(finished, tmp_path, monkeypatch, capsys, full_disk,
                                                          stage, target):  # fmt: skip
    from advcl_plugin.app.cli import main

    cwd, env = finished
    monkeypatch.setenv("ADVCL_DATA_DIR", env["ADVCL_DATA_DIR"])
    monkeypatch.chdir(cwd)
    run = cwd / "runs/done"
    if stage[0] == "pretrain":  # a run trained in chunks: its second epoch cannot be saved
        first = advcl("pretrain", "-c", "demo", *TINY, "method=simclr", *stage[1:3], "trainer.max_epochs=1", cwd=cwd,
                      env=env)  # fmt: skip
        assert first.returncode == 0, first.stderr[-3000:]
        run = cwd / "runs/chunks"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "logs" not in p.parts}
    full_disk.append(target)
    with pytest.raises(SystemExit) as exit_:
        main(["--quiet", stage[0], "-c", "demo", *TINY, "method=simclr", "name=done", *stage[1:]])  # later name= wins
    error = capsys.readouterr().err
    assert exit_.value.code == 2, error
    assert "no space left on the device while writing" in error and target in error, error
    assert "run the same command again to continue" in error
    for path, content in before.items():
        if path.name != "recipe.yaml":  # rewritten (same settings but epochs) before training: complete either way
            assert path.read_bytes() == content, path
    assert not [p for p in run.rglob("*.partial")]


# ----------------------------------------------------------------- 5. loaded weights are finite
def _encoder_file(tmp_path, damage):
    backbone = cifar_resnet18(width=4)
    state = backbone.state_dict()
    damage(state)
    info = {"format": "advcl-encoder", "arch": "cifar_resnet18", "width": 4, "feature_dim": backbone.feature_dim,
            "route": "normal", "method": "simclr", "state_dict": state}  # fmt: skip
    path = tmp_path / "encoder.pt"
    torch.save(info, path)
    return path, state


DAMAGES = {
    "nan-conv1": (lambda s: s["conv1.weight"].view(-1)[0].fill_(float("nan")), "conv1.weight holds 1 NaN"),
    "inf-running-var": (lambda s: s["bn1.running_var"].fill_(float("inf")), "bn1.running_var holds 4 NaN or inf"),
    "negative-var": (lambda s: s["bn1.running_var"].fill_(-1.0), "bn1.running_var holds negative variances"),
    "complex": (lambda s: s.__setitem__("conv1.weight", s["conv1.weight"].to(torch.complex64)), "complex64"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_weights_no_network_should_use_are_refused(tmp_path, damage):
    change, message = DAMAGES[damage]
    path, state = _encoder_file(tmp_path, change)
    with pytest.raises(ValueError, match=message.replace("inf", "infinite")):
        load_encoder(path)
    torch.save(state, tmp_path / "plain.pt")  # another tool's state dict
    with pytest.raises(ValueError, match="plain.pt"):
        load_encoder(tmp_path / "plain.pt", arch="cifar_resnet18", width=4, source_format="torchvision")


def test_save_encoder_never_writes_non_finite_weights(tmp_path):
    backbone = cifar_resnet18(width=4)
    backbone.bn1.running_var.fill_(float("inf"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        save_encoder(backbone, tmp_path / "e.pt", {})


def test_finetune_refuses_a_nan_encoder_and_a_nan_classifier_is_not_evaluated(finished, tmp_path):
    cwd, env = finished
    path, _ = _encoder_file(tmp_path, DAMAGES["nan-conv1"][0])
    result = advcl("finetune", "-c", "demo", *TINY, "name=nan", "--encoder", str(path), cwd=tmp_path, env=env)
    refused(result, "conv1.weight holds 1 NaN")
    assert not (tmp_path / "runs").exists()  # nothing created before the encoder was read
    classifier = torch.load(cwd / "runs/done/finetune-slf/classifier.pt", weights_only=True)
    classifier["state_dict"]["head.weight"][0, 0] = float("nan")
    torch.save(classifier, tmp_path / "classifier.pt")
    with pytest.raises(ValueError, match="head.weight holds 1 NaN"):
        load_classifier(tmp_path / "classifier.pt")


# ----------------------------------------------------------------- 6. integer images, float labels
def test_integer_images_are_refused_by_the_frequency_views():
    images = (torch.rand(2, 3, 32, 32) * 255).to(torch.uint8)
    with pytest.raises(TypeError, match=r"x must be a float tensor of images \(.*\), got torch.uint8"):
        high_frequency(images)


@pytest.mark.parametrize("values", [[9.6, 1.0], [float("nan"), 1.0], ["a", "b"], [True, False]])
def test_pseudo_labels_that_are_not_whole_cluster_ids_are_refused(values):
    with pytest.raises(ValueError, match="pseudo labels for K=10 must be"):
        PseudoLabels({10: np.array(values)}, dataset="d", num_samples=2)


def test_whole_float_pseudo_labels_are_taken_as_ids():
    labels = PseudoLabels({10: np.array([9.0, 1.0])}, dataset="d", num_samples=2)
    assert labels.labels[10].dtype == np.int64 and labels.labels[10].tolist() == [9, 1]


# ----------------------------------------------------------------- 7 and 12c. protocol numbers checked at load
@pytest.mark.parametrize(
    "overrides,message",
    [
        (["finetune.aff.trades_beta=-6"], "finetune.aff.trades_beta must be >= 0"),
        (["finetune.aff.attack_steps=-1"], "finetune.aff.attack_steps must be >= 0"),
        (["finetune.aff.attack_eps=-0.1"], r"finetune.aff.attack_eps must lie in \[0, 1\]"),
        (["finetune.slf.gamma=0"], "finetune.slf.gamma must be > 0"),
        (["finetune.alf.milestones=[-1]"], "finetune.alf.milestones"),
        (["evaluate.pgd_steps=-2"], "evaluate.pgd_steps must be >= 0"),
        (["evaluate.step_size=2"], r"evaluate.step_size must lie in \[0, 1\]"),
        (["evaluate.aa_version=fast"], "evaluate.aa_version must be one of"),
        (["evaluate.eps_sweep=[0.5,3]"], "evaluate.eps_sweep"),
        (["evaluate.samples=0"], "evaluate.samples must be > 0"),
        (["data.num_workers=-1"], "data.num_workers must be >= 0"),
    ],
)
def test_protocol_numbers_are_range_checked_when_the_recipe_is_read(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_recipe("demo", overrides)


def test_protocol_flag_and_override_must_agree():
    with pytest.raises(ValueError, match="--protocol robustssl and the override protocol=authors contradict"):
        load_recipe("demo", ["protocol=authors"], protocol="robustssl")
    assert load_recipe("demo", ["protocol=robustssl"], protocol="robustssl").protocol == "robustssl"


def test_trades_refuses_a_negative_beta_in_the_library_too():
    from advcl_plugin import trades_loss

    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        trades_loss(logits, logits, torch.zeros(4, dtype=torch.long), beta=-6)


# ----------------------------------------------------------------- 8. corrupt offline data
def _damage_offline(folder: Path, how: str, source: Path) -> None:
    target = folder / "cifar10.npz"
    data = source.read_bytes()
    if how == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif how == "zero-bytes":
        target.write_bytes(b"")
    elif how == "crc":
        with zipfile.ZipFile(source) as archive:
            info = archive.getinfo("x_train.npy")
            start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
        damaged = bytearray(data)
        damaged[start] ^= 0xFF
        target.write_bytes(bytes(damaged))
    elif how == "array-missing":
        with np.load(source) as archive:
            np.savez(target, **{k: archive[k] for k in archive.files if k != "y_train"})
    elif how == "wrong-dtype":
        with np.load(source) as archive:
            arrays = {k: archive[k] for k in archive.files}
        arrays["x_train"] = arrays["x_train"].astype(np.float32)
        np.savez(target, **arrays)


@pytest.mark.parametrize("how", ["truncated", "zero-bytes", "crc", "array-missing", "wrong-dtype"])
def test_corrupt_offline_data_gets_one_message_naming_the_file(tmp_path, data_dir, how):
    _damage_offline(tmp_path, how, data_dir / "cifar10.npz")
    with pytest.raises(ValueError, match=f"offline data file {tmp_path / 'cifar10.npz'}"):
        load_dataset("cifar10-offline", "train", data_dir=tmp_path)


def test_corrupt_offline_data_stops_pretraining_before_any_file_is_written(tmp_path, data_dir):
    _damage_offline(tmp_path, "crc", data_dir / "cifar10.npz")
    for name in ("advcl_reference_pseudo_labels_cifar10.npz",):
        os.symlink(data_dir / name, tmp_path / name)
    result = advcl("pretrain", "-c", "demo", *TINY, cwd=tmp_path, env=dict(os.environ, ADVCL_DATA_DIR=str(tmp_path)))
    refused(result, "cifar10.npz is damaged", "copy it again")
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------- 9. corrupt images in a folder
def _image_folder(root: Path, data_dir: Path) -> None:
    arrays = np.load(data_dir / "cifar10.npz")
    from PIL import Image

    for split, folder in (("train", "train"), ("test", "val")):
        for index in range(8):
            directory = root / folder / str(int(arrays[f"y_{split}"][index]))
            directory.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(arrays[f"x_{split}"][index])
            image.save(directory / f"{index}.png")
            image.save(directory / f"{index}.jpg", quality=90)


BAD_IMAGES = {
    "garbage": lambda p: p.write_bytes(os.urandom(300)),
    "zero-bytes": lambda p: p.write_bytes(b""),
    "half-jpeg": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "half-png": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
}


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("damage", sorted(BAD_IMAGES))
def test_a_damaged_image_is_named_before_any_work(tmp_path, data_dir, split, damage):
    _image_folder(tmp_path / "f", data_dir)
    victim = sorted((tmp_path / "f" / split).rglob("*.png" if damage == "half-png" else "*.jpg"))[3]
    BAD_IMAGES[damage](victim)
    with pytest.raises(ValueError, match=f"1 of the 16 image files .*{victim}"):
        load_dataset(f"folder:{tmp_path / 'f'}", "train" if split == "train" else "test")


def test_pretraining_on_a_folder_with_a_damaged_image_stops_before_training(tmp_path, data_dir):
    _image_folder(tmp_path / "f", data_dir)
    victim = sorted((tmp_path / "f/train").rglob("*.jpg"))[0]
    BAD_IMAGES["half-jpeg"](victim)
    result = advcl("pretrain", "-c", "demo", *TINY, "method=simclr", f"data.dataset=folder:{tmp_path / 'f'}",
                   "data.limit=null", "optim.batch_size=8", cwd=tmp_path)  # fmt: skip
    refused(result, str(victim), "Remove or replace")
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------- 11. oversized YAML
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(6)
)


def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    assert len(ALIAS_BOMB) < 600
    (tmp_path / "bomb.yaml").write_text(ALIAS_BOMB)
    result = advcl("pretrain", "-c", "bomb.yaml", cwd=tmp_path, timeout=60)
    refused(result, "aliases expand to more than 100,000 values")


@pytest.mark.parametrize(
    "text,message",
    [
        ("a: &a [*a]\n", "recursive YAML alias"),
        ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("x: '" + "y" * (1 << 20) + "'\n", "larger than 1024 KiB"),
    ],
    ids=["recursive", "deep", "large"],
)
def test_other_oversized_yaml_is_refused(tmp_path, text, message):
    from advcl_plugin.app.recipe_files import read_yaml

    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_yaml(tmp_path / "r.yaml")


def test_an_alias_bomb_in_an_override_is_refused():
    bomb = "[" + ", ".join(["&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + ["*a"] * 9) + "]"
    for _ in range(5):
        bomb = "[" + ", ".join([f"&b{_} {bomb}"] + [f"*b{_}"] * 9) + "]"
    with pytest.raises(ValueError, match="aliases expand"):
        load_recipe("demo", [f"method_kwargs.ks={bomb}"])


# ----------------------------------------------------------------- 12. one message where a traceback was
def test_a_python_tagged_override_is_refused_with_one_message(tmp_path):
    marker = tmp_path / "ran"
    result = advcl("pretrain", "-c", "demo", f"method_kwargs.eps=!!python/object/apply:os.system ['touch {marker}']",
                   cwd=tmp_path, timeout=120)  # fmt: skip
    refused(result, "YAML tag", "values are plain data")
    assert not marker.exists()


def test_a_bare_tensor_is_refused_by_auto_detection(tmp_path):
    torch.save(torch.zeros(3, 3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match=r"holds a bare tensor of shape \(3, 3\), not a state dict"):
        load_encoder(tmp_path / "tensor.pt", arch="cifar_resnet18", width=4)


def test_arms_option_naming_no_arm_is_refused(tmp_path, monkeypatch, capsys):
    from advcl_plugin.app.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["study", "-c", "study/demo", "--arms", ","])
    assert "--arms ',' names no arm" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_finetune_creates_nothing_before_reading_the_encoder(tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04")
    result = advcl("finetune", "-c", "demo", "name=x", "--encoder", "broken.pt", cwd=tmp_path, timeout=120)
    refused(result, "broken.pt")
    assert not (tmp_path / "runs").exists()


def test_a_worker_traceback_is_cut_to_its_message():
    from advcl_plugin.app.cli import error_message

    error = ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                       "last):\n  File \"x.py\", line 1\nValueError: image file a.jpg cannot be decoded")  # fmt: skip
    assert error_message(error) == "image file a.jpg cannot be decoded"


# ----------------------------------------------------------------- 13. core API misuse named by its argument
def _objective(**changes):
    return AdvCLObjective(cifar_resnet18(width=4), AdvCLConfig(ks=(2, 10), steps=1, **changes))


def _views(batch=4, dtype=torch.float32):
    return [torch.rand(batch, 3, 32, 32, dtype=dtype) for _ in range(3)]


def _labels(batch=4):
    return torch.stack([torch.randint(0, 2, (batch,)), torch.randint(0, 10, (batch,))], 1)


MISUSE = {
    "objective batch of 1": (lambda: _objective()(*_views(1), _labels(1)), ValueError, "x_orig holds a batch of 1"),
    "label 12 for K 10": (
        lambda: _objective()(*_views(), torch.tensor([[0, 1], [1, 12], [0, 2], [1, 3]])),
        ValueError,
        r"pseudo_labels\[:, 1\] holds 12, outside 0..9 for K = 10",
    ),
    "float labels": (lambda: _objective()(*_views(), _labels().float()), TypeError, "integer tensor of cluster ids"),
    "uint8 images": (
        lambda: _objective()(*[(v * 255).to(torch.uint8) for v in _views()], _labels()),
        TypeError,
        "x_orig must be float pixels",
    ),
    "mixed dtypes": (
        lambda: _objective()(_views()[0].double(), _views()[1].half(), _views()[2].bfloat16(), _labels()),
        TypeError,
        "x_orig float64, tau1 float16, tau2 bfloat16",
    ),
    "float64 images, float32 weights": (
        lambda: _objective()(*_views(dtype=torch.float64), _labels()),
        TypeError,
        "the images are float64 but the backbone's weights are float32",
    ),
    "loss on a batch of 1": (lambda: AdvCLLoss()([torch.randn(1, 8), torch.randn(1, 8)]), ValueError, "at least 2 im"),
    "NaN embedding": (
        lambda: AdvCLLoss()([torch.randn(4, 8), torch.full((4, 8), float("nan"))]),
        ValueError,
        r"views\[1\] hold NaN",
    ),
    "pseudo_label_loss label >= K": (
        lambda: pseudo_label_loss([torch.randn(3, 10)], torch.tensor([[12], [0], [1]])),
        ValueError,
        "holds 12, outside 0..9",
    ),
    "adversarial view batch of 1": (
        lambda: AdversarialView(cifar_resnet18(width=4), lambda x: x.mean((1, 2, 3)), lambda z: z.sum())(
            torch.rand(1, 3, 32, 32)
        ),
        ValueError,
        "x holds a batch of 1",
    ),
}


@pytest.mark.parametrize("case", sorted(MISUSE))
def test_core_api_misuse_is_named(case):
    call, kind, message = MISUSE[case]
    with pytest.raises(kind, match=message):
        call()


def test_a_single_image_in_eval_mode_is_refused_for_lack_of_negatives():
    assert torch.isfinite(MultiViewNTXentLoss()([torch.randn(2, 8), torch.randn(2, 8)]))
    with pytest.raises(ValueError, match="at least 2 images"):  # batch norm would cope in eval mode; the loss cannot
        _objective().eval()(*_views(1), _labels(1))


def test_no_data_folder_says_how_to_give_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ADVCL_DATA_DIR"}
    result = advcl("pretrain", "-c", "demo", cwd=tmp_path, env=env, timeout=120)
    refused(result, "data.data_dir=<folder>", "ADVCL_DATA_DIR")
    assert "pass --data-dir" not in result.stderr


def test_every_write_goes_through_the_atomic_helper():
    """No module of the package writes a file by hand (the helper is the one place)."""
    root = Path(__file__).resolve().parents[1] / "advcl_plugin"
    plain = (".write_text(", ".write_bytes(", "np.savez(", ".savefig(path", "torch.save(")
    offenders = [
        f"{path.relative_to(root)}: {needle}"
        for path in root.rglob("*.py")
        if path.name != "_io.py"
        for needle in plain
        if needle in path.read_text()
    ]
    assert offenders == []


def test_errno_of_a_full_disk_is_recognised():
    assert _io.is_disk_full(OSError(errno.ENOSPC, "full")) and not _io.is_disk_full(OSError(errno.EACCES, "no"))
    assert "run the same command again" in _io.disk_full_message("x")
