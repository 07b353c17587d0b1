from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from seqtwins.data.dataset import SequenceDataset, Sequences, write_dataset
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.baselines import (
    ITEMS_KNN_K,
    history_count_matrix,
    items_knn_scorer,
    tfidf_svd_embeddings,
    top_k,
)
from seqtwins.evaluate.tasks import available_tasks, build_task

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


# --- items-knn -----------------------------------------------------------------------------


def _write(path: Path, histories: list[list[int]], futures: list[list[int]],
           splits: list[str], items: int) -> SequenceDataset:  # fmt: skip
    """A dataset with the given 1-based item lists: history, then future window."""
    seqs = Sequences.from_lists([h + f for h, f in zip(histories, futures, strict=True)],
                                [len(h) for h in histories])  # fmt: skip
    out = write_dataset(
        path, sequences=seqs,
        items=pl.DataFrame({"item_id": [f"it{i}" for i in range(1, items + 1)]}),
        users=pl.DataFrame({"user_id": [f"u{u}" for u in range(len(splits))], "split": splits}),
        source="tests",
    )  # fmt: skip
    return SequenceDataset.open(out)


def _brute_force(ds: SequenceDataset, k: int, p: float) -> np.ndarray:
    """(U, N) items-knn scores by the definition, one user at a time: cosine of the binary
    history vectors to every train user but the user itself, the ``k`` most similar
    (ties: the smaller user_idx), their history items weighted by ``max(cos, 0) ** p``,
    plus the train-popularity tie-break scaled to half the smallest positive weight."""
    hist = [set(ds.sequences.history(u).tolist()) for u in range(ds.num_users)]
    train = ds.split_users("train").tolist()
    count = np.zeros(ds.num_items)
    for v in train:
        count[[i - 1 for i in hist[v]]] += 1
    prior = count / (count.max() + 1)
    out = np.zeros((ds.num_users, ds.num_items))
    for u in range(ds.num_users):

        def cos(v: int, u: int = u) -> float:
            both = len(hist[u] & hist[v])
            return both / math.sqrt(len(hist[u]) * len(hist[v])) if both else 0.0

        near = sorted((v for v in train if v != u), key=lambda v: (-cos(v), v))[:k]
        weights = {v: max(cos(v), 0.0) ** p for v in near}
        for v, w in weights.items():
            out[u, [i - 1 for i in hist[v]]] += w
        floor = min((w for w in weights.values() if w > 0), default=1.0)
        out[u] += 0.5 * floor * prior
    return out


@pytest.mark.parametrize("k,p", [(7, 1.0), (3, 3.0), (ITEMS_KNN_K, 1.0)])
def test_items_knn_equals_the_brute_force_definition(tmp_path: Path, k: int, p: float) -> None:
    """Every user (train users too: never their own neighbour), histories of one length
    from few items, so similarities tie often, at the k-th place too."""
    rng = np.random.default_rng(3)
    seqs = [(rng.choice(25, 8, replace=False) + 1).tolist() for _ in range(60)]
    splits = rng.permutation(["train"] * 40 + ["valid"] * 10 + ["test"] * 10).tolist()
    ds = _write(tmp_path / "ds", [s[:6] for s in seqs], [s[6:] for s in seqs], splits, 25)
    users = np.arange(ds.num_users)
    pred = items_knn_scorer(ds, k=k, p=p)(build_task(ds, "future_items"), users)
    assert pred is not None and pred.num_rows == ds.num_users
    np.testing.assert_array_equal(pred.classes, np.arange(ds.num_items))
    got = np.concatenate([pred.rows(a, min(a + 7, len(users))) for a in range(0, len(users), 7)])
    want = _brute_force(ds, k, p)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    for u in users:  # the same ranking of items (ties in any order)
        ranked = want[u][np.argsort(-got[u], kind="stable")]
        assert np.all(np.diff(ranked) <= 1e-6), u


def test_items_knn_votes_are_train_users_pretraining_histories(tmp_path: Path) -> None:
    """u4 (test) has two neighbours that must not vote: the valid user u3 (its closest) and
    the train user u0's future window; the train user u1 is not its own neighbour."""
    ds = _write(
        tmp_path / "ds",
        histories=[[1, 2, 3, 4], [1, 6, 7, 8], [12, 13], [1, 2, 3, 5], [1, 2, 3]],
        futures=[[9, 10], [11], [1], [14], [4, 9, 5]],
        splits=["train", "train", "train", "valid", "test"],
        items=14,
    )
    pred = items_knn_scorer(ds)(build_task(ds, "future_items"), np.array([4, 1]))
    assert pred is not None
    u4, u1 = pred.rows(0, 2)
    assert u4[4 - 1] > 0.5  # u0's history item, weight cos(u4, u0) = 3 / sqrt(12)
    assert u4[9 - 1] == 0.0  # only in u0's future: no vote, and no train history has it
    assert u4[5 - 1] == 0.0  # only in the valid user's history
    # u1's own items (6, 7, 8) get the popularity tie-break only, below u0's vote (1/4)
    assert max(u1[[5, 6, 7]]) < 0.5 * 0.25 < u1[2 - 1]


def test_items_knn_scores_retrieval_tasks_only(ds: SequenceDataset) -> None:
    scorer = items_knn_scorer(ds)
    users = ds.split_users("test")
    for name in available_tasks(ds):
        pred = scorer(build_task(ds, name), users)
        assert (pred is not None) == (name == "future_items"), name


def test_top_k_breaks_ties_towards_the_smaller_column() -> None:
    s = np.array([[0.5, 0.9, 0.5, 0.1, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(top_k(s, 3), [[1, 0, 2], [0, 1, 2]])
    np.testing.assert_array_equal(top_k(s, 5)[0], [1, 0, 2, 4, 3])
