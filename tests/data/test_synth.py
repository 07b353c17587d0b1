"""The synthetic default: deterministic, in the canonical format, with the signal it claims."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.config import build
from seqtwins.data.dataset import SequenceDataset
from seqtwins.data.synth import (
    AGE_GROUPS,
    SEGMENTS,
    SynthConfig,
    SynthData,
    generate,
    synthesize,
)
from seqtwins.errors import SeqtwinsError

DEFAULT = SynthConfig()


@pytest.fixture(scope="module")
def data() -> SynthData:
    return generate(DEFAULT)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return SequenceDataset.open(synthesize(tmp_path_factory.mktemp("synth") / "ds", DEFAULT))


# --- helpers: labels and features computed independently of the generator ------------------


def _user_of(offsets: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))


def _bag(data: SynthData, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(U, C) category frequencies of items[lo[u]:hi[u]] per user."""
    s, cat = data.sequences, data.truth.primary_category
    n_cat = int(cat.max()) + 1
    lens = hi - lo
    pos = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(lo, lens)
    user = np.repeat(np.arange(len(lo)), lens)
    x = np.zeros((len(lo), n_cat))
    np.add.at(x, (user, cat[s.items[pos]]), 1.0)
    return x / np.maximum(x.sum(axis=1, keepdims=True), 1.0)


def _favorite_future(data: SynthData) -> np.ndarray:
    """Most frequent primary category in each future window; ties: first to appear."""
    s, cat = data.sequences, data.truth.primary_category
    out = np.empty(s.num_users, dtype=np.int64)
    for u in range(s.num_users):
        fut = cat[s.future(u)]
        counts = np.bincount(fut)
        out[u] = fut[np.flatnonzero(counts[fut] == counts.max())[0]]
    return out


def _probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, evaluate: np.ndarray) -> float:
    model = LogisticRegression(max_iter=1000).fit(x[train], y[train])
    return float((model.predict(x[evaluate]) == y[evaluate]).mean())


def _majority(y: np.ndarray, train: np.ndarray, evaluate: np.ndarray) -> float:
    return float((y[evaluate] == np.bincount(y[train]).argmax()).mean())


def _splits(data: SynthData) -> tuple[np.ndarray, np.ndarray]:
    split = data.users["split"].to_numpy()
    return split == "train", split != "train"


# --- determinism and format -------------------------------------------------------------------


def test_same_seed_same_bytes(tmp_path, written):  # type: ignore[no-untyped-def]
    again = synthesize(tmp_path / "again", DEFAULT)
    assert SequenceDataset.open(again).content_hash == written.content_hash
    for f in sorted(written.path.iterdir()):
        assert (again / f.name).read_bytes() == f.read_bytes(), f.name


def test_other_seed_other_data(data):  # type: ignore[no-untyped-def]
    other = generate(dataclasses.replace(DEFAULT, seed=1))
    assert not np.array_equal(other.sequences.items[:1000], data.sequences.items[:1000])
    assert other.users["split"].to_list() != data.users["split"].to_list()


def test_canonical_format(written):  # type: ignore[no-untyped-def]
    written.verify()
    meta = written.meta
    assert meta["source"] == "synth"
    assert meta["params"] == json.loads(json.dumps(dataclasses.asdict(DEFAULT)))
    assert meta["fields"] == {
        "times": True,
        "ratings": True,
        "categories": True,
        "titles": False,
        "user_attributes": ["age_group", "segment"],
    }
    assert written.num_users == DEFAULT.users
    assert 0.9 * DEFAULT.items <= written.num_items <= DEFAULT.items
    assert written.items.columns == ["item_idx", "item_id", "categories"]
    assert written.items.schema["categories"] == pl.List(pl.String)
    assert written.users.columns == ["user_idx", "user_id", "split", "age_group", "segment"]
    assert set(written.users["age_group"].unique()) == set(AGE_GROUPS)
    assert set(written.users["segment"].unique()) == set(SEGMENTS)
    n_cats = written.items["categories"].list.len()
    assert n_cats.min() == 1 and n_cats.max() == 2
    codes, names = written.item_categories()
    assert names == [f"cat{c:02d}" for c in range(DEFAULT.categories)]
    # every listed item is interacted with (as in prepare, which indexes the log's items)
    assert np.all(np.bincount(written.sequences.items, minlength=written.num_items + 1)[1:] > 0)


def test_holdout_rule_and_split(written):  # type: ignore[no-untyped-def]
    s = written.sequences
    lens, hist = s.lengths(), s.history_lengths()
    assert lens.min() >= DEFAULT.min_length and lens.max() <= DEFAULT.max_length
    assert np.array_equal(lens - hist, np.minimum(DEFAULT.holdout, lens - DEFAULT.min_history))
    assert hist.min() >= DEFAULT.min_history
    assert written.meta["counts"]["splits"] == {"train": 4000, "valid": 500, "test": 500}


def test_lengths_skewed_times_increasing_ratings_valid(written):  # type: ignore[no-untyped-def]
    s = written.sequences
    lens = s.lengths()
    assert lens.mean() > np.median(lens) + 3  # right-skewed (lognormal)
    assert lens.max() == DEFAULT.max_length  # the long tail reaches the cap
    same_user = np.diff(_user_of(s.offsets)) == 0
    assert np.all(np.diff(s.times)[same_user] > 0)
    assert set(np.unique(s.ratings).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}


