"""``advcl study``: every arm of a reduced-budget reproduction at one budget, seed and backbone, then
the table, the plots and a verdict on each of the paper's orderings.

A study file (``recipes/study/*.yaml``) names a base recipe, overrides shared by all arms and
the arms themselves: ``{name, method, overrides, modes, autoattack, pseudo_labels_from}``
(``autoattack``: ``true`` for every mode of the arm, or a list of modes such as ``[slf]``).
``pseudo_labels_from: <arm>`` makes ClusterFit pseudo labels from that arm's encoder (e.g.
this package's own SimCLR) instead of the recipe's file.  Re-running the command continues
where it stopped (pretraining resumes; finished finetuning and evaluation are kept).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from advcl_plugin.config import _from_dict, load_recipe, recipe_path

__all__ = ["ORDERINGS", "StudyConfig", "run_study", "verdicts"]


@dataclass
class StudyArm:
    name: str
    method: str
    overrides: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=lambda: ["slf"])
    autoattack: Any = False  # true: AutoAttack in every mode; or a list of modes, e.g. [slf]
    pseudo_labels_from: str | None = None


@dataclass
class StudyConfig:
    name: str
    base: str
    overrides: list[str] = field(default_factory=list)
    arms: list[StudyArm] = field(default_factory=list)
    aa_samples: int = 500
    seeds: list[int] = field(default_factory=lambda: [0])
    budget: str = ""  # a sentence for the report
    hardware: str = ""


#: (paper table, claim, better arm, worse arm, metric key, mode)
ORDERINGS: list[tuple[str, str, str, str, str, str]] = [
    ("Table 1", "AdvCL > ACL in SLF RA", "advcl", "acl", "ra", "slf"),
    ("Table 1", "ACL > SimCLR in SLF RA", "acl", "simclr", "ra", "slf"),
    ("Table 1", "AdvCL > SimCLR in SLF RA", "advcl", "simclr", "ra", "slf"),
    ("Table 3", "AdvCL > ACL in ALF RA", "advcl", "acl", "ra", "alf"),
    ("Table 4", "the x + delta view beats paired views (SLF RA)", "advcl-no-hfc", "acl", "ra", "slf"),
    ("Table 4", "HFC >= LFC (SLF RA)", "advcl", "advcl-lfc", "ra", "slf"),
    ("Table 4", "adding HFC helps (SLF RA)", "advcl", "advcl-no-hfc", "ra", "slf"),
    ("Table 5", "pseudo labels help (SLF RA)", "advcl", "advcl-no-pl", "ra", "slf"),
    ("Table 5", "the K ensemble >= a single K = 10 (SLF RA)", "advcl", "advcl-k10", "ra", "slf"),
    ("—", "authors' pseudo labels vs our ClusterFit ones (SLF RA)", "advcl", "advcl-own-pl", "ra", "slf"),
]


def load_study(name_or_path: str) -> StudyConfig:
    with open(recipe_path(name_or_path)) as handle:
        tree = yaml.safe_load(handle)
    study = _from_dict(StudyConfig, tree, "study")
    names = [arm.name for arm in study.arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}")
    for index, arm in enumerate(study.arms):
        if not isinstance(arm.autoattack, bool) and not (
            isinstance(arm.autoattack, list) and set(arm.autoattack) <= set(arm.modes)
        ):
            raise ValueError(
                f"arm {arm.name!r}: autoattack must be true, false or a list of its modes {arm.modes}, "
                f"got {arm.autoattack!r}"
            )
        if arm.pseudo_labels_from and arm.pseudo_labels_from not in names[:index]:
            raise ValueError(f"arm {arm.name!r} takes pseudo labels from {arm.pseudo_labels_from!r}, an earlier arm")
    return study


def _standard_error(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def verdicts(results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """For each ordering whose arms were run: the two values, their difference, a 95% interval of the
    difference (binomial, independent test-image errors) and ``holds`` / ``does not hold``."""
    rows = []
    for table, claim, better, worse, metric, mode in ORDERINGS:
        a, b = results.get(better, {}).get(mode), results.get(worse, {}).get(mode)
        if not a or not b:
            continue
        difference = a[metric] - b[metric]
        spread = 1.96 * math.hypot(_standard_error(a[metric], a["samples"]), _standard_error(b[metric], b["samples"]))
        rows.append(
            {
                "table": table,
                "claim": claim,
                "better_arm": better,
                "worse_arm": worse,
                "values": (a[metric], b[metric]),
                "difference": difference,
                "interval95": spread,
                "verdict": (
                    "holds" if difference > spread else "does not hold" if difference < -spread else "inconclusive"
                )
                + f" ({100 * difference:+.2f} pts, ±{100 * spread:.2f})",
            }
        )
    return rows


def _mean_over_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    merged = dict(per_seed[0])
    for key in ("sa", "ra", "aa"):
        values = [r[key] for r in per_seed if key in r]
        if values:
            merged[key] = sum(values) / len(values)
            merged[f"{key}_std"] = (
                math.sqrt(sum((v - merged[key]) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            )
    merged["seeds"] = len(per_seed)
    return merged


def _record_timing(timings: dict[str, float], run_dir: Path, stage: str, seconds: float) -> None:
    """Keep a stage's wall time in memory and in the run directory, so a continued study reports it."""
    timings[stage] = seconds
    path = run_dir / "study_timings.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    saved[stage] = seconds
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=2))


