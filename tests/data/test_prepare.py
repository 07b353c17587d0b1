"""``prepare``: real datasets against SOURCES.md, the processing steps, and properties."""

from __future__ import annotations

import itertools
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from seqtwins.config import build
from seqtwins.data.dataset import SequenceDataset
from seqtwins.data.formats import ReaderOptions
from seqtwins.data.options import build_options, options_data
from seqtwins.data.prepare import PrepareOptions, prepare
from seqtwins.errors import SeqtwinsError
from tests.conftest import shared_data_dir

# --- real data: counts exactly as in ../shared/data/SOURCES.md --------------------------

REAL = {
    # name: (users, items, interactions)
    "ml-100k": (943, 1682, 100_000),
    "ml-1m": (2_999, 3_615, 487_650),  # users 1..2999 of ratings.dat.gz
    "ml-latest-small": (610, 9_724, 100_836),
    "yelp": (30_431, 20_033, 316_354),
    "beauty": (22_363, 12_101, 198_502),
    "lastfm": (1_090, 3_646, 52_551),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_dataset_counts_match_sources(name, tmp_path):
    users, items, interactions = REAL[name]
    summary = prepare(shared_data_dir(name), tmp_path / name)
    assert (summary.num_users, summary.num_items, summary.num_interactions) == REAL[name]
    ds = SequenceDataset.open(tmp_path / name)
    ds.verify()
    assert (ds.num_users, ds.num_items, ds.sequences.num_interactions) == REAL[name]
    # every source user has >= 5 items, so the default min_history=3 drops nobody
    meta = json.loads((tmp_path / name / "meta.json").read_text())
    assert meta["prepare"]["dropped"]["short_users"] == 0
    assert all(v == 0 for v in meta["prepare"]["dropped"].values())
    assert ds.sequences.lengths().min() >= 5
    # future window: the last 5 items, shortened so that at least 3 remain as history
    lengths = ds.sequences.lengths()
    future = lengths - ds.sequences.history_lengths()
    assert np.array_equal(future, np.minimum(5, lengths - 3))
    assert sum(meta["counts"]["splits"].values()) == users
    assert ds.items["item_id"].n_unique() == items


def test_ml1m_attributes_genres_and_time_order(tmp_path):
    prepare(shared_data_dir("ml-1m"), tmp_path / "ml1m")
    ds = SequenceDataset.open(tmp_path / "ml1m")
    assert ds.user_attributes == ["gender", "age", "occupation"]
    u1 = ds.users.row(0, named=True)
    # users.dat line 1: 1::F::1::10::48067 (age and occupation codes kept as categories)
    assert (u1["user_id"], u1["gender"], u1["age"], u1["occupation"]) == ("1", "F", "1", "10")
    assert "zip" not in ds.users.columns
    assert set(ds.users["gender"].unique()) == {"F", "M"}
    assert ds.has_categories
    toy = ds.items.filter(pl.col("item_id") == "1").row(0, named=True)
    assert toy["categories"] == ["Animation", "Children's", "Comedy"]
    assert toy["title"] == "Toy Story (1995)"
    # Latin-1 titles decoded, not mangled
    assert ds.items["title"].str.contains("\ufffd").sum() == 0
    seqs = ds.sequences
    t = np.asarray(seqs.times)
    starts, ends = seqs.offsets[:-1], seqs.offsets[1:]
    same_user = np.ones(len(t) - 1, dtype=bool)
    same_user[ends[:-1] - 1] = False  # pairs that cross a user boundary
    assert np.all(np.diff(t)[same_user] >= 0)
    # user 1's lines are not in time order in the file (SOURCES.md); sorted here
    assert t[starts[0]] == 978300019 and t[ends[0] - 1] == 978824351
    assert set(np.unique(np.asarray(seqs.ratings))) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_ml100k_attributes_and_genres(tmp_path):
    prepare(shared_data_dir("ml-100k"), tmp_path / "d")
    ds = SequenceDataset.open(tmp_path / "d")
    assert ds.user_attributes == ["age", "gender", "occupation"]
    assert ds.users.row(0, named=True)["occupation"] == "technician"
    goldeneye = ds.items.filter(pl.col("item_id") == "2").row(0, named=True)
    assert goldeneye["categories"] == ["Action", "Adventure", "Thriller"]


@pytest.mark.parametrize("name", ["yelp", "beauty", "lastfm"])
def test_s3rec_categories_and_line_order(name, tmp_path):
    folder = shared_data_dir(name)
    prepare(folder, tmp_path / name)
    ds = SequenceDataset.open(tmp_path / name)
    assert ds.has_categories and ds.sequences.times is None
    codes, names = ds.item_categories()
    assert len(names) > 1 and (codes[1 : ds.num_items + 1] >= 0).mean() > 0.99
    # ids are contiguous 1..N, so item_idx == original id and user row u == user u+1
    assert ds.items["item_id"].to_list()[:3] == ["1", "2", "3"]
    txt = next(folder.glob("*.txt"))
    with txt.open() as f:
        first = [int(x) for x in f.readline().split()]
    assert ds.users["user_id"][0] == str(first[0])
    assert ds.sequences.items[: ds.sequences.offsets[1]].tolist() == first[1:]
    if name == "yelp":  # the one item with an empty attribute list has no category
        assert ds.items.filter(pl.col("item_id") == "12182")["categories"].to_list() == [[]]


# --- processing steps on small logs -----------------------------------------------------


def _write_csv(path: Path, rows: list[tuple], header: str = "user_id,item_id,timestamp") -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def _seqs(out: Path) -> dict[str, list[str]]:
    """user id -> original item ids in stored order."""
    ds = SequenceDataset.open(out)
    ids = ds.items["item_id"].to_list()
    s = ds.sequences
    return {
        ds.users["user_id"][u]: [ids[i - 1] for i in s.items[s.offsets[u] : s.offsets[u + 1]]]
        for u in range(ds.num_users)
    }


def test_chronological_with_stable_ties_and_iso_times(tmp_path):
    rows = [
        ("b", "x", "2020-01-01T00:00:03Z"),
        ("a", "p", "2020-01-01 00:00:02"),
        ("a", "q", "2020-01-01T00:00:01"),
        ("a", "r", "2020-01-01T01:00:01+01:00"),  # same instant as q: tie, file order
        ("b", "y", "2020-01-01"),
        ("a", "s", "2020-01-01T00:00:02.000"),  # tie with p, after it in the file
        ("b", "z", "1577836800"),  # epoch seconds mixed in: == 2020-01-01
        ("b", "w", "2020-01-02"),
    ]
    f = _write_csv(tmp_path / "log.csv", rows)
    prepare(f, tmp_path / "out", PrepareOptions(holdout=1, min_history=1))
    assert _seqs(tmp_path / "out") == {"a": ["q", "r", "p", "s"], "b": ["y", "z", "x", "w"]}
    ds = SequenceDataset.open(tmp_path / "out")
    assert ds.sequences.times is not None and ds.sequences.times[0] == 1577836801
    assert ds.items["item_id"].to_list() == sorted("pqrswxyz")  # item_idx by original id


def test_holdout_shortened_and_short_users_counted(tmp_path):
    rows = [(u, f"i{k}", k) for u, n in (("u3", 3), ("u4", 4), ("u6", 6), ("u9", 9))
            for k in range(n)]  # fmt: skip
    f = _write_csv(tmp_path / "log.csv", rows)
    summary = prepare(f, tmp_path / "out")  # holdout 5, min_history 3
    ds = SequenceDataset.open(tmp_path / "out")
    assert ds.users["user_id"].to_list() == ["u4", "u6", "u9"]
    assert ds.sequences.history_lengths().tolist() == [3, 3, 4]
    assert summary.dropped["short_users"] == 1
    assert summary.dropped["short_user_interactions"] == 3
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["prepare"]["dropped"]["short_users"] == 1
    assert meta["params"]["holdout"] == 5 and meta["params"]["min_history"] == 3
    prepare(f, tmp_path / "h0", PrepareOptions(holdout=0, min_history=1))
    ds0 = SequenceDataset.open(tmp_path / "h0")
    assert np.array_equal(ds0.sequences.history_lengths(), ds0.sequences.lengths())


def test_rating_dedup_maxlen(tmp_path):
    rows = [
        ("a", "i1", 1, 5), ("a", "i2", 2, 1), ("a", "i1", 3, 4), ("a", "i3", 4, 5),
        ("a", "i4", 5, 4), ("a", "i5", 6, 2), ("a", "i6", 7, 5),
    ]  # fmt: skip
    f = _write_csv(tmp_path / "log.csv", rows, "user_id,item_id,timestamp,rating")
    opts = PrepareOptions(min_rating=4, dedup=True, max_len=3, holdout=1, min_history=1)
    summary = prepare(f, tmp_path / "out", opts)
    # >= 4: i1 i1 i3 i4 i6 -> dedup: i1 i3 i4 i6 -> last 3: i3 i4 i6
    assert _seqs(tmp_path / "out") == {"a": ["i3", "i4", "i6"]}
    assert summary.dropped["low_rating_interactions"] == 2
    assert summary.dropped["duplicate_interactions"] == 1
    assert summary.dropped["max_len_interactions"] == 1
    ds = SequenceDataset.open(tmp_path / "out")
    assert ds.sequences.ratings is not None and ds.sequences.ratings.tolist() == [5, 4, 5]
    with pytest.raises(SeqtwinsError, match="--min-rating needs ratings"):
        prepare(_write_csv(tmp_path / "nr.csv", [("a", "b", 1)]), tmp_path / "o2",
                PrepareOptions(min_rating=3))  # fmt: skip


def test_split_is_seeded_and_sized(tmp_path):
    rows = [(f"u{u:03d}", f"i{k}", k) for u in range(200) for k in range(4)]
    f = _write_csv(tmp_path / "log.csv", rows)
    a = prepare(f, tmp_path / "a", PrepareOptions(split_seed=1))
    prepare(f, tmp_path / "b", PrepareOptions(split_seed=1))
    c = prepare(f, tmp_path / "c", PrepareOptions(split_seed=2, split=(0.5, 0.25, 0.25)))
    assert a.splits == {"train": 160, "valid": 20, "test": 20}
    assert c.splits == {"train": 100, "valid": 50, "test": 50}
    sa, sb, sc = (SequenceDataset.open(tmp_path / x).users["split"] for x in "abc")
    assert sa.equals(sb) and not sa.equals(sc)


def test_item_and_user_tables(tmp_path):
    f = _write_csv(tmp_path / "log.csv", [(u, i, t) for t, (u, i) in
                   enumerate(itertools.product(["u1", "u2"], ["a", "b", "c", "d"]))])  # fmt: skip
    (tmp_path / "items.csv").write_text(
        'item_id,genres,title\na,"x|y",A\nb,,B\nc,"y",C\nzz,"q",unused\n'
    )
    pl.DataFrame({"uid": ["u2", "u9"], "country": ["fr", "de"], "age": [30, 40]}).write_parquet(
        tmp_path / "users.parquet"
    )
    opts = PrepareOptions(
        reader=ReaderOptions(items_file=tmp_path / "items.csv",
                             users_file=tmp_path / "users.parquet", users_id_col="uid"),
        holdout=1, min_history=1,
    )  # fmt: skip
    summary = prepare(f, tmp_path / "out", opts)
    ds = SequenceDataset.open(tmp_path / "out")
    assert ds.items["categories"].to_list() == [["x", "y"], [], ["y"], []]  # d: not in table
    assert ds.items["title"].to_list() == ["A", "B", "C", None]
    assert ds.user_attributes == ["country", "age"]
    assert ds.users["country"].to_list() == [None, "fr"] and ds.users["age"][1] == "30"
    assert summary.fields["categories"] and summary.fields["user_attributes"] == ["country", "age"]


def test_same_dataset_from_every_tabular_format(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    df = pl.DataFrame({
        "user_id": rng.integers(0, 30, n), "item_id": rng.integers(100, 140, n),
        "timestamp": rng.integers(1_000, 1_100, n), "rating": rng.integers(1, 6, n) / 1.0,
    })  # fmt: skip
    files = {
        "log.csv": lambda p: df.write_csv(p),
        "log.tsv": lambda p: df.write_csv(p, separator="\t"),
        "log.parquet": lambda p: df.write_parquet(p),
        "log.jsonl": lambda p: df.write_ndjson(p),
    }
    hashes = set()
    for name, write in files.items():
        write(tmp_path / name)
        prepare(tmp_path / name, tmp_path / f"out-{name}")
        hashes.add(SequenceDataset.open(tmp_path / f"out-{name}").content_hash)
    import gzip

    (tmp_path / "log.csv.gz").write_bytes(gzip.compress((tmp_path / "log.csv").read_bytes()))
    prepare(tmp_path / "log.csv.gz", tmp_path / "out-gz")
    hashes.add(SequenceDataset.open(tmp_path / "out-gz").content_hash)
    assert len(hashes) == 1


def test_skip_bad_rows_counts_them(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text("user_id,item_id,timestamp\na,x,1\na,,2\na,y,oops\na,z,3\n\na,w,4\nb,x,5\n")
    summary = prepare(
        f,
        tmp_path / "out",
        PrepareOptions(reader=ReaderOptions(on_bad_rows="skip"), holdout=1, min_history=1),
    )
    assert summary.bad_rows_skipped == 2 and summary.rows_read == 6  # blank line ignored
    assert _seqs(tmp_path / "out") == {"a": ["x", "z", "w"]}
    assert summary.dropped["short_users"] == 1  # b has one item


def test_refuses_existing_output_and_overwrites_on_request(tmp_path):
    f = _write_csv(tmp_path / "log.csv", [("a", i, i) for i in range(5)])
    prepare(f, tmp_path / "out")
    with pytest.raises(SeqtwinsError, match="already exists"):
        prepare(f, tmp_path / "out")
    prepare(f, tmp_path / "out", PrepareOptions(overwrite=True, holdout=2))
    assert SequenceDataset.open(tmp_path / "out").sequences.history_lengths().tolist() == [3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_user_count": 0}, "min_user_count=0 must be >= 1"),
        ({"min_item_count": 0}, "min_item_count=0 must be >= 1"),
        ({"holdout": -1}, "holdout=-1 must be >= 0"),
        ({"max_len": 3}, "max_len=3 must be >= min_history + 1 = 4"),
        ({"split": (0.5, 0.5, 0.5)}, "split=0.5,0.5,0.5 must be three fractions"),
        ({"key_file": "k", "salt_file": "s"}, "key_file and salt_file are both set"),
        ({"min_item_users": 0}, "min_item_users=0 must be >= 1"),
        ({"memory_budget": 1000}, "memory_budget=1000 (1.00 kB) is below the minimum"),
    ],
)
def test_options_are_validated_with_the_setting_named(kwargs, message):
    # the library raises ValueError (the config convention); build() makes it a user error
    with pytest.raises(ValueError, match=re.escape(message)):
        PrepareOptions(**kwargs)
    with pytest.raises(SeqtwinsError, match=re.escape(message)):
        build(PrepareOptions, {k: list(v) if isinstance(v, tuple) else v
                               for k, v in kwargs.items()})  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"format": "excel"}, "format='excel' is unknown"),
        ({"on_bad_rows": "ignore"}, "on_bad_rows='ignore' must be"),
        ({"reader": 5}, "reader must be a mapping of settings"),
    ],
)
def test_reader_options_name_the_setting(data, message):
    with pytest.raises(SeqtwinsError, match=re.escape(message)):
        build(PrepareOptions, options_data(data))


