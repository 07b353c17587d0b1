"""The evidence study: Barlow Twins vs the dual encoder and the floors, on real data.

For each dataset (``configs/tuned/<name>.yaml`` when ``seqtwins tune`` wrote one, else
``configs/<name>.yaml``) it runs the experiment: prepare -> pretrain every objective
(``barlow``, ``dual``, ``barlow+next``, ``barlow+mask``) with the same encoder, epochs and
early-stopping rule -> evaluate with every floor (linear probe at every label fraction;
``dual`` and ``barlow+next`` also natively, through their own item tower). The headline
cells are evaluated a second time on the **last** checkpoint ("fixed epochs"), so a reader
sees whether checkpoint selection drives the result, and every headline comparison gets a
paired bootstrap interval over test users (and seeds). A batch-size ablation trains
``barlow`` and ``dual`` at batch 32 with the reference run's epochs and with its number of
optimiser steps. The JSON goes to ``benchmarks/results/evidence/`` and ``docs/evidence.md``
is written from it (``evidence_doc.py``).

Every stage reuses finished work under ``--out`` (a run whose config is unchanged is not
retrained; an interrupted one resumes), so an interrupted study continues where it stopped.

    .venv/bin/python benchmarks/evidence.py            # the full study (make evidence)
    .venv/bin/python benchmarks/evidence.py --quick    # a few minutes, one small dataset
    .venv/bin/python benchmarks/evidence.py --docs-only  # rebuild docs from the JSON
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from _machine import cpu_model_and_flags
from bench_validation import valid_summary

from seqtwins.evaluate.protocol import FLOOR_METHODS as FLOORS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "evidence"
DOCS = ROOT / "docs" / "evidence.md"
CONFIGS = ROOT / "configs"
OBJECTIVES = ("barlow", "dual", "barlow+next", "barlow+mask")
DEMOGRAPHICS = ("gender", "age", "occupation")
FEW_LABELS = 0.1
"""Targets are judged at label fractions up to this (the few-label regime)."""
TARGET_GAIN, TARGET_KEEP, TARGET_DATASETS, TARGET_TFIDF_SHARE = 0.08, 0.95, 3, 0.75


@dataclass(frozen=True)
class Plan:
    """What the study runs. ``FULL`` is ``make evidence``; ``QUICK`` is ``--quick``."""

    datasets: tuple[str, ...]
    batch_datasets: tuple[str, ...]
    objectives: tuple[str, ...] = OBJECTIVES
    fractions: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 1.0)
    seeds: int = 3
    epochs: int | None = None
    """Maximum pretraining epochs of the main runs; ``None`` = the experiment file's."""
    batch_epochs: int = 10
    """Epochs of the batch-size ablation's reference runs (no early stopping)."""
    small_batch: int = 32
    batch_fractions: tuple[float, ...] = (0.01, 0.05, 0.1)
    bootstrap: int = 2000
    """Paired bootstrap resamples per compared cell."""


FULL = Plan(datasets=("beauty", "yelp", "ml-1m", "lastfm"), batch_datasets=("beauty",))
"""``make evidence``. The batch ablation runs on Beauty alone: on ML-1M, with 200 items per
user, its six runs would take about as long as the whole main study (cut to fit 120
minutes)."""
QUICK = Plan(
    datasets=("lastfm",),
    batch_datasets=("lastfm",),
    fractions=(0.1, 1.0),
    seeds=2,
    epochs=2,
    batch_epochs=2,
    batch_fractions=(0.1,),
    bootstrap=200,
)


def experiment_file(name: str, configs: Path = CONFIGS) -> Path:
    """The tuned preset when there is one, else the hand-written experiment file."""
    tuned = configs / "tuned" / f"{name}.yaml"
    return tuned if tuned.is_file() else configs / f"{name}.yaml"


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


@functools.cache
def git_commit() -> str:
    """HEAD's short hash, with ``+dirty`` when src/ or configs/ have uncommitted changes, as
    of the first call (the code this process loaded)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
            check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "configs"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _slim(results: dict[str, Any]) -> dict[str, Any]:
    """eval.json without per-seed subset digests, artifact paths and per-user arrays (kept
    under --out)."""
    out = {k: v for k, v in results.items() if k not in ("artifacts", "subsets", "per_user")}
    out["cells"] = [
        {**c, "runs": [{k: v for k, v in r.items() if k != "subset"} for r in c["runs"]]}
        for c in results["cells"]
    ]
    return out


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


# --- reading results ----------------------------------------------------------------------


def headline(res: dict[str, Any]) -> list[str]:
    """The dataset's headline tasks (the evaluation marks them)."""
    return [t for t, info in res["tasks"].items() if info.get("headline")]


