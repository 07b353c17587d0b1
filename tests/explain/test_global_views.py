"""Global views for the report: principal directions, their ends, centroids, UMAP / PCA."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from seqtwins.evaluate import report
from seqtwins.explain.global_views import (
    class_centroids,
    global_views,
    map_holders,
    markdown,
    principal_directions,
)


def planted(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    """Category 0 users sit at +3 on axis 2 of the embedding, category 1 at -3; item 0 is
    held by category 0 users only, item 1 by category 1 users, item 2 by everyone."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    emb = rng.normal(size=(n, 6)) * 0.3
    emb[:, 2] += np.select([labels == 0, labels == 1], [3.0, -3.0], 0.0)
    rows = np.concatenate([np.flatnonzero(labels == 0), np.flatnonzero(labels == 1), np.arange(n)])
    cols = np.concatenate([np.zeros((labels == 0).sum()), np.ones((labels == 1).sum()),
                           np.full(n, 2)]).astype(int)  # fmt: skip
    holders = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, 3))
    return emb, labels, holders


def test_principal_direction_finds_the_planted_axis() -> None:
    emb, _, _ = planted()
    comp, share, coords = principal_directions(emb, 2)
    assert abs(comp[0, 2]) > 0.99 and share[0] > 0.8
    assert coords.shape == (len(emb), 2) and np.all(np.diff(share) <= 0)


def test_ends_of_the_first_direction_are_the_planted_categories_and_items() -> None:
    emb, labels, holders = planted()
    views = global_views(emb, labels, ["A", "B", "C"], holders, ["x", "y", "z"], n=2, top=1)
    first = views[0]
    ends = {first["categories"]["plus"][0]["name"], first["categories"]["minus"][0]["name"]}
    assert ends == {"A", "B"}  # the neutral category C sits in the middle
    plus_cat = first["categories"]["plus"][0]["name"]
    assert first["items"]["plus"][0]["name"] == ("x" if plus_cat == "A" else "y")
    assert first["categories"]["plus"][0]["z"] > 1.0 > -1.0 > first["categories"]["minus"][0]["z"]
    lines = markdown(views, "barlow")
    assert any(line.startswith("| 1 |") for line in lines)
    only_cats = global_views(emb, labels, ["A", "B", "C"], n=1)
    assert "items" not in only_cats[0]


def test_class_centroids() -> None:
    xy = np.array([[0.0, 0.0], [2.0, 2.0], [5.0, 1.0]])
    got = class_centroids(xy, np.array([0, 0, 1]), [0, 1, 2])
    np.testing.assert_allclose(got[:2], [[1.0, 1.0], [5.0, 1.0]])
    assert np.isnan(got[2]).all()


def test_map_holders_explains_why_not(tmp_path: Path) -> None:
    assert "could not be opened" in str(map_holders(str(tmp_path / "gone"), "x", 3))


def test_map_is_pca_without_umap_and_umap_with_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    emb, labels, _ = planted(60)
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap -> ImportError
    xy, how = report._project_2d(emb.astype(np.float32), 0)
    assert how == "PCA" and xy.shape == (60, 2)
    calls: list[int] = []

    class FakeUMAP:
        def __init__(self, n_components: int, random_state: int) -> None:
            calls.append(n_components)

        def fit_transform(self, x: np.ndarray) -> np.ndarray:
            return np.asarray(x)[:, :2] * 10.0

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    xy, how = report._project_2d(emb.astype(np.float32), 0)
    assert how == "UMAP" and calls == [2]
    np.testing.assert_allclose(xy, emb[:, :2] * 10.0, rtol=1e-6)
    out = report.plot_embedding_map(emb, labels, ["A", "B", "C"], tmp_path / "map.png")
    assert out.is_file() and out.stat().st_size > 1000
