"""Pretraining throughput of the ``barlow`` objective vs a straightforward reference.

Measures users/s (two views per user, forward + backward + AdamW step) at dim 64, 2 layers,
2 heads, max length 50, batch 256, on two fixed synthetic workloads:

* ``skewed`` -- lognormal history lengths clipped to [3, 50] (most users are short),
* ``full``   -- every history has the full length 50 (pure compute, nothing to unpad),

for seqtwins' encoder (dynamic padding, optionally length-bucketed batches, optionally bf16
autocast) and, in the same run and interleaved with it, a reference implementation (fp32,
``nn.TransformerEncoder``, every sequence padded to 50, same sizes and the same loss).

It also measures this machine's fp32 / bf16 matmul peak, reports the fraction of it each
variant reaches (model FLOPs counted explicitly, see ``train_flops``), and the peak RSS of
each variant (measured in a separate short child process). Results go to
``benchmarks/results/train.json`` and ``train.md``.

    .venv/bin/python benchmarks/bench_train.py            # full run (~5 min on 2 idle cores)
    .venv/bin/python benchmarks/bench_train.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import cpu_model_and_flags
from torch import Tensor, nn

from seqtwins.models.encoder import EncoderConfig, SequenceEncoder
from seqtwins.models.heads import Projector
from seqtwins.objectives.barlow import BarlowConfig, BarlowObjective, BarlowTwinsLoss

DIM, LAYERS, HEADS, FF, MAX_LEN, BATCH = 64, 2, 2, 256, 50, 256
NUM_ITEMS = 20_000
PROJECTOR = (256, 256)
RESULTS = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------- workload
@dataclass
class Workload:
    """Pre-built batches of two views (item-id arrays, unpadded) for a fixed user pool."""

    name: str
    views_a: list[np.ndarray]
    views_b: list[np.ndarray]

    @property
    def mean_len(self) -> float:
        return float(np.mean([len(v) for v in self.views_a + self.views_b]))


def make_workload(name: str, n_users: int, seed: int) -> Workload:
    """Zipf-popular items; ``skewed``: lengths ~ round(lognormal(log 10, 0.8)) in [3, 50].

    The two views are cheap stand-ins for augmentations (an 80% contiguous crop and 20%
    MASK replacement) so that the benchmark times the model, not the augmentation code.
    """
    rng = np.random.default_rng(seed)
    if name == "skewed":
        lengths = np.clip(np.rint(rng.lognormal(np.log(10.0), 0.8, n_users)), 3, MAX_LEN)
    else:
        lengths = np.full(n_users, MAX_LEN)
    lengths = lengths.astype(np.int64)
    popularity = 1.0 / np.arange(1, NUM_ITEMS + 1) ** 0.8
    items = rng.choice(NUM_ITEMS, size=int(lengths.sum()), p=popularity / popularity.sum()) + 1
    seqs = np.split(items, np.cumsum(lengths)[:-1])
    views_a, views_b = [], []
    for seq in seqs:
        n = len(seq)
        if name == "skewed":
            keep = max(2, int(round(0.8 * n)))
            start = int(rng.integers(0, n - keep + 1))
            views_a.append(seq[start : start + keep])
        else:
            views_a.append(seq.copy())  # full workload: both views keep length 50
        masked = seq.copy()
        masked[rng.random(n) < 0.2] = NUM_ITEMS + 1  # MASK token
        views_b.append(masked)
    return Workload(name, views_a, views_b)


def pad(seqs: list[np.ndarray], length: int | None = None) -> Tensor:
    """Right-pad with 0 to ``length`` (default: the longest in the batch)."""
    t = length or max(len(s) for s in seqs)
    out = np.zeros((len(seqs), t), dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return torch.from_numpy(out)


def batches(wl: Workload, mode: str, seed: int, pool_batches: int = 64) -> list[dict[str, Tensor]]:
    """Pre-built batches. ``mode``: ``random`` (shuffled users, each batch padded to its own
    longest view), ``bucketed`` (pools of ``pool_batches`` batches sorted by length, then
    cut into batches, batch order shuffled) or ``max`` (everything padded to 50)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(wl.views_a))
    if mode == "bucketed":
        pool = BATCH * pool_batches
        chunks = []
        for s in range(0, len(order), pool):
            idx = order[s : s + pool]
            lens = np.array([len(wl.views_b[i]) for i in idx])
            idx = idx[np.argsort(lens, kind="stable")]
            chunks += [idx[j : j + BATCH] for j in range(0, len(idx), BATCH)]
        rng.shuffle(chunks)
    else:
        chunks = [order[j : j + BATCH] for j in range(0, len(order), BATCH)]
    length = MAX_LEN if mode == "max" else None
    out = []
    for c in chunks:
        if len(c) < BATCH:
            continue
        out.append(
            {
                "view_a": pad([wl.views_a[i] for i in c], length),
                "view_b": pad([wl.views_b[i] for i in c], length),
            }
        )
    return out


