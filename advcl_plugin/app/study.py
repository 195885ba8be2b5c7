"""``advcl study`` and ``advcl demo``: every arm of a reduced-budget reproduction at one budget, seed and
backbone, then the table, the plots and a verdict on each of the paper's orderings.

A study file (``recipes/study/*.yaml``) names a base recipe, overrides shared by all arms and
the arms themselves: ``{name, method, overrides, modes, autoattack, pseudo_labels_from, init_from}``
(``autoattack``: ``true`` for every mode of the arm, or a list of modes such as ``[slf]``).
``pseudo_labels_from: <arm>`` makes ClusterFit pseudo labels from that arm's encoder (e.g.
this package's own SimCLR) instead of the recipe's file; ``init_from: <arm>`` warm-starts the arm from that
arm's encoder (``model.init_from``: every BN route starts from its weights).  Re-running the command continues
where it stopped (pretraining resumes; finished finetuning and evaluation are kept).  The demo
is the study ``study/demo`` (simclr, acl and advcl on a 2-core CPU budget).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advcl_plugin._io import atomic_write_json, read_json
from advcl_plugin.app.compute import arm_compute, step_flops
from advcl_plugin.app.processes import barrier, is_global_zero_process, rank_zero_decides
from advcl_plugin.app.recipe import Recipe, load_recipe
from advcl_plugin.app.recipe_files import load_structured, read_yaml, recipe_path
from advcl_plugin.app.report import build_report
from advcl_plugin.app.rundir import check_run_name, protocol_tag, run_directory_lock
from advcl_plugin.app.stages.evaluate import evaluate
from advcl_plugin.app.stages.finetune import finetune
from advcl_plugin.app.stages.pretrain import pretrain
from advcl_plugin.app.stages.pseudo_labels import make_pseudo_labels

__all__ = ["PAPER_CLAIMS", "StudyArm", "StudyClaim", "StudyConfig", "load_study", "run_demo", "run_study", "verdicts"]


@dataclass
class StudyArm:
    name: str
    method: str
    overrides: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=lambda: ["slf"])
    autoattack: Any = False  # true: AutoAttack in every mode; or a list of modes, e.g. [slf]
    pseudo_labels_from: str | None = None
    init_from: str | None = None  # warm start from this earlier arm's encoder (model.init_from)


@dataclass
class StudyClaim:
    """A claim the study tests, declared in the study file beside its arms: ``better`` beats ``worse`` in
    ``metric`` (``sa``, ``ra``, ``aa``) after ``mode`` finetuning.  ``kind: better`` holds when the difference
    exceeds its 95% interval; ``kind: at_least`` (non-inferiority, ``better >= worse``) holds when the
    difference is above minus that interval, and does not hold when it is below it."""

    claim: str
    better: str
    worse: str
    metric: str = "ra"
    mode: str = "slf"
    table: str = "—"
    kind: str = "better"


@dataclass
class StudyConfig:
    name: str
    base: str
    overrides: list[str] = field(default_factory=list)
    arms: list[StudyArm] = field(default_factory=list)
    # the claims tested (null: the paper's orderings, PAPER_CLAIMS, whose two arms the study has)
    claims: list[StudyClaim] | None = None
    # the arm whose adversarial compute the others are measured against (null: the first arm of method advcl)
    compute_reference: str | None = None
    aa_samples: int = 500
    seeds: list[int] = field(default_factory=lambda: [0])
    budget: str = ""  # a sentence for the report
    hardware: str = ""


#: the paper's orderings (and our earlier studies'), tested by a study file that declares no ``claims``
PAPER_CLAIMS: list[StudyClaim] = [
    StudyClaim(claim, better, worse, metric, mode, table)
    for table, claim, better, worse, metric, mode in (
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
    )
]
CLAIM_KINDS = ("better", "at_least")

#: two-sided 95% Student t quantiles by degrees of freedom (seed spread of a difference)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def load_study(name_or_path: str) -> StudyConfig:
    study = load_structured(StudyConfig, read_yaml(recipe_path(name_or_path)), where="study")
    check_run_name(study.name, "study.name")
    for arm in study.arms:
        check_run_name(arm.name, "study arm name")
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
        if arm.init_from and arm.init_from not in names[:index]:
            raise ValueError(f"arm {arm.name!r} starts from the encoder of {arm.init_from!r}, an earlier arm")
    if study.compute_reference is not None and study.compute_reference not in names:
        raise ValueError(f"study.compute_reference {study.compute_reference!r} is not one of its arms: {names}")
    for claim in study.claims or []:
        missing = [name for name in (claim.better, claim.worse) if name not in names]
        if missing:
            raise ValueError(f"study claim {claim.claim!r} names arm(s) {missing} the study does not have: {names}")
        if claim.metric not in ("sa", "ra", "aa") or claim.mode not in ("slf", "alf", "aff"):
            raise ValueError(f"study claim {claim.claim!r}: metric must be sa, ra or aa and mode slf, alf or aff")
        if claim.kind not in CLAIM_KINDS:
            raise ValueError(f"study claim {claim.claim!r}: kind must be one of {CLAIM_KINDS}, got {claim.kind!r}")
    return study


def _standard_error(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def _seed_spread(better: list[dict[str, Any]], worse: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """Per-seed differences of ``metric`` (paired by seed) and a 95% t interval of their mean."""
    by_seed = {r.get("seed"): r for r in worse if metric in r}
    differences = [
        r[metric] - by_seed[r.get("seed")][metric] for r in better if r.get("seed") in by_seed and metric in r
    ]
    if len(differences) < 2:
        return None
    mean = sum(differences) / len(differences)
    std = math.sqrt(sum((d - mean) ** 2 for d in differences) / (len(differences) - 1))
    half = _T975.get(len(differences) - 1, 1.96) * std / math.sqrt(len(differences))
    return {"differences": differences, "mean": mean, "std": std, "interval95": half}


def verdicts(
    results: dict[str, dict[str, dict[str, Any]]],
    per_seed: dict[str, dict[str, list[dict[str, Any]]]] | None = None,
    claims: list[StudyClaim] | None = None,
) -> list[dict[str, Any]]:
    """For each claim (default: :data:`PAPER_CLAIMS`) whose arms were run: the two values, their difference, a
    95% interval of the difference (binomial, independent test-image errors) and ``holds`` / ``does not hold``
    / ``inconclusive`` (see :class:`StudyClaim` for the two kinds).

    With several seeds (``per_seed``: each arm's per-seed results), the seed spread is given beside it:
    the per-seed differences and a 95% t interval of their mean; the verdict then takes the wider of
    the two intervals.
    """
    rows = []
    for item in PAPER_CLAIMS if claims is None else claims:
        table, claim, better, worse, metric, mode = (
            item.table,
            item.claim,
            item.better,
            item.worse,
            item.metric,
            item.mode,
        )
        a, b = results.get(better, {}).get(mode), results.get(worse, {}).get(mode)
        if not a or not b or metric not in a or metric not in b:
            continue
        difference = a[metric] - b[metric]
        n_a, n_b = (a["aa_samples"], b["aa_samples"]) if metric == "aa" else (a["samples"], b["samples"])
        binomial = 1.96 * math.hypot(_standard_error(a[metric], n_a), _standard_error(b[metric], n_b))
        seeds = (
            _seed_spread(per_seed[better][mode], per_seed[worse][mode], metric)
            if per_seed and mode in per_seed.get(better, {}) and mode in per_seed.get(worse, {})
            else None
        )
        spread = max(binomial, seeds["interval95"]) if seeds else binomial
        if item.kind == "at_least":  # non-inferiority: refuted only when the arm is clearly worse
            verdict = "holds, not significantly worse" if difference >= -spread else "does not hold"
        else:
            verdict = "holds" if difference > spread else "does not hold" if difference < -spread else "inconclusive"
        verdict += f" ({100 * difference:+.2f} pts, ±{100 * binomial:.2f} binomial"
        if seeds:
            verdict += f"; {len(seeds['differences'])} seeds: ±{100 * seeds['interval95']:.2f} (t, 95%)"
        rows.append(
            {
                "table": table,
                "claim": claim,
                "kind": item.kind,
                "better_arm": better,
                "worse_arm": worse,
                "values": (a[metric], b[metric]),
                "difference": difference,
                "interval95": binomial,
                "seed_spread": seeds,
                "verdict": verdict + ")",
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


#: what to do with a damaged record of a study (each is made again by the stage that writes it)
_REMEDY = {
    "study_timings.json": "delete it and run the study again (only the stage times of earlier sessions are lost)",
    "pretrain.json": "delete it and run the study again: pretraining resumes from checkpoints/last.ckpt",
    "eval": "delete it and run the study again to evaluate that classifier again",
}


def _read_record(path: Path) -> Any:
    return read_json(path, remedy=_REMEDY.get(path.name, _REMEDY["eval"]))


def _record_timing(timings: dict[str, float], run_dir: Path, stage: str, seconds: float) -> None:
    """Keep a stage's wall time in memory and in the run directory, so a continued study reports it."""
    timings[stage] = seconds
    if not is_global_zero_process():
        return
    path = run_dir / "study_timings.json"
    saved = _read_record(path) if path.is_file() else {}
    saved[stage] = seconds
    atomic_write_json(path, saved)


def _run_name(study: StudyConfig, arm: str, seed: int) -> str:
    return f"{study.name}-{arm}" + (f"-seed{seed}" if len(study.seeds) > 1 else "")


def _timed(timings: dict[str, float], run_dir: Path, stage: str, work: Any) -> Any:
    talk = is_global_zero_process()  # one process of a DDP study tells the stages
    if talk:
        print(f"\n=== {stage} ===", flush=True)
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    _record_timing(timings, run_dir, stage, seconds)
    if talk:
        print(f"=== {stage}: {seconds:.0f} s ===", flush=True)
    return result


def _arm_overrides(study: StudyConfig, arm: StudyArm, seed: int, overrides: list[str]) -> list[str]:
    """The overrides that make the study's base recipe into an arm's recipe for one seed."""
    warm = [f"model.init_from={_run_name(study, arm.init_from, seed)}"] if arm.init_from else []
    return [
        *study.overrides,
        *overrides,
        *arm.overrides,
        *warm,
        f"method={arm.method}",
        f"name={_run_name(study, arm.name, seed)}",
        f"seed={seed}",
        f"finetune.modes=[{','.join(arm.modes)}]",
    ]


def _arm_recipe(study: StudyConfig, arm: StudyArm, seed: int, overrides: list[str], progress: bool,
                timings: dict[str, float]) -> Recipe:  # fmt: skip
    """The arm's recipe; with ``pseudo_labels_from``, ClusterFit labels from that arm's encoder first."""
    run_name = _run_name(study, arm.name, seed)
    arm_overrides = _arm_overrides(study, arm, seed, overrides)
    recipe = load_recipe(study.base, arm_overrides)
    if not arm.pseudo_labels_from:
        return recipe
    source = recipe.run_dir.parent / _run_name(study, arm.pseudo_labels_from, seed) / "encoder.pt"
    labels_path = recipe.run_dir / "clusterfit_pseudo_labels.npz"
    if not rank_zero_decides(labels_path.is_file()):
        ks = list(recipe.objective_config().ks)

        def clusterfit() -> object:
            return make_pseudo_labels(source, recipe.data, ks, labels_path, seed=seed, progress=progress)

        if is_global_zero_process():  # k-means once; the other processes of a DDP study wait for the file
            _timed(timings, recipe.run_dir, f"{run_name} clusterfit", clusterfit)
        barrier()
    return load_recipe(study.base, [*arm_overrides, f"pseudo_labels.path={labels_path}"])


def _pretrained(recipe: Recipe, progress: bool, timings: dict[str, float]) -> None:
    summary_path = recipe.run_dir / "pretrain.json"
    summary = _read_record(summary_path) if summary_path.is_file() else {}
    if rank_zero_decides("encoder" in summary and (recipe.run_dir / "encoder.pt").is_file()):
        return
    summary = _timed(timings, recipe.run_dir, f"{recipe.name} pretrain ({recipe.method})",
                     lambda: pretrain(recipe, progress=progress))  # fmt: skip
    if not summary.get("finished"):  # every process of a DDP run knows (only rank 0 writes the encoder)
        raise ValueError(
            f"{recipe.name} stopped before the end of its pretraining (trainer.max_epochs?); run the study again "
            "to continue"
        )


def _arm_compute(recipe: Recipe, arm: StudyArm, timings: dict[str, float],
                 done: dict[str, dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """The arm's compute (:mod:`advcl_plugin.app.compute`), kept in ``<run dir>/compute.json``; a warm-started
    arm adds the compute of the arm it starts from (``done``: the arms of this seed so far)."""
    path = recipe.run_dir / "compute.json"
    per_step = _read_record(path) if path.is_file() else None
    if per_step is None or per_step.get("batch_size") != recipe.optim.batch_size:
        per_step = step_flops(recipe)
        if is_global_zero_process():
            atomic_write_json(path, per_step)
    steps = int(_read_record(recipe.run_dir / "pretrain.json").get("steps", 0))
    seconds = timings.get(f"{recipe.name} pretrain ({recipe.method})")
    start = done.get(arm.init_from) if arm.init_from else None
    return arm_compute(per_step, steps, seconds, start)


def _compute_table(study: StudyConfig, computed: dict[str, dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """The compute columns of the report: per arm, FLOPs per step, adversarial vs clean, wall time, and the
    adversarial compute relative to the reference arm (cold AdvCL)."""
    reference = study.compute_reference or next(
        (arm.name for arm in study.arms if arm.method == "advcl" and not arm.init_from and arm.name in computed), None
    )
    base = computed.get(reference, {}).get("adversarial_tflop") if reference else None
    lines = [
        "",
        "Compute per arm (FLOPs counted by torch.utils.flop_counter on one training step; forward + backward; "
        "'adversarial' = what the PGD iterations add; 'with start' adds the arm it was warm-started from)",
        "",
        f"| arm | steps | GFLOP / step | of it attack | pretrain TFLOP | adversarial TFLOP | clean TFLOP | "
        f"with start TFLOP | adversarial compute vs {reference or 'reference'} | pretrain wall s | with start wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in computed.items():
        ratio = f"{c['adversarial_tflop'] / base:.2f}" if base else "—"
        seconds = f"{c['pretrain_seconds']:.0f}" if c.get("pretrain_seconds") is not None else "—"
        total_seconds = f"{c['total_seconds']:.0f}" if c.get("total_seconds") is not None else "—"
        c["adversarial_vs_reference"] = c["adversarial_tflop"] / base if base else None
        lines.append(
            f"| {name} | {c['steps']} | {c['step_gflop']:.1f} | {c['attack_gflop']:.1f} | {c['pretrain_tflop']:.1f} | "
            f"{c['adversarial_tflop']:.1f} | {c['clean_tflop']:.1f} | {c['total_tflop']:.1f} | {ratio} | {seconds} | "
            f"{total_seconds} |"
        )
    return lines, {"reference": reference, "arms": computed}


def _finetuned_and_evaluated(recipe: Recipe, mode: str, aa_samples: int, progress: bool,
                             timings: dict[str, float], fields: dict[str, Any]) -> Path:  # fmt: skip
    tag = protocol_tag(recipe.protocol)
    if not rank_zero_decides((recipe.run_dir / f"finetune-{tag}{mode}" / "classifier.pt").is_file()):
        _timed(timings, recipe.run_dir, f"{recipe.name} {tag}{mode}", lambda: finetune(recipe, mode, progress=progress))
    evaluation = recipe.run_dir / f"eval-{tag}{mode}.json"
    if not rank_zero_decides(evaluation.is_file()):
        recipe.evaluate.aa_samples = aa_samples
        _timed(timings, recipe.run_dir, f"{recipe.name} evaluate {mode}",
               lambda: evaluate(recipe, mode, progress=progress, record_fields=fields))  # fmt: skip
    return evaluation


def run_study(
    name_or_path: str,
    overrides: list[str] | None = None,
    progress: bool = True,
    arms: list[str] | None = None,
) -> dict[str, Any]:
    """Run (or continue) every arm of a study (or the ``arms`` named) and write ``<output_dir>/<study>-report/``."""
    study = load_study(name_or_path)
    if arms:
        unknown = sorted(set(arms) - {arm.name for arm in study.arms})
        if unknown:
            raise ValueError(f"unknown arm(s) {unknown}; the study has {[arm.name for arm in study.arms]}")
        study.arms = [arm for arm in study.arms if arm.name in arms]
    # every arm's recipe is read (and so validated) before anything runs
    for arm in study.arms:
        load_recipe(study.base, _arm_overrides(study, arm, study.seeds[0], overrides or []))
    timings: dict[str, float] = {}
    eval_files: list[Path] = []
    per_arm: dict[str, dict[str, list[dict[str, Any]]]] = {}
    computed: dict[str, dict[str, Any]] = {}  # the first seed's compute per arm
    output_dir = Path(".")
    for seed in study.seeds:
        this_seed: dict[str, dict[str, Any]] = {}
        for arm in study.arms:
            with contextlib.ExitStack() as held:
                run_dir = load_recipe(study.base, _arm_overrides(study, arm, seed, overrides or [])).run_dir
                held.enter_context(run_directory_lock(run_dir))  # the arm's folder is this study's until it ends
                recipe = _arm_recipe(study, arm, seed, overrides or [], progress, timings)
                output_dir = Path(recipe.output_dir)
                timings_file = recipe.run_dir / "study_timings.json"
                if timings_file.is_file():  # stages finished in an earlier session of the study
                    timings.update(_read_record(timings_file))
                _pretrained(recipe, progress, timings)
                this_seed[arm.name] = _arm_compute(recipe, arm, timings, this_seed)
                computed.setdefault(arm.name, this_seed[arm.name])
                for mode in arm.modes:
                    with_autoattack = arm.autoattack is True or (
                        isinstance(arm.autoattack, list) and mode in arm.autoattack
                    )
                    fields = {"method": arm.name, "seed": seed}
                    evaluation = _finetuned_and_evaluated(
                        recipe, mode, study.aa_samples if with_autoattack else 0, progress, timings, fields
                    )
                    result = _read_record(evaluation)
                    if (result.get("method"), result.get("seed")) != (arm.name, seed) and is_global_zero_process():
                        result["method"], result["seed"] = arm.name, seed
                        atomic_write_json(evaluation, result)
                    eval_files.append(evaluation)
                    per_arm.setdefault(arm.name, {}).setdefault(mode, []).append(result)
    results = {arm: {mode: _mean_over_seeds(runs) for mode, runs in modes.items()} for arm, modes in per_arm.items()}
    rows = verdicts(results, per_arm, study.claims)
    lines = [f"Budget: {study.budget}", f"Hardware: {study.hardware}"]
    if rows:
        lines += ["", "| paper | claim | values (%) | verdict |", "| --- | --- | --- | --- |"]
    for row in rows:
        a, b = row["values"]
        values = f"{row['better_arm']} {100 * a:.2f} vs {row['worse_arm']} {100 * b:.2f}"
        lines.append(f"| {row['table']} | {row['claim']} | {values} | {row['verdict']} |")
    compute_lines, compute = _compute_table(study, computed)
    lines += compute_lines
    if not is_global_zero_process():  # the other processes of a DDP study trained and evaluated with rank 0
        return {"results": [], "directory": str(output_dir / f"{study.name}-report"), "markdown": ""}
    report = build_report(
        eval_files,
        output_dir / f"{study.name}-report",
        timings,
        extra_markdown="\n".join(lines),
        extra={
            "orderings": rows,
            "per_arm": results,
            "compute": compute,
            "budget": study.budget,
            "hardware": study.hardware,
        },
    )
    print("\n" + report["markdown"])  # rank 0 (the others returned above)
    return report


def run_demo(study: str = "study/demo", methods: list[str] | None = None, overrides: list[str] | None = None,
             progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """The demo: the study ``study/demo`` (or the arms ``methods`` of it)."""
    started = time.perf_counter()
    report = run_study(study, overrides, progress, arms=methods)
    if is_global_zero_process():
        print(f"demo finished in {time.perf_counter() - started:.0f} s; report in {report['directory']}")
    return report
