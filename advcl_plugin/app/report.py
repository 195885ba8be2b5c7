"""Reports: a JSON file, a Markdown table (SA / RA / AA per method and finetuning mode), plots of
RA against eps and against PGD steps (the paper's Figure 3), and a t-SNE of test features
(Figure 4).  Every report checks ``AA <= RA <= SA`` (on the same images) and that RA does not
increase with eps or with the number of PGD steps; a violation is printed as a warning,
since it is a sign of gradient masking.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from advcl_plugin._io import atomic_write, atomic_write_json, atomic_write_text, read_json

__all__ = ["build_report", "robustness_checks", "wilson_interval95"]


class RobustnessCheckWarning(UserWarning):
    """A metric ordering that a sound robustness evaluation should satisfy does not hold."""


def robustness_checks(result: dict[str, Any]) -> list[str]:
    """Violations of AA <= RA <= SA and of RA non-increasing in eps and in PGD steps."""
    name = f"{result.get('method')}/{result.get('mode')}"
    problems = []

    def above(a: float, b: float) -> bool:  # beyond rounding (accuracies of older records are float32 means)
        return a - b > 1e-6

    if above(result["ra"], result["sa"]):
        problems.append(f"{name}: RA {result['ra']:.4f} > SA {result['sa']:.4f}")
    if "aa" in result:
        if above(result["aa"], result["ra_aa_subset"]):
            problems.append(
                f"{name}: AA {result['aa']:.4f} > RA {result['ra_aa_subset']:.4f} "
                f"on the same {result['aa_samples']} images"
            )
        if above(result["ra_aa_subset"], result["sa_aa_subset"]):
            problems.append(f"{name}: RA > SA on the AutoAttack subset")
    for key, label in (("ra_vs_eps", "eps"), ("ra_vs_steps", "PGD steps")):
        points = list(result.get(key, {}).items())
        for (low, ra_low), (high, ra_high) in itertools.pairwise(points):
            if above(ra_high, ra_low):
                problems.append(
                    f"{name}: RA rises with {label} ({low}: {ra_low:.4f} -> {high}: {ra_high:.4f}), "
                    "a sign of gradient masking"
                )
    return problems


def wilson_interval95(p: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy ``p`` measured on ``n`` independent test images."""
    if n <= 0:
        return (0.0, 1.0)
    z = 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _label(result: dict[str, Any]) -> str:
    """The row name of a result: its method, with its seed when several seeds of it are reported."""
    return str(result.get("label", result["method"]))


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _with_interval(value: float | None, n: int | None) -> str:
    """``41.20 ± 3.05``: the accuracy and the larger distance to its 95% Wilson bounds, in points."""
    if value is None or not n:
        return "—"
    low, high = wilson_interval95(value, n)
    return f"{100 * value:.2f} ± {100 * max(value - low, high - value):.2f}"


def _protocol_name(result: dict[str, Any]) -> str:
    name = result.get("protocol", "authors")
    return name + ("*" if result.get("protocol_deviations") else "")


def _leaderboard(results: list[dict[str, Any]]) -> list[str]:
    """One row per method and protocol, one ``AA / SA`` column per finetuning mode (the RobustSSL
    leaderboard's layout), RA in brackets."""
    rows: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in results:
        rows.setdefault((_label(r), _protocol_name(r)), {})[r["mode"]] = r
    modes = [m for m in ("slf", "alf", "aff") if any(m in by_mode for by_mode in rows.values())]
    lines = [
        "| method | protocol | " + " | ".join(f"{m.upper()} AA / SA (RA)" for m in modes) + " |",
        "| --- | --- |" + " --- |" * len(modes),
    ]
    for (method, protocol), by_mode in rows.items():
        cells = []
        for mode in modes:
            r = by_mode.get(mode)  # type: ignore[assignment]
            cells.append("—" if r is None else f"{_percent(r.get('aa'))} / {_percent(r['sa'])} ({_percent(r['ra'])})")
        lines.append(f"| {method} | {protocol} | " + " | ".join(cells) + " |")
    return lines


