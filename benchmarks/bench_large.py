"""``seqtwins prepare`` on a log larger than its memory budget (issue 6, "Large logs").

Generates a synthetic log of ``--rows`` interactions (default 100M: 1M users, 200k items,
sizes scale with ``--rows``) as a partitioned Parquet folder, ``day=DDDD/part-0.parquet``,
one partition per simulated day in time order -- the usual layout of an event log, *not*
grouped by user, so ``prepare`` cannot stream it in one pass and must go out of core. It is
written chunk by chunk (one day at a time: never the whole log in memory) under
``--workdir`` (default: the system temp folder) and deleted afterwards unless ``--keep``.

User activity is lognormal (a few heavy users, many light ones), item popularity
Zipf-like (exponent 1.05 over a random permutation of the ids), timestamps increase
within and across days, ratings are half stars.

Then the exact command ``seqtwins prepare DIR --out OUT --memory-budget BUDGET`` runs in a
child process; recorded: wall time, rows/s, the child's peak RSS (VmHWM, printed by
``prepare`` itself, and cross-checked by sampling its RSS every 0.2 s), the load average
and the share of the machine's CPU time other processes used meanwhile. Results:
``benchmarks/results/large.json`` and ``large.md``.

    .venv/bin/python benchmarks/bench_large.py                   # 100M rows, budget 4GB
    .venv/bin/python benchmarks/bench_large.py --rows 50000 --budget 64MB --results /tmp/r
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
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
import psutil
from _machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
FULL = {"rows": 100_000_000, "users": 1_000_000, "items": 200_000}
TARGET_RSS_GB = 6.0
DAY = 86_400


def sizes(rows: int) -> tuple[int, int]:
    """Users and items for ``rows`` interactions (the full-size ratios, with floors)."""
    users = max(50, round(FULL["users"] * rows / FULL["rows"]))
    items = max(50, round(FULL["items"] * rows / FULL["rows"]))
    return users, items


def generate(folder: Path, rows: int, days: int, seed: int) -> dict[str, Any]:
    """Write the log day by day; returns its shape. Memory: one day's rows at a time."""
    import polars as pl

    rng = np.random.default_rng(seed)
    n_users, n_items = sizes(rows)
    activity = rng.lognormal(0.0, 1.0, n_users)
    activity /= activity.sum()
    user_cdf = np.cumsum(activity)
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    pop = 1.0 / ranks**1.05
    item_cdf = np.cumsum(rng.permutation(pop / pop.sum()))
    user_ids = rng.choice(np.arange(10 * n_users), n_users, replace=False) + 1  # sparse ids
    stars = np.arange(1, 11, dtype=np.float32) / 2
    p_stars = np.array([1.1, 3.4, 1.6, 7.1, 4.4, 21.4, 13.9, 27.7, 7.6, 14.5])
    t0 = time.perf_counter()
    written = 0
    start = 1_600_000_000
    per_day = np.full(days, rows // days)
    per_day[: rows % days] += 1
    for day, n in enumerate(per_day.tolist()):
        u = np.searchsorted(user_cdf, rng.random(n) * user_cdf[-1], side="right")
        i = np.searchsorted(item_cdf, rng.random(n) * item_cdf[-1], side="right")
        ts = start + day * DAY + np.sort(rng.integers(0, DAY, n))  # time order in the day
        part = folder / f"day={day:04d}"
        part.mkdir(parents=True)
        pl.DataFrame(
            {
                "user_id": user_ids[np.minimum(u, n_users - 1)],
                "item_id": np.minimum(i, n_items - 1).astype(np.int32) + 1,
                "timestamp": ts,
                "rating": rng.choice(stars, n, p=p_stars / p_stars.sum()),
            }
        ).write_parquet(part / "part-0.parquet")
        written += n
    size = sum(f.stat().st_size for f in folder.rglob("*.parquet"))
    return {
        "rows": written,
        "users_generated": n_users,
        "items_generated": n_items,
        "partitions": days,
        "parquet_mb": round(size / 2**20, 1),
        "generate_s": round(time.perf_counter() - t0, 1),
    }


def _busy_seconds() -> float:
    """CPU seconds all processes have spent running, machine-wide (user + system)."""
    t = psutil.cpu_times()
    return float(t.user + t.system + getattr(t, "nice", 0.0))


def run_prepare(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd`` (a ``seqtwins prepare``), sampling its RSS; wall, CPU, RSS and output."""
    load_before = os.getloadavg()[0]
    busy0, child0 = _busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    sampled = 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):  # it may just have ended
            sampled = max(sampled, ps.memory_info().rss)
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    out = proc.stdout.read() if proc.stdout else ""
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"prepare failed ({proc.returncode}):\n{out[-3000:]}")
    cpu = (child1.ru_utime - child0.ru_utime) + (child1.ru_stime - child0.ru_stime)
    other = max(0.0, (_busy_seconds() - busy0 - cpu) / (wall * (os.cpu_count() or 1)))
    peak = re.search(r"peak memory ([0-9.]+) (TB|GB|MB|kB)", out)
    scale = {"TB": 1e12, "GB": 1e9, "MB": 1e6, "kB": 1e3}
    return {
        "seconds": wall,
        "cpu_s": cpu,
        "peak_rss_bytes": float(peak.group(1)) * scale[peak.group(2)] if peak else None,
        "sampled_rss_bytes": sampled,
        "load_avg_1min_before": round(load_before, 2),
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "other_processes_cpu_share": round(other, 3),
        "output": out.strip().splitlines(),
    }


def machine() -> dict[str, Any]:
    return machine_info("polars", "numpy")


def markdown(res: dict[str, Any]) -> str:
    m, d, r = res["machine"], res["data"], res["run"]
    gb = 1e9
    peak = r["peak_rss_bytes"]
    lines = [
        "# `prepare` on a log larger than its memory budget",
        "",
        f"Command: `{res['command']}` (run at {res['started']}, total {res['total_s']:.0f} s).",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memory_gb']} GiB; Python "
        f"{m['python']}, polars {m['polars']}, numpy {m['numpy']}. **Shared machine**: the "
        f"1-minute load average was {r['load_avg_1min_before']} before and "
        f"{r['load_avg_1min_after']} after; other processes used "
        f"{100 * r['other_processes_cpu_share']:.0f}% of the machine's CPU time meanwhile.",
        "",
        f"Data: {d['rows']:,} interactions from {d['users_generated']:,} users on "
        f"{d['items_generated']:,} items as {d['partitions']} hive-style day partitions "
        f"(`day=DDDD/part-0.parquet`, time order: not grouped by user), "
        f"{d['parquet_mb']:,} MiB of Parquet, generated chunk by chunk in {d['generate_s']} s "
        "(not timed).",
        "",
        f"Prepare command (timed): `{res['prepare_command']}`",
        "",
        "| rows | wall s | rows/s | CPU s | peak RSS (GB, VmHWM) | sampled RSS (GB) "
        "| budget | mode |",
        "|---:|---:|---:|---:|---:|---:|---|---|",
        f"| {d['rows']:,} | {r['seconds']:.1f} | {d['rows'] / r['seconds']:,.0f} | "
        f"{r['cpu_s']:.1f} | {peak / gb if peak else float('nan'):.2f} | "
        f"{r['sampled_rss_bytes'] / gb:.2f} | {res['budget']} | {res['mode']} |",
        "",
        f"Target: completes with peak RSS <= {TARGET_RSS_GB} GB: "
        f"**{'met' if res['target_met'] else 'MISSED'}**.",
        "",
        "`prepare` printed:",
        "",
        "```",
        *r["output"],
        "```",
        "",
    ]
    if res.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=FULL["rows"], help="interactions")
    ap.add_argument("--days", type=int, default=100, help="partitions (one per day)")
    ap.add_argument("--budget", default="4GB", help="--memory-budget for prepare")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="temp folder (default: system)")
    ap.add_argument("--keep", action="store_true", help="keep the generated log and output")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--note", action="append", default=[], help="a note for the report")
    args = ap.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t_start = time.perf_counter()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_large_", dir=args.workdir))
    free = shutil.disk_usage(work).free
    need = args.rows * 60  # Parquet + out-of-core buckets + the dataset, with room
    if free < need:
        raise SystemExit(f"{work}: {free / 1e9:.1f} GB free, need about {need / 1e9:.1f} GB")
    try:
        print(f"generating {args.rows:,} rows in {work} ...", flush=True)
        data = generate(work / "log", args.rows, min(args.days, max(1, args.rows)), args.seed)
        print(json.dumps(data), flush=True)
        out = work / "dataset"
        cmd = [sys.executable, "-m", "seqtwins", "prepare", str(work / "log"), "--out",
               str(out), "--memory-budget", args.budget]  # fmt: skip
        shown = ["seqtwins", "prepare", "LOG_DIR", "--out", "OUT", "--memory-budget", args.budget]
        run = run_prepare(cmd)
        print("\n".join(run["output"]), flush=True)
        mode = next((ln.strip().split(";")[0] for ln in run["output"] if "peak memory" in ln), "")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    peak = run["peak_rss_bytes"] or run["sampled_rss_bytes"]
    res = {
        "command": shlex.join([".venv/bin/python", "benchmarks/bench_large.py", *sys.argv[1:]]),
        "prepare_command": shlex.join(shown),
        "started": started,
        "total_s": time.perf_counter() - t_start,
        "machine": machine(),
        "data": data,
        "budget": args.budget,
        "mode": mode,
        "run": run,
        "rows_per_s": data["rows"] / run["seconds"],
        "target_met": peak / 1e9 <= TARGET_RSS_GB,
        "kept": str(work) if args.keep else None,
        "notes": args.note,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "large.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.results / "large.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
