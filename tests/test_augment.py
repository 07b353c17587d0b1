from __future__ import annotations

import dataclasses
import math
import pickle
from collections import Counter, defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqtwins.augment import (
    OPS,
    AugmentConfig,
    CooccurrenceTable,
    TwoViewTransform,
    crop,
    insert,
    mask,
    reorder,
    substitute,
)
from seqtwins.data.dataset import Sequences

N_ITEMS = 30
MASK = N_ITEMS + 1

seqs_st = st.lists(st.integers(1, N_ITEMS), min_size=1, max_size=70).map(
    lambda xs: np.asarray(xs, dtype=np.int32)
)
seeds = st.integers(0, 2**32 - 1)
rates = st.floats(0.0, 1.0)


def _random_histories(seed: int, n_users: int = 40) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, N_ITEMS + 1, rng.integers(1, 25)).tolist() for _ in range(n_users)]


@pytest.fixture(scope="module")
def cooc() -> CooccurrenceTable:
    return CooccurrenceTable.build(
        Sequences.from_lists(_random_histories(0)), num_items=N_ITEMS, window=2, top_k=5
    )


def _brute_counts(histories: list[list[int]], window: int) -> dict[int, Counter[int]]:
    counts: dict[int, Counter[int]] = defaultdict(Counter)
    for h in histories:
        for i, a in enumerate(h):
            for j, b in enumerate(h):
                if i != j and abs(i - j) <= window and a != b:
                    counts[a][b] += 1
    return counts


def _is_subsequence(small: list[int], big: list[int]) -> bool:
    it = iter(big)
    return all(x in it for x in small)


# --- configuration ---------------------------------------------------------------------
def test_default_config_is_valid_and_documented() -> None:
    cfg = AugmentConfig()
    assert set(cfg.ops) <= set(OPS)
    assert cfg.needs_cooccurrence
    assert not AugmentConfig(ops=("mask", "crop", "reorder")).needs_cooccurrence
    assert AugmentConfig(ops=["mask", "crop"]).ops == ("mask", "crop")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"mask_rate": 1.5}, "augment.mask_rate=1.5"),
        ({"reorder_ratio": -0.1}, "augment.reorder_ratio=-0.1"),
        ({"substitute_rate": 2}, "augment.substitute_rate=2"),
        ({"insert_rate": "0.2"}, "augment.insert_rate"),
        ({"crop_keep": 0.0}, "augment.crop_keep=0.0"),
        ({"crop_keep": 1.2}, "augment.crop_keep=1.2"),
        ({"ops": ("mask", "shuffle")}, "['shuffle']"),
        ({"ops": ("mask", "mask")}, "augment.ops"),
        ({"ops": "mask"}, "augment.ops='mask'"),
        ({"short_ops": ("bogus",)}, "augment.short_ops"),
        ({"mode": "both"}, "augment.mode='both'"),
        ({"max_len": 0}, "augment.max_len=0"),
        ({"max_len": 2.5}, "augment.max_len=2.5"),
        ({"short_len": -1}, "augment.short_len=-1"),
        ({"cooc_window": 0}, "augment.cooc_window=0"),
        ({"cooc_top_k": 0}, "augment.cooc_top_k=0"),
    ],
)
def test_bad_config_names_the_setting(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match="augment") as err:
        AugmentConfig(**kwargs)  # type: ignore[arg-type]
    assert needle in str(err.value)


def test_replace_validates_again() -> None:
    cfg = AugmentConfig()
    with pytest.raises(ValueError, match=r"augment\.mask_rate=3\.0 must be in \[0, 1\]"):
        dataclasses.replace(cfg, mask_rate=3.0)


