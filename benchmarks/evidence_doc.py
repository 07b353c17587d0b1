"""Writes ``docs/evidence.md`` (and its PNG plots) from the evidence study's JSON results.

Everything in the document is computed from ``benchmarks/results/evidence/*.json``; the one
hand-written part, the findings, is read from ``benchmarks/evidence_findings.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evidence import (
    HEADLINE_TASKS,
    ROOT,
    TARGET_DATASETS,
    TARGET_GAIN,
    TARGET_KEEP,
    cell_mean,
    cell_std,
    check_targets,
)
from matplotlib.figure import Figure

FINDINGS = ROOT / "benchmarks" / "evidence_findings.md"
MAIN_METHODS = ("barlow", "dual", "barlow+next")
FLOORS = ("random-init", "tfidf-svd", "majority")

FAIRNESS = """\
## Fairness rules

1. **Same encoder.** Every objective on a dataset trains the same encoder architecture
   (size, depth, heads, max length, pooling) from the same experiment file. Besides the
   objective's own head and loss, only the tuned settings differ per objective (learning
   rate, weight decay, dropout, and each objective's own knobs: see Tuning).
2. **Same epochs.** Every objective gets the same maximum number of epochs and the same
   early-stopping rule (patience on the validation proxy).
3. **Same data.** One prepared dataset per experiment; the same train / valid / test users
   and the same labelled subsets (seeded) for every method.
4. **Same tuning budget.** When a preset was tuned (`seqtwins tune`), `barlow` and `dual`
   got the same number of trials, epochs per trial and pruner, and the search scored valid
   users only. `barlow+next` was **not** tuned: it runs with the experiment's defaults.
5. **Selection on valid users only.** Early stopping, the best checkpoint, probe
   regularisation, fine-tuning early stopping, tuning and the choice of the "best pair" of
   augmentations use valid users. **Test users are scored once**, for the tables below.
6. **Nothing dropped.** Every dataset, task, label fraction and seed that ran is in the
   tables, including the cells where a floor wins.
