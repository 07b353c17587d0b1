"""Cost of the augmentations: microseconds per sequence and co-occurrence table build time.

    .venv/bin/python benchmarks/bench_augment.py            # per-sequence cost, 300k build
    .venv/bin/python benchmarks/bench_augment.py --big      # also a 20M-interaction build

Workload: synthetic skewed histories (popularity ~ 1/rank^0.9, geometric lengths), the
default ``AugmentConfig`` and length-50 sequences, as in pretraining (2 views x 256 users
per batch). Times are CPU seconds of this process (``time.process_time``), so other jobs
on the machine inflate them less than wall time; the best of several repeats is reported.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import timeit
from collections.abc import Callable

import numpy as np

from seqtwins.augment import OPS, AugmentConfig, CooccurrenceTable, TwoViewTransform
from seqtwins.data.dataset import Sequences


def synthetic(n_users: int, n_items: int, mean_len: float, seed: int = 0) -> Sequences:
    rng = np.random.default_rng(seed)
    lens = np.maximum(rng.geometric(1.0 / mean_len, n_users), 3).astype(np.int64)
    p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    items = (rng.choice(n_items, int(lens.sum()), p=p / p.sum()) + 1).astype(np.int32)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    return Sequences(offsets=offsets, items=items, history_end=offsets[1:] - 1)


def per_call_us(fn: Callable[[], object], number: int) -> float:
    fn()
    best = min(timeit.repeat(fn, number=number, repeat=7, timer=time.process_time))
    return best / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", action="store_true", help="also build on 20M interactions")
    args = ap.parse_args()
    out: dict[str, object] = {}

    seqs = synthetic(30_000, 20_000, 10.0)  # Yelp-sized: ~300k interactions
    t0 = time.process_time()
    cooc = CooccurrenceTable.build(seqs, window=3, top_k=20)
    out["build_300k"] = {
        "interactions": seqs.num_interactions,
        "cpu_s": round(time.process_time() - t0, 3),
        "nnz": cooc.nnz,
    }

    rng = np.random.default_rng(0)
    batch = [rng.integers(1, 20_001, 50).astype(np.int32) for _ in range(256)]
    mask_token = 20_001
    per_seq: dict[str, float] = {}
    for label, ops in (("default", AugmentConfig().ops), ("mask_crop_reorder", OPS[:3])):
        for mode in ("random", "chain"):
            tr = TwoViewTransform(AugmentConfig(ops=ops, mode=mode), mask_token, cooc)
            us = per_call_us(lambda tr=tr: [tr(s, rng) for s in batch], number=20) / len(batch)
            per_seq[f"{label}/{mode}"] = round(us, 2)
    out["us_per_sequence_two_views_len50"] = per_seq
    out["us_per_rng_creation"] = round(
        per_call_us(lambda: np.random.default_rng([1, 2, 3, 4]), number=2000), 2
    )

    if args.big:
        big = synthetic(138_000, 27_000, 145.0)
        t0, w0 = time.process_time(), time.perf_counter()
        table = CooccurrenceTable.build(big, window=3, top_k=20)
        out["build_20M"] = {
            "interactions": big.num_interactions,
            "cpu_s": round(time.process_time() - t0, 2),
            "wall_s": round(time.perf_counter() - w0, 2),
            "nnz": table.nnz,
        }
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