# --- identities at rate 0 ----------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(seqs_st, seeds)
def test_zero_rates_are_identity(cooc: CooccurrenceTable, seq: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for out in (
        mask(seq, 0.0, MASK, rng),
        substitute(seq, 0.0, cooc, rng),
        insert(seq, 0.0, cooc, rng),
        crop(seq, 1.0, rng),
        reorder(seq, 0.0, rng),
    ):
        np.testing.assert_array_equal(out, seq)
        assert out.dtype == seq.dtype
        assert not np.shares_memory(out, seq)


# --- mask ------------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(seqs_st, rates, seeds)
def test_mask_properties(seq: np.ndarray, rate: float, seed: int) -> None:
    out = mask(seq, rate, MASK, np.random.default_rng(seed))
    assert out.shape == seq.shape
    changed = out != seq
    assert np.all(out[changed] == MASK)  # only the mask token is introduced
    assert np.any(out != MASK)  # never everything
    n = len(seq)
    assert changed.sum() <= min(math.ceil(rate * n), n - 1)
    assert changed.sum() >= min(math.floor(rate * n + 1e-9), n - 1)


def test_mask_rate_one_keeps_exactly_one_and_length_one_is_identity() -> None:
    rng = np.random.default_rng(0)
    seq = np.arange(1, 11, dtype=np.int32)
    out = mask(seq, 1.0, MASK, rng)
    assert (out == MASK).sum() == 9
    np.testing.assert_array_equal(mask(np.array([7]), 1.0, MASK, rng), [7])


def test_mask_count_is_unbiased_on_short_sequences() -> None:
    # rate 0.3 on 3 items: floor would never mask; stochastic rounding masks 0.9 on average.
    rng = np.random.default_rng(1)
    seq = np.array([4, 5, 6])
    masked = [int((mask(seq, 0.3, MASK, rng) == MASK).sum()) for _ in range(4000)]
    assert set(masked) == {0, 1}
    assert abs(np.mean(masked) - 0.9) < 0.05


# --- crop ------------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(seqs_st, st.floats(0.01, 1.0), seeds)
def test_crop_is_contiguous_with_the_documented_length(
    seq: np.ndarray, keep: float, seed: int
) -> None:
    out = crop(seq, keep, np.random.default_rng(seed))
    n = len(seq)
    assert len(out) == min(n, max(1, math.floor(keep * n + 1e-9)))
    starts = [s for s in range(n - len(out) + 1) if np.array_equal(seq[s : s + len(out)], out)]
    assert starts, "crop must be a contiguous sub-sequence"


def test_crop_reaches_every_start() -> None:
    seq = np.arange(1, 11)
    rng = np.random.default_rng(2)
    starts = {int(crop(seq, 0.6, rng)[0]) - 1 for _ in range(500)}
    assert starts == set(range(5))  # 10 - 6 + 1 possible starts, both ends included


# --- reorder ---------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(seqs_st, rates, seeds)
def test_reorder_preserves_multiset_and_touches_one_segment(
    seq: np.ndarray, ratio: float, seed: int
) -> None:
    out = reorder(seq, ratio, np.random.default_rng(seed))
    assert sorted(out.tolist()) == sorted(seq.tolist())
    seg = math.floor(ratio * len(seq) + 1e-9)
    diff = np.flatnonzero(out != seq)
    if seg < 2:
        assert len(diff) == 0
    elif len(diff):
        assert diff[-1] - diff[0] < seg  # all changes inside one window of length seg
        lo = diff[0]
        # the changed span is a permutation of itself (the segment was shuffled in place)
        span = slice(lo, diff[-1] + 1)
        assert sorted(out[span].tolist()) == sorted(seq[span].tolist())


def test_reorder_short_sequences_are_identity() -> None:
    rng = np.random.default_rng(3)
    for seq in ([5], [5, 6]):
        arr = np.asarray(seq)
        np.testing.assert_array_equal(reorder(arr, 0.5, rng), arr)  # segment < 2
    # ratio 1 on two items shuffles both: both orders occur
    outs = {tuple(reorder(np.array([5, 6]), 1.0, rng).tolist()) for _ in range(50)}
    assert outs == {(5, 6), (6, 5)}


# --- co-occurrence table -----------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4))
def test_cooc_matches_brute_force(seed: int, window: int) -> None:
    hist = _random_histories(seed, n_users=12)
    table = CooccurrenceTable.build(
        Sequences.from_lists(hist), num_items=N_ITEMS, window=window, top_k=N_ITEMS
    )
    brute = _brute_counts(hist, window)
    for item in range(1, N_ITEMS + 1):
        nbrs, counts = table.neighbours(item)
        assert dict(zip(nbrs.tolist(), counts.tolist(), strict=True)) == dict(brute[item])
        assert item not in nbrs.tolist()


def test_cooc_top_k_order_and_ties() -> None:
    # item 1 co-occurs with 2 three times, with 4 and 3 once each (tie -> smaller id first).
    hist = [[1, 2], [2, 1], [1, 2], [3, 1, 4]]
    table = CooccurrenceTable.build(Sequences.from_lists(hist), window=1, top_k=2)
    nbrs, counts = table.neighbours(1)
    assert nbrs.tolist() == [2, 3]
    assert counts.tolist() == [3.0, 1.0]
    assert table.num_items == 4


def test_cooc_reads_only_histories_of_given_users() -> None:
    # user 0's future window (items 7, 8) and user 1 entirely must not enter the table.
    seqs = Sequences.from_lists([[1, 2, 3, 7, 8], [4, 5, 6]], history_lens=[3, 3])
    table = CooccurrenceTable.build(seqs, users=np.array([0]), num_items=8, window=1)
    assert table.neighbours(3)[0].tolist() == [2]
    for item in (4, 5, 6, 7, 8):
        assert len(table.neighbours(item)[0]) == 0


def test_cooc_chunked_build_equals_single_pass() -> None:
    seqs = Sequences.from_lists(_random_histories(5, n_users=60))
    one = CooccurrenceTable.build(seqs, num_items=N_ITEMS, window=3, top_k=4)
    many = CooccurrenceTable.build(seqs, num_items=N_ITEMS, window=3, top_k=4, chunk_interactions=7)
    for name in ("indptr", "neighbors", "counts"):
        np.testing.assert_array_equal(getattr(one, name), getattr(many, name))


def test_cooc_rejects_ids_outside_range() -> None:
    with pytest.raises(ValueError, match="num_items=3"):
        CooccurrenceTable.build(Sequences.from_lists([[1, 5]]), num_items=3)


def test_cooc_sample_draws_neighbours_proportionally(cooc: CooccurrenceTable) -> None:
    item = int(np.argmax(cooc.degree(np.arange(N_ITEMS + 1))))
    nbrs, counts = cooc.neighbours(item)
    assert len(nbrs) >= 2
    draws = cooc.sample(np.full(20_000, item, dtype=np.int32), np.random.default_rng(4))
    assert draws.dtype == np.int32
    assert set(draws.tolist()) <= set(nbrs.tolist())
    freq = np.array([(draws == n).mean() for n in nbrs])
    np.testing.assert_allclose(freq, counts / counts.sum(), atol=0.02)


def test_cooc_sample_returns_items_without_neighbours_unchanged() -> None:
    table = CooccurrenceTable.build(Sequences.from_lists([[1, 2], [3]]), num_items=4)
    items = np.array([[3, 4], [0, MASK]], dtype=np.int64)  # lonely, unseen, padding, mask
    out = table.sample(items, np.random.default_rng(0))
    np.testing.assert_array_equal(out, items)
    assert table.sample(np.array([1, 2]), np.random.default_rng(0)).tolist() == [2, 1]


class _AlmostOne:
    """A stand-in generator whose uniforms are the largest double below 1."""

    def random(self, size: tuple[int, ...]) -> np.ndarray:
        return np.full(size, np.nextafter(1.0, 0.0))


def test_cooc_sample_stays_in_the_row_when_u_is_almost_one() -> None:
    # row + u rounds up to row + 1 for u this close to 1 unless sample() guards against it.
    big = 1000
    hist = [[big - 1, big - 2], [big - 1, big - 3], [big, big - 5]]
    table = CooccurrenceTable.build(Sequences.from_lists(hist), window=1)
    items = np.array([big - 1, big - 2, big, big - 4], dtype=np.int64)
    out = table.sample(items, _AlmostOne())  # type: ignore[arg-type]
    assert out.tolist() == [big - 2, big - 1, big - 5, big - 4]  # last neighbour / itself


def test_cooc_pickles(cooc: CooccurrenceTable) -> None:
    back = pickle.loads(pickle.dumps(cooc))
    items = np.arange(1, N_ITEMS + 1)
    np.testing.assert_array_equal(
        back.sample(items, np.random.default_rng(9)), cooc.sample(items, np.random.default_rng(9))
    )


# --- substitute / insert -----------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(seqs_st, rates, seeds)
def test_substitute_draws_only_cooccurring_items(
    cooc: CooccurrenceTable, seq: np.ndarray, rate: float, seed: int
) -> None:
    out = substitute(seq, rate, cooc, np.random.default_rng(seed))
    assert out.shape == seq.shape and out.dtype == seq.dtype
    changed = np.flatnonzero(out != seq)
    assert len(changed) <= math.ceil(rate * len(seq))
    for i in changed:
        assert out[i] in cooc.neighbours(int(seq[i]))[0]


def _pair_table() -> CooccurrenceTable:
    # item i (1..10) co-occurs only with 100 + i, so inserted items are recognisable.
    hist = [[i, 100 + i] for i in range(1, 11)]
    return CooccurrenceTable.build(Sequences.from_lists(hist), num_items=110, window=1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 10), min_size=1, max_size=40), rates, seeds)
