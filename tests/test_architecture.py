"""The layers of the package: the core imports no host or lab package, the adapters import the core
(and the data layer), not the lab, nothing imports in a cycle (lazy imports included), and the core
trains with every optional dependency made unimportable."""

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "advcl_plugin"
OPTIONAL = ("lightly", "pytorch_lightning", "lightning", "solo", "faiss", "pyautoattack", "matplotlib", "sklearn",
            "omegaconf", "hydra", "yaml", "torchmetrics", "timm")  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module imported anywhere in the file (top level and inside functions)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: {m for m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "root"


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in GRAPH[node]:
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


@pytest.mark.parametrize(
    "layer_name,allowed",
    [
        ("core", {"core", "_optional", "_io", "_platform"}),
        ("evaluation", {"core", "evaluation", "_optional", "_io", "_platform"}),
        ("testing", {"core", "testing"}),
        ("data", {"core", "data", "_io"}),
        ("solo", {"core", "evaluation", "data", "solo", "_optional", "_io", "_platform"}),
        ("lightly", {"core", "evaluation", "data", "lightly", "_optional", "_io", "_platform"}),
    ],
)
def test_dependencies_point_inward(layer_name, allowed):
    for name, path in MODULES.items():
        if layer(name) != layer_name:
            continue
        inner = {layer(m) for m in GRAPH[name]} - {"root"}
        assert inner <= allowed, f"{name} imports from {sorted(inner - allowed)}"
        if layer_name in ("core", "evaluation"):
            outside = {m.split(".")[0] for m in imports(path)} & set(OPTIONAL)
            assert not outside, f"{name} imports {outside}"


def test_layers_are_known():
    """Every module belongs to a layer with a rule above (or is a private helper / the lab)."""
    ruled = {"core", "evaluation", "testing", "data", "lightly", "solo", "app", "recipes", "root"}
    private = {"_optional", "_io", "_platform"}
    assert {layer(name) for name in MODULES} <= ruled | private


def test_core_imports_nothing_of_the_evaluation_room():
    for name, path in MODULES.items():
        if layer(name) == "core":
            assert not [m for m in imports(path) if m.startswith("advcl_plugin.evaluation")], name


def test_nothing_in_the_package_imports_the_repository_tooling():
    """benchmarks/ and examples/ are the repository's: nothing under advcl_plugin/ imports them, and the
    package has no tools module any more."""
    for name, path in MODULES.items():
        text = path.read_text()
        found = {m.split(".")[0] for m in imports(path)} & {"benchmarks", "examples", "tests"}
        assert not found, f"{name} imports {found}"
        assert "advcl_plugin.tools" not in text, name
    assert not (PACKAGE / "tools").exists()


def test_paper_numbers_are_written_once():
    """The K ensemble lives in core/config.py only, in whatever spelling (a tuple, a list, a "2,10,..." string)."""
    ensemble = re.compile(r"\b2\W{1,3}10\W{1,3}50\W{1,3}100\W{1,3}500\b")
    hits = [p for p in PACKAGE.rglob("*.py") if ensemble.search(p.read_text())]
    assert [p.relative_to(ROOT).as_posix() for p in hits] == ["advcl_plugin/core/config.py"]

    def values(path: Path) -> str:  # the YAML without its comments
        return "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())

    recipes = [p for p in (ROOT / "recipes").rglob("*.yaml") if ensemble.search(values(p))]
    assert recipes == [], "recipes should inherit the ensemble, not repeat it"


def test_core_trains_without_any_optional_dependency(tmp_path):
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        BLOCKED = {OPTIONAL!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked for this test")
        sys.meta_path.insert(0, Block())
        import torch
        import advcl_plugin
        from advcl_plugin import AdvCLConfig, AdvCLObjective, cifar_resnet18
        objective = AdvCLObjective(cifar_resnet18(width=4), AdvCLConfig(ks=(2, 10), steps=1))
        x, t1, t2 = (torch.rand(4, 3, 32, 32) for _ in range(3))
        out = objective(x, t1, t2, torch.zeros(4, 2, dtype=torch.long))
        out.loss.backward()
        print("step ok", round(float(out.loss), 3))
        for module, extra in (("advcl_plugin.lightly", "lightly"), ("advcl_plugin.app.cli", "app")):
            try:
                __import__(module)
            except ImportError as error:
                assert f"advcl-plugin[{{extra}}]" in str(error), error
                print("refused", module)
        try:
            advcl_plugin.cluster_pseudo_labels(torch.rand(10, 4).numpy(), ks=(2,))
        except ImportError as error:
            assert "advcl-plugin[clusterfit]" in str(error), error
            print("refused faiss")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step ok" in result.stdout
    assert "refused advcl_plugin.lightly" in result.stdout and "refused advcl_plugin.app.cli" in result.stdout
    assert "refused faiss" in result.stdout
