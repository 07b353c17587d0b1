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
    DEMOGRAPHICS,
    FLOORS,
    OBJECTIVES,
    ROOT,
    TARGET_DATASETS,
    TARGET_GAIN,
    TARGET_KEEP,
    TARGET_TFIDF_SHARE,
    cell_mean,
    cell_std,
    check_targets,
    comparable,
    headline,
)
from matplotlib.figure import Figure

FINDINGS = ROOT / "benchmarks" / "evidence_findings.md"


def _trial_epochs(history: dict[str, Any]) -> str:
    """Epochs per trial of a search history, as ``seqtwins tune`` words it in the preset:
    ``tune.epochs`` when set, else the experiment's own ``pretrain.train.epochs``."""
    epochs = history.get("epochs")
    return f"{epochs} epochs" if epochs else "the experiment's epochs"


def fairness(main: dict[str, Any], tune: dict[str, Any]) -> str:
    """The fairness rules, with what this study actually did (widths, tuning) filled in."""
    dims = sorted({(p.get("encoder_dim"), p.get("max_len")) for res in main.values()
                   for p in res.get("pretrain", {}).values()}, key=str)  # fmt: skip
    tuned: dict[str, set[str]] = {}
    for key, h in tune.items():
        tuned.setdefault(str(h.get("objective") or key.rsplit("-", 1)[-1]), set()).add(
            f"{h.get('trials_wanted', '?')} trials x {_trial_epochs(h)}"
        )
    # per dataset: an objective tuned on one dataset still runs with defaults on another
    untuned: dict[str, list[str]] = {}
    for name, res in sorted(main.items()):
        for obj in res.get("pretrain", {}):
            if f"{name}-{obj}" not in tune:
                untuned.setdefault(obj, []).append(name)
    untuned_text = ", ".join(f"`{o}` ({', '.join(untuned[o])})" for o in OBJECTIVES
                             if o in untuned) or "no objective"  # fmt: skip
    known = [f"({d}, {m})" for d, m in dims if d is not None]
    shown = f"; in this study (dim, max_len) was {', '.join(known)}" if known else ""
    tuning = ("; ".join(f"`{o}`: {', '.join(sorted(b))}" for o, b in sorted(tuned.items()))
              or "no objective")  # fmt: skip
    return f"""\
## Fairness rules

1. **Same encoder.** Every objective on a dataset trains the encoder architecture of the same
   experiment file; a tuned preset may give an objective its own width{shown}. The
   `random-init` and TF-IDF+SVD floors take the first run's width and window.
2. **Same epochs, same selection.** Every objective gets the same maximum number of epochs
   (raised alike to at least `train.min_steps` optimiser steps on a small dataset) and the
   same early-stopping rule (selection from the first quarter of the epochs on), on
   one validation proxy identical for every objective:
   the mean over the dataset's headline tasks of the valid users' probe score divided by
   the popularity floor's (docs/evaluation.md). The headline cells are also shown on the
   **last** checkpoint.
3. **Same data.** One prepared dataset per experiment; the same train / valid / test users
   and the same labelled subsets (seeded) for every method.
4. **Tuning.** The presets in `configs/tuned/` were tuned ({tuning}; histories under
   "Tuning") on valid users only; {untuned_text}
   ran untuned, with the experiment's defaults. Where the budgets differ, this table is not a
   comparison of tuned objectives.
5. **Selection on valid users only.** Early stopping, the best checkpoint, probe
   regularisation and tuning use valid users. **Test users are scored once**.
6. **Both ways for the dual encoder.** `dual` (and `barlow+next`, `barlow+mask`) are scored
   through the probe and natively (`:native`: user embedding · its own item vectors, no
   labels); the targets compare `barlow` with whichever is better for `dual`.
7. **Nothing dropped.** Every dataset, task, label fraction and seed that ran is in the
   tables, including the cells where a floor wins. Tasks with fewer than 500 labelled test
   users are marked *too small to compare* and left out of the targets only.
"""


def _fmt(v: float | None, d: int = 3) -> str:
    return "–" if v is None else f"{v:.{d}f}"


def _pm(res: dict[str, Any], task: str, method: str, f: float) -> str:
    m, s = cell_mean(res, task, method, f), cell_std(res, task, method, f)
    return "–" if m is None else f"{m:.3f} ± {s or 0.0:.3f}"


def _gain(g: float | None) -> str:
    return "–" if g is None else f"{100 * g:+.1f}%"