def test_insert_puts_a_neighbour_right_after_its_item(
    items: list[int], rate: float, seed: int
) -> None:
    table = _pair_table()
    seq = np.asarray(items, dtype=np.int32)
    out = insert(seq, rate, table, np.random.default_rng(seed)).tolist()
    original = [x for x in out if x <= 10]
    assert original == items  # order and content of the original kept
    n_new = len(out) - len(items)
    assert n_new <= math.ceil(rate * len(items))
    for i, x in enumerate(out):
        if x > 100:
            assert i > 0 and out[i - 1] == x - 100  # inserted after the item it co-occurs with


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 10), min_size=1, max_size=40), st.integers(1, 30), seeds)
def test_insert_caps_to_the_most_recent(items: list[int], max_len: int, seed: int) -> None:
    table = _pair_table()
    seq = np.asarray(items, dtype=np.int32)
    full = insert(seq, 0.5, table, np.random.default_rng(seed))
    capped = insert(seq, 0.5, table, np.random.default_rng(seed), max_len=max_len)
    np.testing.assert_array_equal(capped, full[-max_len:])


def test_insert_skips_items_without_neighbours() -> None:
    table = _pair_table()
    seq = np.array([50, 60, 70], dtype=np.int32)  # no neighbours at all
    np.testing.assert_array_equal(insert(seq, 1.0, table, np.random.default_rng(0)), seq)


