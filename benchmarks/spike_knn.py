"""Spike (issue 11): label-free user-kNN ("lookalike") scoring of ``future_items``.

Question: is there a label-free way to rank items with *any* user embedding, fair to every
method, so that ``barlow`` (scored today only through a probe fitted on 1-10 % labelled
users) can be compared with ``dual:native`` (its own item tower, no labels)?

``<method>:knn`` scores a user ``u`` as follows. Its ``K`` nearest **train** users ``v`` by
cosine of the method's user embeddings vote for the items of *their pretraining history*
(``items[offsets[v]:history_end[v]]``, the input the encoder/pretraining saw; never a
neighbour's future window, which holds the labels): ``score(j) = sum_v max(sim(u,v), 0)^p
* [j in history(v)]``. Items no neighbour voted for tie at 0 and are ordered by their
count over all train users' histories (label free too), scaled below any vote. ``u``'s own
history items are removed from the ranking by the protocol itself (``Task.exclude``), as for
every method. The same scorer runs on every embedding (``barlow``, ``dual``,
``barlow+next``, the TF-IDF+SVD floors) and on the raw bag of items (binary history
vectors, cosine: ``items:knn``, classic user-based CF), so the comparison is like for like.
The scorer has since moved into the library (:func:`seqtwins.evaluate.baselines.neighbours`,
``knn_prediction``, ``knn_base``; ``items:knn`` at K = 200, p = 1 is ``seqtwins evaluate``'s
``items-knn`` floor), where neighbours tied in similarity at the K-th place go to the
smaller ``user_idx`` instead of ``argpartition``'s choice. A rerun can differ from the
stored results in the fourth digit: Beauty ``items:knn`` (K = 200, p = 1) report half,
recall@10 stored 0.06275, this script's former code rerun on a 2-core AMD EPYC 0.06288
(cause not traced: same numpy, scipy and dataset hash), with the tie rule 0.06292.

Measured on **valid users only** (test users are the study's, scored once and never here).
The labelled valid users are split in two halves (fixed seed): half A selects ``K`` and
``p`` for each ``:knn`` method and the probe's L2 strength; half B reports every number.
Probes: the protocol's own ridge probe (:func:`seqtwins.evaluate.protocol._score_method`)
fitted on the same nested labelled train subsets (1/5/10 %, seeds 0-2) as ``seqtwins
evaluate``; natives: :func:`seqtwins.evaluate.runs.native_scorers`. Metrics and the
history exclusion are the protocol's (:func:`seqtwins.evaluate.protocol._test_metrics`).

Usage (from the repository root; ``PYTHONPATH=src`` when not installed)::

    python benchmarks/spike_knn.py train configs/tuned/beauty.yaml out/beauty-data \
        out/beauty-runs barlow,dual,barlow+next --set pretrain.train.epochs=4
    python benchmarks/spike_knn.py score out/beauty-data out/beauty-runs/barlow \
        out/beauty-runs/dual out/beauty-runs/barlow+next \
        --out benchmarks/results/spike_knn-beauty.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from _machine import machine_info

from seqtwins.data.dataset import SequenceDataset
from seqtwins.evaluate.baselines import knn_base, knn_prediction, neighbours
from seqtwins.evaluate.probe import Prediction, ProbeConfig, cpu_threads
from seqtwins.evaluate.protocol import (
    MAJORITY,
    _CellTask,
    _score_method,
    _test_metrics,
    labelled_subset,
    train_order,
)
from seqtwins.evaluate.runs import _tfidf_floors, method_names, native_scorers
from seqtwins.evaluate.tasks import FUTURE_ITEMS, build_task
from seqtwins.models.encoder import embed_users
from seqtwins.run import Run

KS = (20, 50, 200)
PS = (1.0, 3.0)
FRACTIONS = (0.01, 0.05, 0.1)
SEEDS = (0, 1, 2)
SPLIT_SEED = 11
BOOTSTRAP = 2000
ITEMS_KNN = "items"
"""Name of the raw bag-of-items method (binary history vectors, no learning)."""


# --- helpers -------------------------------------------------------------------------------


def split_valid(valid: np.ndarray, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The labelled valid users in two fixed halves: (select, report), each sorted."""
    perm = np.random.default_rng(seed).permutation(len(valid))
    half = len(valid) // 2
    return np.sort(valid[perm[:half]]), np.sort(valid[perm[half:]])


