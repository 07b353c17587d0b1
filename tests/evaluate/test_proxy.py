"""The validation proxy: headline-task probes on valid users, relative to popularity."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from seqtwins.data.dataset import SequenceDataset, write_dataset
from seqtwins.evaluate.proxy import MIN_USERS, headline_proxy
from tests.helpers import tiny_dataset


def _taste(ds: SequenceDataset, users: np.ndarray) -> np.ndarray:
    """Embeddings that hold the answer: each user's category counts in the whole sequence."""
    codes, _ = ds.item_categories()
    seqs = ds.sequences
    out = np.zeros((len(users), 4), dtype=np.float32)
    for i, u in enumerate(users):
        items = np.asarray(seqs.items[seqs.offsets[u] : seqs.offsets[u + 1]])
        np.add.at(out[i], codes[items], 1.0)
    return out


def _ds(tmp_path, users: int = 900) -> SequenceDataset:
    return SequenceDataset.open(tiny_dataset(tmp_path / "ds", users=users))


def test_informative_embeddings_beat_popularity_and_noise_does_not(tmp_path):
    ds = _ds(tmp_path)
    users = ds.split_users("valid")
    proxy = headline_proxy(ds, users, seed=0)
    assert proxy is not None
    good = proxy(_taste(ds, users))
    noise = proxy(np.random.default_rng(1).normal(size=(len(users), 8)).astype(np.float32))
    assert good is not None and noise is not None
    assert good > 1.3  # well above the popularity floor (1.0)
    assert noise < 1.1 and good > noise


def test_deterministic_invariant_to_feature_scale_and_stops_on_nan(tmp_path):
    ds = _ds(tmp_path)
    users = ds.split_users("valid")
    proxy = headline_proxy(ds, users, seed=3)
    assert proxy is not None
    x = _taste(ds, users) + np.random.default_rng(0).normal(size=(len(users), 4)).astype("f4")
    a = proxy(x)
    assert a is not None and a == proxy(x)
    # the probe standardises its inputs: per-dimension rescaling changes nothing
    assert abs(proxy(x * np.array([0.1, 1, 3, 10], dtype=np.float32)) - a) < 1e-6  # type: ignore[operator]
    x[3, 2] = np.nan
    assert np.isnan(proxy(x))  # type: ignore[arg-type]


def test_without_categories_future_items_alone_and_none_when_too_few(tmp_path):
    ds = _ds(tmp_path)
    users = ds.split_users("valid")
    nocat = write_dataset(
        tmp_path / "nocat", sequences=ds.sequences, items=ds.items.select("item_id"),
        users=pl.DataFrame({"user_id": ds.users["user_id"], "split": ds.users["split"]}),
        source="test",
    )  # fmt: skip
    plain = SequenceDataset.open(nocat)
    proxy = headline_proxy(plain, users, seed=0)
    assert proxy is not None  # future_items needs no categories
    assert proxy(_taste(ds, users)) is not None
    assert headline_proxy(ds, users[: MIN_USERS - 1], seed=0) is None


def test_the_same_value_whatever_the_number_of_worker_threads(tmp_path):
    ds = _ds(tmp_path)
    users = ds.split_users("valid")
    proxy = headline_proxy(ds, users, seed=0)
    assert proxy is not None
    x = _taste(ds, users) + np.random.default_rng(2).normal(size=(len(users), 4)).astype("f4")
    before = torch.get_num_threads()
    try:
        values = []
        for threads in (1, 2, 3):  # the proxy runs as many workers as torch has threads
            torch.set_num_threads(threads)
            values.append(proxy(x))
            assert torch.get_num_threads() == threads  # and restores the count
    finally:
        torch.set_num_threads(before)
    assert values[0] is not None and values == [values[0]] * 3