def test_a_prefix_spells_the_key_as_in_an_experiment_file():
    with pytest.raises(SeqtwinsError, match=r"^data\.prepare\.min_user_count=0 must be >= 1"):
        build_options({"min_user_count": 0}, prefix="data.prepare")


def test_flat_settings_nest_reader_keys_and_read_sizes():
    opts = build(PrepareOptions, options_data({"user_col": "uid", "memory_budget": "1GB",
                                               "min_user_count": 2}))  # fmt: skip
    assert opts.reader.user_col == "uid" and opts.memory_budget == 10**9
    assert opts.min_user_count == 2


# --- properties ---------------------------------------------------------------------------


def _brute_force_kcore(log: list[tuple[int, int]], ku: int, ki: int) -> tuple[set[int], set[int]]:
    """The largest (users, items) with every count over the kept sub-log >= its threshold."""
    users = sorted({u for u, _ in log})
    items = sorted({i for _, i in log})
    best: tuple[set[int], set[int]] = (set(), set())
    valid = []
    for nu in range(len(users) + 1):
        for us in itertools.combinations(users, nu):
            for ni in range(len(items) + 1):
                for its in itertools.combinations(items, ni):
                    uset, iset = set(us), set(its)
                    sub = [(u, i) for u, i in log if u in uset and i in iset]
                    cu = {u: sum(1 for x, _ in sub if x == u) for u in uset}
                    ci = {i: sum(1 for _, y in sub if y == i) for i in iset}
                    if all(c >= ku for c in cu.values()) and all(c >= ki for c in ci.values()):
                        valid.append((uset, iset))
                        if len(uset) + len(iset) > len(best[0]) + len(best[1]):
                            best = (uset, iset)
    for uset, iset in valid:  # the maximum contains every valid sub-log (k-cores are unique)
        assert uset <= best[0] and iset <= best[1]
    return best


