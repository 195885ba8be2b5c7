"""The advcl command's stages at tiny scale on real CIFAR-10 images (offline copy)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from advcl_plugin import PseudoLabels, bn_route, cifar_resnet18
from advcl_plugin.app.artifacts import load_classifier, load_encoder
from advcl_plugin.app.lightning import AdvCLPretrainModule
from advcl_plugin.app.report import build_report, robustness_checks

TINY = [
    "model.width=4",
    "data.limit=256",
    "optim.batch_size=64",
    "optim.epochs=1",
    "trainer.save_every_n_epochs=1",
    "finetune.slf.epochs=1",
    "finetune.slf.batch_size=128",
    "finetune.alf.epochs=1",
    "finetune.alf.attack_steps=2",
    "finetune.aff.epochs=1",
    "finetune.aff.attack_steps=1",
    "finetune.aff.batch_size=128",
    "finetune.aff.val_fraction=0.25",
    "evaluate.samples=64",
    "evaluate.aa_samples=32",
    "evaluate.sweep_samples=32",
    "evaluate.steps_sweep=[1,5]",
    "evaluate.tsne_samples=64",
    "method_kwargs.steps=2",
]


def advcl(*args, cwd, env=None, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "advcl_plugin.app.cli", "--quiet", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        timeout=600,
    )
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    """One tiny AdvCL pretraining run shared by the tests below."""
    cwd = tmp_path_factory.mktemp("pipeline")
    env = dict(os.environ, ADVCL_DATA_DIR=str(data_dir))
    advcl("pretrain", "-c", "demo", *TINY, "name=tiny", cwd=cwd, env=env)
    return cwd, env


def test_pretrain_writes_checkpoints_logs_and_encoder(run):
    cwd, _ = run
    run_dir = cwd / "runs" / "tiny"
    for name in ("checkpoints/last.ckpt", "checkpoints/epoch-0001.ckpt", "encoder.pt", "recipe.yaml", "pretrain.json"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "pretrain.json").read_text())
    assert summary["epochs_done"] == 1 and summary["steps"] == 4 and summary["train_images"] == 256
    for key in ("loss", "train/contrastive_loss", "train/pseudo_label_loss", "train/attack_loss"):
        assert np.isfinite(summary["final_metrics"][key]), key
    assert summary["final_metrics"]["train/delta_abs_max"] <= 8 / 255 + 1e-6
    assert list(run_dir.glob("logs/version_*/metrics.csv"))


def test_exported_encoder_matches_the_routed_backbone(run):
    cwd, _ = run
    ckpt = torch.load(cwd / "runs/tiny/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    module = AdvCLPretrainModule(ckpt["hyper_parameters"]["recipe"])
    module.load_state_dict(ckpt["state_dict"])
    backbone = module.objective.backbone.eval()
    x = torch.rand(4, 3, 32, 32)
    with bn_route(backbone, "pgd"):
        expected = backbone(x)
    encoder, info = load_encoder(cwd / "runs/tiny/encoder.pt")
    assert info["route"] == "pgd" and info["method"] == "advcl"
    torch.testing.assert_close(encoder.eval()(x), expected)
    # the plain export loads into the unconverted architecture
    advcl("export", "--checkpoint", "runs/tiny/checkpoints/last.ckpt", "--plain", "--out", "plain.pt", cwd=cwd)
    plain = cifar_resnet18(width=4)
    plain.load_state_dict(torch.load(cwd / "plain.pt", weights_only=True), strict=True)
    torch.testing.assert_close(plain.eval()(x), expected)
    with bn_route(backbone, "normal"):
        normal = backbone(x)
    advcl("export", "--checkpoint", "runs/tiny/checkpoints/last.ckpt", "--route", "normal", "--out", "n.pt", cwd=cwd)
    torch.testing.assert_close(load_encoder(cwd / "n.pt")[0].eval()(x), normal)


def test_finetune_evaluate_report(run):
    cwd, env = run
    for mode in ("slf", "alf", "aff"):
        advcl("finetune", "-c", "demo", *TINY, "name=tiny", "--mode", mode, cwd=cwd, env=env)
        advcl("evaluate", "-c", "demo", *TINY, "name=tiny", "--mode", mode, cwd=cwd, env=env)
    run_dir = cwd / "runs" / "tiny"
    classifier, info = load_classifier(run_dir / "finetune-aff" / "classifier.pt")
    assert info["mode"] == "aff" and info["selection"].startswith("best held-out")
    assert load_classifier(run_dir / "finetune-slf" / "classifier.pt")[1]["selection"] == "last epoch"
    # SLF leaves the encoder untouched, AFF trains it
    encoder, _ = load_encoder(run_dir / "encoder.pt")
    slf, _ = load_classifier(run_dir / "finetune-slf" / "classifier.pt")
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(slf.backbone.state_dict()[key], value)
    assert any(not torch.equal(classifier.backbone.state_dict()[k], v) for k, v in encoder.state_dict().items())
    result = json.loads((run_dir / "eval-slf.json").read_text())
    for key in ("sa", "ra", "aa", "sa_aa_subset", "ra_aa_subset", "ra_vs_eps", "ra_vs_steps", "samples", "seconds"):
        assert key in result, key
    assert result["samples"] == 64 and result["aa_samples"] == 32
    assert set(result["ra_vs_eps"]) == {"2/255", "4/255", "8/255", "16/255"} and set(result["ra_vs_steps"]) == {
        "1",
        "5",
    }
    assert 0 <= result["aa"] <= 1 and result["aa_max_perturbation"] <= 8 / 255 + 1e-5
    report = advcl("report", "runs/tiny", "--out", "report", cwd=cwd, env=env)
    assert "| advcl | authors* | SLF |" in report.stdout and "| advcl | authors* | AFF |" in report.stdout
    assert "| method | protocol | SLF AA / SA (RA) | ALF AA / SA (RA) | AFF AA / SA (RA) |" in report.stdout
    data = json.loads((cwd / "report" / "report.json").read_text())
    assert len(data["results"]) == 3 and {"checks", "plots", "timings"} <= set(data)
    for plot in ("ra_vs_eps.png", "ra_vs_steps.png", "tsne.png"):
        assert (cwd / "report" / plot).stat().st_size > 1000, plot


def test_robustssl_protocol_finetunes_and_evaluates_end_to_end(run):
    """`--protocol robustssl`: the benchmark's settings over the recipe's, the tiny sizes given as overrides
    listed as deviations, TRADES for AFF, files beside the authors' protocol's, and the leaderboard table."""
    cwd, env = run
    tiny = [
        "finetune.slf.epochs=1", "finetune.aff.epochs=1", "finetune.aff.attack_steps=1", "finetune.aff.batch_size=64",
        "evaluate.samples=32", "evaluate.aa_samples=8", "evaluate.eps_sweep=[]", "evaluate.steps_sweep=[]",
        "evaluate.tsne_samples=0",
    ]  # fmt: skip
    for mode in ("slf", "aff"):
        advcl("finetune", "-c", "demo", "name=tiny", "--protocol", "robustssl", "--mode", mode, *tiny, cwd=cwd, env=env)
        advcl("evaluate", "-c", "demo", "name=tiny", "--protocol", "robustssl", "--mode", mode, *tiny, cwd=cwd, env=env)
    run_dir = cwd / "runs" / "tiny"
    _, info = load_classifier(run_dir / "finetune-robustssl-aff" / "classifier.pt")
    assert info["protocol"] == "robustssl" and info["selection"] == "last epoch"
    assert info["protocol_deviations"] == {
        "finetune.aff.epochs": [25, 1], "finetune.aff.batch_size": [128, 64], "finetune.aff.attack_steps": [10, 1]
    }  # fmt: skip
    assert info["finetune_settings"]["loss"] == "trades" and info["finetune_settings"]["lr"] == 0.1
    result = json.loads((run_dir / "eval-robustssl-slf.json").read_text())
    assert result["protocol"] == "robustssl" and result["exact_pixels"] is True
    assert result["protocol_deviations"]["evaluate.samples"] == [None, 32]
    assert result["samples"] == 32 and result["aa_samples"] == 8 and result["test_split_images"] == 1017
    # a classifier is evaluated only under the protocol it was finetuned with
    wrong = advcl(
        "evaluate", "-c", "demo", "name=tiny", "--mode", "slf", "--classifier",
        str(run_dir / "finetune-robustssl-slf" / "classifier.pt"), cwd=cwd, env=env, check=False,
    )  # fmt: skip
    assert wrong.returncode != 0 and "--protocol robustssl" in wrong.stderr
    report = advcl("report", str(run_dir / "eval-robustssl-slf.json"), str(run_dir / "eval-robustssl-aff.json"),
                   "--out", "report-robustssl", cwd=cwd, env=env)  # fmt: skip
    assert "| advcl | robustssl* |" in report.stdout and "finetune.aff.epochs 25 -> 1" in report.stdout
    assert " ± " in report.stdout and "of 1017 | yes |" in report.stdout


OUTSIDE_TINY = [
    "data.limit=64", "finetune.slf.epochs=1", "finetune.slf.batch_size=64", "evaluate.samples=16",
    "evaluate.aa_samples=4", "evaluate.eps_sweep=[]", "evaluate.steps_sweep=[]", "evaluate.tsne_samples=0",
]  # fmt: skip


@pytest.mark.parametrize("source_format", ["torchvision", "timm", "robustssl"])
def test_an_outside_encoder_is_finetuned_and_evaluated(run, source_format):
    """`advcl finetune --encoder FILE --arch A` then `advcl evaluate`, for another tool's file format."""
    from advcl_plugin.core.resnet import build_backbone

    cwd, env = run
    if source_format == "timm":
        timm = pytest.importorskip("timm")
        arch, state = "resnet18", timm.create_model("resnet18", pretrained=False, num_classes=10).state_dict()
    else:
        arch, state = "torchvision_cifar_resnet18", build_backbone("torchvision_cifar_resnet18").state_dict()
    if source_format == "robustssl":  # AdvCL's dual BN as the benchmark stores it (only the adversarial route)
        state = {
            k.replace("downsample.0.", "downsample.conv.").replace("downsample.1.", "downsample.bn.bn_list.1.")
            .replace("bn1.", "bn1.bn_list.1.").replace("bn2.", "bn2.bn_list.1."): v
            for k, v in state.items()
        }  # fmt: skip
        payload = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 1000}
    else:
        payload = state
    torch.save(payload, cwd / f"{source_format}.pt")
    name = f"name=outside-{source_format}"
    normalization = ["--input-normalization", "none"] if source_format == "robustssl" else []  # AdvCL's: pixels
    advcl("finetune", "-c", "demo", name, *OUTSIDE_TINY, "--encoder", f"{source_format}.pt", "--arch", arch,
          "--source-format", source_format, *normalization, cwd=cwd, env=env)  # fmt: skip
    advcl("evaluate", "-c", "demo", name, *OUTSIDE_TINY, cwd=cwd, env=env)
    result = json.loads((cwd / "runs" / f"outside-{source_format}" / "eval-slf.json").read_text())
    assert result["method"] == "external" and result["encoder"].endswith(f"{source_format}.pt")
    assert result["samples"] == 16 and 0 <= result["ra"] <= result["sa"] <= 1
    _, info = load_classifier(cwd / "runs" / f"outside-{source_format}" / "finetune-slf" / "classifier.pt")
    assert info["encoder"]["source_format"] == source_format and info["encoder"]["arch"] == arch


