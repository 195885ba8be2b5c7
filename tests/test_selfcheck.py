import os
import subprocess
import sys

import torch
from torch.utils.data import DataLoader

from advcl_plugin import AdvCLConfig, AdvCLObjective, PseudoLabels, cifar_resnet18
from advcl_plugin.data import AdvCLViews, IndexedDataset, align_pseudo_labels, load_dataset

KS = (2, 10, 50, 100, 500)


def test_advcl_steps_on_real_images_lower_the_loss(data_dir):
    torch.manual_seed(0)
    dataset = load_dataset("cifar10-offline", "train", data_dir=data_dir, transform=AdvCLViews(32))
    labels = align_pseudo_labels(
        PseudoLabels.load(data_dir / "advcl_reference_pseudo_labels_cifar10.npz", ks=KS), dataset
    ).as_tensor(KS)
    (tau1, tau2, x), _, index = next(iter(DataLoader(IndexedDataset(dataset), batch_size=64, shuffle=True)))
    objective = AdvCLObjective(cifar_resnet18(width=16), AdvCLConfig(ks=KS, steps=2))
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(6):
        out = objective(x, tau1, tau2, labels[index], generator=torch.Generator().manual_seed(0))
        loss, logs = out.loss, out.logs
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        assert logs["delta_abs_max"] <= 8 / 255 + 1e-6
    assert losses[-1] < losses[0] - 0.5, losses


def test_selfcheck_command(data_dir):
    env = dict(os.environ, ADVCL_DATA_DIR=str(data_dir))
    result = subprocess.run(
        [sys.executable, "-m", "advcl_plugin.app.cli", "selfcheck", "--steps", "2", "--batch-size", "16"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "contrast" in result.stdout and "pseudo" in result.stdout
    assert "advcl_reference_pseudo_labels_cifar10.npz" in result.stdout
    assert "max |delta| = 8.000/255" in result.stdout
