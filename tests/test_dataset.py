from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqtwins.data.dataset import SequenceDataset, Sequences, write_dataset
from seqtwins.errors import SeqtwinsError


def _tiny(tmp_path, seqs, hist=None):
    s = Sequences.from_lists(seqs, hist)
    n_items = max((max(x) for x in seqs if x), default=1)
    items = pl.DataFrame({"item_id": [f"i{i}" for i in range(1, n_items + 1)]})
    users = pl.DataFrame({"user_id": [f"u{u}" for u in range(len(seqs))],
                          "split": ["train"] * len(seqs)})
    return write_dataset(tmp_path / "ds", sequences=s, items=items, users=users, source="test")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(1, 30), min_size=1, max_size=12), min_size=1, max_size=8))
def test_csr_round_trip(tmp_path_factory, seqs):
    out = _tiny(tmp_path_factory.mktemp("rt"), seqs)
    ds = SequenceDataset.open(out)
    assert [ds.sequences.history(u).tolist() for u in range(ds.num_users)] == seqs
    assert ds.vocab_size == ds.num_items + 2
    ds.verify()


def test_history_and_future(tmp_path):
    out = _tiny(tmp_path, [[1, 2, 3, 4, 5], [2, 3, 4, 5]], hist=[3, 2])
    ds = SequenceDataset.open(out)
    assert ds.sequences.history(0).tolist() == [1, 2, 3]
    assert ds.sequences.future(0).tolist() == [4, 5]
    assert ds.sequences.future(1).tolist() == [4, 5]


def test_refuses_other_schema_and_corruption(tmp_path):
    out = _tiny(tmp_path, [[1, 2, 3]])
    meta = json.loads((out / "meta.json").read_text())
    meta["schema_version"] = 999
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SeqtwinsError, match="schema version 999"):
        SequenceDataset.open(out)
    meta["schema_version"] = 1
    (out / "meta.json").write_text(json.dumps(meta))
    np.save(out / "items.npy", np.zeros(7, np.int32))
    with pytest.raises(SeqtwinsError, match="items.npy"):
        SequenceDataset.open(out)
    with pytest.raises(SeqtwinsError, match="does not exist"):
        SequenceDataset.open(tmp_path / "nope")


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    s = Sequences.from_lists([[1, 2]])
    items = pl.DataFrame({"item_id": ["a", "b"]})
    users = pl.DataFrame({"user_id": ["x"], "split": ["bogus"]})
    with pytest.raises(ValueError):
        write_dataset(tmp_path / "ds", sequences=s, items=items, users=users, source="t")
    assert list(tmp_path.iterdir()) == []