# ----------------------------------------------------------------------------- models
class ReferenceBarlow(nn.Module):
    """The straightforward baseline: ``nn.TransformerEncoder`` (pre-LN, GELU, same sizes),
    each view padded to 50 and encoded separately, masked-mean pooling, same projector and
    loss."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(vocab_size, DIM, padding_idx=0)
        self.pos_emb = nn.Embedding(MAX_LEN, DIM)
        self.drop = nn.Dropout(0.1)
        layer = nn.TransformerEncoderLayer(
            DIM, HEADS, FF, 0.1, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, LAYERS, norm=nn.LayerNorm(DIM), enable_nested_tensor=False
        )
        self.projector = Projector(DIM, PROJECTOR)
        self.loss = BarlowTwinsLoss(0.0051)

    def embed(self, items: Tensor) -> Tensor:
        pad_mask = items == 0  # (B, T)
        x = self.drop(self.item_emb(items) + self.pos_emb.weight[: items.shape[1]])
        x = self.encoder(x, src_key_padding_mask=pad_mask)  # (B, T, D)
        keep = (~pad_mask).unsqueeze(-1).float()
        return (x * keep).sum(1) / keep.sum(1).clamp_min(1)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        z_a = self.projector(self.embed(batch["view_a"]))
        z_b = self.projector(self.embed(batch["view_b"]))
        return self.loss(z_a, z_b), {}


def ours(vocab_size: int, **encoder_kwargs: Any) -> nn.Module:
    cfg = EncoderConfig(dim=DIM, layers=LAYERS, heads=HEADS, ff_dim=FF, max_len=MAX_LEN)
    for k, v in encoder_kwargs.items():
        setattr(cfg, k, v)
    return BarlowObjective(SequenceEncoder(cfg, vocab_size), BarlowConfig(projector=PROJECTOR))


def train_flops(batch: dict[str, Tensor]) -> tuple[float, float]:
    """(useful, executed-if-padded-to-50) FLOPs of one training step: 3 x forward matmul
    FLOPs (backward = 2 x forward). Per real token and layer 2*(4 D^2 + 2 D F) for QKV,
    output and feed-forward GEMMs, per sequence of length L 2 * 2 * L^2 * D for attention;
    plus the projector. Embedding look-ups, norms and element-wise work are not counted."""
    per_token = LAYERS * 2 * (4 * DIM * DIM + 2 * DIM * FF)
    proj = 2 * (DIM * PROJECTOR[0] + PROJECTOR[0] * PROJECTOR[1])
    useful = padded = 0.0
    for key in ("view_a", "view_b"):
        lens = (batch[key] != 0).sum(1).double()
        n = lens.numel()
        useful += per_token * float(lens.sum()) + LAYERS * 4 * DIM * float((lens**2).sum())
        padded += n * (per_token * MAX_LEN + LAYERS * 4 * DIM * MAX_LEN**2)
        useful += n * proj
        padded += n * proj
    return 3 * useful, 3 * padded


# ----------------------------------------------------------------------------- timing
@dataclass
class Variant:
    name: str
    workload: str
    batching: str  # random | bucketed | max
    build: Callable[[], nn.Module]
    bf16: bool = False
    compile: bool = False
    fused_adamw: bool = False


class Runner:
    """A model, its optimizer and an endless stream of its batches."""

    def __init__(self, v: Variant, data: list[dict[str, Tensor]]) -> None:
        self.v = v
        torch.manual_seed(0)
        self.model = v.build().train()
        self.step_fn: Callable[[dict[str, Tensor]], tuple[Tensor, dict[str, float]]] = self.model
        self.compile_s = 0.0
        if v.compile:
            self.step_fn = torch.compile(self.model, dynamic=True)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=1e-3, weight_decay=0.01, fused=v.fused_adamw or None
        )
        self.data = data
        self._it = self._cycle()
        self.losses: list[float] = []

    def _cycle(self) -> Iterator[dict[str, Tensor]]:
        while True:
            yield from self.data

    def _ctx(self) -> AbstractContextManager[Any]:
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.v.bf16 else nullcontext()

    def step(self) -> dict[str, Tensor]:
        batch = next(self._it)
        with self._ctx():
            loss, _ = self.step_fn(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.losses.append(float(loss.detach()))
        return batch

    def timed(self, steps: int) -> tuple[float, float, float, float]:
        """(wall seconds, process CPU seconds, useful FLOPs, padded FLOPs) for ``steps``
        steps. CPU time is less disturbed than wall time when other jobs share the cores."""
        useful = padded = 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            b = self.step()
            u, p = train_flops(b)
            useful += u
            padded += p
        return time.perf_counter() - t0, time.process_time() - c0, useful, padded


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """Best GFLOP/s of ``reps`` ``n x n @ n x n`` matmuls in ``dtype`` (best, not median:
    a peak, and on a shared machine the fastest repeat is the least disturbed one)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


