"""``prepare --memory-budget``: out of core, bucket by bucket, the same dataset as in memory.

A tiny budget forces many buckets: the per-row memory constant is made huge and the fixed
costs zero, so that a bucket holds a few dozen rows of these small logs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.data import outofcore
from seqtwins.data import prepare as prep
from seqtwins.data.dataset import SequenceDataset, write_dataset, write_dataset_files
from seqtwins.data.formats import ReaderOptions, scan_log
from seqtwins.data.memory import MIN_BUDGET, parse_size
from seqtwins.data.prepare import PrepareOptions, prepare
from seqtwins.errors import SeqtwinsError
from tests.data.test_prepare_stream import random_log, same_dataset

runner = CliRunner()


@pytest.fixture
def tiny_buckets(monkeypatch):
    """About 64 rows per bucket at the minimum budget (whatever the process holds)."""
    monkeypatch.setattr(outofcore, "BUCKET_BYTES_PER_ROW", MIN_BUDGET // 64)
    monkeypatch.setattr(outofcore, "STREAM_RESERVE", 0)
    monkeypatch.setattr(outofcore, "current_rss", lambda: 0)
    monkeypatch.setattr(outofcore, "FLUSH_ROWS", 50)  # several flushes per log
    monkeypatch.setattr(outofcore, "PER_USER_BYTES", 0)
    monkeypatch.setattr(outofcore, "PER_ITEM_BYTES", 0)
    monkeypatch.setattr(prep, "BYTES_PER_ROW", MIN_BUDGET)  # any log "needs" out of core


def both(src: Path, tmp: Path, options: PrepareOptions) -> tuple[Path, Path]:
    """Prepare ``src`` out of core (tiny budget) and in memory; the two output folders."""
    a, b = tmp / "ooc", tmp / "mem"
    s = prepare(src, a, PrepareOptions(**{**vars(options), "memory_budget": MIN_BUDGET}))
    assert s.mode.startswith("out of core") and int(s.mode.split("(")[1].split()[0]) > 5
    m = prepare(src, b, options)
    assert m.mode == "in memory"
    assert (s.dropped, s.rows_read, s.num_interactions) == (
        m.dropped,
        m.rows_read,
        m.num_interactions,
    )
    assert not list(tmp.glob(".*work-*"))  # the buckets are cleaned up
    return a, b


def wide_log(seed: int, n_users: int, grouped: bool) -> pl.DataFrame:
    """Popular and rare items (Zipf-like over 300 ids), so that the k-core cascades."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, n_users)
    n = int(lengths.sum())
    pop = 1.0 / np.arange(1, 301) ** 1.2
    df = pl.DataFrame(
        {
            "user_id": np.repeat(rng.permutation(10 * n_users)[:n_users], lengths),
            "item_id": rng.choice(300, n, p=pop / pop.sum()) * 3 + 1,
            "timestamp": rng.integers(0, 50, n),
            "rating": rng.integers(1, 11, n) / 2.0,
        }
    )
    return df.sort("user_id") if grouped else df.sample(fraction=1.0, shuffle=True, seed=seed)


