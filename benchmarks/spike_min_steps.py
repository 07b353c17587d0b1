"""Spike (issue 11): are ML-1M's runs under-trained in optimiser steps?

ML-1M has 2,099 train users: at batch 256 an epoch is 8 optimiser steps, so the 20-epoch
runs of the evidence study stop after 80 to 120 steps and keep a checkpoint of 48 to 88,
where Beauty's runs take about 1,400. This retrains the listed objectives of an experiment
with ``--set`` overrides (e.g. 60 epochs and no early stopping) on the same prepared data,
with the same headline proxy, and scores **valid users only**: the proxy's best value and
epoch, and for objectives with an item head its native ranking of ``future_items``
(recall@10, :func:`seqtwins.evaluate.native.native_scorer`, the protocol's history
exclusion), at the best and the last checkpoint, beside the same objectives' runs under
``--base``.

    python benchmarks/spike_min_steps.py configs/tuned/ml-1m.yaml --base out/evidence/ml-1m \\
        --out out/spike/long-ml1m-60 --objectives barlow+mask barlow+next dual barlow \\
        --set pretrain.train.epochs=60 pretrain.train.patience=60

A run under ``--out`` that is finished with the same config is reused, not retrained.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from seqtwins.data.dataset import SequenceDataset
from seqtwins.evaluate.native import NATIVE_OBJECTIVES, native_scorer
from seqtwins.evaluate.probe import cpu_threads, score
from seqtwins.evaluate.tasks import FUTURE_ITEMS, build_task
from seqtwins.experiment import load_experiment, pretrain_run
from seqtwins.models.encoder import embed_users
from seqtwins.run import Run


def summary(run_dir: Path, ds: SequenceDataset) -> dict[str, object]:
    """Valid-user numbers of one run: proxy, best epoch, steps, native recall@10."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    done = next(r for r in records if r.get("event") == "done")
    out: dict[str, object] = {k: done[k] for k in ("epochs_done", "steps", "best_epoch")}
    out["best_proxy"] = round(float(done["best_score"]), 4)
    run = Run.open(run_dir)
    if run.config.objective in NATIVE_OBJECTIVES:
        task = build_task(ds, FUTURE_ITEMS)
        valid = task.labelled(ds.split_users("valid"))
        for which in ("best", "last"):
            model = run.objective(which, ds).eval()
            emb = embed_users(model.encoder, ds, np.arange(ds.num_users))
            with cpu_threads(1):
                got = score(native_scorer(model, emb)(task, valid), task.targets[valid],
                            task.metrics, task.exclude[valid])  # fmt: skip
            out[f"native_recall@10_{which}"] = round(float(got["recall@10"]), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", type=Path)
    ap.add_argument("--base", type=Path, required=True, help="the experiment's folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--objectives", nargs="+", required=True)
    ap.add_argument("--set", nargs="*", default=[], dest="overrides")
    args = ap.parse_args()
    cfg = load_experiment(args.experiment, args.overrides)
    data = args.base / "data"
    ds = SequenceDataset.open(data)
    result: dict[str, object] = {"overrides": args.overrides, "valid_users": {}}
    for obj in args.objectives:
        run_dir = pretrain_run(cfg.pretrain_config(obj), data, args.out / obj, progress=False)
        result[obj] = {"base": summary(args.base / "runs" / obj, ds), "new": summary(run_dir, ds)}
        print(obj, json.dumps(result[obj]), flush=True)
    (args.out / "summary.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
