"""What one explanation costs: the command, the function, and the service's endpoint.

On one trained run and its dataset, for one user (and 50 seeded users for the endpoint):

1. ``imports``: a fresh ``python -c "import torch"`` (the floor of any command that loads
   a run), and the imports ``seqtwins explain`` itself does (its modules and Captum,
   whose ``captum.attr`` imports matplotlib.pyplot), each in a fresh process;
2. ``command``: ``seqtwins explain RUN --data DIR --user ID --json`` in a fresh process,
   without and with ``--task``, and with ``--embeddings FILE`` when given; with
   ``--before SRC`` also the same command run from another source tree (e.g. the main
   checkout before the imports were made lazy), interleaved run by run;
3. ``function``: :func:`seqtwins.explain.explain_user` in this (warm) process, opening the
   run and the dataset on every call, as the command does;
4. ``endpoint``: ``seqtwins serve`` in a subprocess, then ``GET /users/{id}/explain`` for
   the first request (it builds the explainer and imports Captum), the first request with
   the task (it fits the probe), then ``--requests`` requests over seeded users without
   and with the task, one client, sequential: p50 / p99 / max client-side latency.

Every run records the 1-minute load average before it. Results go to
``benchmarks/results/explain.json`` and ``explain.md``.

    .venv/bin/python benchmarks/bench_explain.py RUN DATA USER --task future_categories \\
        [--embeddings FILE] [--before /path/to/other/src] [--repeats 3] [--requests 50]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"


def timed(cmd: list[str], src: Path) -> tuple[float, float, str]:
    """(wall s, CPU s, stdout) of ``cmd`` in a fresh process importing seqtwins from ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed: {done.stderr.strip()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def time_imports(repeats: int) -> list[dict[str, Any]]:
    cases = {
        "import torch": "import torch",
        "seqtwins explain's modules": "import seqtwins.cli, seqtwins.explain.user, "
        "seqtwins.explain.render",
        "the same + captum.attr": "import seqtwins.cli, seqtwins.explain.user, "
        "seqtwins.explain.render, captum.attr",
    }
    out = []
    for _ in range(repeats):
        for name, code in cases.items():
            load = load1()
            wall, cpu, _ = timed([sys.executable, "-c", code], SRC)
            out.append({"what": name, "code": code, "wall_s": round(wall, 2),
                        "cpu_s": round(cpu, 2), "load_1min_before": load})  # fmt: skip
    return out


def time_command(
    args: argparse.Namespace, trees: dict[str, Path]
) -> tuple[str, list[dict[str, Any]]]:
    base = ["explain", args.run, "--data", args.data, "--user", args.user, "--json"]
    variants: list[tuple[str | None, list[str]]] = [(None, []), (args.task, ["--task", args.task])]
    if args.embeddings:
        variants.append((None, ["--embeddings", args.embeddings]))
        variants.append((args.task, ["--task", args.task, "--embeddings", args.embeddings]))
    out = []
    for _ in range(args.repeats):
        for task, extra in variants:
            for tree, src in trees.items():
                if tree != "after" and "--embeddings" in extra:
                    continue  # the comparison is the plain command
                cmd = [sys.executable, "-m", "seqtwins", *base, *extra]
                load = load1()
                wall, cpu, stdout = timed(cmd, src)
                out.append({"tree": tree, "task": task, "embeddings": "--embeddings" in extra,
                            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                            "explain_user_s": json.loads(stdout)["seconds"],
                            "load_1min_before": load})  # fmt: skip
    return shlex.join(["seqtwins", *base]), out


def time_function(args: argparse.Namespace) -> list[dict[str, Any]]:
    from seqtwins.explain import explain_user

    explain_user(args.run, args.data, args.user, task=args.task)  # warm-up: imports, caches
    out = []
    for _ in range(args.repeats):
        for task in (None, args.task):
            for emb in (None, args.embeddings) if args.embeddings else (None,):
                load = load1()
                t0 = time.perf_counter()
                explain_user(args.run, args.data, args.user, task=task, embeddings=emb)
                out.append({"task": task, "embeddings": emb is not None,
                            "wall_s": round(time.perf_counter() - t0, 3),
                            "load_1min_before": load})  # fmt: skip
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(args: argparse.Namespace, port: int) -> tuple[subprocess.Popen[bytes], float]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "seqtwins", "serve", args.run, "--data", args.data,
           "--port", str(port), "--no-access-log"]  # fmt: skip
    if args.embeddings:
        cmd += ["--embeddings", args.embeddings]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"server exited: {err}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, time.perf_counter() - t0
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start in 300 s")


def percentiles(lat: list[float]) -> dict[str, float]:
    a = np.asarray(lat)
    return {"n": len(lat), "p50_s": round(float(np.percentile(a, 50)), 3),
            "p99_s": round(float(np.percentile(a, 99)), 3), "max_s": round(float(a.max()), 3),
            "mean_s": round(statistics.fmean(lat), 3)}  # fmt: skip


