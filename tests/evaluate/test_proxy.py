"""The validation proxy: the evaluate probes on valid users' favourite category."""

from __future__ import annotations

import numpy as np
import polars as pl

from seqtwins.data.dataset import SequenceDataset, write_dataset
from seqtwins.evaluate.proxy import FOLDS, category_proxy, probe_score
from seqtwins.evaluate.tasks import build_task
from tests.helpers import tiny_dataset


def _blobs(n: int, classes: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, 8)) * 3
    return (centres[y] + noise * rng.normal(size=(n, 8))).astype(np.float32), y


def test_separable_embeddings_score_high_and_noise_near_chance():
    x, y = _blobs(300, 4, noise=0.3)
    assert probe_score(x, y, "accuracy", seed=0) > 0.95
    noise = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    assert probe_score(noise, y, "accuracy", seed=0) < 0.45  # chance is ~0.25


def test_deterministic_and_invariant_to_feature_scale():
    x, y = _blobs(200, 3, noise=2.0)
    a = probe_score(x, y, "accuracy", seed=3)
    assert a == probe_score(x, y, "accuracy", seed=3)
    # the probe standardises its inputs: per-dimension rescaling changes nothing
    scaled = x * np.linspace(0.1, 10, 8, dtype=np.float32)
    assert abs(probe_score(scaled, y, "accuracy", seed=3) - a) < 1e-6


def test_undefined_without_two_common_classes():
    x, y = _blobs(60, 2, noise=0.3)
    assert probe_score(x, np.zeros(60, dtype=np.int64), "accuracy", 0) is None
    rare = np.where(np.arange(60) < 4, 1, 0)  # class 1 has fewer than 5 users: dropped
    assert probe_score(x, rare, "accuracy", 0) is None
    unlabelled = np.full(60, -1)
    assert probe_score(x, unlabelled, "accuracy", 0) is None
    assert probe_score(x[: FOLDS - 1], y[: FOLDS - 1], "accuracy", 0) is None
    x[3, 2] = np.inf
    assert np.isnan(probe_score(x, y, "accuracy", 0))  # type: ignore[arg-type]


def test_category_proxy_uses_valid_users_labels(tmp_path):
    ds = SequenceDataset.open(tiny_dataset(tmp_path / "ds"))
    users = ds.split_users("valid")
    proxy = category_proxy(ds, users, seed=0)
    assert proxy is not None
    labels = build_task(ds, "favorite_category").labels[users]
    onehot = np.eye(4, dtype=np.float32)[np.maximum(labels, 0)]  # embeddings = the answer
    assert proxy(onehot) == 1.0
    nocat = write_dataset(
        tmp_path / "nocat", sequences=ds.sequences, items=ds.items.select("item_id"),
        users=pl.DataFrame({"user_id": ds.users["user_id"], "split": ds.users["split"]}),
        source="test",
    )  # fmt: skip
    assert category_proxy(SequenceDataset.open(nocat), users, seed=0) is None
