"""Is a flat category table the probe's fault? Ridge vs logistic probes on one dataset.

On Yelp every method, TF-IDF+SVD included, scores exactly the majority-class accuracy on
``favorite_category`` and ``next_category`` (docs/evidence.md). ``seqtwins evaluate``
fits those tasks with the ridge solver (labelled users x classes is above
``ProbeConfig.auto_logistic_max``). This script refits the same labelled subsets with both
solvers and reports test accuracy beside the majority class, plus how the labels are
spread, so the finding rests on numbers rather than on one solver.

    .venv/bin/python benchmarks/probe_check.py out/evidence/yelp \\
        --out benchmarks/results/evidence/probe_check-yelp.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

TASKS = ("favorite_category", "next_category")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("experiment", type=Path, help="an experiment folder (data/ and runs/)")
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from seqtwins.data.dataset import SequenceDataset
    from seqtwins.evaluate.baselines import tfidf_svd_embeddings
    from seqtwins.evaluate.probe import ProbeConfig, fit_probe, score
    from seqtwins.evaluate.protocol import labelled_subset, train_order
    from seqtwins.evaluate.tasks import build_task
    from seqtwins.models.encoder import embed_users
    from seqtwins.run import Run

    ds = SequenceDataset.open(args.experiment / "data")
    users = np.arange(ds.num_users)
    methods = {}
    for obj in ("barlow", "dual"):
        encoder = Run.open(args.experiment / "runs" / obj).encoder("best", ds)
        methods[obj] = embed_users(encoder, ds, users)
    methods["tfidf-svd"] = tfidf_svd_embeddings(ds, dim=next(iter(methods.values())).shape[1])

    rows = []
    for name in TASKS:
        task = build_task(ds, name)
        valid = task.labelled(ds.split_users("valid"))
        test = task.labelled(ds.split_users("test"))
        train_all = task.labelled(ds.split_users("train"))
        counts = np.bincount(task.labels[train_all])
        majority = int(np.argmax(counts))
        spread = {
            "classes_in_train": int((counts > 0).sum()),
            "majority_share_train": float(counts.max() / counts.sum()),
            "majority_accuracy_test": float(np.mean(task.labels[test] == majority)),
            "classes_with_5plus_train": int((counts >= 5).sum()),
        }
        for seed in range(args.seeds):
            sub = labelled_subset(train_order(ds, seed), task.labels, args.fraction)
            for method, x in methods.items():
                for solver in ("ridge", "logistic"):
                    t = time.perf_counter()
                    probe = fit_probe(
                        x[sub],
                        task.labels[sub],
                        x[valid],
                        task.labels[valid],
                        "accuracy",
                        ProbeConfig(solver=solver),
                        seed=seed,
                    )
                    acc = score(probe.predict(x[test]), task.labels[test], ("accuracy",))
                    rows.append(
                        {
                            "task": name,
                            "seed": seed,
                            "method": method,
                            "solver": solver,
                            "n_train": len(sub),
                            "accuracy": acc["accuracy"],
                            "seconds": round(time.perf_counter() - t, 2),
                        }
                    )
                    print(rows[-1], flush=True)
        rows.append({"task": name, "labels": spread})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"experiment": str(args.experiment), "fraction": args.fraction, "rows": rows}, indent=1
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