OPTIONS = {
    "default": PrepareOptions(),
    "filters": PrepareOptions(
        min_rating=1.5, dedup=True, max_len=25, min_user_count=6, min_item_count=4, holdout=3
    ),
    "kcore only": PrepareOptions(min_item_count=8),
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
@pytest.mark.parametrize("grouped", [True, False])
def test_out_of_core_equals_in_memory(tmp_path, tiny_buckets, name, grouped):
    src = tmp_path / "log.parquet"
    wide_log(11, n_users=80, grouped=grouped).write_parquet(src, row_group_size=37)
    a, b = both(src, tmp_path, OPTIONS[name])
    same_dataset(a, b)
    dropped = json.loads((a / "meta.json").read_text())["prepare"]["dropped"]
    if name != "default":  # the k-core had work to do, in several rounds
        assert dropped["kcore_items"] > 0 and dropped["kcore_interactions"] > 0


def test_pseudonyms_side_tables_and_string_ids(tmp_path, tiny_buckets):
    df = random_log(2, n_users=50, grouped=False).with_columns(
        pl.format("u{}", pl.col("user_id")).alias("user_id"),
        pl.format("i{}", pl.col("item_id")).alias("item_id"),
    )
    src = tmp_path / "log.csv"
    df.write_csv(src)
    users = df.select(pl.col("user_id").unique().sort()).with_columns(
        pl.col("user_id").str.len_chars().alias("idlen")
    )
    users.write_csv(tmp_path / "users.csv")
    items = pl.DataFrame({"item_id": ["i3", "i5", "i400"], "categories": ["a|b", "b", ""]})
    items.write_csv(tmp_path / "items.csv")
    reader = ReaderOptions(items_file=tmp_path / "items.csv", users_file=tmp_path / "users.csv")
    opts = PrepareOptions(reader=reader, pseudonymize=True, salt_file=tmp_path / "salt")
    a, b = both(src, tmp_path, opts)
    same_dataset(a, b)
    ds = SequenceDataset.open(a)
    assert "idlen" in ds.users.columns and not ds.users["user_id"].str.starts_with("u").any()


def test_log_without_times_keeps_line_order(tmp_path, tiny_buckets):
    src = tmp_path / "log.tsv"
    random_log(4, n_users=40, grouped=False).select("user_id", "item_id").write_csv(
        src, separator="\t"
    )
    same_dataset(*both(src, tmp_path, PrepareOptions()))


def test_partitioned_folder_and_skipped_bad_rows(tmp_path, tiny_buckets):
    df = random_log(6, n_users=60, grouped=False)
    df = df.with_columns(
        pl.when(pl.int_range(pl.len()) % 97 == 5).then(None).otherwise("rating").alias("rating")
    )
    for k, part in enumerate(df.iter_slices(300)):
        (tmp_path / "log" / f"day={k}").mkdir(parents=True)
        part.write_parquet(tmp_path / "log" / f"day={k}" / "part-0.parquet")
    opts = PrepareOptions(reader=ReaderOptions(on_bad_rows="skip"))
    a, b = both(tmp_path / "log", tmp_path, opts)
    same_dataset(a, b)
    meta = json.loads((a / "meta.json").read_text())
    assert meta["prepare"]["bad_rows_skipped"] == df["rating"].null_count() > 0


def test_bad_rows_and_empty_results_fail_cleanly(tmp_path, tiny_buckets):
    df = random_log(8, n_users=30).with_columns(
        pl.when(pl.int_range(pl.len()) == 77).then(None).otherwise("item_id").alias("item_id")
    )
    src = tmp_path / "log.parquet"
    df.write_parquet(src)
    budget = PrepareOptions(memory_budget=MIN_BUDGET)
    with pytest.raises(SeqtwinsError, match="row 78: column 'item_id' is empty"):
        prepare(src, tmp_path / "a", budget)
    ok = random_log(8, n_users=30)
    ok.write_parquet(src)
    opts = PrepareOptions(memory_budget=MIN_BUDGET, min_rating=99)
    with pytest.raises(SeqtwinsError, match="no users left"):
        prepare(src, tmp_path / "b", opts)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not list(tmp_path.glob(".*"))


def test_budget_too_small_names_what_is_needed(tmp_path, monkeypatch):
    src = tmp_path / "log.parquet"
    random_log(1, n_users=20).write_parquet(src)
    monkeypatch.setattr(outofcore, "current_rss", lambda: 10 * MIN_BUDGET)
    monkeypatch.setattr(prep, "current_rss", lambda: 10 * MIN_BUDGET)
    with pytest.raises(SeqtwinsError, match=r"--memory-budget=256.00 MB is too small .* at least"):
        prepare(src, tmp_path / "out", PrepareOptions(memory_budget=MIN_BUDGET))
    assert not (tmp_path / "out").exists()


def test_generous_budget_stays_in_memory(tmp_path):
    src = tmp_path / "log.parquet"
    random_log(1, n_users=20).write_parquet(src)
    s = prepare(src, tmp_path / "out", PrepareOptions(memory_budget=parse_size("64GB")))
    assert s.mode == "in memory" and s.peak_rss > 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lots", "is not a size; write it like 4GB"),
        ("4XB", "is not a size"),
        ("100MB", "below the minimum of 256.00 MB"),
    ],
)
def test_cli_budget_errors_are_one_line(tmp_path, text, message):
    src = tmp_path / "log.csv"
    random_log(1, n_users=5).write_csv(src)
    r = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "o"),
                            "--memory-budget", text])  # fmt: skip
    assert r.exit_code == 2
    assert message in r.output and len(r.output.strip().splitlines()) == 1
    assert "Traceback" not in r.output and not (tmp_path / "o").exists()


