"""Tiny datasets for fast tests (no dependency on the synthetic generator)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from seqtwins.data.dataset import Sequences, write_dataset


def tiny_dataset(
    path: Path, users: int = 240, items: int = 40, categories: int = 4, seed: int = 0
) -> Path:
    """Users prefer one category; sequences walk mostly inside it. Last 3 items = future."""
    rng = np.random.default_rng(seed)
    item_cat = np.arange(items) % categories  # item i (1-based idx i+1) has category i % C
    seqs, hist = [], []
    taste = rng.integers(0, categories, users)
    for u in range(users):
        n = int(rng.integers(6, 20))
        own = np.flatnonzero(item_cat == taste[u])
        pick = np.where(rng.random(n) < 0.8, rng.choice(own, n), rng.integers(0, items, n))
        seqs.append((pick + 1).tolist())
        hist.append(n - 3)
    split = np.array(["train"] * users, dtype=object)
    split[int(users * 0.7) : int(users * 0.85)] = "valid"
    split[int(users * 0.85) :] = "test"
    return write_dataset(
        path,
        sequences=Sequences.from_lists(seqs, hist),
        items=pl.DataFrame(
            {
                "item_id": [f"it{i}" for i in range(items)],
                "categories": [[f"c{c}"] for c in item_cat],
            }
        ),
        users=pl.DataFrame(
            {
                "user_id": [f"user{u}" for u in range(users)],
                "split": split.tolist(),
                "segment": [f"s{t % 2}" for t in taste],
            }
        ),
        source="tests.helpers.tiny_dataset",
    )


def tiny_run(root: Path, epochs: int = 1, objective: str = "barlow") -> tuple[Path, Path]:
    """(dataset, run) under ``root``: :func:`tiny_dataset` and ``epochs`` of ``objective``
    at the tiny test sizes (``tests.test_train.TINY``)."""
    from seqtwins.config import PretrainConfig, build
    from seqtwins.train import pretrain
    from tests.test_train import TINY

    data = tiny_dataset(root / "ds")
    cfg = build(PretrainConfig, {"objective": objective},
                overrides=[*TINY, f"train.epochs={epochs}"])  # fmt: skip
    pretrain(data, root / "run", cfg, progress=False)
    return data, root / "run"


def spawn_ranks(worker: Callable[..., None], nprocs: int, *args: object) -> None:
    """``torch.multiprocessing.spawn`` of ``worker(rank, *args)`` on ``nprocs`` processes.

    A rank that returns leaves with ``os._exit(0)``, skipping interpreter teardown: there,
    gloo's threads occasionally abort the process ("terminate called without an active
    exception", SIGABRT) after the work and ``destroy_process_group`` are done, which
    failed the test once in a few runs on a loaded 2-core machine. A rank that raises
    still reports its error as usual."""
    import torch.multiprocessing as mp

    mp.spawn(_exit_after, args=(worker, args), nprocs=nprocs, join=True)


def _exit_after(rank: int, worker: Callable[..., None], args: tuple[object, ...]) -> None:
    worker(rank, *args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