# --- two-view transform ------------------------------------------------------------------
configs = st.builds(
    AugmentConfig,
    ops=st.lists(st.sampled_from(OPS), unique=True, max_size=5).map(tuple),
    mode=st.sampled_from(["random", "chain"]),
    mask_rate=rates,
    crop_keep=st.floats(0.05, 1.0),
    reorder_ratio=rates,
    substitute_rate=rates,
    insert_rate=rates,
    max_len=st.integers(1, 60),
    short_len=st.integers(0, 6),
)


@settings(max_examples=150, deadline=None)
@given(configs, seqs_st, seeds)
def test_views_are_never_empty_and_capped(
    cooc: CooccurrenceTable, cfg: AugmentConfig, seq: np.ndarray, seed: int
) -> None:
    transform = TwoViewTransform(cfg, MASK, cooc)
    a, b = transform(seq, np.random.default_rng(seed))
    recent = set(seq[-cfg.max_len :].tolist())
    for view in (a, b):
        assert 1 <= len(view) <= cfg.max_len
        assert view.dtype == seq.dtype and view.ndim == 1
        assert np.any(view != MASK)
        assert set(view.tolist()) <= set(range(1, N_ITEMS + 1)) | {MASK}
        if not cfg.needs_cooccurrence:  # then only items of the capped input can appear
            assert set(view.tolist()) - {MASK} <= recent
    again = transform(seq, np.random.default_rng(seed))
    np.testing.assert_array_equal(again[0], a)  # deterministic given the seed
    np.testing.assert_array_equal(again[1], b)