def bootstrap(diff: np.ndarray, base: np.ndarray, n: int = BOOTSTRAP) -> dict[str, float]:
    """Paired bootstrap over users of the mean difference and of the relative gain
    (mean diff / mean base): 95 % intervals."""
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(diff), size=(n, len(diff)))
    d = diff[pick].mean(axis=1)
    b = base[pick].mean(axis=1)
    rel = d / np.maximum(b, 1e-12)
    return {
        "mean_diff": float(diff.mean()),
        "diff_lo": float(np.quantile(d, 0.025)),
        "diff_hi": float(np.quantile(d, 0.975)),
        "rel": float(diff.mean() / max(base.mean(), 1e-12)),
        "rel_lo": float(np.quantile(rel, 0.025)),
        "rel_hi": float(np.quantile(rel, 0.975)),
    }


def _epochs(run: Run) -> dict[str, Any]:
    """The validation epochs a run recorded and the best of them (proxy score): also for
    a run stopped before its scheduled epochs, whose ``best`` checkpoint is that epoch."""
    valid = [
        rec
        for line in run.metrics_file.read_text(encoding="utf-8").splitlines()
        if line.strip() and (rec := json.loads(line)).get("event") == "valid"
    ]
    best = max(valid, key=lambda r: r["score"]) if valid else None
    return {
        "epochs_done": len(valid),
        "best_epoch": None if best is None else best["epoch"],
        "proxy_by_epoch": [round(r["score"], 4) for r in valid],
    }