_logs = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=16)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(log=_logs, ku=st.integers(1, 4), ki=st.integers(1, 4))
# a cascade: dropping item 3 (1 interaction) leaves u2 with 1 item, which drops item 2, ...
@example(log=[(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3), (3, 0), (3, 1)], ku=2, ki=2)
def test_kcore_is_the_maximal_subset(tmp_path_factory, log, ku, ki):
    tmp = tmp_path_factory.mktemp("kcore")
    f = _write_csv(tmp / "log.csv", [(f"u{u}", f"i{i}", t) for t, (u, i) in enumerate(log)])
    opts = PrepareOptions(min_user_count=ku, min_item_count=ki, min_history=1, holdout=1)
    # min_history=1 makes every kept user need >= 2 items: the effective user threshold
    eff_ku = max(ku, 2)
    want_u, want_i = _brute_force_kcore(log, eff_ku, ki)
    if not want_u:
        with pytest.raises(SeqtwinsError, match="no users left"):
            prepare(f, tmp / "out", opts)
        assert not (tmp / "out").exists()
        return
    prepare(f, tmp / "out", opts)
    seqs = _seqs(tmp / "out")
    assert set(seqs) == {f"u{u}" for u in want_u}
    got_items = {i for s in seqs.values() for i in s}
    assert got_items == {f"i{i}" for i in want_i}
    kept = [(f"u{u}", f"i{i}") for u, i in log if u in want_u and i in want_i]
    assert sum(len(s) for s in seqs.values()) == len(kept)
    for u, s in seqs.items():  # thresholds hold on the output
        assert len(s) >= eff_ku
        assert s == [i for uu, i in kept if uu == u]  # file (time) order kept
    for i in got_items:
        assert sum(s.count(i) for s in seqs.values()) >= ki


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 9), st.integers(0, 5)),
        min_size=1,
        max_size=40,
    )  # fmt: skip
)
def test_order_is_chronological_with_file_order_ties(tmp_path_factory, rows):
    tmp = tmp_path_factory.mktemp("order")
    f = _write_csv(tmp / "log.csv", [(f"u{u}", f"i{i}", t) for u, i, t in rows])
    opts = PrepareOptions(min_history=1, holdout=1)
    by_user: dict[str, list[tuple[int, int, str]]] = {}
    for line, (u, i, t) in enumerate(rows):
        by_user.setdefault(f"u{u}", []).append((t, line, f"i{i}"))
    want = {u: [x[2] for x in sorted(v)] for u, v in by_user.items() if len(v) >= 2}
    if not want:
        return
    prepare(f, tmp / "out", opts)
    assert _seqs(tmp / "out") == want
    ds = SequenceDataset.open(tmp / "out")
    assert ds.users["user_id"].to_list() == sorted(want)


