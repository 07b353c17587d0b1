"""The incremental-pretraining study (docs/incremental.md): update a run window by window
with each strategy against forgetting, and compare it with retraining from scratch.

Per dataset, the log is cut into three consecutive time windows W1, W2, W3 at the 1/3 and
2/3 quantiles of its interaction times (``prepare --since/--until``; W2 and W3 are
``--update`` datasets of the window before, so item ids stay stable). Then:

- ``base``: pretrained from scratch on W1 (``--epochs``);
- for each strategy: ``base`` updated on W2, that run updated on W3 (``--update-epochs``
  each, ``pretrain --init``); ``naive`` is plain fine-tuning, without the compatibility
  loss that the other strategies keep on (the default);
- ``scratch``: pretrained from scratch on everything up to the end of W3 (``--epochs``).

Measured with ridge probes on the headline tasks (:mod:`seqtwins.incremental.compat`):

- forgetting: on W1's users and tasks, the final update's own probe score relative to
  ``base``'s (1 - ratio; > 0 = forgotten);
- plasticity: on W3's users and tasks, the final update's probe score relative to
  ``scratch``'s;
- compatibility: a probe fitted on ``base``'s embeddings of W1 users applied, unchanged, to
  the first update's embeddings, as a fraction of its score on ``base``'s;
- cost: wall time of the W3 update relative to the scratch run (same machine, same process,
  one after the other), and the same ratio in CPU time of the process (less sensitive to
  other jobs on a shared machine; the load average before and after is recorded).

A strategy may carry settings of its own, ``NAME:key=value,key=value`` (e.g.
``replay+distill:replay_fraction=0.25``), to compare settings side by side in one run;
``--seed`` sets the training seed of every run and the reservoir's seed. By default every
run trains all its epochs and is read at its last checkpoint (``--checkpoint last``: with
the product's early stopping, ``base`` on a small window keeps a checkpoint a few steps
from its initialisation), 30 % of each window's users are test users (``--test-share``),
and every ratio has a 95 % paired-bootstrap interval over those users.

Datasets: a synthetic log with planted drift (new items in later windows and users whose
taste moves to another category), ml-latest-small and ML-1M (read from $SEQTWINS_DATA).
Results: ``benchmarks/results/incremental.json`` / ``.md`` and plots in
``docs/incremental/``.

    .venv/bin/python benchmarks/incremental.py                      # all three datasets
    .venv/bin/python benchmarks/incremental.py --datasets synthetic --quick   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from _machine import machine_info

from seqtwins.api import pretrain
from seqtwins.data.dataset import SequenceDataset
from seqtwins.data.formats import ReaderOptions
from seqtwins.data.prepare import PrepareOptions, prepare
from seqtwins.incremental.compat import compat_scores
from seqtwins.incremental.config import STRATEGIES

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
PLOTS = ROOT.parent / "docs" / "incremental"
DATA = Path(os.environ.get("SEQTWINS_DATA", ROOT.parent.parent / "shared" / "data"))
CATEGORIES = 8
RETIRED = 4
"""Categories retired at time 100 in the ``synthetic-churn`` log."""
DATASETS = ("synthetic", "synthetic-churn", "ml-latest-small", "ml-1m")


def drift_log(folder: Path, users: int = 1500, seed: int = 0, retired: int = 0) -> Path:
    """A log with planted drift over times 0..299: 8 item categories; items 1..160 exist from
    the start, items 161..240 appear in the second window and 241..320 in the third (10 per
    category each time); each user prefers one category, and 40 % of the users active after
    time 100 have moved to another one. With ``retired`` = k, categories 0..k-1 are retired
    at time 100 (a discontinued product line: none of their items is touched again) and
    their fans move to a live one (category c to k + c mod (8 - k)). Returns the folder
    (log.parquet, items.csv)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n = users * 40
    user = rng.integers(0, users, n)
    t = rng.integers(0, 300, n)
    taste = rng.integers(0, CATEGORIES, users)
    moved = (taste + rng.integers(1, CATEGORIES, users)) % CATEGORIES
    shifted = rng.random(users) < 0.4
    late = t >= 100
    cat = np.where(late & shifted[user], moved[user], taste[user])
    if retired:
        cat = np.where(late & (cat < retired), retired + cat % (CATEGORIES - retired), cat)
    pool = np.where(t < 100, 20, np.where(t < 200, 30, 40))  # items per category so far
    own = rng.integers(0, pool) * CATEGORIES + cat  # an item of category ``cat``
    other = rng.integers(0, pool * CATEGORIES)
    if retired:  # from time 100 the other items too come from live categories only
        live = rng.integers(retired, CATEGORIES, n)
        other = np.where(late, rng.integers(0, pool) * CATEGORIES + live, other)
    item = np.where(rng.random(n) < 0.75, own, other) + 1
    pl.DataFrame({"user_id": user, "item_id": item, "timestamp": t}).write_parquet(
        folder / "log.parquet"
    )
    ids = np.arange(1, 40 * CATEGORIES + 1)
    pl.DataFrame({"item_id": ids, "genres": [f"c{(i - 1) % CATEGORIES}" for i in ids]}).write_csv(
        folder / "items.csv"
    )
    return folder


