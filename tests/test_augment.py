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
    history_counts,
    insert,
    mask,
    mask_for_prediction,
    reorder,
    session_bounds,
    session_crop,
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
        ({"same_category": 1}, "augment.same_category=1"),
        ({"session_crop": "yes"}, "augment.session_crop='yes'"),
        ({"session_gap": 0}, "augment.session_gap=0"),
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


# --- domain-aware operations: same-category draws, session crops, masking for prediction ---
CATS = np.r_[-1, np.arange(1, N_ITEMS + 1) % 3, -1]  # item id i -> category i % 3 (0 = pad)


def _category_table(cats: np.ndarray = CATS) -> tuple[CooccurrenceTable, CooccurrenceTable]:
    seqs = Sequences.from_lists(_random_histories(0))
    plain = CooccurrenceTable.build(seqs, num_items=N_ITEMS, window=2, top_k=5)
    pop = history_counts(seqs, np.arange(seqs.num_users), N_ITEMS)
    return plain, plain.within_categories(cats, pop, top_k=5)


def test_same_category_table_keeps_only_items_of_the_category() -> None:
    plain, same = _category_table()
    assert same.num_items == plain.num_items
    for item in range(1, N_ITEMS + 1):
        nbrs, counts = same.neighbours(item)
        assert len(nbrs) >= 1 and item not in nbrs and (counts > 0).all()
        assert (CATS[nbrs] == CATS[item]).all()
        kept = [n for n in plain.neighbours(item)[0] if CATS[n] == CATS[item]]
        if kept:  # co-occurrence-weighted, in the plain table's order
            assert nbrs.tolist() == kept


def test_same_category_falls_back_to_popular_items_of_the_category() -> None:
    seqs = Sequences.from_lists([[1, 2], [3, 4], [1, 2], [4]])
    plain = CooccurrenceTable.build(seqs, num_items=6, window=1, top_k=3)
    cats = np.r_[-1, [0, 1, 0, 1, 0, 1], -1]  # every co-occurrence crosses categories
    pop = history_counts(seqs, np.arange(4), 6)  # 1: 2, 2: 2, 3: 1, 4: 2, 5/6: unseen
    same = plain.within_categories(cats, pop, top_k=2)
    got = {i: (same.neighbours(i)[0].tolist(), same.neighbours(i)[1].tolist())
           for i in range(1, 7)}  # fmt: skip
    assert got[1] == ([3], [1.0])  # itself excluded; unseen 5 never drawn
    assert got[3] == ([1], [2.0])
    assert got[2] == ([4], [2.0]) and got[4] == ([2], [2.0])
    assert got[5] == ([1, 3], [2.0, 1.0])  # most popular first, popularity-weighted
    assert got[6] == ([2, 4], [2.0, 2.0])  # ties: smaller id first


def test_items_without_category_keep_their_neighbours() -> None:
    cats = CATS.copy()
    cats[5] = -1
    plain, same = _category_table(cats)
    assert same.neighbours(5)[0].tolist() == plain.neighbours(5)[0].tolist()
    nbrs = same.neighbours(6)[0]
    assert 5 not in nbrs or CATS[6] == -1  # category -1 is no category, never a match


@given(seq=seqs_st, seed=seeds)
@settings(max_examples=60, deadline=None)
def test_substitute_and_insert_draw_only_from_the_category(seq: np.ndarray, seed: int) -> None:
    _, same = _category_table()
    rng = np.random.default_rng(seed)
    out = substitute(seq, 0.5, same, rng)
    changed = out != seq
    assert (CATS[out[changed]] == CATS[seq[changed]]).all()
    ins = insert(seq, 0.5, same, rng)
    p = 0  # greedy alignment of ins with seq: what does not match was inserted
    for k, x in enumerate(ins):
        if p < len(seq) and x == seq[p]:
            p += 1
        else:  # inserted right after ins[k - 1], and of its category
            assert k > 0 and CATS[x] == CATS[ins[k - 1]]
    assert p == len(seq)


