"""``prepare --since/--until`` (time windows) and ``--update OLD`` (ids stable across them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.data.dataset import SequenceDataset
from seqtwins.data.memory import MIN_BUDGET
from seqtwins.data.options import build_options, parse_time
from seqtwins.data.prepare import PrepareOptions, prepare
from seqtwins.errors import SeqtwinsError
from tests.data.test_prepare_outofcore import tiny_buckets, wide_log  # noqa: F401
from tests.data.test_prepare_stream import same_dataset

runner = CliRunner()


def windowed_log(path: Path, seed: int = 3) -> Path:
    """Users active over times 0..99; items 1..30 early, 31..60 appear from time 50 on."""
    rng = np.random.default_rng(seed)
    n_users, n = 60, 2400
    t = rng.integers(0, 100, n)
    item = np.where(t < 50, rng.integers(1, 31, n), rng.integers(1, 61, n))
    user = rng.integers(0, n_users, n) * 7 + 2  # sparse ids
    pl.DataFrame({"user_id": user, "item_id": item, "timestamp": t}).write_parquet(path)
    return path


def rows(ds: SequenceDataset) -> pl.DataFrame:
    """(user id, item id, time) of every interaction, by original ids."""
    s = ds.sequences
    user_of = np.repeat(np.arange(ds.num_users), np.diff(s.offsets))
    return pl.DataFrame(
        {
            "user": ds.users["user_id"].to_numpy()[user_of],
            "item": ds.items["item_id"].to_numpy()[np.asarray(s.items) - 1],
            "time": np.asarray(s.times),
        }
    )


def test_parse_time_seconds_and_iso_dates():
    assert parse_time("86400", "since") == 86400
    assert parse_time("1970-01-02", "since") == 86400
    assert parse_time("1970-01-02T01:00:00Z", "until") == 90000
    assert parse_time("1970-01-02T03:00:00+02:00", "until") == 90000
    with pytest.raises(SeqtwinsError, match=r"^since='last week' must be epoch seconds"):
        parse_time("last week", "since")
    opts = build_options({"since": "1970-01-02", "until": 172800})
    assert (opts.since, opts.until) == (86400, 172800)
    with pytest.raises(SeqtwinsError, match="since=10 must be before until=10"):
        build_options({"since": 10, "until": 10})


def test_windows_are_half_open_and_partition_the_log(tmp_path):
    src = windowed_log(tmp_path / "log.parquet")
    opts = {"holdout": 0, "min_history": 1}
    parts = []
    for a, b in [(None, 30), (30, 60), (60, None)]:
        out = tmp_path / f"w{a}"
        prepare(src, out, PrepareOptions(since=a, until=b, **opts))
        ds = SequenceDataset.open(out)
        t = np.asarray(ds.sequences.times)
        assert (a is None or t.min() >= a) and (b is None or t.max() < b)
        parts.append(rows(ds))
    whole = tmp_path / "all"
    prepare(src, whole, PrepareOptions(**opts))
    together = pl.concat(parts).sort("user", "time", "item")
    assert together.equals(rows(SequenceDataset.open(whole)).sort("user", "time", "item"))
    meta = json.loads((tmp_path / "w30" / "meta.json").read_text())
    assert meta["params"]["since"] == 30 and meta["params"]["until"] == 60
    assert meta["prepare"]["dropped"]["time_window_interactions"] > 0
    # without a window, meta.json's params do not name it (earlier datasets stay identical)
    assert "since" not in json.loads((whole / "meta.json").read_text())["params"]


def test_update_keeps_item_ids_and_splits_and_appends_new_items(tmp_path):
    src = windowed_log(tmp_path / "log.parquet")
    prepare(src, tmp_path / "old", PrepareOptions(until=50))
    prepare(src, tmp_path / "new", PrepareOptions(since=50, update=tmp_path / "old"))
    old, new = SequenceDataset.open(tmp_path / "old"), SequenceDataset.open(tmp_path / "new")
    n_old = old.num_items
    # every old item keeps its item_idx (by original id), new ones come after
    assert new.items["item_id"].head(n_old).equals(old.items["item_id"])
    added = new.items["item_id"].slice(n_old).cast(pl.Int64)
    old_ids = old.items["item_id"].cast(pl.Int64).implode()
    assert added.is_sorted() and not added.is_in(old_ids).any()
    assert set(added.to_list()) <= set(range(31, 61))
    # the interactions are those of the window, by original id
    plain = tmp_path / "plain"
    prepare(src, plain, PrepareOptions(since=50))
    key = ["user", "time", "item"]
    assert rows(new).sort(key).equals(rows(SequenceDataset.open(plain)).sort(key))
    # old users keep their split
    both = new.users.join(old.users, on="user_id", suffix="_old")
    assert both.height > 0 and (both["split"] == both["split_old"]).all()
    meta = json.loads((tmp_path / "new" / "meta.json").read_text())
    assert meta["parent"]["content_hash"] == old.content_hash
    assert meta["parent"]["items_added"] == new.num_items - n_old == added.len()
    # a chain of updates keeps the ids of every ancestor
    prepare(src, tmp_path / "newer", PrepareOptions(since=80, update=tmp_path / "new"))
    newer = SequenceDataset.open(tmp_path / "newer")
    assert newer.items["item_id"].head(new.num_items).equals(new.items["item_id"])


def test_update_out_of_core_equals_in_memory(tmp_path, tiny_buckets):  # noqa: F811
    src = tmp_path / "log.parquet"
    wide_log(5, n_users=80, grouped=False).write_parquet(src, row_group_size=37)
    prepare(src, tmp_path / "old", PrepareOptions(until=25))
    opts = {"since": 25, "update": tmp_path / "old", "min_item_count": 2}
    a = prepare(src, tmp_path / "ooc", PrepareOptions(**opts, memory_budget=MIN_BUDGET))
    assert a.mode.startswith("out of core")
    b = prepare(src, tmp_path / "mem", PrepareOptions(**opts))
    assert a.dropped == b.dropped and a.dropped["time_window_interactions"] > 0
    same_dataset(tmp_path / "ooc", tmp_path / "mem")


def test_windows_refused_without_times(tmp_path):
    folder = tmp_path / "s3"
    folder.mkdir()
    (folder / "Beauty.txt").write_text("u1 i1 i2 i3 i4\nu2 i2 i3 i4 i5\n")
    r = runner.invoke(app, ["prepare", str(folder), "--out", str(tmp_path / "o"), "--since",
                            "2020-01-01"])  # fmt: skip
    assert r.exit_code == 2
    assert "--since/--until need interaction times" in r.output and "S3-Rec" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_cli_window_update_and_bad_parent(tmp_path):
    src = windowed_log(tmp_path / "log.parquet")
    r = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "a"),
                            "--until", "1970-01-01T00:00:50"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "b"), "--since", "50",
                            "--update", str(tmp_path / "a")])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "c"),
                            "--update", str(tmp_path)])  # fmt: skip
    assert r.exit_code == 2 and "is not a seqtwins dataset" in r.output
    r = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "d"), "--since", "soon"])
    assert r.exit_code == 2 and "since='soon' must be epoch seconds" in r.output
    r = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "e"), "--since", "500"])
    assert r.exit_code == 2 and "time window interactions" in r.output


def test_update_of_a_pseudonymised_dataset_needs_its_key(tmp_path, monkeypatch):
    """The update's users are matched to the old ones by id: with the old key they keep
    their splits; another key, or no pseudonymisation on one side, is one line (each old
    user would otherwise silently become a new one)."""
    src = windowed_log(tmp_path / "log.parquet")
    monkeypatch.setenv("SEQTWINS_PSEUDONYM_KEY", "k" * 32)
    prepare(src, tmp_path / "old", PrepareOptions(until=50, pseudonymize=True))
    prepare(src, tmp_path / "new",
            PrepareOptions(since=50, update=tmp_path / "old", pseudonymize=True))  # fmt: skip
    old, new = SequenceDataset.open(tmp_path / "old"), SequenceDataset.open(tmp_path / "new")
    both = new.users.join(old.users, on="user_id", suffix="_old")
    assert both.height > 0 and (both["split"] == both["split_old"]).all()
    with pytest.raises(SeqtwinsError, match="is pseudonymised and this dataset would not be"):
        prepare(src, tmp_path / "raw", PrepareOptions(since=50, update=tmp_path / "old"))
    monkeypatch.setenv("SEQTWINS_PSEUDONYM_KEY", "z" * 32)
    with pytest.raises(SeqtwinsError, match="not the one .* was pseudonymised with"):
        prepare(src, tmp_path / "other",
                PrepareOptions(since=50, update=tmp_path / "old", pseudonymize=True))  # fmt: skip
    prepare(src, tmp_path / "plain", PrepareOptions(until=50))
    with pytest.raises(SeqtwinsError, match="is not pseudonymised and this dataset would be"):
        prepare(src, tmp_path / "mixed",
                PrepareOptions(since=50, update=tmp_path / "plain", pseudonymize=True))  # fmt: skip
    assert not (tmp_path / "raw").exists() and not (tmp_path / "other").exists()