def sources(work: Path, names: list[str]) -> dict[str, tuple[Path, ReaderOptions]]:
    """Each dataset of ``names``: its log and reader options (the synthetic logs are written
    into ``work``)."""
    logs = {"synthetic": 0, "synthetic-churn": RETIRED}
    synth = {n: drift_log(work / f"{n}-log", retired=logs[n]) for n in names if n in logs}
    genres = lambda f: ReaderOptions(items_file=f / "items.csv", categories_col="genres")  # noqa: E731
    return {
        **{n: (f / "log.parquet", genres(f)) for n, f in synth.items()},
        "ml-latest-small": (DATA / "ml-latest-small", ReaderOptions()),
        "ml-1m": (DATA / "ml-1m", ReaderOptions()),
    }  # fmt: skip


def windows(src: Path, reader: ReaderOptions, work: Path,
            test_share: float = 0.1) -> dict[str, Path]:  # fmt: skip
    """W1, W2, W3 (each an update of the one before) and ALL (everything), in ``work``;
    ``test_share`` of the users are test users and 10 % valid users (the rest train)."""
    split = (0.9 - test_share, 0.1, test_share)
    out = {"all": work / "all"}
    prepare(src, out["all"], PrepareOptions(reader=reader, split=split, overwrite=True))
    times = np.asarray(SequenceDataset.open(out["all"], verify=False).sequences.times)
    t1, t2 = (int(x) for x in np.quantile(times, [1 / 3, 2 / 3]))
    cuts = [(None, t1), (t1, t2), (t2, None)]
    parent = None
    for k, (a, b) in enumerate(cuts, start=1):
        out[f"w{k}"] = work / f"w{k}"
        prepare(src, out[f"w{k}"], PrepareOptions(reader=reader, since=a, until=b, update=parent,
                                                  split=split, overwrite=True))  # fmt: skip
        parent = out[f"w{k}"]
    return out


def train(data: Path, run: Path, epochs: int, seed: int, init: Path | None = None,
          strategy: str | None = None,
          checkpoint: str = "best") -> tuple[float, float]:  # fmt: skip
    """Wall and process CPU seconds of one pretraining run (from scratch, or an update of
    ``init``). With ``checkpoint="last"`` the run trains all its epochs (no early stopping)
    and an update starts from its parent's last checkpoint."""
    shutil.rmtree(run, ignore_errors=True)
    fixed = checkpoint == "last"
    overrides = [f"train.epochs={epochs}", f"train.seed={seed}", *(["train.patience=0"] * fixed)]
    settings = [*strategy_settings(strategy, seed), *(["which=last"] * fixed)] if strategy else []
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pretrain(data, run, overrides=overrides, progress=False, init=init, incremental=settings)
    return time.perf_counter() - t0, time.process_time() - c0


