"""Nearest users: the exact index against brute-force numpy, IVF recall against exact."""

from __future__ import annotations

import numpy as np
import pytest

from seqtwins.serve.neighbors import (
    IndexConfig,
    NeighborIndex,
    neighbors_of_row,
    normalized,
    recall_at_k,
)


def clustered(n: int, d: int = 16, centers: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d))
    return (c[rng.integers(0, centers, n)] + 0.5 * rng.normal(size=(n, d))).astype(np.float32)


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    scores = qn @ xn.T  # (Q, N) cosine
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


def test_exact_index_equals_brute_force():
    x = clustered(3000)
    q = clustered(20, seed=1) * 3.0  # norms do not matter: cosine
    index = NeighborIndex.build(x)
    assert index.kind == "flat" and index.describe() == {"kind": "flat", "users": 3000}
    scores, rows = index.search(q, 10)
    want_scores, want_rows = brute_force(x, q, 10)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert recall_at_k(rows, want_rows) == 1.0


def test_neighbors_of_row_excludes_itself():
    x = clustered(500)
    x[7] = x[3]  # a duplicate: the nearest other user, at cosine 1
    found = neighbors_of_row(NeighborIndex.build(x), x, 3, 5)
    assert len(found) == 5 and 3 not in [r for r, _ in found]
    assert found[0] == (7, pytest.approx(1.0, abs=1e-5))


def test_ivf_above_the_threshold_reaches_its_recall_target():
    x = clustered(20_000)
    cfg = IndexConfig(ivf_above=10_000, recall_target=0.95, calibration_queries=200)
    index = NeighborIndex.build(x, cfg)
    info = index.describe()
    assert info["kind"] == "ivf" and info["nlist"] == round(20_000**0.5)
    assert index.recall is not None and index.recall >= 0.95
    # independent check on other queries: recall vs brute force near the calibrated value
    q = x[np.random.default_rng(5).choice(len(x), 200, replace=False)]
    _, rows = index.search(q, 20)
    _, want = brute_force(x, q, 20)
    assert recall_at_k(rows, want) >= 0.9


@pytest.mark.parametrize(("storage", "atol"), [("fp16", 2e-3), ("float32", 1e-5)])
def test_ivf_storage_keeps_the_cosines(storage, atol):
    """Both storages find the same neighbours where the lists are all probed, and score
    them with the cosine (float16 vectors: within its precision)."""
    x = clustered(5_000)
    cfg = IndexConfig(ivf_above=1_000, nlist=10, storage=storage, calibration_queries=100)
    index = NeighborIndex.build(x, cfg)
    assert index.describe()["storage"] == storage
    index.index.nprobe = 10  # every list: exact up to the storage's rounding
    q = x[:50]
    scores, rows = index.search(q, 10)
    want_scores, want_rows = brute_force(x, q, 10)
    assert recall_at_k(rows, want_rows) >= 0.98
    np.testing.assert_allclose(scores, want_scores, atol=atol)


def test_recall_at_k_and_normalized():
    assert recall_at_k(np.array([[1, 2], [3, -1]]), np.array([[2, 1], [3, 4]])) == 0.75
    x = normalized(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)


def test_index_config_is_validated():
    with pytest.raises(ValueError, match=r"index.recall_target=1.5"):
        IndexConfig(recall_target=1.5)
    with pytest.raises(ValueError, match=r"index.nlist=0"):
        IndexConfig(nlist=0)
    with pytest.raises(ValueError, match=r"index.storage='pq' must be one of fp16, float32"):
        IndexConfig(storage="pq")


def test_ivf_recall_is_that_of_what_is_served_self_excluded():
    """The calibration queries are indexed users: counting the query as its own hit
    inflated the recall (at k=2 a found self alone gave 0.5)."""
    x = clustered(4000, centers=400)
    cfg = IndexConfig(ivf_above=1000, recall_target=0.6, recall_k=2, calibration_queries=400)
    index = NeighborIndex.build(x, cfg)
    assert index.describe()["recall_k"] == 2 and index.recall is not None
    rows = np.random.default_rng(9).choice(len(x), 1000, replace=False)
    _, exact = brute_force(x, x[rows], 3)
    hits = 0
    for row, want in zip(rows, exact, strict=True):
        served = [r for r, _ in neighbors_of_row(index, x, int(row), 2)]
        hits += len(set(served) & set(want[want != row][:2].tolist()))
    served_recall = hits / (2 * len(rows))
    assert abs(index.recall - served_recall) < 0.06