def test_robustness_checks_name_the_violation(tmp_path):
    good = {
        "method": "m", "mode": "slf", "sa": 0.8, "ra": 0.4, "aa": 0.3, "ra_aa_subset": 0.4, "sa_aa_subset": 0.8,
        "aa_samples": 10, "ra_vs_eps": {"2/255": 0.6, "8/255": 0.4}, "ra_vs_steps": {"1": 0.5, "20": 0.4},
    }  # fmt: skip
    assert robustness_checks(good) == []
    assert robustness_checks(good | {"aa": 0.006000000052154064, "ra_aa_subset": 0.006, "aa_samples": 500}) == []
    bad = good | {"aa": 0.45, "ra_vs_eps": {"2/255": 0.3, "8/255": 0.4}, "ra_vs_steps": {"1": 0.3, "20": 0.5}}
    problems = robustness_checks(bad)
    assert any("AA 0.4500 > RA 0.4000" in p for p in problems)
    assert any("rises with eps" in p and "gradient masking" in p for p in problems)
    assert any("rises with PGD steps" in p for p in problems)
    path = tmp_path / "eval-slf.json"
    path.write_text(json.dumps(bad | {"samples": 10, "selection": "last epoch", "pgd_steps": 20, "eps": 8 / 255}))
    with pytest.warns(UserWarning, match="gradient masking"):
        report = build_report([path], tmp_path / "out")
    assert "WARNING" in report["markdown"] and len(report["checks"]) == 3