def strategy_settings(spec: str, seed: int = 0) -> list[str]:
    """The ``--incremental`` settings of a strategy ``NAME[:key=value,...]``. ``naive`` is
    plain fine-tuning (no compatibility loss either: the contrast); the others keep the
    defaults (compatibility loss on) unless the spec sets them."""
    name, _, extra = spec.partition(":")
    if name not in STRATEGIES:
        raise SystemExit(f"--strategies: {name!r} is not one of {', '.join(STRATEGIES)}")
    own = [x for x in extra.split(",") if x]
    return [f"strategy={name}", f"seed={seed}",
            *(["compat=false"] if name == "naive" else []), *own]  # fmt: skip


RATIOS = {"new_probe": ("new_probe_ratio", "new_probe_interval"),
          "old_probe_on_new": ("compat", "compat_interval")}  # fmt: skip
"""The ratio to the old run's own score of each score of ``compat_scores``, and its 95 %
paired-bootstrap interval over test users."""


def ratios(result: dict[str, Any], key: str) -> dict[str, float | None]:
    """Per task: ``key`` of ``compat_scores`` relative to the old run's own score."""
    return {name: row[RATIOS[key][0]] for name, row in result["tasks"].items()}


def intervals(result: dict[str, Any], key: str) -> dict[str, list[float] | None]:
    """Per task: the 95 % interval of :func:`ratios` (None where there is none)."""
    return {name: row[RATIOS[key][1]] for name, row in result["tasks"].items()}


def study(name: str, src: Path, reader: ReaderOptions, work: Path, args: argparse.Namespace,
          say: Any) -> dict[str, Any]:  # fmt: skip
    data = windows(src, reader, work / "data", args.test_share)
    counts = {k: json.loads((p / "meta.json").read_text())["counts"] for k, p in data.items()}
    runs = work / "runs"
    seconds, cpu = {}, {}
    ck = args.checkpoint
    seconds["base"], cpu["base"] = train(data["w1"], runs / "base", args.epochs, args.seed,
                                         checkpoint=ck)  # fmt: skip
    say(f"{name}: base {seconds['base']:.0f}s")
    seconds["scratch"], cpu["scratch"] = train(data["all"], runs / "scratch", args.epochs,
                                               args.seed, checkpoint=ck)  # fmt: skip
    say(f"{name}: scratch {seconds['scratch']:.0f}s")
    rows: dict[str, Any] = {}
    for s in args.strategies:
        u2, u3 = runs / f"{s}-w2", runs / f"{s}-w3"
        (t2, c2) = train(data["w2"], u2, args.update_epochs, args.seed, runs / "base", s, ck)
        (t3, c3) = train(data["w3"], u3, args.update_epochs, args.seed, u2, s, ck)
        forget = compat_scores(runs / "base", u3, data["w1"], which=ck)
        plastic = compat_scores(runs / "scratch", u3, data["w3"], which=ck)
        compat = compat_scores(runs / "base", u2, data["w1"], which=ck)
        rows[s] = {
            "seconds": {"w2": t2, "w3": t3},
            "cpu_seconds": {"w2": c2, "w3": c3},
            "cost_vs_scratch": t3 / seconds["scratch"],
            "cpu_cost_vs_scratch": c3 / cpu["scratch"],
            "retained_w1": ratios(forget, "new_probe"),
            "compat_w1_after_w2": ratios(compat, "old_probe_on_new"),
            "compat_w1_after_w3": ratios(forget, "old_probe_on_new"),
            "plasticity_w3": ratios(plastic, "new_probe"),
            "intervals": {
                "retained_w1": intervals(forget, "new_probe"),
                "compat_w1_after_w2": intervals(compat, "old_probe_on_new"),
                "compat_w1_after_w3": intervals(forget, "old_probe_on_new"),
                "plasticity_w3": intervals(plastic, "new_probe"),
            },  # fmt: skip
            "raw": {"w1": forget["tasks"], "w3": plastic["tasks"], "compat": compat["tasks"]},
        }
        say(f"{name}: {s} retained {rows[s]['retained_w1']} compat "
            f"{rows[s]['compat_w1_after_w2']} plasticity {rows[s]['plasticity_w3']} "
            f"cost {rows[s]['cost_vs_scratch']:.2f} "
            f"(CPU {rows[s]['cpu_cost_vs_scratch']:.2f})")  # fmt: skip
    if args.timing_rounds > 1:
        retime(data, runs, rows, (seconds["scratch"], cpu["scratch"]), args, say)
    scratch_w1 = compat_scores(runs / "base", runs / "scratch", data["w1"], which=ck)
    return {"counts": counts, "seconds": seconds, "cpu_seconds": cpu, "strategies": rows,
            "test_users": {task: row["test_users"] for task, row in forget["tasks"].items()},
            "scratch_retained_w1": ratios(scratch_w1, "new_probe"),
            "scratch_retained_w1_interval": intervals(scratch_w1, "new_probe")}  # fmt: skip


