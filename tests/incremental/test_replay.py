"""The replay reservoir: Algorithm R, continued across updates."""

from __future__ import annotations

import numpy as np
import polars as pl

from seqtwins.data.dataset import SequenceDataset
from seqtwins.incremental.replay import (
    REPLAY_PREFIX,
    Reservoir,
    histories,
    reservoir_slots,
    with_replay,
)


def sequential_r(n: int, capacity: int, rng: np.random.Generator) -> list[int]:
    """Algorithm R as written by Vitter (one element at a time): the reference."""
    out: list[int] = []
    for i in range(n):
        j = int(rng.integers(0, i + 1))
        if i < capacity:
            out.append(i)
        elif j < capacity:
            out[j] = i
    return out


def stream(ids: range) -> pl.DataFrame:
    return pl.DataFrame({"user_id": [str(i) for i in ids], "items": [[f"i{i}"] for i in ids]})


def test_vectorised_slots_equal_the_sequential_algorithm():
    for seed in range(20):
        ref = sequential_r(50, 7, np.random.default_rng(seed))
        slots = reservoir_slots(0, 50, 7, np.random.default_rng(seed))
        got = np.full(7, -1)
        for i, s in enumerate(slots):
            if s >= 0:
                got[s] = i
        assert got.tolist() == ref


def test_reservoir_is_a_uniform_sample_across_updates():
    capacity, trials = 5, 3000
    hits = np.zeros(30)
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        r = Reservoir.empty().add(stream(range(0, 8)), capacity, rng)  # first window
        r = r.add(stream(range(8, 30)), capacity, rng)  # the next one continues it
        assert r.seen == 30 and r.frame.height == capacity
        hits[[int(x) for x in r.frame["user_id"]]] += 1
    freq = hits / trials
    # each of the 30 sequences is kept with probability 5/30, whichever window it came from
    assert np.abs(freq - capacity / 30).max() < 0.035
    assert abs(freq[:8].mean() - capacity / 30) < 0.015


def test_small_streams_fill_the_reservoir_in_order():
    r = Reservoir.empty().add(stream(range(3)), 10, np.random.default_rng(0))
    assert r.frame["user_id"].to_list() == ["0", "1", "2"] and r.seen == 3


def test_histories_and_replay_by_original_ids(windows):
    w1, w2 = (SequenceDataset.open(p) for p in windows)
    h = histories(w1, max_len=4)
    train = w1.split_users("train")
    assert h.height == len(train) and h["items"].list.len().max() <= 4
    # the last history items of the first training user, by original id
    u = int(train[0])
    last = np.asarray(w1.sequences.items[w1.sequences.offsets[u] : w1.sequences.history_end[u]])
    ids = w1.items["item_id"].to_numpy()[last[-4:] - 1].tolist()
    assert h["items"][0].to_list() == ids
    r = Reservoir.empty().add(h, 10, np.random.default_rng(1))
    mixed, added = with_replay(w2, r)
    assert added == 10 and mixed.num_users == w2.num_users + 10
    assert len(mixed.split_users("train")) == len(w2.split_users("train")) + 10
    assert mixed.split_users("valid").tolist() == w2.split_users("valid").tolist()
    assert mixed.content_hash == w2.content_hash  # the lineage names the real dataset
    # a replayed sequence holds the same original items, in the new indices
    row = w2.num_users
    got = np.asarray(mixed.sequences.items[mixed.sequences.offsets[row] :
                                           mixed.sequences.offsets[row + 1]])  # fmt: skip
    want = r.frame["items"][0].to_list()
    assert mixed.items["item_id"].to_numpy()[got - 1].tolist() == want
    assert mixed.users["user_id"][row] == REPLAY_PREFIX + r.frame["user_id"][0]