def _ci(ci: Sequence[float] | None) -> str:
    if not ci or None in ci:  # no interval, or a relative gain over a zero mean
        return "–"
    return f"[{100 * ci[0]:+.1f}%, {100 * ci[1]:+.1f}%]"


def _pct(f: float) -> str:
    return f"{100 * f:g}%"


def _yes(ok: bool | None) -> str:
    return "**holds**" if ok else "**does not hold**"


def _load(results: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict]:
    main = {p.stem[5:]: json.loads(p.read_text()) for p in sorted(results.glob("main-*.json"))}
    batch = {p.stem[6:]: json.loads(p.read_text()) for p in sorted(results.glob("batch-*.json"))}
    meta_file = results / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    tune = {p.stem: json.loads(p.read_text()) for p in sorted((results / "tune").glob("*.json"))}
    return main, batch, meta, tune


def _save(fig: Figure, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path.name


def _methods(res: dict[str, Any]) -> list[str]:
    """Trained runs (and their native scores) first, floors after."""
    return [m for m in res["methods"] if m not in FLOORS] + [
        m for m in FLOORS if m in res["methods"]
    ]


def _plot_curves(name: str, res: dict[str, Any], path: Path) -> str:
    tasks = headline(res)
    fig = Figure(figsize=(5.2 * max(1, len(tasks)), 3.8))
    for j, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), j + 1)
        metric = res["tasks"][task]["primary_metric"]
        for method in _methods(res):
            pts = [(f, cell_mean(res, task, method, f), cell_std(res, task, method, f))
                   for f in res["fractions"]]  # fmt: skip
            pts = [p for p in pts if p[1] is not None]
            if not pts:
                continue
            style = {"linestyle": "--", "alpha": 0.7} if method in FLOORS else {"marker": "o"}
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] or 0 for p in pts],
                        label=method, capsize=3, markersize=4, **style)  # fmt: skip
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


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def _main_section(name: str, res: dict[str, Any], plots: Path, rel: str) -> list[str]:
    ds = res["dataset"]
    lines = [
        f"### {name}",
        "",
        f"Experiment file `{res.get('experiment_file')}` (git `{res.get('git_commit', '?')}`); "
        f"{ds.get('num_users')} users ({ds.get('splits')}), {ds.get('num_items')} items; "
        f"linear probe ({res.get('probe', {}).get('solver', 'auto')} solver), seeds "
        f"{res.get('seeds')}.",
        "",
    ]
    rows = [[f"`{o}`", str(p["epochs_done"]), str(p["best_epoch"]), _fmt(p["best_score"]),
             f"{p['seconds']:.0f}", _fmt(p.get("users_per_s_steps"), 0),
             _fmt(p.get("users_per_s_end_to_end"), 0),
             "–" if p.get("valid_share") is None else
             f"{100 * p['valid_share']:.1f}% / {100 * p['valid_share_max']:.1f}%",
             p.get("precision") or "not recorded"]
            for o, p in res.get("pretrain", {}).items()]  # fmt: skip
    lines += _table(["run", "epochs", "best epoch", "valid proxy", "seconds", "users/s (steps)",
                     "users/s (end to end)", "validation share (all / worst epoch)",
                     "precision"], rows)  # fmt: skip
    lines += [f"![{name}]({rel}/{_plot_curves(name, res, plots / f'main-{name}.png')})", ""]
    fracs = res["fractions"]
    for task, info in res["tasks"].items():
        rows = [[m if m not in FLOORS else f"*{m}*", *(_pm(res, task, m, f) for f in fracs)]
                for m in _methods(res)]  # fmt: skip
        marks = ", ".join(
            m
            for m, on in (
                ("headline", info.get("headline")),
                ("too small to compare", info.get("too_small")),
            )
            if on
        )
        excluded = info.get("excluded_classes")
        lines += [f"**{task}**{f' ({marks})' if marks else ''} — test "
                  f"{info['primary_metric']} (mean ± std over seeds), {info['description']}"
                  + (f"; left out of the metric: {', '.join(map(str, excluded))}"
                     if excluded else ""), ""]  # fmt: skip
        lines += _table(["method", *(_pct(f) for f in fracs)], rows)
    return lines