def time_endpoint(args: argparse.Namespace) -> dict[str, Any]:
    import polars as pl

    users = pl.read_parquet(Path(args.data) / "users.parquet")["user_id"].cast(pl.String)
    rng = np.random.default_rng(0)
    sample = [str(users[int(i)]) for i in rng.choice(len(users), args.requests, replace=False)]
    port = free_port()
    load = load1()
    proc, started = start_server(args, port)
    url = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"start_s": round(started, 2), "load_1min_before_start": load,
                           "users": "seeded sample (numpy default_rng(0)) of the dataset's "
                           "users, one request each"}  # fmt: skip
    try:
        with httpx.Client(timeout=300) as http:

            def get(user: str, task: str | None) -> float:
                params = {} if task is None else {"task": task}
                t0 = time.perf_counter()
                r = http.get(f"{url}/users/{user}/explain", params=params)
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code}: {r.text}")
                return dt

            out["first_request_s"] = round(get(args.user, None), 3)
            out["first_task_request_s"] = round(get(args.user, args.task), 3)
            for task in (None, args.task):
                load = load1()
                lat = [get(u, task) for u in sample]
                out["task" if task else "no_task"] = {"task": task, **percentiles(lat),
                                                      "load_1min_before": load}  # fmt: skip
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out


def write_markdown(res: dict[str, Any], path: Path) -> None:
    lines = [
        "# What one explanation costs (`benchmarks/bench_explain.py`)",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Machine: {res['machine']['nproc']} cores, {res['machine']['cpu']}; "
        f"load average (1, 5, 15 min) before {res['load_before']}, after {res['load_after']}.",
        f"Run `{res['run']}` on `{res['data']}`, user `{res['user']}`, task `{res['task']}`.",
        "",
        "## Imports (fresh process)",
        "",
        "| what | wall s | CPU s | load before |",
        "|---|---:|---:|---:|",
    ]
    for r in res["imports"]:
        lines.append(f"| `{r['code']}` | {r['wall_s']} | {r['cpu_s']} | {r['load_1min_before']} |")
    lines += ["", f"## `{res['explain_command']} [--task T] [--embeddings F]` (fresh process)",
              "", "`before`: " + res["trees"].get("before", "not measured") + "; `after`: "
              + res["trees"]["after"], "",
              "| tree | --task | --embeddings | wall s | CPU s | explain_user s inside | "
              "load before |", "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in res["command_runs"]:
        lines.append(f"| {r['tree']} | {r['task'] or '-'} | {'yes' if r['embeddings'] else '-'} "
                     f"| {r['wall_s']} | {r['cpu_s']} | {r['explain_user_s']} | "
                     f"{r['load_1min_before']} |")  # fmt: skip
    lines += [
        "",
        "## `explain_user(...)` in a warm process (opens run and dataset per call)",
        "",
        "| --task | --embeddings | wall s | load before |",
        "|---|---|---:|---:|",
    ]
    for r in res["function"]:
        lines.append(f"| {r['task'] or '-'} | {'yes' if r['embeddings'] else '-'} | "
                     f"{r['wall_s']} | {r['load_1min_before']} |")  # fmt: skip
    e = res["endpoint"]
    lines += ["", "## `GET /users/{id}/explain` on `seqtwins serve` (one client, sequential)", "",
              f"Server start (to /health): {e['start_s']} s; first request (builds the explainer, "
              f"imports Captum): {e['first_request_s']} s; first request with the task (fits "
              f"the probe): {e['first_task_request_s']} s. Then {e['no_task']['n']} requests, "
              f"{e['users']}:", "",
              "| task | n | p50 s | p99 s | max s | mean s | load before |",
              "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for key in ("no_task", "task"):
        c = e[key]
        lines.append(f"| {c['task'] or '-'} | {c['n']} | {c['p50_s']} | {c['p99_s']} | "
                     f"{c['max_s']} | {c['mean_s']} | {c['load_1min_before']} |")  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("data")
    ap.add_argument("user")
    ap.add_argument("--task", required=True)
    ap.add_argument("--embeddings", help="A `seqtwins embed` export of the run (optional).")
    ap.add_argument("--before", type=Path, help="Also time the command from this src tree.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--out", default="explain", help="Name of the results files.")
    args = ap.parse_args()
    trees = {"after": SRC}
    if args.before is not None:
        trees = {"before": args.before.resolve(), "after": SRC}
    res: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "machine": machine_info("torch", "captum", "scikit-learn"),
        "run": args.run, "data": args.data, "user": args.user, "task": args.task,
        "trees": {k: str(v) for k, v in trees.items()},
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip
    res["imports"] = time_imports(args.repeats)
    res["explain_command"], res["command_runs"] = time_command(args, trees)
    res["function"] = time_function(args)
    res["endpoint"] = time_endpoint(args)
    res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(res, indent=1) + "\n")
    write_markdown(res, RESULTS / f"{args.out}.md")
    print((RESULTS / f"{args.out}.md").read_text())


if __name__ == "__main__":
    main()