def machine_state() -> dict[str, Any]:
    """Cores, CPU, versions and the load average at the time of writing (a shared machine)."""
    import torch

    state = machine_info("numpy", "scipy", "torch")
    state["torch_threads"] = torch.get_num_threads()
    with contextlib.suppress(OSError):
        state["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    return state


# --- the spike -----------------------------------------------------------------------------


def score(
    data: Path,
    run_dirs: list[Path],
    out: Path,
    checkpoint: str,
    say: Callable[[str], None],
    floors_window: tuple[int, int] = (64, 50),
) -> dict[str, Any]:
    """Score every method on the report half of the valid users and write ``out``.
    Without runs only the floors are scored (TF-IDF+SVD to ``floors_window`` = (dim,
    max_len)); with runs the floors take the first run's width and window, as
    ``seqtwins evaluate`` does."""
    t_all = time.perf_counter()
    ds = SequenceDataset.open(data)
    runs = [Run.open(r) for r in run_dirs]
    names = method_names(run_dirs, [r.config.objective for r in runs])
    encoders = [r.encoder(checkpoint, ds) for r in runs]
    all_users = np.arange(ds.num_users)
    methods: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name, enc in zip(names, encoders, strict=True):
        t0 = time.perf_counter()
        methods[name] = embed_users(enc, ds, all_users)
        seconds[f"embed {name}"] = time.perf_counter() - t0
        say(f"embedded {name} ({seconds[f'embed {name}']:.1f}s)")
    if encoders:
        _tfidf_floors(ds, encoders, ("tfidf-svd", "tfidf-svd-window"), encoders[0].cfg.dim,
                      methods)  # fmt: skip
    else:
        from seqtwins.evaluate.baselines import tfidf_svd_embeddings

        dim, max_len = floors_window
        methods["tfidf-svd"] = tfidf_svd_embeddings(ds, dim=dim)
        methods["tfidf-svd-window"] = tfidf_svd_embeddings(ds, dim=dim, max_len=max_len)

    task = build_task(ds, FUTURE_ITEMS)
    train = ds.split_users("train").astype(np.int64)
    valid_l = task.labelled(ds.split_users("valid"))
    sel, rep = split_valid(valid_l)
    train_l = task.labelled(train)
    n_cls = int(np.count_nonzero(task.class_counts(train_l)))
    cfg = ProbeConfig(kind="linear").for_task(len(train_l), n_cls, multilabel=True)
    say(f"future_items: {len(valid_l)} labelled valid users -> select {len(sel)} / "
        f"report {len(rep)}; probe solver {cfg.solver}")  # fmt: skip
    # the protocol's cell: "valid" = the selection half, "test" = the report half
    ct_rep = _CellTask(task, sel, rep, cfg, methods, {}, {})
    ct_sel = _CellTask(task, sel, sel, cfg, methods, {}, {})

    rows: list[dict[str, Any]] = []
    per_user: dict[str, np.ndarray] = {}

    def record(method: str, kind: str, metrics: dict[str, Any], values: Any, **extra: Any) -> None:
        rows.append({"method": method, "kind": kind, **extra,
                     **{m: metrics[m] for m in task.metrics}})  # fmt: skip
        if values is not None:
            per_user[method + ("" if "fraction" not in extra else f"|{extra['fraction']:g}")] = (
                np.asarray(values)
            )

    # probes (and the popularity floor of the labelled subset) at 1/5/10 %
    orders = {s: train_order(ds, s) for s in SEEDS}
    for frac in FRACTIONS:
        for method in [MAJORITY, *methods]:
            t0 = time.perf_counter()
            seed_metrics: list[dict[str, Any]] = []
            seed_values: list[np.ndarray] = []
            for s in SEEDS:
                sub = labelled_subset(orders[s], task.labels, frac)
                metrics, _sel, values = _score_method(ct_rep, method, sub, s)
                seed_metrics.append(metrics)
                assert values is not None  # recall@10 has per-user values
                seed_values.append(values)
            mean = {m: float(np.mean([x[m] for x in seed_metrics])) for m in task.metrics}
            vals = np.mean(np.stack(seed_values), axis=0)
            seconds[f"probe {method} {frac:g}"] = time.perf_counter() - t0
            record(method, "majority" if method == MAJORITY else "probe", mean, vals,
                   fraction=frac, n_train=int(len(sub)))  # fmt: skip
        say(f"probes at {frac:g} done")

    # natives
    for name, scorer in native_scorers(runs, names, ds, methods, checkpoint).items():
        t0 = time.perf_counter()
        pred = scorer(task, rep)
        assert pred is not None
        with cpu_threads(1):
            metrics, values = _test_metrics(ct_rep, pred)
        seconds[name] = time.perf_counter() - t0
        record(name, "native", metrics, values)
        say(f"{name}: {metrics}")

    # kNN: one scorer for every embedding, and for the raw bag of items
    history, _, prior = knn_base(ds)  # (U, N) 0/1 pretraining histories; [0, 1) label free
    votes = history[train]  # (n_train, N)
    n_items = votes.shape[1]
    everyone = Prediction.lazy(
        len(rep),
        np.arange(n_items, dtype=np.int64),
        lambda a, b: np.broadcast_to(prior, (b - a, n_items)),
    )
    with cpu_threads(1):
        metrics, values = _test_metrics(ct_rep, everyone)
    record("popularity", "label-free floor", metrics, values)
    spaces: dict[str, np.ndarray | sp.csr_matrix] = {**methods, ITEMS_KNN: history}
    kmax = max(KS)
    grid_rows: list[dict[str, Any]] = []
    for name, space in spaces.items():
        t0 = time.perf_counter()
        base = space[train]
        nb = {half: neighbours(space[users], base, kmax) for half, users in
              (("select", sel), ("report", rep))}  # fmt: skip
        best: tuple[float, int, float] | None = None
        for k in KS:
            for p in PS:
                with cpu_threads(1):
                    m_sel, _ = _test_metrics(ct_sel, knn_prediction(*nb["select"], votes,
                                                                    prior, k, p))  # fmt: skip
                    m_rep, _ = _test_metrics(ct_rep, knn_prediction(*nb["report"], votes,
                                                                    prior, k, p))  # fmt: skip
                grid_rows.append({"method": f"{name}:knn", "K": k, "p": p,
                                  "select": {m: m_sel[m] for m in task.metrics},
                                  "report": {m: m_rep[m] for m in task.metrics}})  # fmt: skip
                key = m_sel[task.primary_metric]
                assert key is not None
                if best is None or key > best[0]:
                    best = (key, k, p)
        assert best is not None
        _, k, p = best
        with cpu_threads(1):
            metrics, values = _test_metrics(ct_rep, knn_prediction(*nb["report"], votes,
                                                                   prior, k, p))  # fmt: skip
        seconds[f"{name}:knn (grid of {len(KS) * len(PS)})"] = time.perf_counter() - t0
        record(f"{name}:knn", "knn", metrics, values, K=k, p=p)
        say(f"{name}:knn (K={k}, p={p:g}): {metrics}")

    # paired comparisons on the report half (primary metric, per user)
    compare: dict[str, Any] = {}
    pairs = [("barlow:knn", "dual:native"),
        ("barlow:knn", "barlow+next:native"), ("barlow:knn", "dual:knn"),
             ("barlow:knn", "tfidf-svd:knn"), ("barlow:knn", "items:knn"),
             ("barlow:knn", "barlow|0.01"), ("barlow:knn", "barlow|0.1"),
             ("dual:knn", "dual:native"), ("barlow+next:knn", "barlow+next:native")]  # fmt: skip
    for a, b in pairs:
        if a in per_user and b in per_user:
            compare[f"{a} - {b}"] = bootstrap(per_user[a] - per_user[b], per_user[b])
    seconds["total"] = time.perf_counter() - t_all
    result = {
        "task": FUTURE_ITEMS,
        "primary_metric": task.primary_metric,
        "dataset": {
            "path": str(data),
            "content_hash": ds.content_hash,
            "num_users": ds.num_users,
            "num_items": ds.num_items,
        },  # fmt: skip
        "runs": {
            n: {
                "path": str(r),
                "checkpoint": checkpoint,
                "objective": run.config.objective,
                "epochs": run.config.train.epochs,
                "finished": run.finished,
                **_epochs(run),
            }
            for n, r, run in zip(names, run_dirs, runs, strict=True)
        },  # fmt: skip
        "users": {
            "valid_labelled": int(len(valid_l)),
            "select": int(len(sel)),
            "report": int(len(rep)),
            "split_seed": SPLIT_SEED,
            "train_neighbours": int(len(train)),
        },  # fmt: skip
        "grid": {"K": list(KS), "p": list(PS)},
        "fractions": list(FRACTIONS),
        "seeds": list(SEEDS),
        "rows": rows,
        "knn_grid": grid_rows,
        "compare": compare,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "machine": machine_state(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    say(f"wrote {out}")
    return result


def markdown(result: dict[str, Any]) -> str:
    """The result file as Markdown tables: the methods, the full kNN grid, the pairs."""
    ms = ("recall@10", "recall@20", "ndcg@10")
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    u = result["users"]
    lines = [
        f"{result['dataset']['path']}: {u['report']} report / {u['select']} select valid "
        f"users (labelled valid users: {u['valid_labelled']}); neighbours from "
        f"{u['train_neighbours']} train users.",
        "",
        "| method | how | labels | K | p | " + " | ".join(ms) + " |",
        "|---|---|---|---|---|" + "---|" * len(ms),
    ]
    for r in result["rows"]:
        labels = f"{r['fraction']:.0%}" if "fraction" in r else "none"
        k = r.get("K", "")
        p = f"{r['p']:g}" if "p" in r else ""
        vals = " | ".join(fmt(r[m]) for m in ms)
        lines.append(f"| {r['method']} | {r['kind']} | {labels} | {k} | {p} | {vals} |")
    lines += ["", "kNN grid (recall@10 on the select half / the report half):", ""]
    methods = list(dict.fromkeys(g["method"] for g in result["knn_grid"]))
    cols = [(g["K"], g["p"]) for g in result["knn_grid"] if g["method"] == methods[0]]
    lines.append("| method | " + " | ".join(f"K={k} p={p:g}" for k, p in cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    for m in methods:
        cells = [
            f"{g['select']['recall@10']:.4f} / {g['report']['recall@10']:.4f}"
            for g in result["knn_grid"]
            if g["method"] == m
        ]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Paired bootstrap over report users (recall@10, 95 % intervals):", ""]
    lines.append("| pair | difference | interval | relative | interval |")
    lines.append("|---|---|---|---|---|")
    for pair, c in result["compare"].items():
        # a base mean near zero in some resamples makes the relative interval meaningless
        rel = (
            f"[{c['rel_lo']:+.1%}, {c['rel_hi']:+.1%}]"
            if abs(c["rel_hi"]) <= 10 and abs(c["rel_lo"]) <= 10
            else "unstable (base near 0)"
        )
        name = pair.replace("|", " probe, labels ")  # "barlow|0.01": the probe at 1 %
        lines.append(
            f"| {name} | {c['mean_diff']:+.4f} | [{c['diff_lo']:+.4f}, {c['diff_hi']:+.4f}] | "
            f"{c['rel']:+.1%} | {rel} |"
        )
    return "\n".join(lines) + "\n"


def train(experiment: str, data: Path, root: Path, objectives: list[str], sets: list[str]) -> None:
    """Pretrain the objectives of an experiment file with its settings (``seqtwins run``'s
    pretraining step, with the same validation proxy), one after the other."""
    from seqtwins.experiment import load_experiment, pretrain_run

    cfg = load_experiment(experiment, sets)
    for obj in objectives:
        t0 = time.perf_counter()
        pretrain_run(cfg.pretrain_config(obj), data, root / obj, progress=False)
        print(f"{obj}: {time.perf_counter() - t0:.0f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="pretrain objectives with an experiment file's settings")
    tr.add_argument("experiment")
    tr.add_argument("data", type=Path)
    tr.add_argument("root", type=Path)
    tr.add_argument("objectives", help="comma-separated, e.g. barlow,dual,barlow+next")
    tr.add_argument("--set", dest="sets", action="append", default=[])
    sc = sub.add_parser("score", help="probes, natives and :knn on valid users")
    sc.add_argument("data", type=Path)
    sc.add_argument("runs", type=Path, nargs="*")
    sc.add_argument("--floor-dim", type=int, default=64, help="TF-IDF+SVD width without runs")
    sc.add_argument("--floor-max-len", type=int, default=50, help="its window without runs")
    sc.add_argument("--out", type=Path, required=True)
    sc.add_argument("--checkpoint", default="best")
    md = sub.add_parser("table", help="print a result file as Markdown")
    md.add_argument("result", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "table":
        print(markdown(json.loads(args.result.read_text(encoding="utf-8"))), end="")
    elif args.cmd == "train":
        train(args.experiment, args.data, args.root, args.objectives.split(","), args.sets)
    else:
        say = lambda m: print(m, flush=True)  # noqa: E731
        window = (args.floor_dim, args.floor_max_len)
        score(args.data, args.runs, args.out, args.checkpoint, say, window)
    return 0


if __name__ == "__main__":
    sys.exit(main())
