"""Serving benchmark: the HTTP service, ONNX Runtime vs torch, FAISS on 1M users.

1. ``/embed`` through the real server (``seqtwins serve`` in a subprocess, uvicorn, one
   worker, access log off) driven by httpx clients in this process (asyncio): throughput
   and client-side p50 / p99 latency for 1 and 64 sequences of length 50 per request, at 1
   and 8 concurrent clients. The server's batching counters (encoder calls per request)
   are recorded with each cell. Clients and server share the machine's cores.
2. Encoder inference in one process, interleaved: ONNX Runtime (the graph of ``seqtwins
   export``) vs torch (``encoder.embed`` under ``inference_mode``), batch 1 and 64, length
   50, the same number of threads.
3. FAISS on synthetic users of dimension 64: build time of the exact index and of the IVF
   index (k-means training, adding, the nprobe calibration of
   :class:`seqtwins.serve.neighbors.NeighborIndex`), single-query latency, and IVF
   recall@20 vs exact search on held-out query users. Three distributions: mixtures of
   Gaussians (users in taste clusters, well separated or overlapping) and isotropic
   Gaussian (no structure: the hard case for any IVF index). The IVF index is built with
   its default float16 storage and, side by side, with float32 vectors.

The encoder is the default one (dim 64, 2 layers, 2 heads, max length 50), trained one
epoch on the synthetic dataset (speed does not depend on the weights). Results go to
``benchmarks/results/serve.json`` and ``serve.md``.

    .venv/bin/python benchmarks/bench_serve.py             # ~6 min on 2 idle cores
    .venv/bin/python benchmarks/bench_serve.py --quick     # smoke run, 100k users
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from _machine import machine_info

from seqtwins.config import PretrainConfig, build
from seqtwins.data.batching import pad_right
from seqtwins.data.synth import SynthConfig, synthesize
from seqtwins.run import Run
from seqtwins.serve.export import export_onnx, onnx_embed
from seqtwins.serve.neighbors import IndexConfig, NeighborIndex, normalized, recall_at_k
from seqtwins.train import pretrain

RESULTS = Path(__file__).resolve().parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"
LENGTH = 50
NOISE = {"clustered": 0.5, "overlapping": 1.0}
"""Per-dimension noise sd around 2,000 unit-normal taste centres (isotropic: no centres)."""
TARGETS = {
    "embed_64_seq_per_s": 3000.0,
    "single_p99_ms": 25.0,
    "ivf_recall_at_20": 0.95,
    "ivf_query_ms": 5.0,
}


# --------------------------------------------------------------------------- set-up
def make_run(root: Path) -> tuple[Path, Path]:
    """A synthetic dataset and the default encoder trained one epoch on it."""
    data = synthesize(root / "ds", SynthConfig(users=2000, items=2000))
    cfg = build(PretrainConfig, {"objective": "barlow"}, overrides=["train.epochs=1"])
    pretrain(data, root / "run", cfg, progress=False)
    return data, root / "run"


def item_ids(data: Path) -> list[str]:
    from seqtwins.data.dataset import SequenceDataset

    return SequenceDataset.open(data).items["item_id"].cast(str).to_list()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data: Path, run: Path, port: int, threads: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "seqtwins", "serve", str(run), "--data", str(data),
           "--port", str(port), "--threads", str(threads), "--no-access-log"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start in 180 s")


# --------------------------------------------------------------------------- 1. HTTP
async def _client(
    http: httpx.AsyncClient, bodies: list[bytes], until: float, lat: list[float]
) -> None:
    i = 0
    while time.perf_counter() < until:
        t0 = time.perf_counter()
        r = await http.post("/embed", content=bodies[i % len(bodies)],
                            headers={"content-type": "application/json"})  # fmt: skip
        if r.status_code != 200:
            raise RuntimeError(f"/embed answered {r.status_code}: {r.text[:200]}")
        lat.append(time.perf_counter() - t0)
        i += 1


async def _load(url: str, bodies: list[bytes], clients: int, seconds: float) -> list[float]:
    lat: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        warm = time.perf_counter() + min(1.0, seconds / 4)
        await asyncio.gather(*(_client(http, bodies, warm, []) for _ in range(clients)))
        until = time.perf_counter() + seconds
        await asyncio.gather(*(_client(http, bodies, until, lat) for _ in range(clients)))
    return lat


def bench_http(url: str, ids: list[str], seconds: float, threads: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows = []
    for per_request in (1, 64):
        bodies = [
            json.dumps(
                {"sequences": [list(rng.choice(ids, LENGTH)) for _ in range(per_request)]}
            ).encode()  # fmt: skip
            for _ in range(32)
        ]
        check = httpx.post(f"{url}/embed", content=bodies[0]).json()
        assert len(check["embeddings"]) == per_request and not check["skipped"]
        for clients in (1, 8):
            before = httpx.get(f"{url}/info").json()["batching"]
            start = time.perf_counter()
            lat = asyncio.run(_load(url, bodies, clients, seconds))
            wall = time.perf_counter() - start - min(1.0, seconds / 4)
            after = httpx.get(f"{url}/info").json()["batching"]
            ms = np.array(lat) * 1000
            requests = after["requests"] - before["requests"]
            rows.append({
                "server_threads": threads, "sequences_per_request": per_request,
                "clients": clients,
                "requests": len(lat), "seconds": round(wall, 2),
                "sequences_per_s": round(len(lat) * per_request / wall, 1),
                "requests_per_s": round(len(lat) / wall, 1),
                "p50_ms": round(float(np.percentile(ms, 50)), 2),
                "p99_ms": round(float(np.percentile(ms, 99)), 2),
                "encoder_calls_per_request": round(
                    (after["encoder_calls"] - before["encoder_calls"]) / max(1, requests), 3),
            })  # fmt: skip
            print(rows[-1], flush=True)
    return rows


# --------------------------------------------------------------------------- 2. ONNX
def _time(fn: Callable[[], Any], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _onnx_cell(encoder: Any, session: Any, batch: int, reps: int, diff: float) -> dict:
    rng = np.random.default_rng(batch)
    items = pad_right([rng.integers(1, encoder.vocab_size - 1, LENGTH) for _ in range(batch)])
    x = items.numpy()

    def run_torch() -> None:
        with torch.inference_mode():
            encoder.embed(items)

    def run_onnx() -> None:
        onnx_embed(session, x)

    times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    for _ in range(5):  # warm-up, then interleaved rounds
        run_torch()
        run_onnx()
    for _ in range(10):
        times["torch"] += _time(run_torch, reps // 10)
        times["onnxruntime"] += _time(run_onnx, reps // 10)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    return {
        "batch": batch, "length": LENGTH, "threads": torch.get_num_threads(),
        "torch_ms": round(med["torch"], 3), "onnxruntime_ms": round(med["onnxruntime"], 3),
        "torch_seq_per_s": round(batch / med["torch"] * 1000, 1),
        "onnxruntime_seq_per_s": round(batch / med["onnxruntime"] * 1000, 1),
        "onnx_speedup": round(med["torch"] / med["onnxruntime"], 2),
        "parity_max_abs_diff": diff,
    }  # fmt: skip


def bench_onnx(run: Path, root: Path, reps: int) -> list[dict[str, Any]]:
    """Both engines at 1 thread (the server's default) and at 2."""
    import onnxruntime as ort

    export = export_onnx(run, root / "model.onnx")
    encoder = Run.open(run).encoder("best")
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(str(root / "model.onnx"), opts,
                                       providers=["CPUExecutionProvider"])  # fmt: skip
        for batch in (1, 64):
            n = reps if batch == 1 else max(10, reps // 10)
            rows.append(_onnx_cell(encoder, session, batch, n, export.max_abs_diff))
            print(rows[-1], flush=True)
    return rows


# --------------------------------------------------------------------------- 3. FAISS
def synthetic_users(n: int, dim: int, kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "isotropic":
        return rng.standard_normal((n, dim), dtype=np.float32)
    centers = rng.standard_normal((2000, dim), dtype=np.float32)  # taste clusters
    x = centers[rng.integers(0, len(centers), n)]
    x += NOISE[kind] * rng.standard_normal((n, dim), dtype=np.float32)
    return x


def _query_ms(index: NeighborIndex, q: np.ndarray, n: int) -> float:
    """Best of 3 rounds of ``n`` single queries, ms per query."""
    rounds = _time(lambda: [index.search(q[i : i + 1], 20) for i in range(n)], 3)
    return round(min(rounds) / n * 1000, 3)


def _faiss_cell(users: int, dim: int, kind: str, queries: int) -> dict[str, Any]:
    import faiss

    x = synthetic_users(users, dim, kind)
    t0 = time.perf_counter()
    flat = NeighborIndex.build(x, IndexConfig(ivf_above=users))
    flat_build = time.perf_counter() - t0
    rng = np.random.default_rng(99)  # other users than the calibration sample (seed 0)
    q = x[rng.choice(users, queries, replace=False)]
    _, exact = faiss.knn(normalized(q), normalized(x), 20, faiss.METRIC_INNER_PRODUCT)
    row: dict[str, Any] = {"users": users, "dim": dim, "data": kind,
                           "flat_build_s": round(flat_build, 2)}  # fmt: skip
    # the default storage (fp16) and float32, side by side
    for storage, tag in (("fp16", ""), ("float32", "f32_")):
        t0 = time.perf_counter()
        ivf = NeighborIndex.build(x, IndexConfig(ivf_above=users - 1, storage=storage))
        build = time.perf_counter() - t0
        found = np.stack([ivf.search(q[i : i + 1], 20)[1][0] for i in range(queries)])
        row |= {
            f"ivf_{tag}build_s": round(build, 2), "nlist": ivf.describe()["nlist"],
            f"{tag}nprobe": ivf.nprobe,
            f"{tag}calibration_recall_at_20": round(float(ivf.recall or 0), 4),
            f"ivf_{tag}recall_at_20": round(recall_at_k(found, exact), 4),
            f"ivf_{tag}query_ms": _query_ms(ivf, q, 100),
        }  # fmt: skip
        del ivf
    return row | {"queries": queries, "flat_query_ms": _query_ms(flat, q, 10)}


def bench_faiss(users: int, dim: int, queries: int) -> list[dict[str, Any]]:
    """At 1 thread, as in the server (``seqtwins serve --threads 1``)."""
    import faiss

    faiss.omp_set_num_threads(1)
    rows = []
    for kind in ("clustered", "overlapping", "isotropic"):
        rows.append(_faiss_cell(users, dim, kind, queries))
        print(rows[-1], flush=True)
    return rows


# --------------------------------------------------------------------------- report
def verdicts(http: list[dict], onnx: list[dict], faiss_rows: list[dict]) -> list[dict]:
    # the best server setting (--threads) of each cell, named in the verdict
    fast = max(
        (r for r in http if r["sequences_per_request"] == 64), key=lambda r: r["sequences_per_s"]
    )
    quick = min(
        (r for r in http if (r["sequences_per_request"], r["clients"]) == (1, 1)),
        key=lambda r: r["p99_ms"],
    )
    one = next(r for r in onnx if (r["batch"], r["threads"]) == (1, 1))
    out = [
        (f"/embed, 64 seq/request, seq/s (--threads {fast['server_threads']}, "
         f"{fast['clients']} clients)", f">= {TARGETS['embed_64_seq_per_s']:.0f}",
         fast["sequences_per_s"], fast["sequences_per_s"] >= TARGETS["embed_64_seq_per_s"]),
        (f"/embed, 1 seq/request, 1 client, p99 ms (--threads {quick['server_threads']})",
         f"<= {TARGETS['single_p99_ms']:.0f}", quick["p99_ms"],
         quick["p99_ms"] <= TARGETS["single_p99_ms"]),
        ("ONNX Runtime / torch speed, batch 1, 1 thread", ">= 1", one["onnx_speedup"],
         one["onnx_speedup"] >= 1.0),
        ("ONNX parity, max abs diff", "<= 1e-4", one["parity_max_abs_diff"],
         one["parity_max_abs_diff"] <= 1e-4),
    ]  # fmt: skip
    for r in faiss_rows:
        out.append(
            (
                f"IVF recall@20 ({r['data']}, {r['users']:,} users)",
                ">= 0.95",
                r["ivf_recall_at_20"],
                r["ivf_recall_at_20"] >= TARGETS["ivf_recall_at_20"],
            )
        )
        out.append((f"IVF query ms ({r['data']})", "<= 5", r["ivf_query_ms"],
                    r["ivf_query_ms"] <= TARGETS["ivf_query_ms"]))  # fmt: skip
    return [{"target": t, "wanted": w, "measured": m, "met": bool(ok)} for t, w, m, ok in out]


def table(rows: list[dict], keys: list[str]) -> list[str]:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return lines


def write_markdown(result: dict, path: Path) -> None:
    m = result["machine"]
    lines = [
        "# Serving benchmark", "",
        f"Command: `{result['command']}`", "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memory_gb']} GB, Python {m['python']}, "
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, faiss-cpu {m['faiss-cpu']}. "
        f"Load average {result['load_before']} before and {result['load_after']} after the "
        "run (1/5/15-minute means: anything above the benchmark's own load is other work on "
        "the same cores); the machine is shared, so compare ratios measured side by side "
        "inside one table.", "",
        "## Targets", "",
        *table(result["verdicts"], ["target", "wanted", "measured", "met"]), "",
        "## /embed over HTTP", "",
        "Real server (`seqtwins serve`: uvicorn, 1 worker, `--threads` encoder threads as "
        "in `server_threads`) and httpx "
        "clients (asyncio) in one other process on the same cores; sequences of "
        f"{LENGTH} known items; "
        f"{result['seconds']} s per cell after a warm-up. Latency is client-side round trip.", "",
        *table(result["http"], ["server_threads", "sequences_per_request", "clients", "requests",
                                "sequences_per_s", "requests_per_s", "p50_ms", "p99_ms",
                                "encoder_calls_per_request"]), "",
        "## ONNX Runtime vs torch (one process, interleaved, median per call)", "",
        *table(result["onnx"], ["batch", "length", "threads", "torch_ms", "onnxruntime_ms",
                                "torch_seq_per_s", "onnxruntime_seq_per_s", "onnx_speedup",
                                "parity_max_abs_diff"]), "",
        "## FAISS nearest users (dim 64, recall@20 vs exact on held-out query users)", "",
        *table(result["faiss"], ["data", "users", "flat_build_s", "ivf_build_s", "nlist",
                                 "nprobe", "calibration_recall_at_20", "ivf_recall_at_20",
                                 "queries", "ivf_query_ms", "flat_query_ms"]), "",
        "The same IVF index with float32 vectors (`IndexConfig(storage=\"float32\")`, "
        "`IndexIVFFlat`), built and timed in the same run:", "",
        *table(result["faiss"], ["data", "ivf_f32_build_s", "f32_nprobe",
                                 "ivf_f32_recall_at_20", "ivf_f32_query_ms"]), "",
        "`clustered` / `overlapping`: 2,000 standard-normal taste centres plus noise of sd "
        "0.5 / 1.0 per dimension (well separated / overlapping clusters); `isotropic`: "
        "standard normal, no structure (the hard case for any IVF index). The IVF index "
        "stores float16 vectors (the default, `storage=\"fp16\"`). Query times are "
        "single queries (batch 1, 1 FAISS thread), best of 3 rounds. nprobe is chosen at "
        "build time by the index itself (doubled until recall@20 on 500 sampled users "
        "reaches 0.95, then 3 bisection steps).", "",
    ]  # fmt: skip
    path.write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 2 s cells, 100k users")
    p.add_argument("--seconds", type=float, default=None, help="seconds per HTTP cell")
    p.add_argument("--users", type=int, default=None, help="synthetic users for FAISS")
    p.add_argument("--name", default="serve", help="results file stem")
    p.add_argument("--server-threads", default="1,2",
                   help="comma-separated `seqtwins serve --threads` values to measure")  # fmt: skip
    args = p.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    users = args.users or (100_000 if args.quick else 1_000_000)
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, run = make_run(root)
        onnx = bench_onnx(run, root, reps=100 if args.quick else 500)
        http = []
        for threads in (int(t) for t in args.server_threads.split(",")):
            port = free_port()
            server = start_server(data, run, port, threads)
            try:
                http += bench_http(f"http://127.0.0.1:{port}", item_ids(data), seconds, threads)
            finally:
                server.send_signal(signal.SIGINT)
                server.wait(60)
    faiss_rows = bench_faiss(users, 64, queries=1000)
    result = {
        "command": " ".join(["python benchmarks/bench_serve.py", *map(shlex.quote, sys.argv[1:])]),
        "machine": machine_info("torch", "onnxruntime", "faiss-cpu", "fastapi", "uvicorn", "httpx"),
        "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": seconds, "http": http, "onnx": onnx, "faiss": faiss_rows,
        "verdicts": verdicts(http, onnx, faiss_rows),
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, RESULTS / f"{args.name}.md")
    print(f"wrote {RESULTS / args.name}.json and .md")


if __name__ == "__main__":
    main()
