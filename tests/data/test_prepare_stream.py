"""``prepare`` read batch by batch: same dataset as the whole-log path, on every kind of log.

The batch and block sizes are made tiny so that users straddle batches and blocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from seqtwins.data import prepare as prep
from seqtwins.data.dataset import SequenceDataset
from seqtwins.data.formats import ReaderOptions, read_log, scan_log
from seqtwins.data.prepare import PrepareOptions, prepare
from seqtwins.errors import SeqtwinsError

ARRAYS = ("offsets", "items", "times", "ratings", "history_end")


def random_log(seed: int, n_users: int = 40, grouped: bool = True) -> pl.DataFrame:
    """A log with ties in time, sparse and negative item ids, users of very unequal length."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 30, n_users)
    users = np.repeat(np.sort(rng.choice(10_000, n_users, replace=False)), lengths)
    n = len(users)
    items = rng.choice(np.array([-7, 3, 5, 11, 400, 401, 90_000]), n)
    times = rng.integers(1_000, 1_010, n)  # many ties: file order must break them
    ratings = rng.integers(1, 11, n) / 2.0
    df = pl.DataFrame({"user_id": users, "item_id": items, "timestamp": times, "rating": ratings})
    if not grouped:
        df = df.sample(fraction=1.0, shuffle=True, seed=seed)
    return df