def run_study(name_or_path: str, overrides: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or continue) every arm of a study and write ``<output_dir>/<study>-report/``."""
    from advcl_plugin.pipeline import make_pseudo_labels
    from advcl_plugin.report import build_report
    from advcl_plugin.training.evaluate import evaluate
    from advcl_plugin.training.finetune import finetune
    from advcl_plugin.training.pretrain import pretrain

    study = load_study(name_or_path)
    timings: dict[str, float] = {}
    eval_files: list[Path] = []
    per_arm: dict[str, dict[str, list[dict[str, Any]]]] = {}
    output_dir = None
    for seed in study.seeds:
        for arm in study.arms:
            run_name = f"{study.name}-{arm.name}" + (f"-seed{seed}" if len(study.seeds) > 1 else "")
            arm_overrides = [
                *study.overrides,
                *(overrides or []),
                *arm.overrides,
                f"method={arm.method}",
                f"name={run_name}",
                f"seed={seed}",
                f"finetune.modes=[{','.join(arm.modes)}]",
            ]
            recipe = load_recipe(study.base, arm_overrides)
            output_dir = Path(recipe.output_dir)
            timings_file = recipe.run_dir / "study_timings.json"
            if timings_file.is_file():  # stages finished in an earlier session of the study
                timings.update(json.loads(timings_file.read_text()))
            if arm.pseudo_labels_from:
                source = recipe.run_dir.parent / (
                    f"{study.name}-{arm.pseudo_labels_from}" + (f"-seed{seed}" if len(study.seeds) > 1 else "")
                )
                labels_path = recipe.run_dir / "clusterfit_pseudo_labels.npz"
                if not labels_path.is_file():
                    print(f"\n=== {run_name}: ClusterFit pseudo labels from {source.name}/encoder.pt ===", flush=True)
                    started = time.perf_counter()
                    make_pseudo_labels(
                        source / "encoder.pt", recipe.data, recipe.pseudo_labels.ks, labels_path, seed=seed,
                        progress=progress,
                    )  # fmt: skip
                    _record_timing(timings, recipe.run_dir, f"{run_name} clusterfit", time.perf_counter() - started)
                arm_overrides.append(f"pseudo_labels.path={labels_path}")
                recipe = load_recipe(study.base, arm_overrides)
            summary_path = recipe.run_dir / "pretrain.json"
            summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
            finished = summary.get("epochs_done") == summary.get("epochs_planned") and "encoder" in summary
            if not finished or not (recipe.run_dir / "encoder.pt").is_file():
                print(f"\n=== {run_name}: pretraining ({arm.method}) ===", flush=True)
                started = time.perf_counter()
                summary = pretrain(recipe, progress=progress)
                _record_timing(timings, recipe.run_dir, f"{run_name} pretrain", time.perf_counter() - started)
            if "encoder" not in summary:
                raise RuntimeError(f"{run_name} did not finish pretraining; run the study again to continue")
            for mode in arm.modes:
                evaluation = recipe.run_dir / f"eval-{mode}.json"
                if not (recipe.run_dir / f"finetune-{mode}" / "classifier.pt").is_file():
                    print(f"=== {run_name}: {mode.upper()} ===", flush=True)
                    started = time.perf_counter()
                    finetune(recipe, mode, progress=progress)
                    _record_timing(timings, recipe.run_dir, f"{run_name} {mode}", time.perf_counter() - started)
                if not evaluation.is_file():
                    print(f"=== {run_name}: evaluation ({mode.upper()}) ===", flush=True)
                    started = time.perf_counter()
                    with_autoattack = arm.autoattack is True or (
                        isinstance(arm.autoattack, list) and mode in arm.autoattack
                    )
                    aa_samples = study.aa_samples if with_autoattack else 0
                    evaluate(load_recipe(study.base, [*arm_overrides, f"evaluate.aa_samples={aa_samples}"]), mode,
                             progress=progress)  # fmt: skip
                    _record_timing(
                        timings, recipe.run_dir, f"{run_name} evaluate {mode}", time.perf_counter() - started
                    )
                result = json.loads(evaluation.read_text())
                result["method"] = arm.name
                evaluation.write_text(json.dumps(result, indent=2))
                eval_files.append(evaluation)
                per_arm.setdefault(arm.name, {}).setdefault(mode, []).append(result)
    assert output_dir is not None
    results = {arm: {mode: _mean_over_seeds(runs) for mode, runs in modes.items()} for arm, modes in per_arm.items()}
    report_dir = output_dir / f"{study.name}-report"
    report = build_report(eval_files, report_dir, timings)
    rows = verdicts(results)
    lines = [
        report["markdown"],
        "",
        f"Budget: {study.budget}",
        f"Hardware: {study.hardware}",
        "",
        "| paper | claim | values (%) | verdict |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        a, b = row["values"]
        values = f"{row['better_arm']} {100 * a:.2f} vs {row['worse_arm']} {100 * b:.2f}"
        lines.append(f"| {row['table']} | {row['claim']} | {values} | {row['verdict']} |")
    markdown = "\n".join(lines) + "\n"
    (report_dir / "report.md").write_text(markdown)
    data = json.loads((report_dir / "report.json").read_text())
    data |= {"orderings": rows, "per_arm": results, "budget": study.budget, "hardware": study.hardware}
    (report_dir / "report.json").write_text(json.dumps(data, indent=2))
    print("\n" + markdown)
    return data | {"markdown": markdown}