def variants(compile_: bool) -> list[Variant]:
    v = NUM_ITEMS + 2
    out = []
    for wl in ("skewed", "full"):
        out += [
            Variant(f"{wl}/reference", wl, "max", lambda: ReferenceBarlow(v)),
            Variant(f"{wl}/ours", wl, "random", lambda: ours(v)),
            Variant(f"{wl}/ours-bf16", wl, "random", lambda: ours(v), bf16=True),
        ]
        if wl == "skewed":
            out += [
                Variant(f"{wl}/ours-bucketed", wl, "bucketed", lambda: ours(v)),
                Variant(f"{wl}/ours-bucketed-bf16", wl, "bucketed", lambda: ours(v), bf16=True),
                # packing off: dynamic padding alone
                Variant(f"{wl}/ours-nopack", wl, "random", lambda: ours(v, pack_threshold=1.0)),
            ]
        else:
            # how much of the gain bf16 alone would give the reference
            out.append(
                Variant(f"{wl}/reference-bf16", wl, "max", lambda: ReferenceBarlow(v), bf16=True)
            )
        if compile_:
            out.append(
                Variant(f"{wl}/ours-bf16-compiled", wl, "random", lambda: ours(v), bf16=True,
                        compile=True)
            )  # fmt: skip
    return out


