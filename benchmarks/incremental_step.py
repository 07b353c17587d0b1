"""What an incremental update adds to one training step (docs/incremental.md).

Times, on the same batches of an update dataset, forward + backward of: the objective's
own step (``naive``: what fine-tuning costs), the update step as it is
(``update``: distillation + compatibility losses on the step's own embedding of the first
view, plus a gradient-free pass of the frozen old encoder) and the update step with a
second pass of the new encoder on the first view (``update, second pass``: what the
update did before it read the step's own pass; forced here by recording no pass).
Interleaved rounds after a warm-up; medians of process CPU and wall seconds per step.

    .venv/bin/python benchmarks/incremental_step.py NEW_DATA OLD_RUN
    # e.g. the study's W3 and its W2 update:
    .venv/bin/python benchmarks/incremental_step.py out/incremental/ml-1m/data/w3 \\
        out/incremental/ml-1m/runs/naive-w2
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import seqtwins.incremental.update as update_mod
from seqtwins.data.batching import PretrainBatches, batch_plan
from seqtwins.data.dataset import SequenceDataset
from seqtwins.incremental.config import IncrementalConfig
from seqtwins.incremental.update import start_update
from seqtwins.models.encoder import build_encoder
from seqtwins.objectives import build_objective
from seqtwins.run import Run
from seqtwins.train import build_transform, item_masking


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("init", type=Path)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    parent = Run.open(args.init)
    cfg = parent.config
    ds = SequenceDataset.open(args.data)
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / "incremental_step_run"
    update, train_ds = start_update(Run(scratch), ds, cfg, args.init, IncrementalConfig(), False)
    torch.manual_seed(0)
    model = build_objective(cfg.objective, build_encoder(cfg.encoder, train_ds), cfg.barlow,
                            cfg.dual, cfg.next)  # fmt: skip
    cpu = torch.device("cpu")
    update.attach(model, train_ds, cpu)
    model.train()
    step = update.wrap(model, model.encoder, model, cpu)
    users = train_ds.split_users("train")
    hist = train_ds.sequences.history_lengths()
    plan = batch_plan(users, hist, cfg.train.batch_size, cfg.train.seed, 0, True)
    transform = build_transform(cfg, train_ds, users)
    source = PretrainBatches(train_ds.sequences, plan, cfg.objective, cfg.encoder.max_len,
                             cfg.train.seed, 0, transform, (0, 1),
                             item_masking(cfg, train_ds))  # fmt: skip
    batches = [source[i] for i in range(len(plan))]
    real_first_view = update_mod.first_view

    def second_pass(batch: dict[str, torch.Tensor]) -> Any:
        update_mod.first_view = lambda taps, view: None  # type: ignore[assignment]
        try:
            return step(batch)
        finally:
            update_mod.first_view = real_first_view

    variants = {"naive": model, "update": step, "update, second pass": second_pass}

    def run(fn: Any) -> tuple[float, float]:
        c0, t0 = time.process_time(), time.perf_counter()
        for b in batches:
            loss, _ = fn(b)
            model.zero_grad(set_to_none=True)
            loss.backward()
        return (time.process_time() - c0) / len(batches), (time.perf_counter() - t0) / len(batches)

    run(step)  # warm-up: every batch shape once
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(run(variants[name]))
    base = np.median([c for c, _ in times["naive"]]), np.median([w for _, w in times["naive"]])
    print(f"{len(batches)} batches of {cfg.train.batch_size}; load average {os.getloadavg()}")
    for name, v in times.items():
        c, w = np.median([x for x, _ in v]), np.median([y for _, y in v])
        print(f"{name:20s} CPU {c:.3f} s/step ({c / base[0]:.2f}x)  wall {w:.3f} s/step "
              f"({w / base[1]:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