def retime(data: dict[str, Path], runs: Path, rows: dict[str, Any], first: tuple[float, float],
           args: argparse.Namespace, say: Any) -> None:  # fmt: skip
    """Time the scratch run and every strategy's W3 update again, ``--timing-rounds - 1``
    more times, one after the other in each round (into a throw-away folder), and set the
    cost to the best update time over the best scratch time (:func:`best_of`): on a shared
    machine the load moves within minutes, and one pair of timings can be off by 2-3x."""
    scratch = [first]
    updates = {s: [(r["seconds"]["w3"], r["cpu_seconds"]["w3"])] for s, r in rows.items()}
    if all("timing_rounds" in r for r in rows.values()):  # --retime: add to the rounds so far
        t = next(iter(rows.values()))["timing_rounds"]
        scratch = [tuple(x) for x in t["scratch"]]
        updates = {s: [tuple(x) for x in r["timing_rounds"]["w3_update"]] for s, r in rows.items()}
    tmp = runs / "retime"
    done = len(scratch)
    for k in range(done, done + args.timing_rounds - 1):
        scratch.append(train(data["all"], tmp / "scratch", args.epochs, args.seed,
                             checkpoint=args.checkpoint))  # fmt: skip
        for s in rows:
            updates[s].append(train(data["w3"], tmp / s, args.update_epochs, args.seed,
                                    runs / f"{s}-w2", s, args.checkpoint))  # fmt: skip
        say(
            f"timing round {k + 1}: scratch {scratch[-1][0]:.0f}s, updates "
            + ", ".join(f"{s} {v[-1][0]:.1f}s" for s, v in updates.items())
        )
    shutil.rmtree(tmp, ignore_errors=True)
    for s, row in rows.items():
        wall = [u[0] / sc[0] for u, sc in zip(updates[s], scratch, strict=True)]
        cpu = [u[1] / sc[1] for u, sc in zip(updates[s], scratch, strict=True)]
        row["timing_rounds"] = {"scratch": scratch, "w3_update": updates[s],
                                "cost": wall, "cpu_cost": cpu}  # fmt: skip
        best_of(row)


def best_of(row: dict[str, Any]) -> None:
    """Cost from the timing rounds: the fastest W3 update over the fastest scratch run, in
    wall and in CPU seconds (as ``timeit`` takes the minimum: other jobs only ever add
    time); each round's own ratio stays in ``timing_rounds``."""
    t = row["timing_rounds"]
    for k, key in enumerate(("cost_vs_scratch", "cpu_cost_vs_scratch")):
        row[key] = min(u[k] for u in t["w3_update"]) / min(s[k] for s in t["scratch"])


def _pct(v: float | None, interval: list[float] | None = None) -> str:
    """``87.2%``, with its 95 % interval when there is one: ``87.2% (61-110)``."""
    if v is None:
        return "n/a"
    return f"{v:.1%}" + ("" if interval is None else f" ({interval[0]:.0%}-{interval[1]:.0%})")


def _cell(row: dict[str, Any], key: str, task: str) -> str:
    """One ratio of a strategy's row, with its interval (results before intervals: none)."""
    return _pct(row[key].get(task), row.get("intervals", {}).get(key, {}).get(task))