def _gain_section(g: dict[str, Any], n: int) -> list[str]:
    lines = [
        f"1. `barlow` >= `dual` + {100 * TARGET_GAIN:.0f}% relative, significant, on the "
        f"headline tasks at <= 10% labels, on at least {TARGET_DATASETS} datasets large enough "
        f"to compare: {_yes(g['holds'])} ({g['datasets_holding']} of {g['datasets_compared']} "
        f"comparable datasets, {n} in all; a dataset counts when the mean gain over its "
        "comparable headline cells reaches the target and every one of those cells is "
        "significantly positive: paired bootstrap over test users and seeds, 95% interval of the "
        "relative gain).",
        "",
    ]
    rows = []
    for r in g["rows"]:
        if r["task"] == "mean":
            rows.append([r["dataset"], "**mean**", "", "", "", f"**{_gain(r['gain'])}**", "", ""])
            continue
        rows.append([r["dataset"], r["task"] + ("" if r["comparable"] else " (too small)"),
                     _pct(r["fraction"]), _fmt(r["barlow"]),
                     f"{_fmt(r['dual'])} (`{r['dual_method']}`)", _gain(r["gain"]), _ci(r["ci"]),
                     "yes" if r["significant"] else "no"])  # fmt: skip
    header = ["dataset", "task", "labels", "barlow", "dual (better of probe / native)", "gain",
              "95% interval", "significant gain"]  # fmt: skip
    return lines + _table(header, rows)


def _tfidf_section(t: dict[str, Any]) -> list[str]:
    share = "–" if t["share"] is None else f"{100 * t['share']:.0f}%"
    lines = [
        f"2. `barlow` >= TF-IDF+SVD on the encoder's window on >= {100 * TARGET_TFIDF_SHARE:.0f}%"
        f" of the comparable headline cells at <= 10% labels ({share}), and >= full-history "
        f"TF-IDF+SVD on every ML-1M demographic cell at <= 10% labels: {_yes(t['holds'])}.",
        "",
    ]
    rows = [[r["dataset"], r["task"], _pct(r["fraction"]), _fmt(r["barlow"]), _fmt(r["tfidf"]),
             "yes" if r["wins"] else "no"] for r in [*t["rows"], *t["demographics"]]]  # fmt: skip
    floor = f"TF-IDF+SVD (window; full history for {', '.join(DEMOGRAPHICS)})"
    return lines + _table(["dataset", "task", "labels", "barlow", floor, "barlow >="], rows)


def _batch_section(b: dict[str, Any], batch: dict[str, Any]) -> list[str]:
    variants = next(iter(batch.values()))["variants"] if batch else {}
    desc = "; ".join(f"`{k}` batch {v['batch_size']}, {v['epochs']} epochs"
                     for k, v in variants.items())  # fmt: skip
    steps = "; ".join(  # measured optimiser steps: whole epochs make "equal steps" approximate
        f"{name} `{o}` {p[f'{o}-small-steps']['steps'] / p[f'{o}-ref']['steps']:.2f}x"
        for name, bb in batch.items() for o in ("barlow", "dual")
        if (p := bb["pretrain"]).get(f"{o}-ref", {}).get("steps")
    )  # fmt: skip
    lines = [
        f"3. `barlow` at the small batch keeps >= {100 * TARGET_KEEP:.0f}% of its reference-batch "
        f"score on every headline cell, with equal epochs (`small`) and with about equal "
        f"optimiser steps (`small-steps`, whole epochs; its steps / the reference's: {steps}): "
        f"{_yes(b['holds'])}. Fixed epochs, last checkpoint ({desc}); `dual` alongside.",
        "",
    ]
    rows = [[r["dataset"], r["objective"], r["variant"], r["task"], _pct(r["fraction"]),
             _fmt(r["score_small"]), _fmt(r["score_ref"]),
             "–" if r["keep"] is None else f"{100 * r['keep']:.1f}%"]
            for r in b["rows"]]  # fmt: skip
    return lines + _table(["dataset", "objective", "variant", "task", "labels", "small batch",
                           "reference", "kept"], rows)  # fmt: skip