"""


def _fmt(v: float | None, d: int = 3) -> str:
    return "–" if v is None else f"{v:.{d}f}"


def _pm(res: dict[str, Any], task: str, method: str, f: float) -> str:
    m, s = cell_mean(res, task, method, f), cell_std(res, task, method, f)
    return "–" if m is None else f"{m:.3f} ± {s or 0.0:.3f}"


def _gain(g: float | None) -> str:
    return "–" if g is None else f"{100 * g:+.1f}%"


def _pct(f: float) -> str:
    return f"{100 * f:g}%"


def _load(results: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict]:
    main = {p.stem[5:]: json.loads(p.read_text()) for p in sorted(results.glob("main-*.json"))}
    abl = {p.stem[9:]: json.loads(p.read_text()) for p in sorted(results.glob("ablation-*.json"))}
    meta_file = results / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    tune = {p.stem: json.loads(p.read_text()) for p in sorted((results / "tune").glob("*.json"))}
    return main, abl, meta, tune


def _save(fig: Figure, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path.name


def _plot_curves(name: str, res: dict[str, Any], path: Path) -> str:
    tasks = [t for t in HEADLINE_TASKS if t in res["tasks"]]
    fig = Figure(figsize=(5.2 * max(1, len(tasks)), 3.8))
    for j, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), j + 1)
        metric = res["tasks"][task]["primary_metric"]
        for method in (*MAIN_METHODS, *FLOORS):
            pts = [
                (f, cell_mean(res, task, method, f), cell_std(res, task, method, f))
                for f in res["fractions"]
            ]
            pts = [p for p in pts if p[1] is not None]
            if not pts:
                continue
            style = {"linestyle": "--", "alpha": 0.7} if method in FLOORS else {"marker": "o"}
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] or 0 for p in pts],
                label=method,
                capsize=3,
                markersize=4,
                **style,
            )
        ax.set_xscale("log")
        ax.set_xticks(res["fractions"])
        ax.set_xticklabels([_pct(f) for f in res["fractions"]])
        ax.minorticks_off()
        ax.set_xlabel("label fraction of train users")
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"{name}: {task}", fontsize=10)
        ax.grid(alpha=0.3)
    if tasks:
        fig.axes[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    return _save(fig, path)


def _plot_batch(abl: dict[str, dict[str, Any]], path: Path) -> str:
    fig = Figure(figsize=(5.2 * len(abl), 3.8))
    for j, (name, a) in enumerate(abl.items()):
        ax = fig.add_subplot(1, len(abl), j + 1)
        res = a["groups"]["batch"]["eval"]
        f = min(res["fractions"])
        for obj in ("barlow", "dual"):
            runs = sorted(
                (int(r.split("-b")[1]), r)
                for r in a["groups"]["batch"]["pretrain"]
                if r.startswith(f"{obj}-b")
            )
            for task, ls in zip(HEADLINE_TASKS, ("-", ":"), strict=True):
                ys = [cell_mean(res, task, r, f) for _, r in runs]
                ys = [float("nan") if y is None else y for y in ys]
                ax.plot([b for b, _ in runs], ys, ls, marker="o", label=f"{obj} {task}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("pretraining batch size")
        ax.set_ylabel(f"test accuracy at {_pct(f)} labels")
        ax.set_title(f"{name}: batch-size ablation", fontsize=10)
        ax.grid(alpha=0.3)
    fig.axes[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    return _save(fig, path)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def _main_section(name: str, res: dict[str, Any], plots: Path, rel: str) -> list[str]:
    ds = res["dataset"]
    pre = res.get("pretrain", {})
    lines = [
        f"### {name}",
        "",
        f"Experiment file `{res.get('experiment_file')}` (git `{res.get('git_commit', '?')}`); "
        f"{ds.get('num_users')} users "
        f"({ds.get('splits')}), {ds.get('num_items')} items; protocol `{res['protocol']}` "
        f"(probe {res.get('probe', {}).get('solver', 'auto')}), seeds {res.get('seeds')}.",
        "",
        "Pretraining: "
        + "; ".join(
            f"`{o}` {p['epochs_done']} epochs (best {p['best_epoch']}, valid proxy "
            f"{_fmt(p['best_score'])}, {p['seconds']:.0f} s)"
            for o, p in pre.items()
        ),
        "",
        f"![{name}]({rel}/{_plot_curves(name, res, plots / f'main-{name}.png')})",
        "",
    ]
    fracs = res["fractions"]
    methods = [m for m in res["methods"] if m not in FLOORS] + [
        m for m in FLOORS if m in res["methods"]
    ]
    for task, info in res["tasks"].items():
        metric = info["primary_metric"]
        rows = [
            [m if m not in FLOORS else f"*{m}*", *(_pm(res, task, m, f) for f in fracs)]
            for m in methods
        ]
        rows.append(["**barlow vs dual**", *(_gain(_gain_of(res, task, f)) for f in fracs)])
        lines += [f"**{task}** — test {metric} (mean ± std over seeds), {info['description']}", ""]
        lines += _table(["method", *(_pct(f) for f in fracs)], rows)
    return lines


def _gain_of(res: dict[str, Any], task: str, f: float) -> float | None:
    b, d = cell_mean(res, task, "barlow", f), cell_mean(res, task, "dual", f)
    return None if b is None or d is None or d == 0 else b / d - 1


def _ablation_section(name: str, a: dict[str, Any]) -> list[str]:
    ref = a["reference_config"]
    lines = [
        f"### {name}",
        "",
        f"Experiment file `{a['experiment_file']}` (git `{a.get('git_commit', '?')}`); "
        f"{a['epochs']} epochs per run; reference `{a['reference']}` = the experiment's "
        f"settings (batch {ref['batch_size']}, lr {ref['lr']:g}, lambda {ref['lambda_']:g}, "
        f"projector {ref['projector']}, ops {ref['ops']}). Cells: test accuracy (mean ± std "
        "over seeds); `valid` is the pretraining validation proxy (valid users).",
        "",
    ]
    for group, title in (
        ("batch", "Batch size"),
        ("augment", "Augmentations"),
        ("barlow", "Lambda and projector width"),
    ):
        g = a["groups"][group]
        res = g["eval"]
        cols = [(t, f) for t in HEADLINE_TASKS for f in res["fractions"]]
        rows = [
            [f"`{r}`", _fmt(g["pretrain"][r]["best_score"]), *(_pm(res, t, r, f) for t, f in cols)]
            for r in g["pretrain"]
        ]
        lines += [
            f"**{title}**"
            + (
                f" (best pair on valid users: {'+'.join(a['best_pair'])})"
                if group == "augment" and a["best_pair"]
                else ""
            ),
            "",
        ]
        lines += _table(["run", "valid", *(f"{t} {_pct(f)}" for t, f in cols)], rows)
    return lines


def _targets_section(t: dict[str, Any], main: dict[str, Any]) -> list[str]:
    yes = lambda ok: "**holds**" if ok else "**does not hold**"  # noqa: E731
    lines = ["## Targets", ""]
    g = t["gain"]
    lines += [
        f"1. `barlow` >= `dual` + {100 * TARGET_GAIN:.0f}% relative on {', '.join(HEADLINE_TASKS)}"
        f" at label fractions <= 10%, linear probe, on at least {TARGET_DATASETS} datasets: "
        f"{yes(g['holds'])} ({g['datasets_holding']} of {len(main)} datasets; a dataset counts "
        "when the mean relative gain over its cells reaches the target).",
        "",
    ]
    rows = [
        [
            r["dataset"],
            r["task"],
            _pct(r["fraction"]),
            f"{_fmt(r['barlow'])} ± {_fmt(r['barlow_std'])}",
            f"{_fmt(r['dual'])} ± {_fmt(r['dual_std'])}",
            _gain(r["gain"]),
        ]
        if r["task"] != "mean"
        else [r["dataset"], "**mean**", "", "", "", f"**{_gain(r['gain'])}**"]
        for r in g["rows"]
    ]
    lines += _table(["dataset", "task", "labels", "barlow", "dual", "gain"], rows)
    b = t["batch"]
    lines += [
        f"2. At pretraining batch {min((r['batch_small'] for r in b['rows']), default='–')}, "
        f"`barlow` keeps >= {100 * TARGET_KEEP:.0f}% of its reference-batch score: "
        f"{yes(b['holds'])}. `dual` alongside:",
        "",
    ]
    rows = [
        [
            r["dataset"],
            r["objective"],
            r["task"],
            _pct(r["fraction"]),
            _fmt(r["score_small"]),
            _fmt(r["score_ref"]),
            "–" if r["keep"] is None else f"{100 * r['keep']:.1f}%",
        ]
        for r in b["rows"]
    ]
    lines += _table(
        ["dataset", "objective", "task", "labels", "small batch", "reference", "kept"], rows
    )
    f = t["floors"]
    cells = {(r["dataset"], r["task"], r["fraction"]) for r in f["rows"]}
    total = sum(len(res["tasks"]) * len(res["fractions"]) for res in main.values())
    lines += [
        f"3. `barlow` beats every floor on every task and label fraction: {yes(f['holds'])}"
        + ("." if f["holds"] else f"; a floor scores >= barlow in {len(cells)} of {total} "
           "cells (one row per floor):"),
        "",
    ]  # fmt: skip
    if f["rows"]:
        rows = [
            [
                r["dataset"],
                r["task"],
                _pct(r["fraction"]),
                r["floor"],
                _fmt(r["floor_score"]),
                _fmt(r["barlow"]),
            ]
            for r in f["rows"]
        ]
        lines += _table(["dataset", "task", "labels", "floor", "floor score", "barlow"], rows)
    return lines


def _tune_section(tune: dict[str, Any]) -> list[str]:
    if not tune:
        return [
            "## Tuning",
            "",
            "No preset was tuned for this run: every dataset used its "
            "hand-written experiment file (`configs/<name>.yaml`), the same for all "
            "objectives.",
            "",
        ]
    lines = ["## Tuning (Optuna, valid users only)", ""]
    rows = []
    for key, h in tune.items():
        trials = h.get("trials", [])
        best = h.get("best") or {}
        states = {
            st: sum(x["state"] == st for x in trials) for st in ("COMPLETE", "PRUNED", "FAIL")
        }
        params = ", ".join(
            f"`{k}`={v:.4g}" if isinstance(v, float) else f"`{k}`={v}"
            for k, v in (best.get("params") or {}).items()
        )
        rows.append([key, " / ".join(str(v) for v in states.values()), str(h.get("epochs")),
                     _fmt(best.get("value")), params])  # fmt: skip
    lines += _table(["dataset-objective", "complete / pruned / failed", "epochs per trial",
                     "best valid", "best params"], rows)  # fmt: skip
    return lines


def _eval_seconds(res: dict[str, Any]) -> float:
    secs = res.get("seconds", {})
    return float(secs.get("total", 0.0)) + sum(
        v for k, v in secs.items() if k.endswith("+finetune")
    )


def compute_minutes(
    main: dict[str, Any], abl: dict[str, Any], tune: dict[str, Any]
) -> dict[str, float]:
    """Minutes of pretraining and evaluation per stage, from the results themselves (a
    stage rerun that reuses finished runs still counts what they cost to train)."""
    out = {}
    for name, res in main.items():
        pre = sum(p["seconds"] for p in res.get("pretrain", {}).values())
        out[f"main-{name}"] = (pre + _eval_seconds(res)) / 60
    for name, a in abl.items():
        runs = {r: p["seconds"] for g in a["groups"].values() for r, p in g["pretrain"].items()}
        evals = sum(_eval_seconds(g["eval"]) for g in a["groups"].values())
        out[f"ablation-{name}"] = (sum(runs.values()) + evals) / 60
    out["tuning"] = (  # an interrupted trial's span includes the downtime: left out
        sum(t["seconds"] or 0.0 for h in tune.values() for t in h["trials"] if t["state"] != "FAIL")
        / 60
    )
    return out


def _provenance(meta: dict[str, Any], minutes: dict[str, float]) -> list[str]:
    if not meta:
        return []
    m = meta["machine"]
    plan = meta.get("plan", {})
    study = sum(v for k, v in minutes.items() if k != "tuning")
    lines = [
        "## How this was produced",
        "",
        f"- **{study:.0f} min** of pretraining and evaluation for the study ("
        + ", ".join(f"{k} {v:.1f}" for k, v in minutes.items() if k != "tuning")
        + f"), plus {minutes.get('tuning', 0):.0f} min of tuning (`make tune`). Summed from "
        "each run's and each evaluation's own timer; data preparation (seconds) not included.",
        "- Invocations:",
    ]
    for inv in meta.get("invocations", []):
        lines.append(
            f"  - `{inv['command']}` (git `{inv['git_commit']}`), {inv['started']} to "
            f"{inv['finished']}: {', '.join(inv['stages']) or 'documents only'}"
        )
    lines += [
        f"- Machine: {m['cpu']}, {m['nproc']} cores, load average {m['load_avg_start']:.1f} at "
        f"the last start / {m.get('load_avg_end', float('nan')):.1f} at its end. The machine "
        "is shared with other jobs, so these times are not benchmarks.",
        f"- Python {meta['python']}; " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- Plan: `{json.dumps(plan)}`",
        "- Seeds: labelled subsets and probes use seeds 0.."
        f"{plan.get('seeds', 3) - 1}; pretraining uses each experiment file's `train.seed`.",
        "",
    ]
    return lines


def write_doc(results: Path, docs: Path) -> Path:
    """Write the evidence document (and its plots, in ``<docs stem>/``) from ``results``."""
    main, abl, meta, tune = _load(results)
    plots = docs.parent / docs.stem
    rel = os.path.relpath(plots, docs.parent)
    lines = [
        "# Evidence: Barlow Twins vs the dual encoder on real data",
        "",
        "Written by `benchmarks/evidence.py` from `benchmarks/results/evidence/*.json`; do not "
        "edit by hand (the findings come from `benchmarks/evidence_findings.md`). Reproduce "
        "with `make evidence` (full study) or `make evidence-quick`; `make tune` re-runs the "
        "hyper-parameter search that wrote `configs/tuned/`.",
        "",
        FAIRNESS,
    ]
    if main:
        lines += _targets_section(check_targets(main, abl), main)
    if FINDINGS.is_file() and results.name != "quick":
        lines += [FINDINGS.read_text().rstrip(), ""]
    lines += _provenance(meta, compute_minutes(main, abl, tune))
    lines += _tune_section(tune)
    if main:
        lines += [
            "## Main results",
            "",
            "Linear probe on frozen embeddings at every label fraction; `+finetune` rows "
            "fine-tune the encoder end to end at the smallest fraction.",
            "",
        ]
        for name, res in main.items():
            lines += _main_section(name, res, plots, rel)
    if abl:
        lines += [
            "## Ablations",
            "",
            f"![batch]({rel}/{_plot_batch(abl, plots / 'batch.png')})",
            "",
        ]
        for name, a in abl.items():
            lines += _ablation_section(name, a)
    docs.parent.mkdir(parents=True, exist_ok=True)
    tmp = docs.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, docs)
    return docs