@pytest.mark.parametrize(("name", "message"), [("missing.csv", "No such file"), ("d", "directory")])
def test_cli_budget_with_unreadable_input_is_one_line(tmp_path, name, message):
    (tmp_path / "d").mkdir()
    r = runner.invoke(app, ["prepare", str(tmp_path / name), "--format", "csv", "--out",
                            str(tmp_path / "o"), "--memory-budget", "1GB"])  # fmt: skip
    assert r.exit_code == 2
    assert message in r.output and len(r.output.strip().splitlines()) == 1
    assert "Traceback" not in r.output and not (tmp_path / "o").exists()


def test_cli_reports_peak_memory_and_mode(tmp_path, tiny_buckets):
    src = tmp_path / "log.csv"
    random_log(3, n_users=30).write_csv(src)
    args = ["prepare", str(src), "--out", str(tmp_path / "o"), "--memory-budget", "256MB"]
    r = runner.invoke(app, [*args, "--work-dir", str(tmp_path / "w")])
    assert r.exit_code == 0, r.output
    assert "out of core (" in r.stdout and "peak memory" in r.stdout
    assert (tmp_path / "w").is_dir() and not list((tmp_path / "w").iterdir())


def test_parse_size_units():
    assert parse_size("4GB") == 4 * 10**9
    assert parse_size("512MB") == 512 * 10**6
    assert parse_size("1.5GiB") == 3 * 2**29
    assert parse_size("300000000") == 3 * 10**8


def test_write_dataset_files_equals_write_dataset(tmp_path):
    ds_dir = tmp_path / "ref"
    src = tmp_path / "log.parquet"
    random_log(9, n_users=25).write_parquet(src)
    prepare(src, ds_dir)
    ref = SequenceDataset.open(ds_dir, mmap=False)
    arrays = {}
    for name in ("offsets", "items", "history_end", "times", "ratings"):
        arrays[name] = tmp_path / f"{name}.npy"
        np.save(arrays[name], getattr(ref.sequences, name))
    meta = ref.meta
    kw = {
        "items": ref.items.drop("item_idx"),
        "users": ref.users.drop("user_idx"),
        "source": meta["source"],
        "params": meta["params"],
        "extra_meta": {"prepare": meta["prepare"]},
    }
    write_dataset_files(tmp_path / "files", arrays=arrays, **kw)
    write_dataset(tmp_path / "again", sequences=ref.sequences, **kw)
    a = json.loads((tmp_path / "files" / "meta.json").read_text())
    b = json.loads((tmp_path / "again" / "meta.json").read_text())
    assert a == b == meta
    same_dataset(tmp_path / "files", ds_dir)
    assert not arrays["items"].exists()  # moved, not copied


@pytest.mark.parametrize("late_big_ids", [False, True])
def test_dictionary_counts_every_user_and_item(tmp_path, monkeypatch, late_big_ids):
    monkeypatch.setattr(outofcore, "STREAM_BATCH_ROWS", 97)  # many batches
    df = wide_log(3, n_users=60, grouped=False)
    if late_big_ids:  # ids beyond the count table after a while: group-bys take over
        big = pl.int_range(pl.len()) > pl.len() // 2
        df = df.with_columns(
            pl.when(big & (pl.col("user_id") % 2 == 0))
            .then(pl.col("user_id") + 2**40)
            .otherwise("user_id")
            .alias("user_id"),
            pl.when(big).then(-pl.col("item_id")).otherwise("item_id").alias("item_id"),
        )
    src = tmp_path / "log.parquet"
    df.write_parquet(src)
    scan = scan_log(src)
    assert scan is not None
    d = outofcore._dictionary(scan, MIN_BUDGET)
    ref = df.group_by("user_id").len().sort("user_id")
    assert d.user_ids.to_list() == ref["user_id"].to_list()
    assert d.user_rows.tolist() == ref["len"].to_list()
    assert d.item_ids.to_list() == df["item_id"].unique().sort().to_list()
    assert d.rows == df.height