def _targets_section(t: dict[str, Any], main: dict[str, Any], batch: dict[str, Any]) -> list[str]:
    lines = ["## Targets", ""]
    lines += _gain_section(t["gain"], len(main))
    lines += _tfidf_section(t["tfidf"])
    if batch:
        lines += _batch_section(t["batch"], batch)
    sel = t["selection"]
    if sel:
        change = [(abs(r["last"] / r["best"] - 1), r) for r in sel if r["best"] and r["last"]
                  and comparable(main[r["dataset"]], r["task"])]  # fmt: skip
        big = max(change, key=lambda x: x[0]) if change else None
        lines += ["**Best vs last checkpoint**: headline cells at <= 10% labels on the checkpoint "
                  "the validation proxy picked (`best`) and on the last one (fixed epochs)"
                  + ("." if big is None else
                     f"; the largest relative change on a comparable task is {100 * big[0]:.1f}% "
                     f"({big[1]['dataset']} {big[1]['task']} {_pct(big[1]['fraction'])} "
                     f"`{big[1]['objective']}`)."), ""]  # fmt: skip
        rows = [[r["dataset"], r["task"], _pct(r["fraction"]), r["objective"], _fmt(r["best"]),
                 _fmt(r["last"])] for r in sel]  # fmt: skip
        lines += _table(["dataset", "task", "labels", "objective", "best", "last"], rows)
    floors = t["floors"]
    cells = {(r["dataset"], r["task"], r["fraction"]) for r in floors}
    total = sum(len(res["tasks"]) * len(res["fractions"]) for res in main.values())
    lines += [f"**Floors.** A floor scores >= `barlow` in {len(cells)} of {total} cells (one row "
              "per floor; every task, every label fraction):", ""]  # fmt: skip
    rows = [[r["dataset"], r["task"], _pct(r["fraction"]), r["floor"], _fmt(r["floor_score"]),
             _fmt(r["barlow"])] for r in floors]  # fmt: skip
    return lines + _table(["dataset", "task", "labels", "floor", "floor score", "barlow"], rows)


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
        rows.append([key, " / ".join(str(v) for v in states.values()), _trial_epochs(h),
                     _fmt(best.get("value")), params])  # fmt: skip
    lines += _table(["dataset-objective", "complete / pruned / failed", "epochs per trial",
                     "best valid", "best params"], rows)  # fmt: skip
    return lines


def _machine(m: dict[str, Any] | None) -> str:
    if not m:
        return "machine not recorded"
    bf16 = "AVX512-BF16, so bf16 autocast" if m.get("avx512_bf16") else "no AVX512-BF16, so fp32"
    return f"{m['cpu']}, {m['nproc']} cores, {bf16}"


def _provenance(meta: dict[str, Any]) -> list[str]:
    if not meta:
        return []
    m = meta["machine"]
    plan = meta.get("plan", {})
    lines = ["## How this was produced", "", "- Invocations (wall clock, one sequential process "
             "each):"]  # fmt: skip
    for inv in meta.get("invocations", []):
        stages = ", ".join(f"{k} {v / 60:.1f} min" for k, v in inv["stages"].items())
        lines.append(f"  - `{inv['command']}` (git `{inv['git_commit']}`), {inv['started']} to "
                     f"{inv['finished']}, {inv.get('wall_minutes', '?')} min: "
                     f"{stages or 'documents only'}; {_machine(inv.get('machine'))}")  # fmt: skip
    lines += [
        f"- Machine of the last invocation: {_machine(m)}, load average "
        f"{m['load_avg_start']:.1f} at its start / {m.get('load_avg_end', float('nan')):.1f} at "
        "its end. The machines are shared with other jobs, so these times are not benchmarks; "
        "a CPU with AVX512-BF16 trains under bf16 autocast (`train.precision: auto`), one "
        "without it in fp32, and the two do not give the same numbers.",
        f"- Python {meta['python']}; " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- Plan: `{json.dumps(plan)}`",
        "",
    ]
    return lines


def write_doc(results: Path, docs: Path) -> Path:
    """Write the evidence document (and its plots, in ``<docs stem>/``) from ``results``."""
    main, batch, meta, tune = _load(results)
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
        fairness(main, tune),
    ]
    if main:
        lines += _targets_section(check_targets(main, batch), main, batch)
    if FINDINGS.is_file() and results.name != "quick":
        lines += [FINDINGS.read_text().rstrip(), ""]
    lines += _provenance(meta)
    lines += _tune_section(tune)
    if main:
        lines += ["## Main results", "", "Linear probe on frozen embeddings at every label "
                  f"fraction; objectives {', '.join(f'`{o}`' for o in OBJECTIVES)}; floors in "
                  "italics.", ""]  # fmt: skip
        for name, res in main.items():
            lines += _main_section(name, res, plots, rel)
    docs.parent.mkdir(parents=True, exist_ok=True)
    tmp = docs.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, docs)
    return docs
