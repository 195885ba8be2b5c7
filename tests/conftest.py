from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DATA_ENV = "ADVCL_DATA_DIR"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def pytest_configure(config: pytest.Config) -> None:
    """A relative $ADVCL_DATA_DIR (the README's ``../shared/data``) is resolved against the directory
    pytest was started from, once, so that tests running commands in temporary directories see it."""
    value = os.environ.get(DATA_ENV)
    if value:
        os.environ[DATA_ENV] = str(Path(value).expanduser().resolve())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The offline data folder from $ADVCL_DATA_DIR; tests needing it skip when it is absent."""
    value = os.environ.get(DATA_ENV)
    if not value:
        pytest.skip(f"offline data not available: set {DATA_ENV} to the folder with cifar10.npz")
    path = Path(value)
    if not (path / "cifar10.npz").is_file():
        pytest.skip(f"offline data not available: {path}/cifar10.npz does not exist ({DATA_ENV}={value})")
    return path
