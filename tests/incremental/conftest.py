"""Two consecutive time windows of a tiny log with times, and a run on the first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from seqtwins.config import PretrainConfig, build
from seqtwins.data.prepare import PrepareOptions, prepare
from seqtwins.train import pretrain

TINY = [
    "encoder.dim=16", "encoder.heads=2", "encoder.ff_dim=32", "encoder.max_len=12",
    "barlow.projector=[32,32]", "train.batch_size=32", "train.epochs=2",
    "train.log_every=1", "train.lr=0.003",
]  # fmt: skip


def tiny_cfg(*extra: str) -> PretrainConfig:
    return build(PretrainConfig, overrides=[*TINY, *extra])


def drift_log(path: Path, seed: int = 0) -> Path:
    """300 users over times 0..199, each preferring one of 4 categories (item % 4); items
    1..40 from the start, items 41..60 only from time 100 on (new items)."""
    rng = np.random.default_rng(seed)
    users, n = 300, 9000
    taste = rng.integers(0, 4, users)
    user = rng.integers(0, users, n)
    t = rng.integers(0, 200, n)
    pool = np.where(t < 100, 40, 60)
    own = rng.integers(0, pool // 4) * 4 + taste[user]  # an item of the user's category
    item = np.where(rng.random(n) < 0.8, own, rng.integers(0, pool)) + 1
    frame = pl.DataFrame({"user_id": user, "item_id": item, "timestamp": t})
    frame.write_parquet(path)
    return path


@pytest.fixture(scope="package")
def windows(tmp_path_factory) -> tuple[Path, Path]:
    """(old window [0, 100), new window [100, 200) as an update of it)."""
    root = tmp_path_factory.mktemp("windows")
    log = drift_log(root / "log.parquet")
    prepare(log, root / "w1", PrepareOptions(until=100, holdout=2))
    prepare(log, root / "w2", PrepareOptions(since=100, holdout=2, update=root / "w1"))
    return root / "w1", root / "w2"


@pytest.fixture(scope="package")
def old_run(windows, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "old"
    pretrain(windows[0], run, tiny_cfg(), progress=False)
    return run


@pytest.fixture(scope="package")
def update_run(windows, old_run, tmp_path_factory) -> Path:
    """One epoch of the default update of ``old_run`` on the new window."""
    from seqtwins.api import pretrain as api_pretrain

    run = tmp_path_factory.mktemp("runs") / "new"
    api_pretrain(windows[1], run, init=old_run, overrides=["train.epochs=1"], progress=False)
    return run
