from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from seqtwins.data.dataset import SequenceDataset, write_dataset
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.baselines import history_count_matrix, tfidf_svd_embeddings

from .conftest import make_dataset


def test_count_matrix_holds_histories_only(ds: SequenceDataset) -> None:
    counts = history_count_matrix(ds).toarray()
    assert counts.shape == (ds.num_users, ds.num_items)
    for u in (0, 7, ds.num_users - 1):
        expected = np.bincount(ds.sequences.history(u) - 1, minlength=ds.num_items)
        np.testing.assert_array_equal(counts[u], expected)  # repeats counted, future absent


def test_tfidf_svd_shape_determinism_and_train_only_fit(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "a")
    a = tfidf_svd_embeddings(ds, dim=6, seed=0)
    assert a.shape == (ds.num_users, 6) and a.dtype == np.float32
    np.testing.assert_array_equal(a, tfidf_svd_embeddings(ds, dim=6, seed=0))
    # rewrite the histories of every non-train user: train users' embeddings must not move
    seqs = ds.sequences
    items = np.array(seqs.items)
    not_train = np.concatenate([ds.split_users("valid"), ds.split_users("test")])
    for u in not_train:
        items[seqs.offsets[u] : seqs.history_end[u]] = 1
    changed = dataclasses.replace(seqs, items=items)
    out = write_dataset(
        tmp_path / "b", sequences=changed, items=ds.items.drop("item_idx"),
        users=ds.users.drop("user_idx"), source="t",
    )  # fmt: skip
    b = tfidf_svd_embeddings(SequenceDataset.open(out), dim=6, seed=0)
    train = ds.split_users("train")
    np.testing.assert_allclose(a[train], b[train], rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[not_train], b[not_train])


def test_tfidf_svd_refuses_a_bad_dimension(ds: SequenceDataset) -> None:
    with pytest.raises(SeqtwinsError, match="dim=30"):
        tfidf_svd_embeddings(ds, dim=ds.num_items)
    with pytest.raises(SeqtwinsError, match="dim=0"):
        tfidf_svd_embeddings(ds, dim=0)


def test_window_counts_only_the_most_recent_history_items(ds: SequenceDataset) -> None:
    full = history_count_matrix(ds).toarray()
    window = history_count_matrix(ds, max_len=4).toarray()
    for u in range(ds.num_users):
        hist = ds.sequences.history(u)
        expected = np.bincount(hist[-4:] - 1, minlength=ds.num_items)
        np.testing.assert_array_equal(window[u], expected)
    assert window.sum() < full.sum()
    long = max(len(ds.sequences.history(u)) for u in range(ds.num_users))
    np.testing.assert_array_equal(history_count_matrix(ds, max_len=long).toarray(), full)
    with pytest.raises(SeqtwinsError, match="max_len=0"):
        history_count_matrix(ds, max_len=0)


def test_window_floor_differs_from_the_full_history_floor(ds: SequenceDataset) -> None:
    full = tfidf_svd_embeddings(ds, dim=6)
    window = tfidf_svd_embeddings(ds, dim=6, max_len=3)
    assert window.shape == full.shape and not np.allclose(window, full)
    np.testing.assert_array_equal(tfidf_svd_embeddings(ds, dim=6, max_len=10_000), full)
