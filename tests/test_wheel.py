"""The wheel users install: built from this checkout (``python -m build``), it holds the package and its
recipes, and none of the repository's own tooling (benchmarks, examples, tests)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # a copy of the source without build outputs, so that nothing stale of an earlier build can slip in
    source = tmp_path_factory.mktemp("source") / "advcl-plugin"
    ignore = shutil.ignore_patterns(".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", ".git")
    shutil.copytree(ROOT, source, ignore=ignore)
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check", "--outdir", str(out),
         str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (path,) = out.glob("advcl_plugin-*.whl")
    return path


def test_the_wheel_holds_the_package_and_not_the_repository_tooling(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"advcl_plugin"}, tops
    assert "advcl_plugin/evaluation/protocols.py" in names and "advcl_plugin/testing.py" in names
    assert "advcl_plugin/recipes/study/cpu_cost.yaml" in names and "advcl_plugin/py.typed" in names
    forbidden = ("bench", "device_check", "tools/", "examples", "conftest")
    assert not [n for n in names if any(word in n for word in forbidden)], [n for n in names if "bench" in n]
