"""Tiny hand-made datasets for the evaluation tests (no synthetic generator)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from seqtwins.data.dataset import SequenceDataset, Sequences, write_dataset


def make_dataset(
    path: Path,
    users: int = 300,
    items: int = 30,
    seed: int = 0,
    categories: bool = True,
    ratings: bool = True,
    attributes: bool = True,
) -> SequenceDataset:
    """Users of two kinds (attribute ``kind`` a/b) walk mostly in their half of the items.

    Item ``i`` (1-based) has categories ``[f"c{i % 3}", "extra"]`` (first-listed = primary);
    every user has a 3-item future window; splits are 60/20/20 % in user order.
    """
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, users)
    seqs, hist = [], []
    half = items // 2
    for u in range(users):
        n = int(rng.integers(7, 14))
        own = rng.integers(1, half + 1, n) + kind[u] * half
        other = rng.integers(1, items + 1, n)
        seqs.append(np.where(rng.random(n) < 0.8, own, other).tolist())
        hist.append(n - 3)
    seq = Sequences.from_lists(seqs, hist)
    if ratings:
        seq = dataclasses.replace(
            seq, ratings=rng.integers(1, 6, seq.num_interactions).astype(np.float32)
        )
    split = np.array(["train"] * users, dtype=object)
    split[int(users * 0.6) : int(users * 0.8)] = "valid"
    split[int(users * 0.8) :] = "test"
    item_df = pl.DataFrame({"item_id": [f"it{i}" for i in range(1, items + 1)]})
    if categories:
        item_df = item_df.with_columns(
            pl.Series("categories", [[f"c{i % 3}", "extra"] for i in range(1, items + 1)])
        )
    user_df = pl.DataFrame({"user_id": [f"u{u}" for u in range(users)], "split": split.tolist()})
    if attributes:
        age = rng.choice(["18", "25", "35"], users).astype(object)
        age[::17] = None  # some users without the attribute
        user_df = user_df.with_columns(
            pl.Series("kind", np.array(["a", "b"])[kind].tolist()),
            pl.Series("age", age.tolist(), dtype=pl.String),
        )
    out = write_dataset(path, sequences=seq, items=item_df, users=user_df, source="tests")
    return SequenceDataset.open(out)


@pytest.fixture
def ds(tmp_path: Path) -> SequenceDataset:
    return make_dataset(tmp_path / "ds")


@pytest.fixture
def kind_embeddings(ds: SequenceDataset) -> dict[str, np.ndarray]:
    """``good`` encodes the user's kind in one dimension; ``noise`` is independent of it."""
    rng = np.random.default_rng(1)
    kind = (ds.users["kind"] == "b").to_numpy().astype(np.float32)
    good = rng.normal(size=(ds.num_users, 8)).astype(np.float32)
    good[:, 0] += 6.0 * kind
    noise = rng.normal(size=(ds.num_users, 8)).astype(np.float32)
    return {"good": good, "noise": noise}