def _markdown(results: list[dict[str, Any]], timings: dict[str, Any] | None, problems: list[str]) -> str:
    lines = _leaderboard(results)
    lines += [
        "",
        "| method | protocol | finetuning | SA (%) | RA (%) | AA (%) | test images SA, RA / AA "
        "| exact pixels | selection |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        aa = _with_interval(r.get("aa"), r.get("aa_samples"))
        exact = {True: "yes", False: "no (JPEG)"}.get(r.get("exact_pixels"), "—")  # type: ignore[arg-type]
        lines.append(
            f"| {_label(r)} | {_protocol_name(r)} | {r['mode'].upper()} | {_with_interval(r['sa'], r['samples'])} | "
            f"{_with_interval(r['ra'], r['samples'])} | {aa} | {r['samples']} / {r.get('aa_samples', 0)} "
            f"of {r.get('test_split_images', '?')} | {exact} | {r['selection']} |"
        )
    first = results[0] if results else {}
    lines += [
        "",
        "± : 95% Wilson interval of each accuracy over its test images (images are the only source of "
        "variation it counts: not seeds). "
        f"RA: PGD-{first.get('pgd_steps')} at eps {first.get('eps', 0) * 255:g}/255 (step "
        f"{first.get('step_size', 0) * 255:g}/255, random start); AA: AutoAttack (standard, L-inf) on evenly "
        "spaced images of the test split; test set: " + str(first.get("dataset")),
    ]
    deviating = [r for r in results if r.get("protocol_deviations")]
    if deviating:
        lines += ["", "\\* the run changes settings its protocol fixes (protocol's value -> value used):"]
        for r in deviating:
            changes = ", ".join(f"{k} {v[0]} -> {v[1]}" for k, v in r["protocol_deviations"].items())
            lines.append(f"- {_label(r)} {r['mode'].upper()} ({r.get('protocol', 'authors')}): {changes}")
    if timings:
        lines += ["", "| stage | seconds |", "| --- | --- |"]
        lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in timings.items()]
    lines += ["", "Checks (AA <= RA <= SA, RA non-increasing in eps and steps): " + ("passed" if not problems else "")]
    lines += [f"- WARNING: {p}" for p in problems]
    return "\n".join(lines) + "\n"


def _plot_sweeps(results: list[dict[str, Any]], output_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, xlabel, filename in (
        ("ra_vs_eps", "eps (L-inf, x/255)", "ra_vs_eps.png"),
        ("ra_vs_steps", "PGD steps", "ra_vs_steps.png"),
    ):
        curves = [(r, r[key]) for r in results if r.get(key)]
        if not curves:
            continue
        figure, axis = plt.subplots(figsize=(4.5, 3.5))
        for r, points in curves:
            xs = [float(k.split("/")[0]) for k in points]
            axis.plot(xs, [100 * v for v in points.values()], marker="o", label=f"{_label(r)} ({r['mode'].upper()})")
        axis.set_xlabel(xlabel)
        axis.set_ylabel(f"RA (%), {curves[0][0].get('sweep_samples')} test images")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        path = atomic_write(output_dir / filename, lambda handle, f=figure: f.savefig(handle, dpi=120, format="png"))  # type: ignore[misc]
        plt.close(figure)
        paths.append(path)
    return paths


def _plot_tsne(feature_files: Sequence[tuple[str, Path]], output_dir: Path, seed: int = 0) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    available = [(title, path) for title, path in feature_files if path.is_file()]
    if not available:
        return None
    figure, axes = plt.subplots(1, len(available), figsize=(3.6 * len(available), 3.6), squeeze=False)
    for axis, (title, path) in zip(axes[0], available, strict=True):
        with np.load(path) as data:
            features, labels = data["features"], data["labels"]
        perplexity = min(30.0, max(2.0, (len(features) - 1) / 3))
        embedding = TSNE(2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(features)
        axis.scatter(embedding[:, 0], embedding[:, 1], c=labels, cmap="tab10", s=4)
        axis.set_title(title, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    path = atomic_write(output_dir / "tsne.png", lambda handle: figure.savefig(handle, dpi=120, format="png"))
    plt.close(figure)
    return path


def build_report(
    eval_files: Sequence[str | Path],
    output_dir: str | Path,
    timings: dict[str, float] | None = None,
    extra_markdown: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Collect evaluation JSON files into ``report.json``, ``report.md`` and the plots
    (``extra_markdown`` and ``extra`` are appended to the Markdown and the JSON)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for file in eval_files:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"evaluation file {path} does not exist: run `advcl evaluate` first")
        results.append(read_json(path, remedy="run `advcl evaluate` again to rewrite it") | {"file": str(path)})
    if not results:
        raise ValueError("no evaluation results to report")
    seeds: dict[tuple, set] = {}
    for r in results:
        seeds.setdefault((r["method"], r["mode"], _protocol_name(r)), set()).add(r.get("seed"))
    for r in results:  # the runs of a multi-seed study are told apart by their seed
        if len(seeds[(r["method"], r["mode"], _protocol_name(r))]) > 1:
            r["label"] = f"{r['method']} seed {r.get('seed')}"
    problems = [problem for r in results for problem in robustness_checks(r)]
    for problem in problems:
        warnings.warn(problem, RobustnessCheckWarning, stacklevel=2)
    plots = [str(p) for p in _plot_sweeps(results, output_dir)]
    features = [
        (
            f"{_label(r)} ({r['mode'].upper()})",
            Path(r["file"]).with_name(r.get("features", f"features-{r['mode']}.npz")),
        )
        for r in results
    ]
    tsne = _plot_tsne(features, output_dir)
    if tsne is not None:
        plots.append(str(tsne))
    markdown = _markdown(results, timings, problems) + (f"\n{extra_markdown}\n" if extra_markdown else "")
    atomic_write_text(output_dir / "report.md", markdown)
    report = {"results": results, "checks": problems, "plots": plots, "timings": timings or {}, **(extra or {})}
    atomic_write_json(output_dir / "report.json", report)
    return report | {"markdown": markdown, "directory": str(output_dir)}
