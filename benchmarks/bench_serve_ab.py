"""/embed throughput of two source trees side by side: the same run, data and requests,
servers started in turn, rounds interleaved, so a change's gain is a ratio measured on one
machine at one time (the absolute numbers of bench_serve.py move with the machine).

    python benchmarks/bench_serve_ab.py RUN DATA --old-src OLD/src [--embeddings FILE]

Each round starts ``seqtwins serve RUN --data DATA --threads 2`` from the old tree, then
from this one, and drives ``/embed`` with 64 sequences of 50 known items per request at 1
and 8 concurrent clients (the clients of bench_serve.py). Results go to
``benchmarks/results/serve_ab.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _machine import machine_info
from bench_serve import _load, free_port, item_ids

RESULTS = Path(__file__).resolve().parent / "results"
NEW_SRC = Path(__file__).resolve().parents[1] / "src"
PER_REQUEST, LENGTH = 64, 50


def _start(src: Path, run: Path, data: Path, embeddings: Path | None) -> tuple[Any, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "seqtwins", "serve", str(run), "--data", str(data),
           "--port", str(port), "--threads", "2", "--no-access-log"]  # fmt: skip
    if embeddings is not None:
        cmd += ["--embeddings", str(embeddings)]
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server from {src} exited: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, port
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the server from {src} did not start in 300 s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--old-src", type=Path, required=True, help="the src/ of the tree to compare")
    p.add_argument("--embeddings", type=Path, help="a `seqtwins embed` export (faster start)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=6.0, help="seconds per cell")
    args = p.parse_args()
    ids = item_ids(args.data)
    rng = np.random.default_rng(0)
    bodies = [
        json.dumps({"sequences": [list(rng.choice(ids, LENGTH)) for _ in range(PER_REQUEST)]})
        .encode()
        for _ in range(32)
    ]  # fmt: skip
    load_before = os.getloadavg()
    rows = []
    for rnd in range(args.rounds):
        for tree, src in (("old", args.old_src), ("new", NEW_SRC)):
            proc, port = _start(src, args.run, args.data, args.embeddings)
            try:
                for clients in (1, 8):
                    t0 = time.perf_counter()
                    lat = asyncio.run(_load(f"http://127.0.0.1:{port}", bodies, clients,
                                            args.seconds))  # fmt: skip
                    wall = time.perf_counter() - t0 - min(1.0, args.seconds / 4)  # warm-up
                    rows.append({"round": rnd, "tree": tree, "clients": clients,
                                 "sequences_per_s": round(len(lat) * PER_REQUEST / wall, 1),
                                 "load_1min": round(os.getloadavg()[0], 2)})  # fmt: skip
                    print(rows[-1], flush=True)
            finally:
                proc.terminate()
                proc.wait()
    summary = []
    for clients in (1, 8):
        got = {t: [r["sequences_per_s"] for r in rows if (r["tree"], r["clients"]) == (t, clients)]
               for t in ("old", "new")}  # fmt: skip
        old, new = float(np.mean(got["old"])), float(np.mean(got["new"]))
        summary.append({"clients": clients, "old_mean": round(old, 1), "new_mean": round(new, 1),
                        "new_over_old": round(new / old, 3)})  # fmt: skip
    result = {
        "command": "python benchmarks/bench_serve_ab.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(), "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()], "rows": rows, "summary": summary,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve_ab.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# /embed, two source trees side by side", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']['nproc']} cores ({result['machine']['cpu']}); load "
             f"average {result['load_before']} before, {result['load_after']} after. "
             f"{PER_REQUEST} sequences of {LENGTH} items per request, `--threads 2`, "
             f"{args.seconds} s per cell, {args.rounds} interleaved rounds.", "",
             "| clients | old seq/s (mean) | new seq/s (mean) | new / old |", "|---|---|---|---|",
             *(f"| {s['clients']} | {s['old_mean']} | {s['new_mean']} | {s['new_over_old']} |"
               for s in summary), "",
             "| round | tree | clients | seq/s | load (1 min) |", "|---|---|---|---|---|",
             *(f"| {r['round']} | {r['tree']} | {r['clients']} | {r['sequences_per_s']} | "
               f"{r['load_1min']} |" for r in rows), ""]  # fmt: skip
    (RESULTS / "serve_ab.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / 'serve_ab.json'} and .md")


if __name__ == "__main__":
    main()
