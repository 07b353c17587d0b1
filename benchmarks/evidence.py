"""The evidence study (issue 5): Barlow Twins vs the dual encoder on real data.

For each dataset (``configs/tuned/<name>.yaml`` when ``seqtwins tune`` wrote one, else
``configs/<name>.yaml``) it runs the experiment (prepare -> pretrain ``barlow``, ``dual``,
``barlow+next`` -> evaluate with the floors, linear probe at every label fraction and
fine-tuning at the smallest), then ablations on a subset of the datasets (pretraining
batch size for ``barlow`` and ``dual``; each augmentation alone and the best pair, the pair
chosen on valid users; lambda and projector width), and finally writes
``benchmarks/results/evidence/*.json`` and ``docs/evidence.md`` with its plots.

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

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "evidence"
DOCS = ROOT / "docs" / "evidence.md"
CONFIGS = ROOT / "configs"
HEADLINE_TASKS = ("favorite_category", "next_category")
TARGET_GAIN, TARGET_KEEP, TARGET_DATASETS = 0.08, 0.95, 3
OPS = ("mask", "crop", "reorder", "substitute", "insert")


@dataclass(frozen=True)
class Plan:
    """What the study runs. ``FULL`` is ``make evidence``; ``QUICK`` is ``--quick``."""

    datasets: tuple[str, ...]
    ablation_datasets: tuple[str, ...]
    fractions: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 1.0)
    seeds: int = 3
    epochs: int | None = None
    """Pretraining epochs of the main runs; ``None`` = the experiment file's."""
    ablation_epochs: int = 10
    ablation_fractions: tuple[float, ...] = (0.1, 1.0)
    batch_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    ops: tuple[str, ...] = OPS
    lambda_scales: tuple[float, ...] = (0.25, 4.0)
    """Multiples of the experiment's ``barlow.lambda_`` beside the reference."""
    widths: tuple[int, ...] = (128, 1024)
    """Projector widths (two layers of this width) beside the reference."""


