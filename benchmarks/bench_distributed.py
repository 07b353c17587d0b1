"""Pretraining throughput with 1 vs 2 processes (DDP over gloo) on this machine.

Runs the real command, ``seqtwins pretrain``, on a synthetic dataset (``seqtwins synth``,
default generator) for one epoch, in three ways, interleaved and repeated:

* ``1 proc x 2 threads`` -- one process using both cores (the usual way to train here);
* ``1 proc x 1 thread``  -- one process, one core;
* ``2 procs x 1 thread`` -- ``torchrun --standalone --nproc_per_node 2`` with gloo, each
  process one thread (torchrun's default ``OMP_NUM_THREADS=1``), global batch unchanged.

Throughput is users/s of the global batch, from the per-step ``users_per_s`` of
``metrics.jsonl`` (rank 0's wall clock between optimizer steps: data, forward, backward,
all-reduce, AdamW), median over the epoch's steps after the first. The command's wall time
(start-up and the end-of-epoch validation included) is reported beside it.

Caveat: the two processes share the machine's two cores with each other -- and with
whatever else runs on it (the load average is recorded) -- so this measures the overhead
and the scaling of DDP on one small machine, not what two machines would give.

    .venv/bin/python benchmarks/bench_distributed.py            # ~8 min on 2 idle cores
    .venv/bin/python benchmarks/bench_distributed.py --quick    # smoke run
    .venv/bin/python benchmarks/bench_distributed.py --render   # .md again from the .json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = (  # name, processes, threads per process
    ("1 proc x 2 threads", 1, 2),
    ("1 proc x 1 thread", 1, 1),
    ("2 procs x 1 thread", 2, 1),
)


def machine() -> dict[str, Any]:
    return machine_info("torch")


def load_average() -> float:
    return os.getloadavg()[0]


def run_variant(
    data: Path, out: Path, objective: str, procs: int, threads: int, settings: list[str]
) -> dict[str, Any]:
    """One ``seqtwins pretrain`` run; its per-step throughput and wall time."""
    exe = Path(sys.executable)
    if procs == 1:
        cmd = [str(exe), "-m", "seqtwins"]
    else:
        torchrun = exe.with_name("torchrun")
        cmd = [str(torchrun), "--standalone", "--nproc_per_node", str(procs), "-m", "seqtwins"]
    cmd += ["pretrain", str(data), "--out", str(out), "--objective", objective, "--no-progress"]
    cmd += ["--overwrite"]
    for s in [*settings, f"train.threads={threads}"]:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "step" in m and "event" not in m]
    rates = [m["users_per_s"] for m in steps[1:]]  # the first step warms up
    return {
        "users_per_s": statistics.median(rates),
        "wall_s": wall,
        "steps": len(steps),
        "loss_first": steps[0]["loss"],
        "loss_last": steps[-1]["loss"],
        "world_size": json.loads((out / "summary.json").read_text())["world_size"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small dataset, one repeat")
    ap.add_argument("--users", type=int, default=5000, help="synthetic users")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--objectives", nargs="+", default=["barlow", "dual"])
    ap.add_argument("--note", default="", help="free text recorded with the results")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    args = ap.parse_args()
    if args.render:
        result = json.loads((RESULTS / "distributed.json").read_text())
        (RESULTS / "distributed.md").write_text(markdown(result))
        return
    if args.quick:
        args.users, args.repeats = 1500, 1
    settings = ["train.epochs=1", "train.batch_size=256", "train.log_every=1",
                "train.precision=fp32", "train.patience=0"]  # fmt: skip
    if args.quick:
        settings[1] = "train.batch_size=64"

    from seqtwins.data.synth import SynthConfig, synthesize

    load_start = load_average()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = synthesize(Path(tmp) / "data", SynthConfig(users=args.users))
        for repeat in range(args.repeats):
            for objective in args.objectives:
                for name, procs, threads in VARIANTS:
                    res = run_variant(data, Path(tmp) / "run", objective, procs, threads,
                                      settings)  # fmt: skip
                    res.update(variant=name, objective=objective, procs=procs,
                               threads=threads, repeat=repeat)  # fmt: skip
                    print(f"{objective:7s} {name:20s} {res['users_per_s']:7.0f} users/s "
                          f"(wall {res['wall_s']:.1f}s, load {load_average():.1f})")  # fmt: skip
                    runs.append(res)
    load_end = load_average()

    table = []
    for objective in args.objectives:
        base = None
        for name, procs, threads in VARIANTS:
            mine = [r for r in runs if r["objective"] == objective and r["variant"] == name]
            ups = statistics.median(r["users_per_s"] for r in mine)
            base = base or ups
            table.append({
                "objective": objective, "variant": name, "procs": procs, "threads": threads,
                "users_per_s": ups, "x_1proc_2threads": ups / base,
                "wall_s": statistics.median(r["wall_s"] for r in mine),
                "steps": mine[0]["steps"],
                "loss_first_last": [mine[0]["loss_first"], mine[0]["loss_last"]],
                "repeats": [r["users_per_s"] for r in mine],
            })  # fmt: skip
    command = "python benchmarks/bench_distributed.py " + " ".join(sys.argv[1:])
    result = {
        "command": command.strip(),
        "machine": machine(),
        "load_average_1min": {"start": load_start, "end": load_end},
        "dataset": f"seqtwins synth --users {args.users} (default generator, seed 0)",
        "settings": settings,
        "encoder": "defaults (dim 64, 2 layers, 2 heads, max_len 50, dropout 0.1)",
        "note": args.note,
        "table": table,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (RESULTS / f"distributed{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"distributed{suffix}.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Pretraining throughput: 1 vs 2 processes (DDP, gloo)",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {m['cpu']}, nproc={m['nproc']}, torch {m['torch']}, Python {m['python']}  ",
        f"Data: {r['dataset']}; settings: {', '.join(r['settings'])}; encoder {r['encoder']}  ",
        f"Load average (1 min) at start / end: {r['load_average_1min']['start']:.1f} / "
        f"{r['load_average_1min']['end']:.1f} on {m['nproc']} cores",
    ]
    if r["note"]:
        lines.append(f"Note: {r['note']}")
    lines += [
        "",
        "users/s of the global batch: median over an epoch's steps (after the first) of "
        "rank 0's per-step rate, then median over repeats. Wall: the whole command "
        "(start-up, epoch, validation). **The two processes share the same two cores** "
        "(and the machine with other jobs): this shows DDP's overhead and scaling on one "
        "small machine, not what two machines would give.",
        "",
        "| objective | variant | users/s | x 1 proc x 2 threads | x 1 proc x 1 thread | "
        "wall s | steps | loss first -> last | users/s per repeat |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for t in r["table"]:
        first, last = t["loss_first_last"]
        reps = ", ".join(f"{x:.0f}" for x in t["repeats"])
        one = next(u for u in r["table"] if u["objective"] == t["objective"]
                   and (u["procs"], u["threads"]) == (1, 1))  # fmt: skip
        lines.append(
            f"| {t['objective']} | {t['variant']} | {t['users_per_s']:.0f} | "
            f"{t['x_1proc_2threads']:.2f} | {t['users_per_s'] / one['users_per_s']:.2f} | "
            f"{t['wall_s']:.1f} | {t['steps']} | {first:.2f} -> {last:.2f} | {reps} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
