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
  one after the other).

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


def drift_log(folder: Path, users: int = 1500, seed: int = 0) -> Path:
    """A log with planted drift over times 0..299: 8 item categories; items 1..160 exist from
    the start, items 161..240 appear in the second window and 241..320 in the third (10 per
    category each time); each user prefers one category, and 40 % of the users active after
    time 100 have moved to another one. Returns the folder (log.parquet, items.csv)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n = users * 40
    user = rng.integers(0, users, n)
    t = rng.integers(0, 300, n)
    taste = rng.integers(0, CATEGORIES, users)
    moved = (taste + rng.integers(1, CATEGORIES, users)) % CATEGORIES
    shifted = rng.random(users) < 0.4
    cat = np.where((t >= 100) & shifted[user], moved[user], taste[user])
    pool = np.where(t < 100, 20, np.where(t < 200, 30, 40))  # items per category so far
    own = rng.integers(0, pool) * CATEGORIES + cat  # an item of category ``cat``
    other = rng.integers(0, pool * CATEGORIES)
    item = np.where(rng.random(n) < 0.75, own, other) + 1
    pl.DataFrame({"user_id": user, "item_id": item, "timestamp": t}).write_parquet(
        folder / "log.parquet"
    )
    ids = np.arange(1, 40 * CATEGORIES + 1)
    pl.DataFrame({"item_id": ids, "genres": [f"c{(i - 1) % CATEGORIES}" for i in ids]}).write_csv(
        folder / "items.csv"
    )
    return folder


def sources(work: Path) -> dict[str, tuple[Path, ReaderOptions]]:
    synth = drift_log(work / "synthetic-log")
    return {
        "synthetic": (synth / "log.parquet",
                      ReaderOptions(items_file=synth / "items.csv", categories_col="genres")),
        "ml-latest-small": (DATA / "ml-latest-small", ReaderOptions()),
        "ml-1m": (DATA / "ml-1m", ReaderOptions()),
    }  # fmt: skip


def windows(src: Path, reader: ReaderOptions, work: Path) -> dict[str, Path]:
    """W1, W2, W3 (each an update of the one before) and ALL (everything), in ``work``."""
    out = {"all": work / "all"}
    prepare(src, out["all"], PrepareOptions(reader=reader, overwrite=True))
    times = np.asarray(SequenceDataset.open(out["all"], verify=False).sequences.times)
    t1, t2 = (int(x) for x in np.quantile(times, [1 / 3, 2 / 3]))
    cuts = [(None, t1), (t1, t2), (t2, None)]
    parent = None
    for k, (a, b) in enumerate(cuts, start=1):
        out[f"w{k}"] = work / f"w{k}"
        prepare(src, out[f"w{k}"], PrepareOptions(reader=reader, since=a, until=b, update=parent,
                                                  overwrite=True))  # fmt: skip
        parent = out[f"w{k}"]
    return out


def train(data: Path, run: Path, epochs: int, init: Path | None = None,
          strategy: str | None = None) -> float:  # fmt: skip
    """Wall seconds of one pretraining run (from scratch, or an update of ``init``)."""
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pretrain(data, run, overrides=[f"train.epochs={epochs}"], progress=False, init=init,
                 incremental=strategy_settings(strategy) if strategy else [])  # fmt: skip
    return time.perf_counter() - t0


def strategy_settings(strategy: str) -> list[str]:
    """``naive`` is plain fine-tuning (no compatibility loss either: the contrast); the
    others keep the defaults (compatibility loss on)."""
    return [f"strategy={strategy}", *(["compat=false"] if strategy == "naive" else [])]


def ratios(result: dict[str, Any], key: str) -> dict[str, float | None]:
    """Per task: ``key`` of ``compat_scores`` relative to the old run's own score."""
    out: dict[str, float | None] = {}
    for name, row in result["tasks"].items():
        a, b = row["old"], row[key]
        out[name] = None if a is None or b is None or a == 0 else b / a
    return out