def same_dataset(a: Path, b: Path) -> None:
    da, db = SequenceDataset.open(a), SequenceDataset.open(b)
    for name in ARRAYS:
        x, y = getattr(da.sequences, name), getattr(db.sequences, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert np.array_equal(np.asarray(x), np.asarray(y)), name
            assert np.asarray(x).dtype == np.asarray(y).dtype, name
    assert da.items.equals(db.items)
    assert da.users.equals(db.users)
    assert da.content_hash == db.content_hash
    assert da.meta["prepare"] == db.meta["prepare"]


@pytest.fixture
def tiny_batches(monkeypatch):
    """Batches of 7 rows and blocks of 5: users straddle both."""
    monkeypatch.setattr(prep, "STREAM_BATCH_ROWS", 7)
    monkeypatch.setattr(prep, "_BLOCK_ROWS", 5)


def whole(monkeypatch, src: Path, out: Path, options: PrepareOptions | None = None) -> None:
    """``prepare`` forced onto the whole-log path."""
    with monkeypatch.context() as m:
        m.setattr(prep, "scan_log", lambda *a, **k: None)
        prepare(src, out, options)


@pytest.mark.parametrize("seed", range(4))
def test_streamed_grouped_log_equals_whole_log(tmp_path, monkeypatch, tiny_batches, seed):
    src = tmp_path / "log.parquet"
    random_log(seed).write_parquet(src, row_group_size=11)
    calls = []
    real = prep._order_stream
    monkeypatch.setattr(prep, "_order_stream", lambda s: calls.append(1) or real(s))
    summary = prepare(src, tmp_path / "stream")
    assert calls and "read+order" in summary.seconds  # the streamed path ran
    whole(monkeypatch, src, tmp_path / "whole")
    same_dataset(tmp_path / "stream", tmp_path / "whole")
    # and the order is right: per user by time, ties in file order (an independent sort)
    df = pl.read_parquet(src).with_row_index("row").sort(["user_id", "timestamp", "row"])
    df = df.filter(pl.len().over("user_id") >= 4)
    ds = SequenceDataset.open(tmp_path / "stream")
    ids = ds.items["item_id"].cast(pl.Int64).to_numpy()
    assert np.array_equal(ids[np.asarray(ds.sequences.items) - 1], df["item_id"].to_numpy())
    assert np.array_equal(np.asarray(ds.sequences.times), df["timestamp"].to_numpy())


def test_filters_after_streaming_equal_whole_log(tmp_path, monkeypatch, tiny_batches):
    src = tmp_path / "log.parquet"
    random_log(7, n_users=60).write_parquet(src)
    opts = PrepareOptions(
        min_rating=2.5, dedup=True, max_len=12, min_item_count=3, min_user_count=5
    )
    prepare(src, tmp_path / "stream", opts)
    whole(monkeypatch, src, tmp_path / "whole", opts)
    same_dataset(tmp_path / "stream", tmp_path / "whole")


def test_ungrouped_log_falls_back_to_whole_log(tmp_path, monkeypatch, tiny_batches):
    src = tmp_path / "log.parquet"
    random_log(3, grouped=False).write_parquet(src)
    summary = prepare(src, tmp_path / "a")
    assert "read" in summary.seconds  # not streamed: the log is not grouped by user
    whole(monkeypatch, src, tmp_path / "b")
    same_dataset(tmp_path / "a", tmp_path / "b")


def test_user_back_in_a_later_batch_is_not_grouped(tmp_path, monkeypatch, tiny_batches):
    # users ascending within every batch, but user 1 comes back after user 2
    df = pl.DataFrame(
        {
            "user_id": [1] * 5 + [2] * 5 + [1] * 5,
            "item_id": list(range(15)),
            "timestamp": list(range(15, 0, -1)),
        }
    )
    src = tmp_path / "log.parquet"
    df.write_parquet(src)
    prepare(src, tmp_path / "a")
    whole(monkeypatch, src, tmp_path / "b")
    same_dataset(tmp_path / "a", tmp_path / "b")
    assert SequenceDataset.open(tmp_path / "a").sequences.lengths().tolist() == [10, 5]


def test_partitioned_parquet_folder(tmp_path, monkeypatch, tiny_batches):
    df = random_log(5, n_users=50)
    one = tmp_path / "one.parquet"
    df.write_parquet(one)
    folder = tmp_path / "parts"
    users = df["user_id"].unique().sort()
    # hive-style: user ranges in key=value folders (path order = row order), plus junk
    # files that writers leave
    for k, chunk in enumerate(np.array_split(users.to_numpy(), 3)):
        part = folder / f"part={k}"
        part.mkdir(parents=True)
        sub = df.filter(pl.col("user_id").is_in(chunk.tolist()))
        sub.head(sub.height // 2).write_parquet(part / "a.parquet")
        sub.tail(sub.height - sub.height // 2).write_parquet(part / "b.parquet")
    (folder / "_SUCCESS").write_text("")
    (folder / "part=0" / ".a.parquet.crc").write_text("x")
    summary = prepare(folder, tmp_path / "from_folder")  # --format auto: a Parquet folder
    assert summary.format == "parquet"
    prepare(one, tmp_path / "from_file")
    da, db = (
        SequenceDataset.open(tmp_path / "from_folder"),
        SequenceDataset.open(tmp_path / "from_file"),
    )
    for name in ARRAYS:
        assert np.array_equal(np.asarray(getattr(da.sequences, name)),
                              np.asarray(getattr(db.sequences, name)))  # fmt: skip
    assert da.users.equals(db.users) and da.items.equals(db.items)
    whole(monkeypatch, folder, tmp_path / "whole")
    same_dataset(tmp_path / "from_folder", tmp_path / "whole")


def test_movielens_folder_still_detected(tmp_path):
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,3.0,11\n1,3,3.0,12\n1,4,3.0,13\n"
    )
    pl.DataFrame({"x": [1]}).write_parquet(folder / "extra.parquet")
    assert prepare(folder, tmp_path / "out").format == "movielens"


def test_string_ids_decided_over_the_whole_log(tmp_path, monkeypatch, tiny_batches):
    # canonical integers in the first batches, "007" only at the end: all ids stay text
    users = [str(u) for u in range(1, 9) for _ in range(4)]
    items = [str(i % 5 + 1) for i in range(32)]
    items[-1] = "007"
    df = pl.DataFrame({"user_id": users, "item_id": items, "timestamp": list(range(32))})
    src = tmp_path / "log.parquet"
    df.write_parquet(src)
    scan = scan_log(src)
    assert scan is not None and scan.ids_as_int == {"user": True, "item": False}
    batches = pl.concat(list(scan.batches(5)))
    assert batches.equals(read_log(src).interactions)
    prepare(src, tmp_path / "a")
    whole(monkeypatch, src, tmp_path / "b")
    same_dataset(tmp_path / "a", tmp_path / "b")
    assert "007" in SequenceDataset.open(tmp_path / "a").items["item_id"].to_list()


def test_csv_scan_equals_read_log(tmp_path):
    text = "user,item,time,rating\n" + "".join(
        f"{u},{(u * 7 + k) % 13},2020-01-0{1 + k % 9}T00:00:00Z,{k % 5}.5\n"
        for u in range(1, 30)
        for k in range(5)
    )
    src = tmp_path / "log.csv"
    src.write_text(text)
    scan = scan_log(src)
    assert scan is not None
    assert pl.concat(list(scan.batches(17))).equals(read_log(src).interactions)
    assert scan.rows_read == 29 * 5


def test_bad_rows_counted_over_all_batches(tmp_path, monkeypatch, tiny_batches):
    df = random_log(1, n_users=20).with_columns(
        pl.when(pl.int_range(pl.len()).is_in([3, 40, 41, 90]))
        .then(None)
        .otherwise(pl.col("timestamp"))
        .alias("timestamp")
    )
    src = tmp_path / "log.parquet"
    df.write_parquet(src)
    with pytest.raises(SeqtwinsError) as streamed:
        prepare(src, tmp_path / "a")
    with pytest.raises(SeqtwinsError) as whole_log:
        whole(monkeypatch, src, tmp_path / "b")
    assert str(streamed.value) == str(whole_log.value)
    assert "4 bad rows" in str(streamed.value) and "row 4:" in str(streamed.value)
    assert not (tmp_path / "a").exists()
    skip = PrepareOptions(reader=ReaderOptions(on_bad_rows="skip"))
    s = prepare(src, tmp_path / "c", skip)
    assert (s.bad_rows_skipped, s.rows_read) == (4, df.height)
    whole(monkeypatch, src, tmp_path / "d", skip)
    same_dataset(tmp_path / "c", tmp_path / "d")


def test_empty_parquet_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SeqtwinsError, match="cannot tell the format"):
        prepare(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(SeqtwinsError, match="holds no .parquet files"):
        prepare(tmp_path / "empty", tmp_path / "out",
                PrepareOptions(reader=ReaderOptions(format="parquet")))  # fmt: skip


def test_item_ids_widening_mid_stream_loses_no_rows(tmp_path, monkeypatch, tiny_batches):
    """Item ids that first fit int32 and later do not: the store widens its item array while
    earlier pieces may still be ordered into it on worker threads (slowed down here). Every
    row must survive, exactly as on the whole-log path."""
    import time as _time

    log = random_log(7, n_users=60)
    late = log["user_id"] >= log["user_id"].median()
    log = log.with_columns(
        pl.when(late).then(pl.col("item_id") + 2**33).otherwise(pl.col("item_id")).alias("item_id")
    )
    src = tmp_path / "log.parquet"
    log.write_parquet(src)
    slow = prep._sorted_runs

    def slowed(users):
        _time.sleep(0.01)
        return slow(users)

    monkeypatch.setattr(prep, "_sorted_runs", slowed)
    prepare(src, tmp_path / "streamed")
    whole(monkeypatch, src, tmp_path / "whole")
    same_dataset(tmp_path / "streamed", tmp_path / "whole")
