"""Speed and memory of ``seqtwins prepare`` vs a straightforward pandas reference.

Generates a log shaped like MovieLens-20M (default 20,000,263 ratings from 138,493 users on
26,744 movies; sizes scale with ``--size``): user lengths >= 20 with a heavy lognormal tail,
Zipf-like item popularity, sparse movie ids up to 131,262, half-star ratings, timestamps in
seconds with many same-second ties, rows sorted by user then movie id like the official
``ratings.csv`` (so not in time order). It is written once as Parquet and once as CSV in a
temporary folder (deleted afterwards), then each case runs in a fresh child process:

* ``seqtwins`` -- :func:`seqtwins.data.prepare.prepare` with default options;
* ``pandas``   -- the same transformation written plainly with pandas: read, null check,
  stable sort by (user, time), drop users with < min_history + 1 items, item index 1..N by
  sorted id, users by sorted id, seeded split, held-out window, CSR arrays + tables written.

Each child reports wall seconds for the whole job (read to written output, imports
excluded) and its peak RSS (``VmHWM``: the child's own high-water mark). Both outputs are
compared array by array.
Results: ``benchmarks/results/prepare.json`` and ``prepare.md``.

    .venv/bin/python benchmarks/bench_prepare.py               # full run, 20M rows
    .venv/bin/python benchmarks/bench_prepare.py --size 200000  # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
ML20M = {"ratings": 20_000_263, "users": 138_493, "items": 26_744, "max_movie_id": 131_262}
HOLDOUT, MIN_HISTORY, SPLIT, SEED = 5, 3, (0.8, 0.1, 0.1), 0
TARGET_SPEEDUP, TARGET_RSS_GB = 5.0, 3.0


# --- the synthetic MovieLens-20M-shaped log ----------------------------------------------


def generate(n: int, seed: int) -> dict[str, np.ndarray]:
    """Columns userId, movieId, rating, timestamp (ML-20M's ratings.csv) with ``n`` rows."""
    rng = np.random.default_rng(seed)
    scale = n / ML20M["ratings"]
    n_users = max(10, round(ML20M["users"] * scale))
    n_items = max(10, round(ML20M["items"] * scale))
    # user lengths: >= 20 (MovieLens keeps users with >= 20 ratings), lognormal tail
    floor = min(20, n // n_users)
    tail = rng.lognormal(0.0, 1.3, n_users)
    lengths = floor + np.floor(tail / tail.sum() * (n - floor * n_users)).astype(np.int64)
    lengths[rng.choice(n_users, n - int(lengths.sum()), replace=False)] += 1
    # items: Zipf-like popularity over sparse movie ids
    movie_ids = np.sort(rng.choice(np.arange(1, ML20M["max_movie_id"] + 1), n_items, replace=False))
    pop = 1.0 / (np.arange(n_items) + 10.0) ** 1.1
    pop = rng.permutation(pop / pop.sum())
    item = movie_ids[rng.choice(n_items, n, p=pop)]
    user = np.repeat(np.arange(1, n_users + 1), lengths)
    # timestamps: a start per user (1995-2015), then gaps: mostly seconds (a rating session,
    # many same-second ties), sometimes days
    start = rng.integers(789_652_009, 1_427_784_002, n_users)
    gaps = np.where(rng.random(n) < 0.8, rng.integers(0, 30, n), rng.integers(0, 30 * 86400, n))
    csum = np.cumsum(gaps)
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    ts = np.repeat(start, lengths) + csum - csum[first]
    stars = np.arange(1, 11) / 2.0
    p_stars = np.array([1.1, 3.4, 1.6, 7.1, 4.4, 21.4, 13.9, 27.7, 7.6, 14.5])
    rating = rng.choice(stars, n, p=p_stars / p_stars.sum())
    # file order: by user, then movie id (as the official file), not by time
    order = np.lexsort((item, user))
    return {"userId": user, "movieId": item[order], "rating": rating, "timestamp": ts[order]}


def write_inputs(n: int, seed: int, folder: Path) -> dict[str, Any]:
    import polars as pl

    t0 = time.perf_counter()
    df = pl.DataFrame(generate(n, seed))
    gen_s = time.perf_counter() - t0
    df.write_parquet(folder / "ratings.parquet")
    df.write_csv(folder / "ratings.csv")
    return {
        "rows": df.height,
        "users": df["userId"].n_unique(),
        "items": df["movieId"].n_unique(),
        "generate_s": round(gen_s, 2),
        "parquet_mb": round((folder / "ratings.parquet").stat().st_size / 2**20, 1),
        "csv_mb": round((folder / "ratings.csv").stat().st_size / 2**20, 1),
    }


# --- the cases (each in a fresh child) ----------------------------------------------------


def run_seqtwins(src: Path, fmt: str, out: Path) -> dict[str, float]:
    from seqtwins.data.formats import ReaderOptions
    from seqtwins.data.memory import tuned_process
    from seqtwins.data.prepare import PrepareOptions, prepare

    with tuned_process():  # as the CLI does: gc off, glibc malloc tuned (an entry point's)
        summary = prepare(src, out, PrepareOptions(reader=ReaderOptions(format=fmt)))
    return {k: round(v, 3) for k, v in summary.seconds.items()}


def run_pandas(src: Path, fmt: str, out: Path) -> dict[str, float]:
    """The reference: the same transformation as ``prepare`` with defaults, plain pandas."""
    import pandas as pd

    cols = ["userId", "movieId", "timestamp", "rating"]
    df = pd.read_parquet(src, columns=cols) if fmt == "parquet" else pd.read_csv(src)[cols]
    if df.isna().any().any():
        raise ValueError("nulls in input")
    df = df.sort_values(["userId", "timestamp"], kind="stable")
    size = df.groupby("userId", sort=False)["movieId"].transform("size")
    df = df[size >= MIN_HISTORY + 1]
    item_codes, item_ids = pd.factorize(df["movieId"], sort=True)
    user_codes, user_ids = pd.factorize(df["userId"], sort=True)
    lengths = np.bincount(user_codes)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    hist = np.minimum(np.maximum(lengths - HOLDOUT, MIN_HISTORY), lengths)
    n = len(lengths)
    n_valid, n_test = round(SPLIT[1] * n), round(SPLIT[2] * n)
    perm = np.random.default_rng(SEED).permutation(n)
    split = np.array(["train"] * n, dtype=object)
    split[perm[n - n_valid - n_test : n - n_test]] = "valid"
    split[perm[n - n_test :]] = "test"
    out.mkdir(parents=True)
    np.save(out / "offsets.npy", offsets)
    np.save(out / "items.npy", (item_codes + 1).astype(np.int32))
    np.save(out / "times.npy", df["timestamp"].to_numpy(np.int64))
    np.save(out / "ratings.npy", df["rating"].to_numpy(np.float32))
    np.save(out / "history_end.npy", offsets[:-1] + hist)
    pd.DataFrame({"item_id": np.asarray(item_ids).astype(str)}).to_parquet(out / "items.parquet")
    pd.DataFrame({"user_id": np.asarray(user_ids).astype(str), "split": split}).to_parquet(
        out / "users.parquet"
    )
    return {}


def child(impl: str, src: Path, fmt: str, out: Path) -> None:
    import pandas  # noqa: F401  (imports outside the timed region, for both)
    import polars  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import seqtwins.data.prepare  # noqa: F401
    from seqtwins.data.memory import peak_rss

    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    phases = (run_seqtwins if impl == "seqtwins" else run_pandas)(src, fmt, out)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "seconds": seconds,
        # high-water mark of the whole child (VmHWM: ru_maxrss would report the parent's
        # peak, which Linux carries across execve)
        "peak_rss_mb": peak_rss() / 2**20,
        "cpu_user_s": after.ru_utime - before.ru_utime,  # timed region only
        "cpu_sys_s": after.ru_stime - before.ru_stime,
        "phases": phases,
    }))  # fmt: skip


