"""Long histories: what ``encoder.max_len`` 200 costs against 50 on ML-1M.

ML-1M users have ~160 history items on average, so a 50-item window hides most of each
history from the encoder. This measures, for each ``max_len``, with the real training code
(``seqtwins.train.pretrain``, ``barlow`` objective, default encoder, batch 256,
``train.threads``):

* training users/s within steps (the ``users_per_s`` of the metrics lines, after the first
  epoch) and end to end (users trained / wall time of ``pretrain``, validation and
  checkpoints included; validation is minus the loss here, no probe);
* embedding users/s (``embed_users`` over every user, best of 3), with the packed token
  path (default) and with it disabled (``encoder.pack_threshold=1.0``: every batch padded
  to its longest sequence);
* real tokens per user: the history window the encoder embeds, ``min(history, max_len)``,
  and the two augmented views per training user, with the padding share of the training
  batches (length-bucketed).

"Cost proportional to real tokens" holds when the time per real token (1 / (users/s x
tokens per user)) stays about the same at both lengths. Attention itself is quadratic in
the sequence length, so a rise there is expected, not waste.

    .venv/bin/python benchmarks/bench_long_history.py --data /tmp/extras/ml-1m
    .venv/bin/python benchmarks/bench_long_history.py --data /tmp/extras/ml-1m --quick

Prepare the data first: ``seqtwins prepare $SEQTWINS_DATA/ml-1m --format movielens --out
/tmp/extras/ml-1m``. Results go to ``benchmarks/results/long_history.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import machine_info

from seqtwins.augment import TwoViewTransform
from seqtwins.config import PretrainConfig, build
from seqtwins.data.batching import PretrainBatches, batch_plan
from seqtwins.data.dataset import SequenceDataset
from seqtwins.models.encoder import embed_users
from seqtwins.run import Run
from seqtwins.train import pretrain

RESULTS = Path(__file__).resolve().parent / "results"
OBJECTIVE = "barlow"


def train_tokens(ds: SequenceDataset, cfg: PretrainConfig, batches: int = 8) -> dict[str, float]:
    """Real tokens per user in the two views of epoch 0's first ``batches`` batches, and
    the share of padding in their (B, T) grids."""
    train = ds.split_users("train")
    transform = TwoViewTransform.from_sequences(cfg.augment, ds.sequences, train, ds.num_items)
    lengths = ds.sequences.history_lengths()
    plan = batch_plan(train, lengths, cfg.train.batch_size, cfg.train.seed, 0,
                      cfg.train.bucket_by_length)  # fmt: skip
    data = PretrainBatches(ds.sequences, plan[:batches], OBJECTIVE, cfg.encoder.max_len,
                           cfg.train.seed, 0, transform)  # fmt: skip
    users = real = grid = square = 0
    t0 = time.perf_counter()
    collated = [data[b] for b in range(len(data))]
    collate_s = (time.perf_counter() - t0) / max(len(collated), 1)
    for batch in collated:
        for key in ("view_a", "view_b"):
            lengths = (batch[key] != 0).sum(1)  # (B,)
            real += int(lengths.sum())
            square += int((lengths**2).sum())
            grid += batch[key].numel()
        users += len(batch["view_a"])
    return {
        "view_tokens_per_user": real / users,
        "view_square_tokens_per_user": square / users,
        "padding_share": 1.0 - real / grid,
        "collate_ms_per_batch": 1e3 * collate_s,
    }


def train_speed(data: Path, cfg: PretrainConfig, work: Path) -> dict[str, Any]:
    """Users/s within steps (epochs after the first) and end to end, from ``pretrain``."""
    run_dir = work / f"run{cfg.encoder.max_len}"
    t0 = time.perf_counter()
    pretrain(data, run_dir, cfg, progress=False, overwrite=True)
    wall = time.perf_counter() - t0
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "step" in x and "users_per_s" in x]
    later = [x for x in steps if x["epoch"] > 0] or steps
    # log_every=1: each line times one step of `batch` users, so the mean rate over steps
    # is users / time summed over those steps
    batch = cfg.train.batch_size
    step_s = sum(batch / x["users_per_s"] for x in later)
    return {
        "steps": len(steps),
        "epochs": cfg.train.epochs,
        "step_users_per_s": len(later) * batch / step_s,
        "end_to_end_users_per_s": len(steps) * batch / wall,
        "wall_s": wall,
        "run": run_dir,
    }


def embed_speed(ds: SequenceDataset, run_dir: Path, repeats: int) -> dict[str, float]:
    """Embedding users/s over every user (best of ``repeats``), packed and dense."""
    encoder = Run.open(run_dir).encoder("last", ds)
    users = np.arange(ds.num_users)
    out: dict[str, float] = {}
    for name, threshold in (("packed", encoder.cfg.pack_threshold), ("dense", 1.0)):
        encoder.cfg = dataclasses.replace(encoder.cfg, pack_threshold=threshold)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            embed_users(encoder, ds, users)
            best = min(best, time.perf_counter() - t0)
        out[f"embed_users_per_s_{name}"] = len(users) / best
    return out


def measure(args: argparse.Namespace, ds: SequenceDataset, work: Path) -> list[dict[str, Any]]:
    lengths = ds.sequences.history_lengths()
    per_epoch = len(ds.split_users("train")) // args.batch
    if per_epoch < 1:
        raise SystemExit(f"--batch {args.batch} is larger than the {args.data} train users")
    epochs = max(2, -(-args.steps // per_epoch))
    rows = []
    for max_len in args.max_lens:
        cfg = build(PretrainConfig, {"objective": OBJECTIVE}, overrides=[
            f"encoder.max_len={max_len}", f"train.threads={args.threads}",
            f"train.epochs={epochs}", "train.log_every=1", "train.patience=0",
            f"train.batch_size={args.batch}",
        ])  # fmt: skip
        row: dict[str, Any] = {"max_len": max_len}
        window = np.minimum(lengths, max_len).astype(np.float64)
        row["window_tokens_per_user"] = float(window.mean())
        row["window_square_tokens_per_user"] = float((window**2).mean())
        row |= train_tokens(ds, cfg)
        row |= train_speed(args.data, cfg, work)
        row |= embed_speed(ds, row.pop("run"), args.repeats)
        for kind in ("step", "end_to_end"):
            row[f"train_us_per_token_{kind}"] = 1e6 / (
                row[f"{kind}_users_per_s"] * row["view_tokens_per_user"]
            )
        for kind in ("packed", "dense"):
            row[f"embed_us_per_token_{kind}"] = 1e6 / (
                row[f"embed_users_per_s_{kind}"] * row["window_tokens_per_user"]
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# Long histories: encoder.max_len 50 vs 200 on ML-1M",
        "",
        f"Command: `{res['command']}` (run at {res['started']}, total {res['total_s']:.0f} s).",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memory_gb']} GiB; Python "
        f"{m['python']}, torch {m['torch']}, numpy {m['numpy']}; train.threads="
        f"{res['threads']}. **Shared machine**: 1-minute load average {res['load_before']} "
        f"before, {res['load_after']} after"
        + (
            " (other jobs ran meanwhile: absolute rates are low and noisy; the ratios between "
            "the two lengths, measured back to back, are the finding)."
            if res["load_after"] > m["nproc"]
            else "."
        ),
        "",
        f"Data: {res['data']['path']} ({res['data']['users']:,} users, "
        f"{res['data']['train_users']:,} train; history length mean "
        f"{res['data']['history_mean']:.1f}, median {res['data']['history_median']:.0f}, "
        f"max {res['data']['history_max']:,}). Objective `{OBJECTIVE}`, default encoder "
        f"(dim 64, 2 layers), batch {res['batch']}, length-bucketed batches.",
        "",
        "| max_len | window tokens/user | view tokens/user | batch padding | collate ms/batch "
        "| steps | train users/s (steps) | train users/s (end to end) | µs/token (steps) | "
        "embed users/s (packed) | embed users/s (dense) | embed µs/token (packed) | "
        "embed µs/token (dense) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['max_len']} | {r['window_tokens_per_user']:.1f} | "
            f"{r['view_tokens_per_user']:.1f} | {100 * r['padding_share']:.1f}% | "
            f"{r['collate_ms_per_batch']:.0f} | {r['steps']} | {r['step_users_per_s']:,.0f} | "
            f"{r['end_to_end_users_per_s']:,.0f} | "
            f"{r['train_us_per_token_step']:.1f} | {r['embed_users_per_s_packed']:,.0f} | "
            f"{r['embed_users_per_s_dense']:,.0f} | {r['embed_us_per_token_packed']:.2f} | "
            f"{r['embed_us_per_token_dense']:.2f} |"
        )
    lines += ["", *(f"- {n}" for n in res["findings"]), ""]
    return "\n".join(lines)


def findings(rows: list[dict[str, Any]]) -> list[str]:
    """Ratios of the longest window to the shortest: cost against real tokens."""
    a, b = rows[0], rows[-1]
    tok_w = b["window_tokens_per_user"] / a["window_tokens_per_user"]
    tok_v = b["view_tokens_per_user"] / a["view_tokens_per_user"]
    sq_w = b["window_square_tokens_per_user"] / a["window_square_tokens_per_user"]
    sq_v = b["view_square_tokens_per_user"] / a["view_square_tokens_per_user"]
    return [
        f"max_len {a['max_len']} -> {b['max_len']}: view tokens per training user x{tok_v:.2f} "
        f"(attention work, sum of squared lengths, x{sq_v:.2f}), training step time per user "
        f"x{a['step_users_per_s'] / b['step_users_per_s']:.2f} (per real token "
        f"x{b['train_us_per_token_step'] / a['train_us_per_token_step']:.2f}).",
        f"Embedding: window tokens per user x{tok_w:.2f} (attention work x{sq_w:.2f}), "
        f"time per user "
        f"x{a['embed_users_per_s_packed'] / b['embed_users_per_s_packed']:.2f} packed "
        f"(per real token x{b['embed_us_per_token_packed'] / a['embed_us_per_token_packed']:.2f}"
        f"); the packed path is x{b['embed_users_per_s_packed'] / b['embed_users_per_s_dense']:.2f}"
        f" the speed of the dense one at max_len {b['max_len']}.",
        verdict(b["train_us_per_token_step"] / a["train_us_per_token_step"]),
    ]


def verdict(per_token: float) -> str:
    """Whether training time follows the real tokens (within 25 %) or grows faster."""
    if per_token <= 1.25:
        return (
            f"Training time per real token changed x{per_token:.2f}: the cost follows the real "
            "tokens (length-bucketed batches, packed token-wise layers), not max_len; nothing "
            "in the encoder or batching wastes compute on the longer window."
        )
    return (
        f"Training time per real token grew x{per_token:.2f}: more than the tokens explain; "
        "look for padding or work that scales with max_len."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/extras/ml-1m"))
    ap.add_argument("--max-lens", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--steps", type=int, default=36, help="training steps per max_len (about)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256, help="train.batch_size")
    ap.add_argument("--repeats", type=int, default=3, help="embedding passes (best kept)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 18 steps, 1 repeat")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    args = ap.parse_args()
    if args.render:
        res = json.loads((args.results / "long_history.json").read_text())
        res["findings"] = findings(res["rows"])
        (args.results / "long_history.json").write_text(json.dumps(res, indent=2) + "\n")
        (args.results / "long_history.md").write_text(markdown(res))
        return
    if args.quick:
        args.steps, args.repeats = 18, 1
    torch.set_num_threads(args.threads)  # the embedding passes; pretrain sets its own
    ds = SequenceDataset.open(args.data)
    lengths = ds.sequences.history_lengths()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_long_") as work:
        rows = measure(args, ds, Path(work))
    res = {
        "command": shlex.join(
            [".venv/bin/python", "benchmarks/bench_long_history.py", *sys.argv[1:]]
        ),  # fmt: skip
        "started": started,
        "total_s": time.perf_counter() - t0,
        "machine": machine_info("torch", "numpy"),
        "threads": args.threads,
        "batch": args.batch,
        "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 2),
        "data": {
            "path": str(args.data),
            "users": ds.num_users,
            "train_users": int(len(ds.split_users("train"))),
            "history_mean": float(lengths.mean()),
            "history_median": float(np.median(lengths)),
            "history_max": int(lengths.max()),
        },  # fmt: skip
        "rows": rows,
        "findings": findings(rows),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "long_history.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.results / "long_history.md").write_text(markdown(res))
    print("\n".join(res["findings"]))


if __name__ == "__main__":
    main()
