"""GPU check and throughput: pretraining on CUDA in fp32, bf16 autocast, and bf16 +
torch.compile, plus one end-to-end ``pretrain()`` run on CUDA.

Run on a machine with an NVIDIA GPU (the project's CI has none)::

    PYTHONPATH=src python benchmarks/bench_gpu.py --out benchmarks/results

Throughput = users per second (both views, forward + backward + AdamW step), measured
over ``--steps`` steps after ``--warmup`` steps, with batches produced by the real
DataLoader pipeline (augmentations in worker processes).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from seqtwins.config import PretrainConfig, build
from seqtwins.data.batching import PretrainBatches, batch_plan
from seqtwins.data.dataset import SequenceDataset
from seqtwins.data.synth import SynthConfig, synthesize
from seqtwins.models.encoder import build_encoder
from seqtwins.objectives import build_objective
from seqtwins.run import Run
from seqtwins.train import build_transform, pretrain


def measure(
    ds: SequenceDataset,
    objective: str,
    precision: str,
    compile_model: bool,
    batch_size: int,
    pack: bool,
    warmup: int,
    steps: int,
    workers: int,
    device: torch.device,
) -> dict[str, Any]:
    # pack=False: encoder.pack_threshold=1.0, dense padded layout, no data-dependent shapes
    # (needed by torch.compile; the packed path breaks its graph)
    enc = {} if pack else {"pack_threshold": 1.0}
    cfg = build(
        PretrainConfig,
        {"objective": objective, "encoder": enc, "train": {"batch_size": batch_size}},
    )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    torch.manual_seed(0)
    train = ds.split_users("train")
    encoder = build_encoder(cfg.encoder, ds)
    pop = np.bincount(ds.sequences.items, minlength=ds.vocab_size).astype(np.float64)
    model = build_objective(objective, encoder, cfg.barlow, cfg.dual, cfg.next, pop).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step_model = torch.compile(model, dynamic=True) if compile_model else model
    plan: list[np.ndarray] = []
    epoch = 0
    while len(plan) < warmup + steps:  # as many epochs' batches as the timing needs
        plan += batch_plan(train, ds.sequences.history_lengths(), batch_size, 0, epoch, True)
        epoch += 1
    batches = PretrainBatches(
        ds.sequences, plan, objective, cfg.encoder.max_len, 0, 0, build_transform(cfg, ds, train)
    )
    loader = DataLoader(
        batches, batch_size=None, num_workers=workers, pin_memory=True, persistent_workers=False
    )
    dtype = torch.bfloat16 if precision == "bf16" else None
    losses: list[float] = []
    n_users = 0
    t_compile = time.perf_counter()
    for i, batch in enumerate(loader):
        if i >= warmup + steps:
            break
        if i == warmup:
            sync()
            t0 = time.perf_counter()
            warm_s = t0 - t_compile
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _ = step_model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            n_users += len(next(iter(batch.values())))
        losses.append(float(loss.detach()))
    sync()
    elapsed = time.perf_counter() - t0
    return {
        "objective": objective,
        "precision": precision,
        "compile": compile_model,
        "packed": pack,
        "batch_size": batch_size,
        "users_per_s": n_users / elapsed,
        "steps_timed": steps,
        "warmup_s": warm_s,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "all_finite": bool(np.all(np.isfinite(losses))),
        "peak_mem_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke run)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU (or --device cpu for a smoke run)")

    tmp = Path(tempfile.mkdtemp())
    data = synthesize(tmp / "data", SynthConfig(users=args.users, items=args.items))
    ds = SequenceDataset.open(data)
    rows = []
    variants = [  # objective, precision, compile, batch, packed token path
        ("barlow", "fp32", False, 256, True), ("barlow", "fp32", False, 1024, True),
        ("barlow", "fp32", False, 1024, False), ("barlow", "bf16", False, 1024, False),
        ("barlow", "bf16", True, 1024, False), ("dual", "fp32", False, 1024, True),
        ("dual", "fp32", False, 1024, False), ("dual", "bf16", True, 1024, False),
    ]  # fmt: skip
    for objective, precision, comp, bs, pack in variants:
        r = measure(
            ds, objective, precision, comp, bs, pack, args.warmup, args.steps, args.workers,
            device,
        )  # fmt: skip
        print(json.dumps(r), flush=True)
        rows.append(r)

    # one end-to-end run through the real loop on CUDA: precision auto, compiled
    cfg = build(
        PretrainConfig,
        {"objective": "barlow"},
        overrides=[
            "train.epochs=2",
            "train.compile=true",
            f"train.num_workers={args.workers}",
            "train.batch_size=1024",
            f"train.device={args.device}",
            "encoder.pack_threshold=1.0",
        ],  # fmt: skip
    )
    t0 = time.perf_counter()
    summary = pretrain(data, tmp / "run", cfg, progress=False)
    e2e_s = time.perf_counter() - t0
    encoder = Run.open(tmp / "run").encoder("best", ds)
    emb = encoder.embed(torch.tensor([[1, 2, 3, 0]]))
    lines = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    e2e = {
        "epochs": summary.epochs_done,
        "steps": summary.steps,
        "seconds": e2e_s,
        "best_score": summary.best_score,
        "loaded_embedding_finite": bool(torch.isfinite(emb).all()),
        "valid": [x for x in lines if x.get("event") == "valid"],
    }
    print(json.dumps(e2e), flush=True)

    result = {
        "command": "PYTHONPATH=src python benchmarks/bench_gpu.py",
        "machine": {
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
        "dataset": {"users": args.users, "items": args.items, "synth": True},
        "rows": rows,
        "end_to_end": e2e,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# GPU pretraining throughput",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['gpu']}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}; synthetic {args.users:,} users x {args.items:,} items; "
        f"default encoder (dim 64, 2 layers, max length 50); one timed window "
        f"of {args.steps} steps after {args.warmup} warm-up steps, DataLoader with "
        f"{args.workers} workers.",
        "",
        "| objective | precision | compile | packed | batch | users/s | warm-up s | peak MiB "
        "| finite |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['objective']} | {r['precision']} | {r['compile']} | {r['packed']} | "
            f"{r['batch_size']} | "
            f"{r['users_per_s']:,.0f} | {r['warmup_s']:.1f} | {r['peak_mem_mib']:.0f} | "
            f"{r['all_finite']} |"
        )
    md += [
        "",
        f"End to end (`pretrain()`, barlow, precision auto, compile, batch 1024, "
        f"2 epochs): {e2e['steps']} steps in {e2e_s:.1f} s; best validation score "
        f"{e2e['best_score']}; checkpoint reloads: {e2e['loaded_embedding_finite']}.",
    ]
    (args.out / "gpu.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