def _busy_seconds() -> float:
    """CPU seconds all processes have spent running, machine-wide (user + system)."""
    import psutil

    t = psutil.cpu_times()
    return float(t.user + t.system + getattr(t, "nice", 0.0))


def run_case(impl: str, src: Path, fmt: str, out: Path) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    busy0, child0 = _busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cmd = [sys.executable, __file__, "--child", impl, fmt, str(src), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{impl}/{fmt} failed:\n{proc.stderr[-3000:]}")
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (child1.ru_utime - child0.ru_utime) + (child1.ru_stime - child0.ru_stime)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(impl=impl, input=fmt, load_avg_1min_before=round(load_before, 2))
    # the share of the machine's CPU time that other processes used while the child ran
    other = (_busy_seconds() - busy0 - own) / (wall * (os.cpu_count() or 1))
    res["other_processes_cpu_share"] = round(min(1.0, max(0.0, other)), 3)
    return res


def compare(a: Path, b: Path) -> dict[str, bool]:
    import polars as pl

    same = {
        name: bool(np.array_equal(np.load(a / f"{name}.npy"), np.load(b / f"{name}.npy")))
        for name in ("offsets", "items", "times", "ratings", "history_end")
    }
    ua, ub = pl.read_parquet(a / "users.parquet"), pl.read_parquet(b / "users.parquet")
    same["users"] = ua.select("user_id", "split").equals(ub.select("user_id", "split"))
    ia, ib = pl.read_parquet(a / "items.parquet"), pl.read_parquet(b / "items.parquet")
    same["items_table"] = ia["item_id"].equals(ib["item_id"])
    return same


# --- report -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return machine_info("polars", "pyarrow", "numpy", "pandas")


def markdown(res: dict[str, Any]) -> str:
    m, d = res["machine"], res["data"]
    lines = [
        "# `prepare` benchmark",
        "",
        f"Command: `{res['command']}` (run at {res['started']}, total {res['total_s']:.0f} s).",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memory_gb']} GiB; Python {m['python']}, "
        f"polars {m['polars']}, pyarrow {m['pyarrow']}, numpy {m['numpy']}, pandas "
        f"{m['pandas']}. **Shared machine**: other jobs ran at the same time; the 1-minute load "
        "average before each case is listed (2.0 = both cores busy), and the share of the "
        "machine's CPU time that other processes used while the case ran (`other CPU`).",
        "",
        f"Data: {d['rows']:,} ratings, {d['users']:,} users, {d['items']:,} items, shaped like "
        f"MovieLens-20M (Parquet {d['parquet_mb']} MiB, CSV {d['csv_mb']} MiB; generated in "
        f"{d['generate_s']} s, not timed). Default options (holdout 5, min history 3, no filters).",
        "",
        f"Each case ran {res['repeat']} time(s) in a fresh process, interleaved; the fastest "
        "run is reported (all wall times in the last column). CPU s = user + system CPU "
        "seconds of that run (less sensitive to other jobs than wall time).",
        "",
        "| implementation | input | wall s | rows/s | CPU s | peak RSS (MiB) | load before "
        "| other CPU | phases (s) | all runs (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for c in res["cases"]:
        phases = ", ".join(f"{k} {v:.2f}" for k, v in c["phases"].items()) or "-"
        lines.append(
            f"| {c['impl']} | {c['input']} | {c['seconds']:.2f} | {c['rows_per_s']:,.0f} | "
            f"{c['cpu_s']:.2f} | {c['peak_rss_mb']:,.0f} | {c['load_avg_1min_before']} | "
            f"{100 * c.get('other_processes_cpu_share', float('nan')):.0f}% | "
            f"{phases} | {', '.join(map(str, c['all_seconds']))} |"
        )
    lines += ["", "Speed-up of seqtwins over pandas (pandas / seqtwins):", ""]
    for fmt, r in res["speedup"].items():
        lines.append(
            f"- {fmt}: **{r:.2f}x** wall time (fastest runs), "
            f"{res['median_seconds_ratio'][fmt]:.2f}x median wall time, "
            f"{res['cpu_seconds_ratio'][fmt]:.2f}x CPU time (fastest runs)"
        )
    t = res["targets"]
    lines += [
        "",
        f"Targets (Parquet input): speed-up >= {TARGET_SPEEDUP}x: "
        f"**{'met' if t['speedup_met'] else 'MISSED'}** ({t['speedup']:.2f}x); "
        f"peak RSS <= {TARGET_RSS_GB} GB: **{'met' if t['rss_met'] else 'MISSED'}** "
        f"({t['peak_rss_gb']:.2f} GB).",
        "",
        "Outputs identical (seqtwins vs pandas, every array and the id/split tables): "
        + ", ".join(
            f"{fmt}: {'yes' if all(v.values()) else 'NO ' + str(v)}"
            for fmt, v in res["outputs_identical"].items()
        ),  # fmt: skip
        "",
    ]
    if res.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=ML20M["ratings"], help="interactions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="temp folder (default: system)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--cases", default="seqtwins,pandas", help="implementations to run")
    ap.add_argument("--inputs", default="parquet,csv", help="input formats to run")
    ap.add_argument("--repeat", type=int, default=1, help="runs per case (fastest reported)")
    ap.add_argument("--note", action="append", default=[], help="a note for the report")
    ap.add_argument(
        "--child", nargs=4, metavar=("IMPL", "FMT", "SRC", "OUT"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.child:
        impl, fmt, src, out = args.child
        child(impl, Path(src), fmt, Path(out))
        return

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_prepare_", dir=args.workdir))
    try:
        print(f"generating {args.size:,} rows in {work} ...", flush=True)
        data = write_inputs(args.size, args.seed, work)
        print(json.dumps(data), flush=True)
        impls, fmts = args.cases.split(","), args.inputs.split(",")
        cases, runs = [], []
        for fmt in fmts:
            for rep in range(args.repeat):  # interleave implementations and repeats
                for impl in impls:
                    out = work / f"out-{impl}-{fmt}"
                    shutil.rmtree(out, ignore_errors=True)
                    res = run_case(impl, work / f"ratings.{fmt}", fmt, out)
                    res["repeat"] = rep
                    print(json.dumps(res), flush=True)
                    runs.append(res)
            for impl in impls:  # the fastest repeat stands for the case (least disturbed)
                mine = [r for r in runs if r["impl"] == impl and r["input"] == fmt]
                best = dict(min(mine, key=lambda r: r["seconds"]))
                best["rows_per_s"] = data["rows"] / best["seconds"]
                best["cpu_s"] = best["cpu_user_s"] + best["cpu_sys_s"]
                best["all_seconds"] = [round(r["seconds"], 2) for r in mine]
                cases.append(best)
        by = {(c["impl"], c["input"]): c for c in cases}
        speedup = {
            fmt: by[("pandas", fmt)]["seconds"] / by[("seqtwins", fmt)]["seconds"]
            for fmt in fmts
            if ("pandas", fmt) in by and ("seqtwins", fmt) in by
        }
        cpu_ratio = {
            fmt: by[("pandas", fmt)]["cpu_s"] / by[("seqtwins", fmt)]["cpu_s"] for fmt in speedup
        }
        median_ratio = {  # less flattering than the fastest runs when run times scatter
            fmt: float(np.median(by[("pandas", fmt)]["all_seconds"]))
            / float(np.median(by[("seqtwins", fmt)]["all_seconds"]))
            for fmt in speedup
        }
        identical = {
            fmt: compare(work / f"out-seqtwins-{fmt}", work / f"out-pandas-{fmt}")
            for fmt in speedup
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pq = by.get(("seqtwins", "parquet"))
    res = {
        "command": shlex.join([".venv/bin/python", "benchmarks/bench_prepare.py", *sys.argv[1:]]),
        "started": started,
        "total_s": time.perf_counter() - t_start,
        "machine": machine(),
        "data": data,
        "options": {
            "holdout": HOLDOUT,
            "min_history": MIN_HISTORY,
            "split": SPLIT,
            "split_seed": SEED,
        },  # fmt: skip
        "cases": cases,
        "speedup": speedup,
        "cpu_seconds_ratio": cpu_ratio,
        "median_seconds_ratio": median_ratio,
        "repeat": args.repeat,
        "outputs_identical": identical,
        "targets": {
            "speedup": speedup.get("parquet", float("nan")),
            "speedup_met": speedup.get("parquet", 0.0) >= TARGET_SPEEDUP,
            "peak_rss_gb": pq["peak_rss_mb"] / 1024 if pq else float("nan"),
            "rss_met": bool(pq) and pq["peak_rss_mb"] / 1024 <= TARGET_RSS_GB,
        },
        "notes": args.note,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "prepare.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.results / "prepare.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
