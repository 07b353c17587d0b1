"""What validation costs per epoch: the headline proxy against the training steps.

Pretraining validates after every epoch: a validation loss and the proxy
(:mod:`seqtwins.evaluate.proxy`: ridge probes of the headline tasks on every valid user),
which selects the best checkpoint. This trains each objective for a few epochs on a real
dataset with the real training code and the CLI's proxy, and reads the ``valid`` records of
metrics.jsonl: training seconds, validation seconds (the proxy's share of it as well), the
validation share of each epoch's wall time, and users/s within steps (the ``step``
records) beside users/s end to end (users trained / (training + validation seconds)).

    .venv/bin/python benchmarks/bench_validation.py --data out/evidence/beauty/data

Results go to ``benchmarks/results/validation.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
OBJECTIVES = ("barlow", "dual", "barlow+next", "barlow+mask")


def measure(data: Path, objective: str, epochs: int, threads: int, tmp: Path) -> dict[str, Any]:
    """Train ``objective`` for ``epochs`` epochs and summarise its validation records."""
    from seqtwins import pretrain, pretrain_config

    cfg = pretrain_config(objective=objective, overrides=[
        f"train.epochs={epochs}", f"train.threads={threads}", "train.patience=0"])  # fmt: skip
    run = tmp / objective.replace("+", "_")
    t0 = time.perf_counter()
    pretrain(data, run, cfg, progress=False, overwrite=True)
    wall = time.perf_counter() - t0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    valid = [r for r in records if r.get("event") == "valid"]
    return {
        "objective": objective,
        "epochs": len(valid),
        "train_seconds": [r["train_seconds"] for r in valid],
        "valid_seconds": [r["valid_seconds"] for r in valid],
        "proxy_seconds": [r.get("proxy_seconds") for r in valid],
        **valid_summary(records),
        "wall_seconds": round(wall, 1),
        "proxy": [r.get("proxy") for r in valid],
    }


def valid_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What validation cost, from a run's metrics.jsonl records: its share of each epoch's
    wall time (mean, max), users/s end to end (median over epochs) and within steps (median
    of the ``step`` records), and the valid users used. Empty for a run without timings."""
    valid = [r for r in records if r.get("event") == "valid" and "valid_seconds" in r]
    if not valid:
        return {}
    train_s = np.array([r["train_seconds"] for r in valid])
    valid_s = np.array([r["valid_seconds"] for r in valid])
    steps = [r["users_per_s"] for r in records if "step" in r and "users_per_s" in r]
    return {
        "valid_share": float(valid_s.sum() / max(train_s.sum() + valid_s.sum(), 1e-9)),
        "valid_share_max": float(np.max(valid_s / np.maximum(train_s + valid_s, 1e-9))),
        "users_per_s_steps": float(np.median(steps)) if steps else None,
        "users_per_s_end_to_end": float(np.median([r["users_per_s"] for r in valid])),
        "valid_users": valid[-1]["users"],
        "valid_sampled": valid[-1]["sampled"],
    }


def _rate(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}"


def render(out: dict[str, Any]) -> str:
    m = out["machine"]
    lines = [
        "# Validation cost per epoch (headline proxy)",
        "",
        f"Command: `{out['command']}` ({out['started']}, {out['seconds']:.0f} s).",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), Python {m['python']}, torch {m['torch']}; "
        f"train.threads={out['threads']}. Data: `{out['data']}` ({out['valid_users']} valid "
        f"users validated{', a sample' if out['valid_sampled'] else ', all of them'}). The "
        "machine is shared: compare the columns of one row, measured in the same run.",
        "",
        "| objective | epochs | users/s (steps) | users/s (end to end) | train s / epoch | "
        "validation s / epoch | of which proxy | validation share (all epochs / worst) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out["runs"]:
        proxy = [p for p in r["proxy_seconds"] if p is not None]
        lines.append(
            f"| `{r['objective']}` | {r['epochs']} | {_rate(r['users_per_s_steps'])} | "
            f"{r['users_per_s_end_to_end']:,.0f} | {np.mean(r['train_seconds']):.2f} | "
            f"{np.mean(r['valid_seconds']):.2f} | {np.mean(proxy) if proxy else 0:.2f} | "
            f"{100 * r['valid_share']:.1f}% / {100 * r['valid_share_max']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a prepared dataset")
    ap.add_argument("--objectives", nargs="+", default=list(OBJECTIVES))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "validation")
    args = ap.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(args.data, o, args.epochs, args.threads, Path(tmp))
                for o in args.objectives]  # fmt: skip
    out = {
        "command": shlex.join(
            ["python", "benchmarks/bench_validation.py", *(argv or sys.argv[1:])]
        ),
        "started": started,
        "seconds": time.perf_counter() - t0,
        "machine": machine_info("torch"),
        "threads": args.threads,
        "data": str(args.data),
        "valid_users": runs[0]["valid_users"],
        "valid_sampled": runs[0]["valid_sampled"],
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(out))
    print(render(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