def output_bytes(out: Path) -> dict[str, bytes]:
    """Every output file's bytes, plus each Parquet file decoded (values are compressed
    inside the file, so a raw grep of it alone could never find a leaked id)."""
    found = {}
    for p in sorted(out.rglob("*")):
        if p.is_file():
            found[p.name] = p.read_bytes()
            if p.suffix == ".parquet":
                table = pq.read_table(p)
                found[p.name + ":decoded"] = (
                    pl.from_arrow(table).cast(pl.String, strict=False).write_csv().encode()
                    + str(table.schema.metadata).encode()
                    + str(pq.read_metadata(p).to_dict()).encode()
                )
    return found


def test_output_bytes_would_show_a_raw_id(tmp_path):
    """Negative control: without --pseudonymize the raw ids are found by the same check."""
    f = _write_csv(tmp_path / "log.csv", [("RAWalice", i, i) for i in range(4)])
    prepare(f, tmp_path / "out")
    assert any(b"RAWalice" in data for data in output_bytes(tmp_path / "out").values())


_PSEUDO = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_PSEUDO
@given(
    ids=st.lists(
        st.text(alphabet="abcdefghjkmnpqrstuvwxyz0123456789", min_size=6, max_size=12),
        min_size=1,
        max_size=6,
        unique=True,
    )
)
def test_pseudonymized_output_contains_no_raw_id(tmp_path_factory, ids):
    tmp = tmp_path_factory.mktemp("pseudo")
    raw = [f"RAW{x}" for x in ids]  # distinctive: no accidental match in binary data
    rows = [(u, f"item{k}", k) for u in raw for k in range(4)]
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_csv(
        tmp / "log.csv"
    )
    salt = tmp / "keys" / "salt"
    opts = PrepareOptions(pseudonymize=True, salt_file=salt)
    prepare(tmp / "log.csv", tmp / "out", opts)
    assert salt.is_file() and stat.S_IMODE(os.stat(salt).st_mode) == 0o600
    for name, data in output_bytes(tmp / "out").items():
        for r in raw:
            assert r.encode() not in data, (name, r)
    ds = SequenceDataset.open(tmp / "out")
    pseudos = ds.users["user_id"].to_list()
    assert not set(pseudos) & set(raw) and all(len(x) == 64 for x in pseudos)
    assert pseudos == sorted(pseudos)  # row order follows pseudonyms, not raw ids
    # same key -> same pseudonyms; the key file is reused, not replaced
    prepare(tmp / "log.csv", tmp / "again", opts)
    assert SequenceDataset.open(tmp / "again").users["user_id"].to_list() == pseudos