def study(name: str, src: Path, reader: ReaderOptions, work: Path, args: argparse.Namespace,
          say: Any) -> dict[str, Any]:  # fmt: skip
    data = windows(src, reader, work / "data")
    counts = {k: json.loads((p / "meta.json").read_text())["counts"] for k, p in data.items()}
    runs = work / "runs"
    seconds = {"base": train(data["w1"], runs / "base", args.epochs)}
    say(f"{name}: base {seconds['base']:.0f}s")
    seconds["scratch"] = train(data["all"], runs / "scratch", args.epochs)
    say(f"{name}: scratch {seconds['scratch']:.0f}s")
    rows: dict[str, Any] = {}
    for s in args.strategies:
        u2, u3 = runs / f"{s}-w2", runs / f"{s}-w3"
        t2 = train(data["w2"], u2, args.update_epochs, runs / "base", s)
        t3 = train(data["w3"], u3, args.update_epochs, u2, s)
        forget = compat_scores(runs / "base", u3, data["w1"])
        plastic = compat_scores(runs / "scratch", u3, data["w3"])
        compat = compat_scores(runs / "base", u2, data["w1"])
        rows[s] = {
            "seconds": {"w2": t2, "w3": t3},
            "cost_vs_scratch": t3 / seconds["scratch"],
            "retained_w1": ratios(forget, "new_probe"),
            "compat_w1_after_w2": ratios(compat, "old_probe_on_new"),
            "compat_w1_after_w3": ratios(forget, "old_probe_on_new"),
            "plasticity_w3": ratios(plastic, "new_probe"),
            "raw": {"w1": forget["tasks"], "w3": plastic["tasks"], "compat": compat["tasks"]},
        }
        say(f"{name}: {s} retained {rows[s]['retained_w1']} compat "
            f"{rows[s]['compat_w1_after_w2']} plasticity {rows[s]['plasticity_w3']} "
            f"cost {rows[s]['cost_vs_scratch']:.2f}")  # fmt: skip
    scratch_w1 = compat_scores(runs / "base", runs / "scratch", data["w1"])
    return {"counts": counts, "seconds": seconds, "strategies": rows,
            "scratch_retained_w1": ratios(scratch_w1, "new_probe")}  # fmt: skip


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Incremental pretraining study",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']['cpu']}, {results['machine']['nproc']} cores (shared "
        "with other jobs while it ran: timings are ratios measured in the same run).  ",
        f"Epochs: {results['epochs']} from scratch, {results['update_epochs']} per update.",
        "",
        "retained = the final (W3) update's probe score on W1 users relative to the W1 run's "
        "(1 - forgetting); compat = the W1 run's probe on the W2 update's embeddings, as a "
        "fraction of its score on the W1 run's; plasticity = the W3 update's probe score on "
        "W3 users relative to a run trained from scratch on W1-W3; cost = W3 update time / "
        "scratch time.",
        "",
        "| dataset | strategy | task | retained W1 | compat W1 | plasticity W3 | cost |",
        "|---|---|---|---|---|---|---|",
    ]
    for ds, r in results["datasets"].items():
        for s, row in r["strategies"].items():
            for task in row["retained_w1"]:
                lines.append(
                    f"| {ds} | {s} | {task} | {_pct(row['retained_w1'][task])} | "
                    f"{_pct(row['compat_w1_after_w2'].get(task))} | "
                    f"{_pct(row['plasticity_w3'].get(task))} | {row['cost_vs_scratch']:.2f} |"
                )
        for task, v in r["scratch_retained_w1"].items():
            lines.append(f"| {ds} | (scratch on W1-W3) | {task} | {_pct(v)} | | | 1.00 |")
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(parents=True, exist_ok=True)
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
        fig.savefig(PLOTS / f"{ds}.png", dpi=110)
        plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["synthetic", "ml-latest-small", "ml-1m"])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--update-epochs", type=int, default=3)
    p.add_argument("--work", type=Path, default=ROOT.parent / "out" / "incremental")
    p.add_argument("--quick", action="store_true", help="1 epoch each, synthetic data only")
    p.add_argument("--results", type=Path, default=RESULTS / "incremental.json")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.update_epochs, args.datasets = 1, 1, ["synthetic"]
    srcs = sources(args.work)
    say = lambda text: print(text, flush=True)  # noqa: E731
    results: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info("torch", "polars"),
        "epochs": args.epochs, "update_epochs": args.update_epochs, "datasets": {},
    }  # fmt: skip
    for name in args.datasets:
        src, reader = srcs[name]
        results["datasets"][name] = study(name, src, reader, args.work / name, args, say)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=2) + "\n")  # after each dataset
        args.results.with_suffix(".md").write_text(markdown(results))
        plots(results)
    say(markdown(results))


if __name__ == "__main__":
    main()