def test_two_views_are_independent(cooc: CooccurrenceTable) -> None:
    transform = TwoViewTransform(AugmentConfig(), MASK, cooc)
    seq = np.arange(1, 21, dtype=np.int32)
    rng = np.random.default_rng(0)
    pairs = [transform(seq, rng) for _ in range(20)]
    assert any(not np.array_equal(a, b) for a, b in pairs)


def test_random_mode_applies_one_op_per_view() -> None:
    cfg = AugmentConfig(ops=("mask", "reorder"), mask_rate=0.5, reorder_ratio=0.5, short_len=0)
    transform = TwoViewTransform(cfg, MASK)
    seq = np.arange(1, 21, dtype=np.int32)
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(100):
        view = transform.view(seq, rng)
        masked, moved = bool(np.any(view == MASK)), sorted(view.tolist()) == seq.tolist()
        assert masked != moved or np.array_equal(view, seq)  # never both ops
        kinds.add("mask" if masked else "reorder")
    assert kinds == {"mask", "reorder"}


def test_chain_mode_applies_every_op() -> None:
    cfg = AugmentConfig(
        ops=("mask", "crop"), mode="chain", mask_rate=0.5, crop_keep=0.5, short_len=0
    )
    transform = TwoViewTransform(cfg, MASK)
    seq = np.arange(1, 21, dtype=np.int32)
    view = transform.view(seq, np.random.default_rng(0))
    assert len(view) == 10 and (view == MASK).sum() == 5  # cropped, then masked


def test_short_sequences_only_get_short_ops(cooc: CooccurrenceTable) -> None:
    cfg = AugmentConfig(ops=OPS, short_len=4, short_ops=("mask",), mask_rate=0.5)
    transform = TwoViewTransform(cfg, MASK, cooc)
    rng = np.random.default_rng(0)
    for seq in ([3], [3, 4], [3, 4, 5, 6]):
        arr = np.asarray(seq, dtype=np.int32)
        for _ in range(50):
            view = transform.view(arr, rng)
            assert len(view) == len(arr)
            keep = view != MASK
            np.testing.assert_array_equal(view[keep], arr[keep])
    # a sequence longer than short_len gets the other ops too (e.g. crop shortens it)
    long_seq = np.arange(1, 11, dtype=np.int32)
    assert any(len(transform.view(long_seq, rng)) < 10 for _ in range(50))


def test_short_rule_falls_back_to_ops_when_no_short_op_enabled() -> None:
    cfg = AugmentConfig(ops=("reorder",), reorder_ratio=1.0, short_ops=("mask",))
    transform = TwoViewTransform(cfg, MASK)
    outs = {tuple(transform.view(np.array([1, 2]), np.random.default_rng(s))) for s in range(20)}
    assert outs == {(1, 2), (2, 1)}


def test_long_input_is_cut_to_the_most_recent_items() -> None:
    cfg = AugmentConfig(ops=("reorder",), reorder_ratio=1.0, max_len=5)
    transform = TwoViewTransform(cfg, MASK)
    seq = np.arange(1, 101, dtype=np.int32)
    a, b = transform(seq, np.random.default_rng(0))
    assert sorted(a.tolist()) == sorted(b.tolist()) == [96, 97, 98, 99, 100]