def _cost(row: dict[str, Any], key: str) -> str:
    """The cost, with the range of the rounds' own ratios when there were several."""
    v = row.get(f"{key}_vs_scratch")
    if v is None:
        return "n/a"
    rounds = row.get("timing_rounds", {}).get(key, [])
    return f"{v:.2f}" + (f" ({min(rounds):.2f}-{max(rounds):.2f})" if len(rounds) > 1 else "")


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Incremental pretraining study",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']['cpu']}, {results['machine']['nproc']} cores (shared "
        "with other jobs while it ran: timings are ratios measured in the same run).  ",
        f"Epochs: {results['epochs']} from scratch, {results['update_epochs']} per update; "
        f"seed {results.get('seed', 0)}; timing rounds {results.get('timing_rounds', 1)}; "
        f"test users {results.get('test_share', 0.1):.0%} of each window's; checkpoints "
        f"{results.get('checkpoint', 'best')}.  ",
        f"Load average (1, 5, 15 min) at the start: {results.get('load_start')}, at the end: "
        f"{results.get('load_end')}."
        + (
            f"  \nTiming rounds added by: `{results['retimed']}` (the load above is that "
            "command's)."
            if "retimed" in results
            else ""
        ),
        "",
        "retained = the final (W3) update's probe score on W1 users relative to the W1 run's "
        "(1 - forgetting); compat = the W1 run's probe on the W2 update's embeddings, as a "
        "fraction of its score on the W1 run's; plasticity = the W3 update's probe score on "
        "W3 users relative to a run trained from scratch on W1-W3; in brackets after a ratio, "
        "its 95 % paired-bootstrap interval over the test users (where recorded); cost = W3 "
        "update time / scratch time, in wall seconds (and in process CPU seconds); with several "
        "timing rounds the fastest update over the fastest scratch run (each round's own "
        "ratio: range in brackets).",
        "",
        "| dataset | strategy | task | retained W1 | compat W1 | plasticity W3 | cost | "
        "cost (CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ds, r in results["datasets"].items():
        for s, row in r["strategies"].items():
            for task in row["retained_w1"]:
                lines.append(
                    f"| {ds} | {s} | {task} | {_cell(row, 'retained_w1', task)} | "
                    f"{_cell(row, 'compat_w1_after_w2', task)} | "
                    f"{_cell(row, 'plasticity_w3', task)} | {_cost(row, 'cost')} | "
                    f"{_cost(row, 'cpu_cost')} |"
                )
        for task, v in r["scratch_retained_w1"].items():
            ci = r.get("scratch_retained_w1_interval", {}).get(task)
            lines.append(f"| {ds} | (scratch on W1-W3) | {task} | {_pct(v, ci)} | | | 1.00 | "
                         "1.00 |")  # fmt: skip
    users = [f"{ds}: " + ", ".join(f"{t} {n}" for t, n in r["test_users"].items())
             for ds, r in results["datasets"].items() if "test_users" in r]  # fmt: skip
    if users:
        lines += ["", "Labelled W1 test users (the users behind retained and compat W1): "
                  + "; ".join(users) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], folder: Path = PLOTS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    keys = [("retained_w1", "retained on W1 (1 - forgetting)"),
            ("compat_w1_after_w2", "old probe on new embeddings"),
            ("plasticity_w3", "W3 score vs from scratch")]  # fmt: skip
    for ds, r in results["datasets"].items():
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        strategies = list(r["strategies"])
        tasks = list(next(iter(r["strategies"].values()))["retained_w1"])
        for ax, (key, title) in zip(axes, keys, strict=True):
            width = 0.8 / max(len(tasks), 1)
            for k, task in enumerate(tasks):
                vals = [r["strategies"][s][key].get(task) or 0.0 for s in strategies]
                ax.bar(np.arange(len(strategies)) + k * width, vals, width, label=task)
            ax.axhline(1.0, color="black", lw=0.8)
            ax.set_xticks(np.arange(len(strategies)) + width * (len(tasks) - 1) / 2)
            ax.set_xticklabels(strategies, rotation=20, fontsize=8)
            ax.set_title(title, fontsize=9)
        axes[0].legend(fontsize=7)
        fig.suptitle(ds)
        fig.tight_layout()
        fig.savefig(folder / f"{ds}.png", dpi=110)
        plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--update-epochs", type=int, default=6)
    p.add_argument(
        "--seed", type=int, default=0, help="train.seed of every run, and the reservoir's seed"
    )
    p.add_argument("--test-share", type=float, default=0.3, help="share of the users held "
                   "out as test users in every window (10 %% are valid users)")  # fmt: skip
    p.add_argument("--checkpoint", choices=["best", "last"], default="last",
                   help="best: the product's defaults (early stopping on the validation "
                   "proxy, updates from and probes on best checkpoints); last: every run "
                   "trains all its epochs, updates start from the parent's last checkpoint "
                   "and probes read last checkpoints")  # fmt: skip
    p.add_argument("--timing-rounds", type=int, default=1, help="time the scratch run and "
                   "the W3 updates this many times in all; cost = best over best")  # fmt: skip
    p.add_argument(
        "--retime",
        action="store_true",
        help="time --timing-rounds - 1 more "
        "rounds of the runs of --results (in --work) and add them to its rounds",
    )
    p.add_argument(
        "--render",
        action="store_true",
        help="only rewrite the .md and plots of "
        "--results from its .json (costs recomputed from its timing rounds)",
    )
    p.add_argument("--work", type=Path, default=ROOT.parent / "out" / "incremental")
    p.add_argument("--quick", action="store_true", help="1 epoch each, synthetic data only")
    p.add_argument("--results", type=Path, default=RESULTS / "incremental.json")
    p.add_argument("--plots", type=Path, default=PLOTS, help="folder of the plots")
    args = p.parse_args()
    if not 0 < args.test_share < 0.9:
        raise SystemExit(f"--test-share {args.test_share} must lie in (0, 0.9)")
    if args.render or args.retime:
        results = json.loads(args.results.read_text())
        args.checkpoint = results.get("checkpoint", "best")  # --retime times the same runs
        for name, r in results["datasets"].items() if args.retime else ():
            results["load_start"] = [round(x, 2) for x in os.getloadavg()]
            work = args.work / name
            data = {k: work / "data" / k for k in ("w1", "w2", "w3", "all")}
            first = (r["seconds"]["scratch"], r["cpu_seconds"]["scratch"])
            retime(data, work / "runs", r["strategies"], first, args, print)
            results["retimed"] = shlex.join([Path(sys.executable).name, *sys.argv])
            results["load_end"] = [round(x, 2) for x in os.getloadavg()]
        for r in results["datasets"].values():
            for row in r["strategies"].values():
                if "timing_rounds" in row:
                    best_of(row)
        args.results.write_text(json.dumps(results, indent=2) + "\n")
        args.results.with_suffix(".md").write_text(markdown(results))
        plots(results, args.plots)
        return
    if args.quick:
        args.epochs, args.update_epochs, args.datasets = 1, 1, ["synthetic"]
    srcs = sources(args.work, args.datasets)
    say = lambda text: print(text, flush=True)  # noqa: E731
    results: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info("torch", "polars"),
        "epochs": args.epochs, "update_epochs": args.update_epochs, "seed": args.seed,
        "test_share": args.test_share, "checkpoint": args.checkpoint,
        "timing_rounds": args.timing_rounds,
        "load_start": [round(x, 2) for x in os.getloadavg()], "datasets": {},
    }  # fmt: skip
    for s in args.strategies:
        strategy_settings(s)  # a bad name stops here, before any work
    for name in args.datasets:
        src, reader = srcs[name]
        results["datasets"][name] = study(name, src, reader, args.work / name, args, say)
        results["load_end"] = [round(x, 2) for x in os.getloadavg()]
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=2) + "\n")  # after each dataset
        args.results.with_suffix(".md").write_text(markdown(results))
        plots(results, args.plots)
    say(markdown(results))


if __name__ == "__main__":
    main()