def test_zipf_popularity(data):  # type: ignore[no-untyped-def]
    counts = np.sort(np.bincount(data.sequences.items)[1:])[::-1]
    assert counts[: len(counts) // 10].sum() > 0.4 * counts.sum()


# --- the signal the generative story promises ------------------------------------------------


def test_future_favorite_category_predictable_not_trivial(data):  # type: ignore[no-untyped-def]
    s = data.sequences
    y = _favorite_future(data)
    train, evaluate = _splits(data)
    acc = _probe(_bag(data, s.offsets[:-1], s.history_end), y, train, evaluate)
    majority = _majority(y, train, evaluate)
    assert acc >= majority + 0.08 and acc >= 1.5 * majority, (acc, majority)
    assert acc <= 0.6, acc  # not trivial: better representations have room to score higher


def test_tastes_drift_recent_history_predicts_better(data):  # type: ignore[no-untyped-def]
    s = data.sequences
    y = _favorite_future(data)
    train, evaluate = _splits(data)
    long_ = s.history_lengths() >= 30
    start, end = s.offsets[:-1], s.history_end
    early = _probe(_bag(data, start, start + 10), y, train & long_, evaluate & long_)
    recent = _probe(_bag(data, end - 10, end), y, train & long_, evaluate & long_)
    assert recent >= early + 0.05, (early, recent)


@pytest.mark.parametrize("attribute", ["age_group", "segment"])
def test_attributes_follow_tastes(data, attribute):  # type: ignore[no-untyped-def]
    s = data.sequences
    _, y = np.unique(data.users[attribute].to_numpy(), return_inverse=True)
    train, evaluate = _splits(data)
    acc = _probe(_bag(data, s.offsets[:-1], s.history_end), y, train, evaluate)
    assert acc >= _majority(y, train, evaluate) + 0.05


def test_successor_transitions(data):  # type: ignore[no-untyped-def]
    s, succ = data.sequences, data.truth.successors
    same_user = np.diff(_user_of(s.offsets)) == 0
    prev, nxt = s.items[:-1][same_user], s.items[1:][same_user]
    is_succ = (succ[prev] == nxt[:, None]).any(axis=1)
    assert is_succ.mean() >= DEFAULT.successor_prob
    assert abs(data.truth.from_successor.mean() - DEFAULT.successor_prob) < 0.02
    none = generate(dataclasses.replace(DEFAULT, users=1000, successor_prob=0.0))
    s0, succ0 = none.sequences, none.truth.successors
    same0 = np.diff(_user_of(s0.offsets)) == 0
    hits0 = (succ0[s0.items[:-1][same0]] == s0.items[1:][same0][:, None]).any(axis=1)
    assert hits0.mean() < DEFAULT.successor_prob / 3  # chance level is far lower


def test_ratings_follow_affinity(data):  # type: ignore[no-untyped-def]
    s, cat = data.sequences, data.truth.primary_category
    user = _user_of(s.offsets)
    favourite = _bag(data, s.offsets[:-1], s.offsets[1:]).argmax(axis=1)
    liked = cat[s.items] == favourite[user]
    assert s.ratings[liked].mean() > s.ratings[~liked].mean() + 0.3


# --- settings and the command -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"users": 0}, "users=0 must be >= 1"),
        ({"items": 5}, "items=5 must be >= categories=20"),
        ({"drift": 1.5}, "drift=1.5 must be in [0, 1]"),
        ({"min_length": 3}, "min_length=3 must be >= min_history + 1"),
        ({"valid_frac": 0.5, "test_frac": 0.5}, "must be < 1"),
        ({"seed": -1}, "seed=-1 must be >= 0"),
    ],
)
def test_bad_settings_name_the_setting(tmp_path, change, message):  # type: ignore[no-untyped-def]
    pattern = re.escape(message)
    with pytest.raises(ValueError, match=pattern):  # the config convention: when built
        dataclasses.replace(DEFAULT, **change)
    with pytest.raises(SeqtwinsError, match=pattern):  # build() makes it a user error
        build(SynthConfig, {**dataclasses.asdict(DEFAULT), **change})
    # spelt as written: in an experiment file, and as the flag on the command line
    with pytest.raises(SeqtwinsError, match=r"^data\.synth\.users=0 must be >= 1"):
        build(SynthConfig, {"users": 0}, prefix="data.synth")
    r = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "ds"), "--users", "0"])
    assert r.exit_code == 2 and "error: --users=0 must be >= 1" in r.output
    assert not (tmp_path / "ds").exists()


def test_cli_synth(tmp_path):  # type: ignore[no-untyped-def]
    out = tmp_path / "ds"
    runner = CliRunner()
    args = ["synth", "--out", str(out), "--users", "300", "--items", "150", "--seed", "7"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ds = SequenceDataset.open(out)
    assert ds.num_users == 300 and ds.num_items <= 150
    assert ds.meta["params"]["seed"] == 7

    again = runner.invoke(app, args)  # exists: one line, exit 2
    assert again.exit_code == 2
    assert "already exists" in again.output and "Traceback" not in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0

    bad = runner.invoke(app, ["synth", "--out", str(tmp_path / "bad"), "--users", "0"])
    assert bad.exit_code == 2
    assert bad.output.strip().count("\n") == 0 and "--users=0" in bad.output
    assert not (tmp_path / "bad").exists()


def test_sizes_beyond_memory_are_refused_by_name():
    from seqtwins.data.synth import MAX_USERS
    from seqtwins.errors import SeqtwinsError
    from seqtwins.settings import build

    with pytest.raises(SeqtwinsError, match=rf"users={MAX_USERS + 1} must be <= "):
        build(SynthConfig, {"users": MAX_USERS + 1})