def test_empty_ops_give_identity_views() -> None:
    transform = TwoViewTransform(AugmentConfig(ops=(), max_len=3), MASK)
    a, b = transform(np.array([1, 2, 3, 4], dtype=np.int32), np.random.default_rng(0))
    assert a.tolist() == b.tolist() == [2, 3, 4]


def test_transform_input_errors(cooc: CooccurrenceTable) -> None:
    with pytest.raises(ValueError, match="substitute.*co-occurrence table"):
        TwoViewTransform(AugmentConfig(), MASK, None)
    with pytest.raises(ValueError, match="mask_token=5 is a real item id"):
        TwoViewTransform(AugmentConfig(), 5, cooc)
    with pytest.raises(ValueError, match="mask_token=0"):
        TwoViewTransform(AugmentConfig(ops=("mask",)), 0)
    transform = TwoViewTransform(AugmentConfig(ops=("mask",)), MASK)
    with pytest.raises(ValueError, match="empty sequence"):
        transform(np.zeros(0, dtype=np.int32), np.random.default_rng(0))


def test_transform_pickles_and_gives_the_same_views(cooc: CooccurrenceTable) -> None:
    transform = TwoViewTransform(AugmentConfig(mode="chain"), MASK, cooc)
    back = pickle.loads(pickle.dumps(transform))
    seq = np.arange(1, 31, dtype=np.int32)
    for x, y in zip(
        transform(seq, np.random.default_rng(7)), back(seq, np.random.default_rng(7)), strict=True
    ):
        np.testing.assert_array_equal(x, y)


def test_from_sequences_builds_the_table_only_when_needed() -> None:
    seqs = Sequences.from_lists(_random_histories(1))
    users = np.arange(seqs.num_users)
    plain = TwoViewTransform.from_sequences(
        AugmentConfig(ops=("mask", "crop")), seqs, users, num_items=N_ITEMS
    )
    assert plain.cooc is None and plain.mask_token == MASK
    full = TwoViewTransform.from_sequences(AugmentConfig(), seqs, users, num_items=N_ITEMS)
    assert full.cooc is not None and full.cooc.num_items == N_ITEMS


# --- real data ---------------------------------------------------------------------------
def test_cooc_on_yelp_histories(shared_data) -> None:  # type: ignore[no-untyped-def]
    path = shared_data("yelp") / "Yelp.txt"
    rows = [line.split()[1:] for line in path.read_text().splitlines() if line.strip()]
    hist = [[int(x) for x in r] for r in rows]
    seqs = Sequences.from_lists(hist)
    table = CooccurrenceTable.build(seqs, window=3, top_k=20)
    assert table.num_items == max(max(h) for h in hist)
    rng = np.random.default_rng(0)
    # brute-force check of the counts for a few items against a direct scan of the data
    probe = set(rng.choice(np.flatnonzero(table.degree(np.arange(table.num_items + 1))), 5))
    counts: dict[int, Counter[int]] = defaultdict(Counter)
    for h in hist:
        for i, a in enumerate(h):
            if a in probe:
                for j in range(max(0, i - 3), min(len(h), i + 4)):
                    if j != i and h[j] != a:
                        counts[a][h[j]] += 1
    for item in probe:
        nbrs, got = table.neighbours(int(item))
        want = sorted(counts[item].items(), key=lambda kv: (-kv[1], kv[0]))[:20]
        assert list(zip(nbrs.tolist(), got.tolist(), strict=True)) == want
    transform = TwoViewTransform(AugmentConfig(max_len=50), table.num_items + 1, table)
    for u in rng.choice(seqs.num_users, 200, replace=False):
        a, b = transform(seqs.history(int(u)), rng)
        assert 1 <= len(a) <= 50 and 1 <= len(b) <= 50
