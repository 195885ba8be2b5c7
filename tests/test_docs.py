"""The documentation: every code block in the README and the docs site is run here or names the test that
runs it (or says why it is not run), every link of the README resolves, and the site builds in strict mode
(a broken link, a missing reference or a docstring warning fails)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
MARKER = re.compile(r"<!-- (runs in|not run): (.+?) -->\s*$")


def blocks(page: Path):
    text = page.read_text()
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.match(before.strip())
        yield match.group(1), match.group(2), marker


def test_every_block_is_run_or_says_where_or_why_not():
    problems = []
    for page in PAGES:
        for language, code, marker in blocks(page):
            where = f"{page.relative_to(ROOT)}: ```{language} {code.splitlines()[0][:60]!r}"
            if marker is None:
                if language != "python":
                    problems.append(f"{where}: no <!-- runs in: ... --> or <!-- not run: ... --> before it")
                continue
            kind, detail = marker.groups()
            if kind == "runs in":
                target = detail.split()[0]
                path, _, test = target.partition("::")
                if not (ROOT / path).is_file():
                    problems.append(f"{where}: {path} does not exist")
                elif test and f"def {test}(" not in (ROOT / path).read_text():
                    problems.append(f"{where}: {path} has no test {test}")
                elif path == ".ci/run" and code.strip().splitlines()[0] not in (ROOT / path).read_text():
                    problems.append(f"{where}: .ci/run does not run it")
    assert not problems, "\n".join(problems)


def python_blocks():
    found = []
    for page in PAGES:
        for language, code, marker in blocks(page):
            if language == "python" and marker is None:
                found.append(pytest.param(code, id=f"{page.relative_to(ROOT)}:{code.splitlines()[0][:40]}"))
    return found


@pytest.mark.parametrize("code", python_blocks())
def test_python_blocks_run_as_written(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<docs>", "exec"), {"__name__": "__docs__"})


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    targets = [t for t in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text) if not t.startswith("http")]
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert targets and not missing, missing
    assert len(text.splitlines()) <= 250


@pytest.mark.skipif(shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists(),
                    reason="mkdocs is not installed (the test extra brings it)")  # fmt: skip
def test_the_site_builds_in_strict_mode(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    command = [str(mkdocs) if mkdocs.exists() else "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "core" / "index.html").is_file()