def test_pseudonyms_depend_on_the_key(tmp_path):
    f = _write_csv(tmp_path / "log.csv", [("alice", i, i) for i in range(4)])
    for k in ("a", "b"):
        prepare(f, tmp_path / k, PrepareOptions(pseudonymize=True, salt_file=tmp_path / f"s{k}"))
    ua, ub = (SequenceDataset.open(tmp_path / k).users["user_id"][0] for k in "ab")
    assert ua != ub
    with pytest.raises(SeqtwinsError, match="inside --out"):
        prepare(f, tmp_path / "c",
                PrepareOptions(pseudonymize=True, salt_file=tmp_path / "c" / "salt"))  # fmt: skip


def _reference(rows, min_rating, dedup, max_len, ku, ki, min_history):
    """Plain-Python prepare: user -> item list, in the documented order of steps."""
    kept = [(u, i, t, line) for line, (u, i, t, r) in enumerate(rows)
            if min_rating is None or r >= min_rating]  # fmt: skip
    seqs: dict[str, list[str]] = {}
    for u, i, _, _ in sorted(kept, key=lambda x: (x[0], x[2], x[3])):
        seqs.setdefault(u, []).append(i)
    if dedup:
        seqs = {u: [i for k, i in enumerate(s) if i not in s[:k]] for u, s in seqs.items()}
    if max_len is not None:
        seqs = {u: s[-max_len:] for u, s in seqs.items()}
    short = sum(1 for s in seqs.values() if len(s) < min_history + 1)
    seqs = {u: s for u, s in seqs.items() if len(s) >= min_history + 1}
    while True:
        counts: dict[str, int] = {}
        for s in seqs.values():
            for i in s:
                counts[i] = counts.get(i, 0) + 1
        new = {u: [i for i in s if counts[i] >= ki] for u, s in seqs.items()}
        new = {u: s for u, s in new.items() if len(s) >= max(ku, min_history + 1)}
        if new == seqs:
            return seqs, short
        seqs = new


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from("abcd"), st.sampled_from("pqrstu"), st.integers(0, 4),
                  st.integers(1, 5)),
        min_size=1, max_size=30,
    ),
    min_rating=st.none() | st.integers(1, 5),
    dedup=st.booleans(),
    max_len=st.none() | st.integers(3, 8),
    ku=st.integers(1, 5),
    ki=st.integers(1, 3),
    min_history=st.integers(1, 2),
    holdout=st.integers(0, 3),
)  # fmt: skip
@example(  # every step active: rating filter, duplicates, truncation, a k-core cascade
    rows=[("a", "p", 3, 5), ("a", "q", 1, 4), ("a", "p", 2, 5), ("a", "r", 0, 1),
          ("a", "s", 4, 5), ("a", "t", 4, 4), ("b", "p", 0, 5), ("b", "q", 0, 5),
          ("b", "u", 1, 5), ("c", "u", 0, 5), ("c", "p", 1, 5), ("c", "q", 2, 5)],
    min_rating=4, dedup=True, max_len=3, ku=3, ki=2, min_history=1, holdout=1,
)  # fmt: skip
def test_pipeline_matches_a_plain_python_reference(
    tmp_path_factory, rows, min_rating, dedup, max_len, ku, ki, min_history, holdout
):
    tmp = tmp_path_factory.mktemp("ref")
    f = _write_csv(tmp / "log.csv", rows, "user_id,item_id,timestamp,rating")
    opts = PrepareOptions(min_rating=min_rating, dedup=dedup, max_len=max_len,
                          min_user_count=ku, min_item_count=ki, min_history=min_history,
                          holdout=holdout)  # fmt: skip
    want, short = _reference(rows, min_rating, dedup, max_len, ku, ki, min_history)
    if not want:
        with pytest.raises(SeqtwinsError, match="no users left"):
            prepare(f, tmp / "out", opts)
        return
    summary = prepare(f, tmp / "out", opts)
    assert _seqs(tmp / "out") == want
    assert summary.dropped["short_users"] == short
    ds = SequenceDataset.open(tmp / "out")
    lengths = ds.sequences.lengths()
    assert np.array_equal(
        ds.sequences.history_lengths(), np.maximum(lengths - holdout, min_history)
    )
    assert ds.items["item_id"].to_list() == sorted({i for s in want.values() for i in s})