def test_transform_same_category_and_clean_fallback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    seqs = Sequences.from_lists(_random_histories(3))
    train = np.arange(seqs.num_users)
    cfg = AugmentConfig(ops=("substitute",), substitute_rate=1.0, same_category=True,
                        short_len=0)  # fmt: skip
    t = TwoViewTransform.from_sequences(cfg, seqs, train, N_ITEMS, item_categories=CATS)
    rng = np.random.default_rng(0)
    seq = np.arange(1, 21, dtype=np.int32)
    for _ in range(20):
        a, b = t(seq, rng)
        assert (CATS[a] == CATS[seq]).all() and (CATS[b] == CATS[seq]).all()
    # no categories: the plain co-occurrence table, no error
    plain = TwoViewTransform.from_sequences(cfg, seqs, train, N_ITEMS)
    ref = CooccurrenceTable.build(seqs, train, num_items=N_ITEMS, window=3, top_k=20)
    assert plain.cooc is not None and plain.cooc.nnz == ref.nnz


def test_session_bounds() -> None:
    times = np.array([0, 10, 5000, 5010, 5020, 20000])
    assert session_bounds(times, 1800).tolist() == [0, 2, 5, 6]
    assert session_bounds(times, 100000).tolist() == [0, 6]
    assert session_bounds(np.array([7]), 1).tolist() == [0, 1]


@given(
    sizes=st.lists(st.integers(1, 8), min_size=1, max_size=10),
    keep=st.floats(0.05, 1.0),
    seed=seeds,
)
@settings(max_examples=150, deadline=None)
def test_session_crop_keeps_whole_sessions(sizes: list[int], keep: float, seed: int) -> None:
    gap = 1800
    times = np.concatenate([s * 10_000 + np.arange(n) for s, n in enumerate(sizes)])
    seq = np.arange(1, len(times) + 1, dtype=np.int32)  # distinct: positions are recoverable
    out = session_crop(seq, times, keep, gap, np.random.default_rng(seed))
    n = len(seq)
    length = max(1, int(keep * n + 1e-9))
    start = int(out[0]) - 1
    assert out.tolist() == seq[start : start + len(out)].tolist()  # contiguous
    assert 1 <= len(out) <= n
    bounds = set(session_bounds(times, gap).tolist())
    if length >= n:
        assert len(out) == n
    elif len(sizes) > 1 and min(sizes) <= length:
        # whole sessions: starts and ends at boundaries, within the crop length
        assert start in bounds and start + len(out) in bounds
        assert len(out) <= length
    else:  # one session, or none fits: the plain crop
        assert len(out) == length


def test_session_crop_reaches_every_fitting_session() -> None:
    times = np.array([0, 1, 5000, 5001, 9000, 20000, 20001])  # sessions 2, 2, 1, 2
    seq = np.arange(1, 8)
    starts = {int(session_crop(seq, times, 0.5, 1800, np.random.default_rng(s))[0])
              for s in range(200)}  # fmt: skip
    assert starts == {1, 3, 5, 6}


def test_transform_crops_at_sessions_only_with_times() -> None:
    cfg = AugmentConfig(ops=("crop",), crop_keep=0.5, session_crop=True, short_len=0)
    t = TwoViewTransform(cfg, MASK)
    assert t.uses_times
    assert not TwoViewTransform(AugmentConfig(ops=("crop",)), MASK).uses_times
    seq = np.arange(1, 13, dtype=np.int32)
    times = np.repeat([0, 10_000, 20_000, 30_000], 3)  # four sessions of 3
    rng = np.random.default_rng(1)
    for _ in range(30):
        a, b = t(seq, rng, times)
        for v in (a, b):
            assert len(v) in (3, 6) and (int(v[0]) - 1) % 3 == 0
    # without times: the plain crop (length floor(0.5 * 12))
    assert all(len(v) == 6 for v in t(seq, rng))


@given(seq=seqs_st, rate=st.floats(0.01, 1.0), seed=seeds)
@settings(max_examples=80, deadline=None)
def test_mask_for_prediction(seq: np.ndarray, rate: float, seed: int) -> None:
    seq = seq.copy()
    seq[:: max(1, len(seq) // 3)] = MASK  # some MASK tokens already in the view
    out, targets = mask_for_prediction(seq, rate, MASK, np.random.default_rng(seed))
    assert out.dtype == seq.dtype and out.shape == targets.shape == seq.shape
    hit = targets > 0
    assert (out[hit] == MASK).all() and (targets[hit] == seq[hit]).all()
    assert (seq[hit] != MASK).all()  # only real items are chosen
    assert (out[~hit] == seq[~hit]).all()
    real = int(((seq >= 1) & (seq < MASK)).sum())
    if real:
        assert int(((out >= 1) & (out < MASK)).sum()) >= 1  # one real item stays visible