def test_report_tells_the_seeds_of_one_method_apart(tmp_path):
    base = {"mode": "slf", "sa": 0.3, "aa_samples": 0, "samples": 100, "selection": "last epoch", "pgd_steps": 20,
            "eps": 8 / 255}  # fmt: skip
    files = []
    for name, seed, ra in (("acl", 0, 0.19), ("acl", 1, 0.17), ("advcl", 0, 0.15)):
        path = tmp_path / f"{name}-{seed}.json"
        path.write_text(json.dumps(base | {"method": name, "seed": seed, "ra": ra}))
        files.append(path)
    markdown = build_report(files, tmp_path / "out")["markdown"]
    assert "| acl seed 0 | authors | — / 30.00 (19.00) |" in markdown
    assert "| acl seed 1 | authors | — / 30.00 (17.00) |" in markdown
    assert "| advcl | authors | — / 30.00 (15.00) |" in markdown  # one seed: the method's name alone


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_killed_run_resumes_to_the_same_weights(tmp_path, data_dir, workers):
    """SIGKILL mid-run, resume: bit for bit the uninterrupted run's weights, with any number of workers
    (each sample's augmentation is drawn from (seed, epoch, index), not from a worker's history)."""
    env = dict(os.environ, ADVCL_DATA_DIR=str(data_dir))
    args = ["pretrain", "-c", "demo", *[o for o in TINY if not o.startswith("optim.epochs")], "optim.epochs=4",
            f"data.num_workers={workers}"]  # fmt: skip
    advcl(*args, "name=whole", cwd=tmp_path, env=env)
    process = subprocess.Popen(
        [sys.executable, "-m", "advcl_plugin.app.cli", "--quiet", *args, "name=killed"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = tmp_path / "runs/killed/checkpoints/last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    epoch_at_kill = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    assert epoch_at_kill < 3 and not (tmp_path / "runs/killed/encoder.pt").exists()
    resumed = advcl(*args, "name=killed", cwd=tmp_path, env=env)
    assert "resuming from" in resumed.stdout
    whole = torch.load(tmp_path / "runs/whole/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    again = torch.load(last, map_location="cpu", weights_only=False)
    assert whole["epoch"] == again["epoch"] == 3 and whole["global_step"] == again["global_step"] == 16
    for key, value in whole["state_dict"].items():
        torch.testing.assert_close(again["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_clear_errors(run, tmp_path, data_dir):
    cwd, env = run
    # a checkpoint from another width / method
    other = advcl("pretrain", "-c", "demo", *TINY, "name=tiny", "model.width=8", cwd=cwd, env=env, check=False)
    assert other.returncode == 2 and "other settings" in other.stderr and "model.width" in other.stderr
    assert "resume=never" in other.stderr
    other = advcl("pretrain", "-c", "demo", *TINY, "name=tiny", "method=simclr", cwd=cwd, env=env, check=False)
    assert other.returncode == 2 and "method" in other.stderr
    with pytest.raises(ValueError, match="width 4, not the requested"):
        load_encoder(cwd / "runs/tiny/checkpoints/last.ckpt", arch="cifar_resnet18", width=8)
    # a dataset that is not there
    missing = advcl(
        "pretrain", "-c", "demo", "data.dataset=cifar10", f"data.root={tmp_path}", cwd=tmp_path, check=False
    )
    assert missing.returncode == 2 and "download" in missing.stderr
    # pseudo labels that do not match the dataset
    labels = PseudoLabels({10: np.zeros(100, dtype=np.int64)}, dataset="elsewhere", num_samples=100)
    labels.save(tmp_path / "pl.npz")
    wrong = advcl("pretrain", "-c", "demo", *TINY, f"pseudo_labels.path={tmp_path / 'pl.npz'}", "pseudo_labels.ks=[10]",
                  cwd=tmp_path, env=env, check=False)  # fmt: skip
    assert wrong.returncode == 2 and "do not match" in wrong.stderr


def test_pseudo_labels_from_own_encoder(run):
    cwd, env = run
    advcl(
        "pseudo-labels", "--encoder", "runs/tiny/encoder.pt", "--dataset", "cifar10-offline", "--limit", "256",
        "--ks", "2,10", "--out", "own.npz", cwd=cwd, env=env,
    )  # fmt: skip
    labels = PseudoLabels.load(cwd / "own.npz", num_samples=256, ks=(2, 10))
    assert labels.dataset == "cifar10-offline/train[:256]" and "advcl" in labels.encoder
    assert len(np.unique(labels.labels[10])) == 10
    # they can drive a pretraining run on the same images
    advcl("pretrain", "-c", "demo", *TINY, "name=own-pl", "pseudo_labels.path=own.npz", "pseudo_labels.ks=[2,10]",
          cwd=cwd, env=env)  # fmt: skip
    assert (Path(cwd) / "runs/own-pl/encoder.pt").is_file()


def test_make_folder_round_trips_through_the_folder_loader(tmp_path, data_dir):
    from advcl_plugin.data import load_dataset

    env = dict(os.environ, ADVCL_DATA_DIR=str(data_dir))
    advcl(
        "make-folder",
        "--dataset",
        "cifar10-offline",
        "--train",
        "12",
        "--test",
        "6",
        "--out",
        "f",
        cwd=tmp_path,
        env=env,
    )
    source = load_dataset("cifar10-offline", "train", data_dir=data_dir)
    folder = load_dataset(f"folder:{tmp_path / 'f'}", "train")
    test = load_dataset(f"folder:{tmp_path / 'f'}", "test")  # read from val/
    assert len(folder) == 12 and len(test) == 6
    # PNG is lossless: every written image is one of the source images, with its label
    pixels = {source.images[i].tobytes(): int(source.labels[i]) for i in range(12)}
    for i in range(len(folder)):
        image = np.asarray(folder.image(i))
        assert pixels[image.tobytes()] == source.class_names.index(folder.class_names[folder.labels[i]])
