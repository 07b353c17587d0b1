from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.data.dataset import SequenceDataset, Sequences, is_dataset, write_dataset
from seqtwins.errors import SeqtwinsError
from seqtwins.files import MARKER, marker_kind


def _tiny(tmp_path, seqs, hist=None, splits=None):
    s = Sequences.from_lists(seqs, hist)
    n_items = max((max(x) for x in seqs if x), default=1)
    items = pl.DataFrame({"item_id": [f"i{i}" for i in range(1, n_items + 1)]})
    users = pl.DataFrame(
        {"user_id": [f"u{u}" for u in range(len(seqs))], "split": splits or ["train"] * len(seqs)}
    )
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
    with pytest.raises(SeqtwinsError, match="is a file, not a dataset directory"):
        SequenceDataset.open(out / "meta.json")


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    s = Sequences.from_lists([[1, 2]])
    items = pl.DataFrame({"item_id": ["a", "b"]})
    users = pl.DataFrame({"user_id": ["x"], "split": ["bogus"]})
    with pytest.raises(ValueError):
        write_dataset(tmp_path / "ds", sequences=s, items=items, users=users, source="t")
    assert list(tmp_path.iterdir()) == []


# --- malformed datasets: one line each, naming the file ------------------------------------


def _dataset(tmp_path):
    seqs = [[1, 2, 3, 4], [2, 3, 4, 1], [4, 3, 2, 1]]
    return _tiny(tmp_path, seqs, hist=[3, 3, 3], splits=["train", "valid", "test"])


def _edit_meta(out, change):
    meta = json.loads((out / "meta.json").read_text())
    change(meta)
    (out / "meta.json").write_text(json.dumps(meta))


def _np_edit(name, change):
    def edit(out):
        arr = np.load(out / name)
        change(arr)
        np.save(out / name, arr)

    return edit


MALFORMED = {
    # name: (how the dataset is broken, text the message must contain)
    "item id 0": (_np_edit("items.npy", lambda a: a.__setitem__(0, 0)),
                  "items.npy holds item index 0, outside 1..4"),
    "item id past the catalogue": (_np_edit("items.npy", lambda a: a.__setitem__(5, 99)),
                                   "items.npy holds item index 99, outside 1..4"),
    "meta without fields": (lambda o: _edit_meta(o, lambda m: m.pop("fields")),
                            "meta.json is malformed: no 'fields' section"),
    "meta without counts": (lambda o: _edit_meta(o, lambda m: m.pop("counts")),
                            "meta.json is malformed: no 'counts' section"),
    "count of the wrong type": (
        lambda o: _edit_meta(o, lambda m: m["counts"].__setitem__("users", "three")),
        "counts.users='three' is not a count"),
    "fields of the wrong type": (
        lambda o: _edit_meta(o, lambda m: m["fields"].__setitem__("times", "yes")),
        "fields.times='yes' is not true or false"),
    "meta is a list": (lambda o: (o / "meta.json").write_text("[1, 2]"),
                       "meta.json is malformed: not a JSON object"),
    "meta is not UTF-8": (lambda o: (o / "meta.json").write_bytes(b"\xff\xfe{"), "is corrupt"),
    "missing users.parquet": (lambda o: (o / "users.parquet").unlink(),
                              "users.parquet is missing"),
    "users.parquet is junk": (lambda o: (o / "users.parquet").write_text("junk"),
                              "users.parquet is corrupt"),
    "users without split": (
        lambda o: pl.DataFrame({"user_id": ["a", "b", "c"]}).write_parquet(o / "users.parquet"),
        "users.parquet has no column 'split'"),
    "unknown split name": (
        lambda o: pl.read_parquet(o / "users.parquet")
        .with_columns(pl.lit("holdout").alias("split")).write_parquet(o / "users.parquet"),
        "column 'split' holds values other than train, valid, test"),
    "items.npy is junk": (lambda o: (o / "items.npy").write_text("junk"), "items.npy is corrupt"),
    "items.npy is an object array": (
        lambda o: np.save(o / "items.npy", np.array([{}], dtype=object)), "items.npy is corrupt"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_dataset_is_one_line(tmp_path, case):
    out = _dataset(tmp_path)
    breakage, expected = MALFORMED[case]
    breakage(out)
    for verify in (True, False):
        with pytest.raises(SeqtwinsError, match=re.escape(expected)) as e:
            SequenceDataset.open(out, verify=verify)
        assert "\n" not in str(e.value)
    r = CliRunner().invoke(app, ["inspect", str(out)])
    assert r.exit_code == 2 and expected in r.output and "Traceback" not in r.output


def test_modified_dataset_is_refused_unless_verify_is_off(tmp_path):
    out = _dataset(tmp_path)
    users = pl.read_parquet(out / "users.parquet")
    # test leakage: the users of other splits moved into train
    users.with_columns(pl.lit("train").alias("split")).write_parquet(out / "users.parquet")
    with pytest.raises(SeqtwinsError, match="content hash mismatch"):
        SequenceDataset.open(out)
    assert SequenceDataset.open(out, verify=False).split_users("train").tolist() == [0, 1, 2]
    users.write_parquet(out / "users.parquet")
    SequenceDataset.open(out)
    items = np.load(out / "items.npy")
    items[2] = 4 if items[2] != 4 else 1  # a changed value, still a valid item index
    np.save(out / "items.npy", items)
    with pytest.raises(SeqtwinsError, match="content hash mismatch"):
        SequenceDataset.open(out)
    assert SequenceDataset.open(out, verify=False).sequences.items[2] == items[2]
    r = CliRunner().invoke(app, ["inspect", str(out)])
    assert r.exit_code == 2 and "content hash mismatch" in r.output
    r = CliRunner().invoke(app, ["inspect", str(out), "--no-verify"])
    assert r.exit_code == 0, r.output


# --- ownership: the marker, and what --overwrite may replace -------------------------------


def test_marker_is_written_and_not_hashed(tmp_path):
    out = _dataset(tmp_path)
    assert marker_kind(out) == "dataset" and is_dataset(out)
    (out / MARKER).unlink()  # a dataset written before markers: recognised by meta.json
    assert is_dataset(out)
    SequenceDataset.open(out)  # the hash never covered the marker


def test_overwrite_replaces_only_a_dataset(tmp_path):
    s = Sequences.from_lists([[1, 2]])
    items = pl.DataFrame({"item_id": ["a", "b"]})
    users = pl.DataFrame({"user_id": ["x"], "split": ["train"]})

    def write(out):
        return write_dataset(out, sequences=s, items=items, users=users, source="t",
                             overwrite=True)  # fmt: skip

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_text("meow")
    with pytest.raises(SeqtwinsError, match="seqtwins did not write; it is left untouched"):
        write(foreign)
    assert (foreign / "cat.jpg").read_text() == "meow"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    with pytest.raises(SeqtwinsError, match="not written by seqtwins"):
        write(a_file)
    assert a_file.read_text() == "keep"
    out = write(tmp_path / "ds")
    (out / MARKER).unlink()  # legacy dataset: still replaceable
    write(out)
    assert marker_kind(out) == "dataset"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "notes.txt", "photos"]