def _busy_seconds() -> float:
    """CPU seconds all processes have spent running, machine-wide (user + system)."""
    import psutil

    t = psutil.cpu_times()
    return float(t.user + t.system + getattr(t, "nice", 0.0))


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM; unlike ``ru_maxrss`` it is not inherited from the
    parent across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_probe(name: str, steps: int) -> float:
    """Peak RSS (MiB) of a child process that builds the data and runs one variant."""
    cmd = [sys.executable, __file__, "--rss-probe", name, "--probe-steps", str(steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    cpu, flags = cpu_model_and_flags()
    return {
        "cpu": cpu,
        "nproc": torch.multiprocessing.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg_1m_at_start": os.getloadavg()[0],
        "mkldnn": torch.backends.mkldnn.is_available(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
    }


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=256 * 16, help="users per workload")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    ap.add_argument(
        "--steps", type=int, default=0,
        help="steps per timed repeat; 0 = one pass over all batches, so that every repeat "
        "sees the same mix of batch lengths (matters for bucketed batches)",
    )  # fmt: skip
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also try torch.compile")
    ap.add_argument("--only", default="", help="comma-separated variant names to run")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--no-rss", action="store_true", help="skip the per-variant RSS probes")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="train", help="results file stem in --out")
    ap.add_argument("--note", default="", help="free text stored with the results")
    ap.add_argument("--rss-probe", default="", help=argparse.SUPPRESS)
    ap.add_argument("--probe-steps", type=int, default=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.users, args.warmup, args.steps, args.repeats = 256 * 4, 1, 0, 2
    vs = variants(args.compile)
    if args.only:
        wanted = set(args.only.split(","))
        vs = [v for v in vs if v.name in wanted or v.name.split("/")[1] in wanted]

    wls = {n: make_workload(n, args.users, seed=1) for n in ("skewed", "full")}
    data_cache: dict[tuple[str, str], list[dict[str, Tensor]]] = {}

    def data(v: Variant) -> list[dict[str, Tensor]]:
        key = (v.workload, v.batching)
        if key not in data_cache:
            data_cache[key] = batches(wls[v.workload], v.batching, seed=2)
        return data_cache[key]

    if args.rss_probe:
        (v,) = [x for x in variants(True) if x.name == args.rss_probe]
        r = Runner(v, data(v))
        for _ in range(args.probe_steps):
            r.step()
        print(peak_rss_mib())
        return

    info = machine()
    print(json.dumps(info), flush=True)
    busy0, own0, wall0 = _busy_seconds(), time.process_time(), time.perf_counter()
    peak = {
        "fp32": matmul_peak(torch.float32),
        "bf16": matmul_peak(torch.bfloat16),
    }
    print(f"matmul peak GFLOP/s: {peak}", flush=True)

    runners = {}
    for v in vs:
        t0 = time.perf_counter()
        r = Runner(v, data(v))
        for _ in range(args.warmup):
            r.step()
        warm_s = time.perf_counter() - t0
        runners[v.name] = r
        print(f"warm {v.name}: {warm_s:.1f}s", flush=True)
        r.compile_s = warm_s if v.compile else 0.0

    n_batches = min(len(runners[v.name].data) for v in vs)
    if args.steps <= 0:
        args.steps = n_batches
    times: dict[str, list[float]] = {v.name: [] for v in vs}
    cpu_times: dict[str, list[float]] = {v.name: [] for v in vs}
    flops: dict[str, tuple[float, float]] = {}
    for rep in range(args.repeats):
        # interleaved step by step (one step of every variant, then the next step), so
        # that bursts of load from other jobs on a shared machine hit all variants alike
        acc = {v.name: [0.0, 0.0, 0.0, 0.0] for v in vs}
        for _ in range(args.steps):
            for v in vs:
                for i, x in enumerate(runners[v.name].timed(1)):
                    acc[v.name][i] += x
        for v in vs:
            secs, cpu_secs, useful, padded = acc[v.name]
            times[v.name].append(secs / args.steps)
            cpu_times[v.name].append(cpu_secs / args.steps)
            flops[v.name] = (useful / args.steps, padded / args.steps)
        print(f"repeat {rep + 1}/{args.repeats} done", flush=True)

    other_share = max(
        0.0,
        (_busy_seconds() - busy0 - (time.process_time() - own0))
        / ((time.perf_counter() - wall0) * (os.cpu_count() or 1)),
    )
    results: list[dict[str, Any]] = []
    for v in vs:
        step_s = statistics.median(times[v.name])
        useful, padded = flops[v.name]
        executed = padded if v.batching == "max" else useful
        r = runners[v.name]
        row: dict[str, Any] = {
            "variant": v.name,
            "workload": v.workload,
            "batching": v.batching,
            "bf16": v.bf16,
            "compile": v.compile,
            "step_ms_median": 1000 * step_s,
            "step_ms_all": [1000 * t for t in times[v.name]],
            "step_ms_best": 1000 * min(times[v.name]),
            "cpu_ms_per_step_median": 1000 * statistics.median(cpu_times[v.name]),
            "users_per_s": BATCH / step_s,
            "useful_gflops": useful / step_s / 1e9,
            "executed_gflops_est": executed / step_s / 1e9,
            "frac_fp32_peak_useful": useful / step_s / 1e9 / peak["fp32"],
            "frac_bf16_peak_useful": useful / step_s / 1e9 / peak["bf16"],
            "loss_first": r.losses[0],
            "loss_last": r.losses[-1],
            "finite": bool(np.all(np.isfinite(r.losses))),
        }
        if v.compile:
            row["warmup_incl_compile_s"] = r.compile_s
        results.append(row)
    refs = {r["workload"]: r for r in results if r["variant"].endswith("/reference")}
    for row in results:
        if row["workload"] in refs:
            ref = refs[row["workload"]]
            row["speedup_vs_reference"] = row["users_per_s"] / ref["users_per_s"]
            row["speedup_vs_reference_best"] = ref["step_ms_best"] / row["step_ms_best"]
            row["speedup_vs_reference_cpu_time"] = (
                ref["cpu_ms_per_step_median"] / row["cpu_ms_per_step_median"]
            )
    if not args.no_rss:
        for row in results:
            row["peak_rss_mib"] = rss_probe(row["variant"], steps=5)

    report = {
        "command": shlex.join([".venv/bin/python", *sys.argv]),
        "machine": info,
        "note": args.note,
        "settings": {
            "dim": DIM,
            "layers": LAYERS,
            "heads": HEADS,
            "ff_dim": FF,
            "max_len": MAX_LEN,
            "batch": BATCH,
            "num_items": NUM_ITEMS,
            "projector": PROJECTOR,
            "users": args.users,
            "warmup": args.warmup,
            "steps": args.steps,
            "repeats": args.repeats,
            "mean_view_len": {n: w.mean_len for n, w in wls.items()},
        },
        "matmul_peak_gflops": peak,
        "loadavg_1m_at_end": os.getloadavg()[0],
        # CPU time other processes used during the measurements, as a share of all cores:
        # 0 on an idle machine; the larger, the more the timings are disturbed
        "other_processes_cpu_share": other_share,
        "process_peak_rss_mib": peak_rss_mib(),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))


def markdown(rep: dict[str, Any]) -> str:
    m = rep["machine"]
    lines = [
        "# Pretraining throughput (`barlow`)",
        "",
        f"Command: `{rep['command']}`  ",
        f"Machine: {m['cpu']}, nproc={m['nproc']}, torch threads={m['threads']}, "
        f"torch {m['torch']}, capability {m['cpu_capability']}, "
        f"avx512_bf16={m['avx512_bf16']}, amx_bf16={m['amx_bf16']}  ",
        f"Matmul peak (2048^3): fp32 {rep['matmul_peak_gflops']['fp32']:.0f} GFLOP/s, "
        f"bf16 {rep['matmul_peak_gflops']['bf16']:.0f} GFLOP/s  ",
        f"Mean view length: skewed {rep['settings']['mean_view_len']['skewed']:.1f}, "
        f"full {rep['settings']['mean_view_len']['full']:.1f}; batch {BATCH}; "
        f"median of {rep['settings']['repeats']} repeats, each one pass over "
        f"{rep['settings']['steps']} batches with all variants interleaved step by step",
    ]
    lines.append(
        f"Load average (1 min) at start / end: {m['loadavg_1m_at_start']:.1f} / "
        f"{rep['loadavg_1m_at_end']:.1f} on {m['nproc']} cores; other processes used "
        f"{100 * rep['other_processes_cpu_share']:.0f}% of the machine's CPU time during the "
        f"timings; process peak RSS "
        f"{rep['process_peak_rss_mib']:.0f} MiB"
    )
    if rep.get("note"):
        lines.append(f"Note: {rep['note']}")
    lines += [
        "",
        "x reference: median wall time (best repeat / CPU time in brackets). "
        "GFLOP/s count useful FLOPs only (real tokens; see `train_flops`).",
        "",
        "| variant | batching | users/s | x reference | step ms | useful GFLOP/s "
        "| % fp32 peak | % bf16 peak | peak RSS MiB | loss first -> last |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rep["results"]:
        rss = f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else "-"
        lines.append(
            f"| {r['variant']} | {r['batching']} | {r['users_per_s']:.0f} "
            f"| {r.get('speedup_vs_reference', float('nan')):.2f} "
            f"({r.get('speedup_vs_reference_best', float('nan')):.2f} / "
            f"{r.get('speedup_vs_reference_cpu_time', float('nan')):.2f}) "
            f"| {r['step_ms_median']:.1f} "
            f"| {r['useful_gflops']:.1f} | {100 * r['frac_fp32_peak_useful']:.1f} "
            f"| {100 * r['frac_bf16_peak_useful']:.1f} | {rss} "
            f"| {r['loss_first']:.1f} -> {r['loss_last']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