def comparable(res: dict[str, Any], task: str) -> bool:
    """False for a task with too few labelled test users to compare methods."""
    return not res["tasks"][task].get("too_small", False)


def cell(res: dict[str, Any], task: str, method: str, fraction: float) -> dict[str, Any] | None:
    for c in res["cells"]:
        if c["task"] == task and c["method"] == method and abs(c["fraction"] - fraction) < 1e-12:
            return c
    return None


def cell_mean(res: dict[str, Any], task: str, method: str, fraction: float) -> float | None:
    """Mean of the task's primary metric for one method at one label fraction."""
    c = cell(res, task, method, fraction)
    return None if c is None else c["mean"].get(res["tasks"][task]["primary_metric"])


def cell_std(res: dict[str, Any], task: str, method: str, fraction: float) -> float | None:
    c = cell(res, task, method, fraction)
    return None if c is None else c["std"].get(res["tasks"][task]["primary_metric"])


def best_dual(res: dict[str, Any], task: str, fraction: float) -> tuple[str, float | None]:
    """``dual`` through the probe or natively, whichever scores higher on this cell."""
    options = [(m, cell_mean(res, task, m, fraction)) for m in ("dual", "dual:native")]
    options = [(m, v) for m, v in options if v is not None]
    return max(options, key=lambda mv: mv[1]) if options else ("dual", None)


def best_floor(res: dict[str, Any], task: str, fraction: float) -> tuple[str, float | None]:
    options = [(m, cell_mean(res, task, m, fraction)) for m in FLOORS]
    options = [(m, v) for m, v in options if v is not None]
    return max(options, key=lambda mv: mv[1]) if options else ("", None)