FULL = Plan(datasets=("ml-1m", "yelp", "beauty", "lastfm"), ablation_datasets=("ml-1m", "beauty"))
QUICK = Plan(
    datasets=("lastfm",),
    ablation_datasets=("lastfm",),
    fractions=(0.1, 1.0),
    seeds=2,
    epochs=2,
    ablation_epochs=2,
    batch_sizes=(32, 256),
    ops=("mask", "crop"),
    lambda_scales=(4.0,),
    widths=(128,),
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


# --- running ------------------------------------------------------------------------------


def run_main(
    name: str, plan: Plan, out: Path, results: Path, configs: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """One dataset's experiment; writes ``main-<name>.json``."""
    from seqtwins.evaluate.protocol import load_results
    from seqtwins.experiment import load_experiment, run_experiment

    file = experiment_file(name, configs)
    overrides = [
        f"evaluate.fractions={json.dumps(list(plan.fractions))}",
        f"evaluate.seeds={plan.seeds}",
        "evaluate.protocol=finetune",
    ]
    if plan.epochs is not None:
        overrides.append(f"pretrain.train.epochs={plan.epochs}")
    cfg = load_experiment(file, overrides)
    say(f"== {name}: {_shown(file)}")
    res = run_experiment(cfg, out, progress=False, say=say)
    data = _slim(load_results(res.eval_json))
    data["experiment_file"] = _shown(file)
    data["git_commit"] = git_commit()
    data["pretrain"] = {obj: _run_summary(run) for obj, run in res.runs.items()}
    _write_json(results / f"main-{name}.json", data)
    return data


def _run_summary(run: Path) -> dict[str, Any]:
    from seqtwins.run import Run

    summary = Run.open(run).summary()
    return {k: summary[k] for k in ("epochs_done", "steps", "best_epoch", "best_score", "seconds")}


def _layer(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    from seqtwins.config import deep_merge, nest

    return deep_merge(base, nest(path, value))


def run_ablations(
    name: str, plan: Plan, out: Path, results: Path, configs: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """Batch size, augmentation and Barlow-hyper-parameter ablations on one dataset; writes
    ``ablation-<name>.json`` (one evaluation per group, plus each run's pretraining summary)."""
    from seqtwins.evaluate.runs import evaluate_runs
    from seqtwins.experiment import build_data, load_experiment, pretrain_run

    file = experiment_file(name, configs)
    cfg = load_experiment(file)
    root = out / cfg.name
    data_dir = build_data(cfg, root / "data", say)
    abl = root / "ablations"

    def train(obj: str, tag: str, changes: dict[str, Any]) -> Path:
        # on top of the objective's own layer: a tuned preset sets lambda_ and the
        # projector there, and that layer is merged after the shared one
        layer = _layer(cfg.objectives[obj] or {}, "train.epochs", plan.ablation_epochs)
        for path, value in changes.items():
            layer = _layer(layer, path, value)
        sub = dataclasses.replace(cfg, objectives={**cfg.objectives, obj: layer})
        return pretrain_run(sub.pretrain_config(obj), data_dir, abl / "runs" / tag, False, say)

    base = cfg.pretrain_config("barlow")
    sizes = sorted({*plan.batch_sizes, base.train.batch_size})
    groups: dict[str, list[Path]] = {"batch": [], "augment": [], "barlow": []}
    for obj in ("barlow", "dual"):
        for b in sizes:
            groups["batch"].append(train(obj, f"{obj}-b{b}", {"train.batch_size": b}))
    reference = abl / "runs" / f"barlow-b{base.train.batch_size}"
    singles = {op: train("barlow", f"barlow-{op}", {"augment.ops": [op]}) for op in plan.ops}
    groups["augment"] = [reference, *singles.values()]
    pair: list[str] = []
    if len(singles) >= 2:  # the best pair: the two best single ops on VALID users
        valid = {op: _run_summary(r)["best_score"] or 0.0 for op, r in singles.items()}
        pair = sorted(valid, key=lambda op: -valid[op])[:2]
        pair = [op for op in OPS if op in pair]  # canonical order
        groups["augment"].append(train("barlow", "barlow-" + "+".join(pair), {"augment.ops": pair}))
    lam = base.barlow.lambda_
    groups["barlow"] = [reference]
    for s in plan.lambda_scales:
        groups["barlow"].append(
            train("barlow", f"barlow-lambda{s:g}x", {"barlow.lambda_": lam * s})
        )
    for w in plan.widths:
        groups["barlow"].append(train("barlow", f"barlow-proj{w}", {"barlow.projector": [w, w]}))

    data: dict[str, Any] = {
        "dataset": name,
        "experiment_file": _shown(file),
        "git_commit": git_commit(),
        "epochs": plan.ablation_epochs,
        "reference": reference.name,
        "best_pair": pair,
        "reference_config": {
            "batch_size": base.train.batch_size,
            "lambda_": lam,
            "projector": list(base.barlow.projector),
            "ops": list(base.augment.ops),
            "lr": base.train.lr,
        },
        "groups": {},
    }
    for group, runs in groups.items():
        say(f"== {name} ablation '{group}': evaluating {len(runs)} runs")
        res = evaluate_runs(
            runs,
            data_dir,
            abl / f"eval-{group}.json",
            tasks=list(HEADLINE_TASKS),
            fractions=plan.ablation_fractions,
            seeds=plan.seeds,
            baselines=[],
            progress=False,
        )
        data["groups"][group] = {
            "eval": _slim(res),
            "pretrain": {r.name: _run_summary(r) for r in runs},
            "configs": {r.name: _config_digest(r) for r in runs},
        }
    _write_json(results / f"ablation-{name}.json", data)
    return data


def _config_digest(run: Path) -> dict[str, Any]:
    from seqtwins.run import Run

    c = Run.open(run).config
    return {
        "objective": c.objective,
        "batch_size": c.train.batch_size,
        "epochs": c.train.epochs,
        "lr": c.train.lr,
        "ops": list(c.augment.ops),
        "lambda_": c.barlow.lambda_,
        "projector": list(c.barlow.projector),
    }


# --- what the numbers say -----------------------------------------------------------------


def cell_mean(res: dict[str, Any], task: str, method: str, fraction: float) -> float | None:
    """Mean of the task's primary metric for one method at one label fraction."""
    metric = res["tasks"][task]["primary_metric"]
    for c in res["cells"]:
        if c["task"] == task and c["method"] == method and abs(c["fraction"] - fraction) < 1e-12:
            return c["mean"].get(metric)
    return None


def cell_std(res: dict[str, Any], task: str, method: str, fraction: float) -> float | None:
    metric = res["tasks"][task]["primary_metric"]
    for c in res["cells"]:
        if c["task"] == task and c["method"] == method and abs(c["fraction"] - fraction) < 1e-12:
            return c["std"].get(metric)
    return None


def _rel(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b - 1.0


def check_targets(main: dict[str, dict[str, Any]], ablations: dict[str, dict[str, Any]]) -> dict:
    """The issue's three targets, computed from the measured results."""
    gain_rows, datasets_ok = [], 0
    for name, res in main.items():
        gains = []
        for task in HEADLINE_TASKS:
            if task not in res["tasks"]:
                continue
            for f in res["fractions"]:
                if f > 0.1 + 1e-12:
                    continue
                b, d = cell_mean(res, task, "barlow", f), cell_mean(res, task, "dual", f)
                g = _rel(b, d)
                gain_rows.append(
                    {
                        "dataset": name,
                        "task": task,
                        "fraction": f,
                        "barlow": b,
                        "dual": d,
                        "barlow_std": cell_std(res, task, "barlow", f),
                        "dual_std": cell_std(res, task, "dual", f),
                        "gain": g,
                    }
                )
                if g is not None:
                    gains.append(g)
        mean_gain = float(np.mean(gains)) if gains else None
        ok = mean_gain is not None and mean_gain >= TARGET_GAIN
        datasets_ok += ok
        gain_rows.append({"dataset": name, "task": "mean", "gain": mean_gain, "holds": ok})
    keep_rows = []
    for name, abl in ablations.items():
        res = abl["groups"]["batch"]["eval"]
        ref_b = abl["reference_config"]["batch_size"]
        smallest = min(int(r.split("-b")[1]) for r in abl["groups"]["batch"]["pretrain"])
        for obj in ("barlow", "dual"):
            for task in HEADLINE_TASKS:
                for f in res["fractions"]:
                    small = cell_mean(res, task, f"{obj}-b{smallest}", f)
                    ref = cell_mean(res, task, f"{obj}-b{ref_b}", f)
                    keep_rows.append(
                        {
                            "dataset": name,
                            "objective": obj,
                            "task": task,
                            "fraction": f,
                            "batch_small": smallest,
                            "batch_ref": ref_b,
                            "score_small": small,
                            "score_ref": ref,
                            "keep": None if small is None or not ref else small / ref,
                        }
                    )
    floor_rows = []
    for name, res in main.items():
        for task in res["tasks"]:
            for f in res["fractions"]:
                b = cell_mean(res, task, "barlow", f)
                for floor in ("random-init", "tfidf-svd", "majority"):
                    v = cell_mean(res, task, floor, f)
                    if b is not None and v is not None and v >= b:
                        floor_rows.append(
                            {
                                "dataset": name,
                                "task": task,
                                "fraction": f,
                                "floor": floor,
                                "floor_score": v,
                                "barlow": b,
                            }
                        )
    barlow_keep = [r["keep"] for r in keep_rows if r["objective"] == "barlow"]
    batch_holds = bool(barlow_keep) and None not in barlow_keep and min(barlow_keep) >= TARGET_KEEP
    return {
        "gain": {
            "rows": gain_rows,
            "datasets_holding": datasets_ok,
            "holds": datasets_ok >= min(TARGET_DATASETS, len(main)),
        },
        "batch": {
            "rows": keep_rows,
            "holds": batch_holds,
        },
        "floors": {"rows": floor_rows, "holds": not floor_rows},
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
    names: Sequence[str], trials: int, epochs: int, out: Path, results: Path, configs: Path
) -> None:
    """``seqtwins tune`` for ``barlow`` and ``dual`` with the same budget on each dataset;
    writes the preset ``configs/tuned/<name>.yaml`` and copies each search history to
    ``<results>/tune/<name>-<objective>.json``."""
    from seqtwins.experiment import load_experiment
    from seqtwins.tune import tune_experiment

    for name in names:
        source = configs / f"{name}.yaml"
        budget = [f"tune.trials={trials}", f"tune.epochs={epochs}",
                  f"tune.startup_trials={max(1, trials // 2)}"]  # fmt: skip
        cfg = load_experiment(source, budget)
        preset = configs / "tuned" / f"{name}.yaml"
        preset.parent.mkdir(parents=True, exist_ok=True)
        shown = source.relative_to(ROOT) if source.is_relative_to(ROOT) else source
        found = tune_experiment(cfg, out, objectives=["barlow", "dual"], write_preset=preset,
                                progress=True, source=shown)  # fmt: skip
        for obj, r in found.items():
            (results / "tune").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(r.history, results / "tune" / f"{name}-{obj}.json")


def run_study(
    plan: Plan, out: Path, results: Path, configs: Path, skip: Sequence[str], argv: Sequence[str]
) -> dict[str, Any]:
    """Run the plan's main experiments and ablations; write their JSON and ``meta.json``.

    ``meta.json`` lists every invocation (command, commit, times, stages), so a study run in
    parts keeps the record of each part."""
    meta_file = results / "meta.json"
    meta = provenance(argv)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    stages: dict[str, float] = {}
    say = lambda m: print(m, flush=True)  # noqa: E731
    for name in plan.datasets if "main" not in skip else ():
        t = time.perf_counter()
        run_main(name, plan, out, results, configs, say)
        stages[f"main-{name}"] = round(time.perf_counter() - t, 1)
        say(f"== main-{name}: {stages[f'main-{name}']:.0f} s")
    for name in plan.ablation_datasets if "ablations" not in skip else ():
        t = time.perf_counter()
        run_ablations(name, plan, out, results, configs, say)
        stages[f"ablation-{name}"] = round(time.perf_counter() - t, 1)
        say(f"== ablation-{name}: {stages[f'ablation-{name}']:.0f} s")
    meta["machine"]["load_avg_end"] = os.getloadavg()[0]
    invocation = {"command": meta["command"], "git_commit": meta["git_commit"],
                  "started": started, "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                  "stages": stages}  # fmt: skip
    # read now, not at the start: another invocation may have finished in the meantime
    previous = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    meta["plan"] = dataclasses.asdict(plan)
    for key in ("datasets", "ablation_datasets"):  # a study run in parts: all the parts
        done = previous.get("plan", {}).get(key, [])
        meta["plan"][key] = [*done, *(d for d in meta["plan"][key] if d not in done)]
    meta["invocations"] = [*previous.get("invocations", []), invocation]
    _write_json(meta_file, meta)
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes on one small dataset")
    ap.add_argument("--datasets", nargs="*", help="override the plan's datasets")
    ap.add_argument("--ablation-datasets", nargs="*", help="override the ablation datasets")
    ap.add_argument("--skip", nargs="*", default=[], choices=["main", "ablations"])
    ap.add_argument("--docs-only", action="store_true", help="rebuild docs from the JSON")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "evidence")
    ap.add_argument("--results", type=Path, default=None, help=f"default {RESULTS}")
    ap.add_argument("--docs", type=Path, default=None, help=f"default {DOCS}")
    ap.add_argument("--configs", type=Path, default=CONFIGS)
    ap.add_argument("--tune", nargs="+", metavar="DATASET", help="tune these datasets only")
    ap.add_argument("--trials", type=int, default=8, help="with --tune: trials per objective")
    ap.add_argument("--tune-epochs", type=int, default=5, help="with --tune: epochs per trial")
    args = ap.parse_args(argv)
    from evidence_doc import write_doc

    quick = args.quick
    plan = QUICK if quick else FULL
    if args.datasets is not None:
        plan = dataclasses.replace(plan, datasets=tuple(args.datasets))
    if args.ablation_datasets is not None:
        plan = dataclasses.replace(plan, ablation_datasets=tuple(args.ablation_datasets))
    results = args.results or (RESULTS / "quick" if quick else RESULTS)
    docs = args.docs or (results / "evidence.md" if quick else DOCS)
    if args.tune:
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