def _rel(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b - 1.0


def few(res: dict[str, Any]) -> list[float]:
    return [f for f in res["fractions"] if f <= FEW_LABELS + 1e-12]


# --- significance -------------------------------------------------------------------------


def significance(
    res: dict[str, Any], per_user_file: Path, plan: Plan, seed: int = 0
) -> list[dict[str, Any]]:
    """Paired bootstrap (over test users, averaged over seeds) of ``barlow`` against the
    better ``dual`` and against the best floor, on every headline cell at <= 10 % labels."""
    from seqtwins.evaluate.significance import compare, load_per_user

    per_user = load_per_user(per_user_file)
    rows = []
    for task in headline(res):
        for f in few(res):
            for role, (other, _) in (("dual", best_dual(res, task, f)),
                                     ("floor", best_floor(res, task, f))):  # fmt: skip
                if not other or None in (cell_mean(res, task, m, f) for m in ("barlow", other)):
                    continue
                # the seeds both have (a seed can be n/a in a partial cell)
                c = compare(per_user, task, "barlow", other, f, n_boot=plan.bootstrap, seed=seed)
                rows.append({"task": task, "fraction": f, "against": role, "other": other,
                             **c.to_dict()})  # fmt: skip
    return rows


# --- running ------------------------------------------------------------------------------


def _with_objectives(cfg: Any, objectives: Sequence[str]) -> Any:
    """The experiment with exactly these objectives (a preset's own layers kept)."""
    return dataclasses.replace(cfg, objectives={o: cfg.objectives.get(o) or {} for o in objectives})


def _run_summary(run: Path) -> dict[str, Any]:
    """Pretraining summary plus the cost of validation, from the run's metrics log."""
    from seqtwins.run import Run

    r = Run.open(run)
    summary = r.summary()
    out = {k: summary[k] for k in ("epochs_done", "steps", "best_epoch", "best_score", "seconds")}
    out["encoder_dim"] = r.config.encoder.dim
    out["max_len"] = r.config.encoder.max_len
    out["precision"] = summary.get("precision")  # not in runs made before it was recorded
    records = [json.loads(line) for line in r.metrics_file.read_text().splitlines() if line]
    return out | valid_summary(records)


def run_main(
    name: str, plan: Plan, out: Path, results: Path, configs: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """One dataset's experiment, its last-checkpoint evaluation and significance; writes
    ``main-<name>.json``."""
    from seqtwins.evaluate.protocol import load_results
    from seqtwins.evaluate.runs import BASELINES, evaluate_runs, per_user_file
    from seqtwins.experiment import load_experiment, run_experiment

    file = experiment_file(name, configs)
    overrides = [
        f"evaluate.fractions={json.dumps(list(plan.fractions))}",
        f"evaluate.seeds={plan.seeds}",
        "evaluate.protocol=linear",
        f"evaluate.baselines={json.dumps(list(BASELINES))}",
        "evaluate.tasks=null",
    ]
    if plan.epochs is not None:
        overrides.append(f"pretrain.train.epochs={plan.epochs}")
    cfg = _with_objectives(load_experiment(file, overrides), plan.objectives)
    say(f"== {name}: {_shown(file)}")
    t0 = time.perf_counter()
    res = run_experiment(cfg, out, progress=False, say=say)
    best = load_results(res.eval_json)
    data = _slim(best)
    data["experiment_file"] = _shown(file)
    data["git_commit"] = git_commit()
    data["pretrain"] = {obj: _run_summary(run) for obj, run in res.runs.items()}
    data["significance"] = significance(best, per_user_file(res.eval_json), plan)
    last_json = res.root / "eval-last.json"
    say(f"== {name}: the headline tasks on the last checkpoint")
    last = evaluate_runs(list(res.runs.values()), res.data_dir, last_json, tasks=headline(best),
                         fractions=few(best), seeds=plan.seeds, baselines=[], progress=False,
                         checkpoint="last")  # fmt: skip
    data["last"] = _slim(last)
    data["seconds"] = round(time.perf_counter() - t0, 1)
    _write_json(results / f"main-{name}.json", data)
    return data


def rescore_significance(plan: Plan, out: Path, results: Path) -> None:
    """Recompute ``significance`` in every ``main-<name>.json`` from the per-user values the
    study left under ``out`` (the evaluation itself is not rerun)."""
    from seqtwins.evaluate.runs import per_user_file

    for path in sorted(results.glob("main-*.json")):
        data = json.loads(path.read_text())
        data["significance"] = significance(data, per_user_file(out / path.stem[5:] / "eval.json"),
                                            plan)  # fmt: skip
        data["significance_commit"] = git_commit()
        _write_json(path, data)


def run_batch(
    name: str, plan: Plan, out: Path, results: Path, configs: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """``barlow`` and ``dual`` at the reference batch and at ``plan.small_batch``, with equal
    epochs and with equal optimiser steps (fixed epochs, no early stopping, last
    checkpoint); writes ``batch-<name>.json``."""
    from seqtwins.config import deep_merge, nest
    from seqtwins.evaluate.runs import evaluate_runs
    from seqtwins.experiment import build_data, load_experiment, pretrain_run

    file = experiment_file(name, configs)
    cfg = load_experiment(file)
    root = out / cfg.name
    data_dir = build_data(cfg, root / "data", say)
    ref = cfg.pretrain_config("barlow").train.batch_size
    small, epochs = plan.small_batch, plan.batch_epochs
    same_steps = max(1, round(epochs * small / ref))
    variants = {"ref": (ref, epochs), "small": (small, epochs), "small-steps": (small, same_steps)}
    runs: dict[str, Path] = {}
    for obj in ("barlow", "dual"):
        for tag, (batch, ep) in variants.items():
            layer = dict(cfg.objectives.get(obj) or {})
            # the budget is set here (equal epochs, or equal steps): no early stopping, and
            # no train.min_steps raising the epochs
            for path, value in (("train.batch_size", batch), ("train.epochs", ep),
                                ("train.patience", 0), ("train.min_steps", 0)):  # fmt: skip
                layer = deep_merge(layer, nest(path, value))
            sub = dataclasses.replace(cfg, objectives={**cfg.objectives, obj: layer})
            folder = root / "batch" / f"{obj}-{tag}"
            runs[f"{obj}-{tag}"] = pretrain_run(sub.pretrain_config(obj), data_dir, folder, False,
                                                say)  # fmt: skip
    say(f"== {name} batch ablation: evaluating {len(runs)} runs (last checkpoints)")
    from seqtwins.data.dataset import SequenceDataset
    from seqtwins.evaluate.tasks import headline_tasks

    tasks = headline_tasks(SequenceDataset.open(data_dir, verify=False))
    res = evaluate_runs(list(runs.values()), data_dir, root / "batch" / "eval.json", tasks=tasks,
                        fractions=plan.batch_fractions, seeds=plan.seeds, baselines=[],
                        progress=False, checkpoint="last")  # fmt: skip
    data = {
        "dataset": name,
        "experiment_file": _shown(file),
        "git_commit": git_commit(),
        "variants": {tag: {"batch_size": b, "epochs": e} for tag, (b, e) in variants.items()},
        "eval": _slim(res),
        "pretrain": {tag: _run_summary(r) for tag, r in runs.items()},
    }
    _write_json(results / f"batch-{name}.json", data)
    return data


# --- what the numbers say -----------------------------------------------------------------


def _sig(res: dict[str, Any], task: str, f: float, role: str) -> dict[str, Any] | None:
    for r in res.get("significance", []):
        if r["task"] == task and abs(r["fraction"] - f) < 1e-12 and r["against"] == role:
            return r
    return None


def gain_target(main: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Target 1: ``barlow`` >= the better ``dual`` + 8 % relative, significant, on the headline
    cells at <= 10 % labels. A dataset counts when the mean gain over its comparable
    headline cells reaches 8 % and every one of those cells is significantly positive."""
    rows, holding, compared = [], 0, 0
    for name, res in main.items():
        gains, all_sig = [], True
        for task in headline(res):
            for f in few(res):
                other, d = best_dual(res, task, f)
                b = cell_mean(res, task, "barlow", f)
                g, s = _rel(b, d), _sig(res, task, f, "dual")
                sig = bool(s and s["significant"] and s["diff"] > 0)
                ci = None if s is None else [s["gain_low"], s["gain_high"]]
                ok = comparable(res, task)
                rows.append({"dataset": name, "task": task, "fraction": f, "barlow": b,
                             "dual": d, "dual_method": other, "gain": g, "ci": ci,
                             "significant": sig, "comparable": ok})  # fmt: skip
                if ok and g is not None:
                    gains.append(g)
                    all_sig &= sig
        if not gains:
            rows.append({"dataset": name, "task": "mean", "gain": None, "holds": None})
            continue
        compared += 1
        mean = float(np.mean(gains))
        ok = mean >= TARGET_GAIN and all_sig
        holding += ok
        rows.append({"dataset": name, "task": "mean", "gain": mean, "holds": ok})
    return {"rows": rows, "datasets_holding": holding, "datasets_compared": compared,
            "holds": holding >= TARGET_DATASETS}  # fmt: skip


def tfidf_target(main: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Target 2: ``barlow`` >= TF-IDF+SVD on the encoder's window in >= 75 % of the comparable
    headline cells at <= 10 % labels, and >= full-history TF-IDF+SVD on every ML-1M
    demographic cell at <= 10 % labels."""
    rows = []
    for name, res in main.items():
        for task in headline(res):
            if not comparable(res, task):
                continue
            for f in few(res):
                b = cell_mean(res, task, "barlow", f)
                t = cell_mean(res, task, "tfidf-svd-window", f)
                if b is not None and t is not None:
                    rows.append({"dataset": name, "task": task, "fraction": f, "barlow": b,
                                 "tfidf": t, "wins": b >= t})  # fmt: skip
    demo = []
    for name, res in main.items():
        for task in (t for t in DEMOGRAPHICS if t in res["tasks"]):
            for f in few(res):
                b, t = cell_mean(res, task, "barlow", f), cell_mean(res, task, "tfidf-svd", f)
                if b is not None and t is not None:
                    demo.append({"dataset": name, "task": task, "fraction": f, "barlow": b,
                                 "tfidf": t, "wins": b >= t})  # fmt: skip
    share = float(np.mean([r["wins"] for r in rows])) if rows else None
    holds = share is not None and share >= TARGET_TFIDF_SHARE and all(r["wins"] for r in demo)
    return {"rows": rows, "share": share, "demographics": demo, "holds": holds}


def batch_target(batch: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Target 3: ``barlow`` at the small batch keeps >= 95 % of its reference-batch score on
    every headline cell, with equal epochs and with equal optimiser steps (``dual`` beside)."""
    rows = []
    for name, b in batch.items():
        res = b["eval"]
        for obj in ("barlow", "dual"):
            for tag in ("small", "small-steps"):
                for task in headline(res):
                    for f in res["fractions"]:
                        small = cell_mean(res, task, f"{obj}-{tag}", f)
                        ref = cell_mean(res, task, f"{obj}-ref", f)
                        keep = None if small is None or not ref else small / ref
                        rows.append({"dataset": name, "objective": obj, "variant": tag,
                                     "task": task, "fraction": f, "score_small": small,
                                     "score_ref": ref, "keep": keep})  # fmt: skip
    keep = [r["keep"] for r in rows if r["objective"] == "barlow"]
    return {"rows": rows,
            "holds": bool(keep) and None not in keep and min(keep) >= TARGET_KEEP}  # fmt: skip


def floor_rows(main: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (dataset, task, fraction, floor) where a floor scores >= ``barlow``."""
    rows = []
    for name, res in main.items():
        for task in res["tasks"]:
            for f in res["fractions"]:
                b = cell_mean(res, task, "barlow", f)
                for floor in FLOORS:
                    v = cell_mean(res, task, floor, f)
                    if b is not None and v is not None and v >= b:
                        rows.append({"dataset": name, "task": task, "fraction": f,
                                     "floor": floor, "floor_score": v, "barlow": b})  # fmt: skip
    return rows


def selection_rows(main: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Headline cells at <= 10 % labels on the best (valid-selected) and on the last
    checkpoint, per objective: does selection drive the result?"""
    rows = []
    for name, res in main.items():
        last = res.get("last")
        if not last:
            continue
        for task in headline(res):
            for f in few(res):
                for obj in res.get("pretrain", {}):
                    rows.append({"dataset": name, "task": task, "fraction": f, "objective": obj,
                                 "best": cell_mean(res, task, obj, f),
                                 "last": cell_mean(last, task, obj, f)})  # fmt: skip
    return rows


def check_targets(main: dict[str, dict[str, Any]], batch: dict[str, dict[str, Any]]) -> dict:
    """The issue's targets, computed from the measured results."""
    return {
        "gain": gain_target(main),
        "tfidf": tfidf_target(main),
        "batch": batch_target(batch),
        "floors": floor_rows(main),
        "selection": selection_rows(main),
    }


# --- provenance ---------------------------------------------------------------------------


def provenance(argv: Sequence[str]) -> dict[str, Any]:
    """The command, code version, package versions and machine of a study run."""
    cpu, flags = cpu_model_and_flags()
    versions = {}
    for pkg in ("seqtwins", "torch", "numpy", "polars", "pyarrow", "scikit-learn", "optuna"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "command": " ".join(shlex.quote(a) for a in ["python", *argv]),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "versions": versions,
        "machine": {
            "cpu": cpu,
            "nproc": os.cpu_count(),
            "avx512_bf16": "avx512_bf16" in flags,
            "load_avg_start": os.getloadavg()[0],
        },
    }


def run_tune(
    names: Sequence[str], trials: int | None, epochs: int | None, out: Path, results: Path,
    configs: Path,
) -> None:  # fmt: skip
    """``seqtwins tune`` for every objective with the same budget on each dataset; writes the
    preset ``configs/tuned/<name>.yaml`` and copies each search history to
    ``<results>/tune/<name>-<objective>.json``. ``None`` keeps the experiment file's budget.

    Each Optuna study is kept beside its history (``<name>-<objective>.study.db``, copied
    back even when the call is interrupted) and seeds ``--out`` where it has none, so a
    search too long for one sitting resumes on another machine (``seqtwins tune`` checks
    that the config, space and data are unchanged)."""
    from seqtwins.experiment import load_experiment
    from seqtwins.tune import tune_experiment

    for name in names:
        source = configs / f"{name}.yaml"
        budget = [f"tune.trials={trials}"] if trials else []
        budget += [f"tune.epochs={epochs}"] if epochs else []
        cfg = _with_objectives(load_experiment(source, budget), OBJECTIVES)
        preset = configs / "tuned" / f"{name}.yaml"
        preset.parent.mkdir(parents=True, exist_ok=True)
        (results / "tune").mkdir(parents=True, exist_ok=True)
        studies = {obj: out / name / "tune" / obj / "study.db" for obj in OBJECTIVES}
        kept = {obj: results / "tune" / f"{name}-{obj}.study.db" for obj in OBJECTIVES}
        for obj, db in studies.items():
            if kept[obj].is_file() and not db.exists():
                db.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(kept[obj], db)
        try:
            found = tune_experiment(cfg, out, objectives=list(OBJECTIVES), write_preset=preset,
                                    progress=True, source=_shown(source))  # fmt: skip
        finally:
            for obj, db in studies.items():
                if db.is_file():
                    shutil.copyfile(db, kept[obj])
        for obj, r in found.items():
            shutil.copyfile(r.history, results / "tune" / f"{name}-{obj}.json")


def run_study(
    plan: Plan, out: Path, results: Path, configs: Path, skip: Sequence[str], argv: Sequence[str]
) -> dict[str, Any]:
    """Run the plan's main experiments and batch ablations; write their JSON and
    ``meta.json``, which lists every invocation (command, commit, times, stages), so a study
    run in parts keeps the record of each part."""
    meta_file = results / "meta.json"
    meta = provenance(argv)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    stages: dict[str, float] = {}
    say = lambda m: print(m, flush=True)  # noqa: E731
    t_all = time.perf_counter()
    for stage, names, fn in (("main", plan.datasets, run_main),
                             ("batch", plan.batch_datasets, run_batch)):  # fmt: skip
        for name in names if stage not in skip else ():
            t = time.perf_counter()
            fn(name, plan, out, results, configs, say)
            stages[f"{stage}-{name}"] = round(time.perf_counter() - t, 1)
            say(f"== {stage}-{name}: {stages[f'{stage}-{name}']:.0f} s")
    meta["machine"]["load_avg_end"] = os.getloadavg()[0]
    invocation = {"command": meta["command"], "git_commit": meta["git_commit"],
                  "started": started, "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                  "wall_minutes": round((time.perf_counter() - t_all) / 60, 1),
                  "stages": stages, "machine": meta["machine"]}  # fmt: skip
    # read now, not at the start: another invocation may have finished in the meantime
    previous = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    meta["plan"] = dataclasses.asdict(plan)
    for key in ("datasets", "batch_datasets"):  # a study run in parts: all the parts
        done = previous.get("plan", {}).get(key, [])
        meta["plan"][key] = [*done, *(d for d in meta["plan"][key] if d not in done)]
    meta["invocations"] = [*previous.get("invocations", []), invocation]
    _write_json(meta_file, meta)
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes on one small dataset")
    ap.add_argument("--datasets", nargs="*", help="override the plan's datasets")
    ap.add_argument("--batch-datasets", nargs="*", help="override the batch-ablation datasets")
    ap.add_argument("--epochs", type=int, help="override the main runs' maximum epochs")
    ap.add_argument("--skip", nargs="*", default=[], choices=["main", "batch"])
    ap.add_argument("--docs-only", action="store_true", help="rebuild docs from the JSON")
    ap.add_argument(
        "--significance",
        action="store_true",
        help="recompute main-*.json's bootstrap intervals from the per-user values under --out",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "evidence")
    ap.add_argument("--results", type=Path, default=None, help=f"default {RESULTS}")
    ap.add_argument("--docs", type=Path, default=None, help=f"default {DOCS}")
    ap.add_argument("--configs", type=Path, default=CONFIGS)
    ap.add_argument("--tune", nargs="+", metavar="DATASET", help="tune these datasets only")
    ap.add_argument(
        "--trials",
        type=int,
        help="with --tune: complete trials per objective (default: the file's tune.trials)",
    )
    ap.add_argument(
        "--tune-epochs",
        type=int,
        help="with --tune: epochs per trial (default: the file's tune.epochs)",
    )
    args = ap.parse_args(argv)
    from evidence_doc import write_doc

    quick = args.quick
    plan = QUICK if quick else FULL
    if args.datasets is not None:
        plan = dataclasses.replace(plan, datasets=tuple(args.datasets))
    if args.batch_datasets is not None:
        plan = dataclasses.replace(plan, batch_datasets=tuple(args.batch_datasets))
    if args.epochs is not None:
        plan = dataclasses.replace(plan, epochs=args.epochs)
    results = args.results or (RESULTS / "quick" if quick else RESULTS)
    docs = args.docs or (results / "evidence.md" if quick else DOCS)
    if args.significance:
        rescore_significance(plan, args.out, results)
    elif args.tune:
        os.environ.setdefault("SEQTWINS_DATA", str(ROOT.parent / "shared" / "data"))
        run_tune(args.tune, args.trials, args.tune_epochs, args.out, results, args.configs)
    elif not args.docs_only:
        os.environ.setdefault("SEQTWINS_DATA", str(ROOT.parent / "shared" / "data"))
        argv = sys.argv[1:] if argv is None else list(argv)
        run_study(
            plan, args.out, results, args.configs, args.skip, ["benchmarks/evidence.py", *argv]
        )
    path = write_doc(results, docs)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
