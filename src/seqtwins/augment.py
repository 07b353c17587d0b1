"""Sequence augmentations and the two-view transform used by Barlow Twins pretraining.

Five operations on one user's history (a 1-D integer array of item ids >= 1, no padding),
following CL4SRec (Xie et al. 2020, arXiv:2010.14395) and CoSeRec (Liu et al. 2021,
arXiv:2108.06479):

- ``mask``       replace a fraction of positions by the MASK token;
- ``crop``       keep one contiguous sub-sequence;
- ``reorder``    shuffle one contiguous segment;
- ``substitute`` replace items by an item that co-occurs with them in training histories;
- ``insert``     insert such a co-occurring item right after chosen positions.

``substitute`` and ``insert`` draw from a :class:`CooccurrenceTable` built once from the
training users' histories (with ``augment.same_category``, restricted to each item's
first-listed category); with ``augment.session_crop`` and timestamps, ``crop`` keeps whole
sessions (:func:`session_crop`). :func:`mask_for_prediction` masks view items for
``barlow+mask``. :class:`TwoViewTransform` turns one history into two independent
views, either by one randomly drawn operation per view (``mode="random"``) or by all
enabled operations in a fixed order (``mode="chain"``). Every random choice comes from the
``np.random.Generator`` passed in, so views are reproducible from the seed.

Short sequences follow explicit rules (see ``docs/augmentations.md``): an operation that
cannot act on a sequence returns it unchanged, ``mask`` never masks every item, ``crop``
keeps at least one item, ``reorder`` needs a segment of at least two items, and sequences
of length <= ``AugmentConfig.short_len`` only receive the operations in ``short_ops``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from seqtwins.data.dataset import SequenceDataset, Sequences

OPS = ("mask", "crop", "reorder", "substitute", "insert")
"""Every augmentation name, in the order ``mode="chain"`` applies them."""

MODES = ("random", "chain")
COOC_OPS = frozenset({"substitute", "insert"})
"""Operations that need a :class:`CooccurrenceTable`."""

# Chain order: crop and reorder first (they only move or drop real items), then the
# co-occurrence ops (which look items up in the table, so they must run before MASK tokens
# appear), and mask last so its "at least one item stays visible" guarantee holds for the
# final view.
CHAIN_ORDER = ("crop", "reorder", "substitute", "insert", "mask")

# floor(rate * n) is computed as int(rate * n + _EPS) so that e.g. 0.29 * 100 gives 29.
_EPS = 1e-9
_U_SCALE = 1.0 - 2.0**-20

Op = Callable[[np.ndarray, np.random.Generator], np.ndarray]


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------
@dataclass
class AugmentConfig:
    """How the two views of a user history are made (the ``augment.*`` settings).

    Defaults follow CL4SRec's crop/mask/reorder rates (crop keeps 60%, mask 30%, reorder
    20%) and CoSeRec's informative operations and short-sequence rule (substitute and
    insert from co-occurring items; sequences of length <= 4 only get mask, substitute and
    insert). ``docs/augmentations.md`` explains each choice.
    """

    ops: tuple[str, ...] = ("mask", "crop", "reorder", "substitute", "insert")
    """Enabled operations, any subset of ``OPS``. ``substitute``/``insert`` need a
    co-occurrence table. An empty tuple gives identity views (an ablation: the views then
    differ only through encoder dropout)."""

    mode: str = "random"
    """``"random"``: each view applies ONE operation drawn uniformly from the enabled ones
    (CL4SRec, CoSeRec). ``"chain"``: each view applies every enabled operation, in the fixed
    order ``CHAIN_ORDER`` (crop, reorder, substitute, insert, mask)."""

    mask_rate: float = 0.3
    """Fraction of positions replaced by MASK (CL4SRec gamma=0.3; CoSeRec's code uses 0.7,
    too strong when both Barlow Twins views are augmented). In [0, 1]."""

    crop_keep: float = 0.6
    """Fraction of the sequence a crop keeps: length max(1, floor(crop_keep * n))
    (CL4SRec eta=0.6). In (0, 1]; 1 is the identity."""

    reorder_ratio: float = 0.2
    """Length of the shuffled segment as a fraction of n: floor(reorder_ratio * n)
    (CL4SRec and CoSeRec beta=0.2). In [0, 1]; 0 is the identity."""

    substitute_rate: float = 0.1
    """Fraction of positions replaced by a co-occurring item (CoSeRec default 0.1).
    In [0, 1]."""

    insert_rate: float = 0.2
    """Fraction of positions after which a co-occurring item is inserted (CoSeRec uses
    0.4 with a separate length cap; 0.2 keeps most of a full-length view). In [0, 1]."""

    max_len: int | None = None
    """Views hold at most the ``max_len`` most recent items: the input is cut to its last
    ``max_len`` items before augmenting and ``insert`` drops the oldest overflow. Derived:
    in a :class:`~seqtwins.config.PretrainConfig` it is the encoder's ``encoder.max_len``
    (leave it unset); ``None`` on its own means no cap. >= 1 when set."""

    short_len: int = 4
    """Sequences of at most this length only receive ``short_ops`` (CoSeRec's
    augment_threshold=4): cropping or reordering 2-4 items destroys most of the signal.
    0 disables the rule."""

    short_ops: tuple[str, ...] = ("mask", "substitute", "insert")
    """Operations allowed on short sequences (intersected with ``ops``; CoSeRec's "SIM").
    If the intersection is empty, short sequences use ``ops`` under each operation's own
    length rules."""

    cooc_window: int = 3
    """Co-occurrence window: two items co-occur when they are at most this many positions
    apart in a training history. >= 1."""

    cooc_top_k: int = 20
    """Neighbours kept per item (the most frequent co-occurring items); substitute/insert
    draw among them proportionally to the co-occurrence count. >= 1."""

    same_category: bool = False
    """``substitute`` / ``insert`` draw only items of the original item's first-listed
    category: its co-occurring neighbours of that category (co-occurrence-weighted), or,
    when it has none, the category's ``cooc_top_k`` most popular items
    (popularity-weighted). Items without a category, and datasets without categories,
    keep the plain co-occurrence draw."""

    session_crop: bool = False
    """``crop`` keeps a contiguous range of whole sessions (see ``session_gap``) where the
    dataset has timestamps and the history has several sessions; otherwise the plain
    crop."""

    session_gap: float = 1800.0
    """Seconds: a gap of at least this long between two interactions starts a new session
    (30 minutes, the usual inactivity timeout of web analytics). > 0."""

    def __post_init__(self) -> None:
        # YAML gives lists; store tuples (hashable, and what the type says).
        if isinstance(self.ops, list):
            self.ops = tuple(self.ops)
        if isinstance(self.short_ops, list):
            self.short_ops = tuple(self.short_ops)
        self._check()

    @property
    def needs_cooccurrence(self) -> bool:
        """Whether the enabled operations need a :class:`CooccurrenceTable`."""
        return bool(COOC_OPS.intersection(self.ops))

    def _check(self) -> None:
        """Raise ``ValueError`` naming the first invalid setting."""
        for name in ("ops", "short_ops"):
            raw = getattr(self, name)
            if isinstance(raw, str) or not isinstance(raw, tuple | list):
                raise ValueError(f"augment.{name}={raw!r} must be a list of operation names")
            value = tuple(raw)
            unknown = [o for o in value if o not in OPS]
            if unknown:
                raise ValueError(
                    f"augment.{name}={list(value)} has unknown operation(s) {unknown}; "
                    f"choose from {list(OPS)}"
                )
            if len(set(value)) != len(value):
                raise ValueError(f"augment.{name}={list(value)} lists an operation twice")
        if self.mode not in MODES:
            raise ValueError(f"augment.mode={self.mode!r} must be one of {list(MODES)}")
        for name in ("mask_rate", "reorder_ratio", "substitute_rate", "insert_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"augment.{name}={value!r} must be a number in [0, 1]")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{name}={value} must be in [0, 1]")
        keep = self.crop_keep
        if isinstance(keep, bool) or not isinstance(keep, int | float) or not 0.0 < keep <= 1.0:
            raise ValueError(f"augment.crop_keep={keep!r} must be in (0, 1]")
        for name in ("same_category", "session_crop"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"augment.{name}={getattr(self, name)!r} must be true or false")
        gap = self.session_gap
        if isinstance(gap, bool) or not isinstance(gap, int | float) or not gap > 0:
            raise ValueError(f"augment.session_gap={gap!r} must be a number of seconds > 0")
        for name, low in (("max_len", 1), ("short_len", 0), ("cooc_window", 1), ("cooc_top_k", 1)):
            value = getattr(self, name)
            if name == "max_len" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"augment.{name}={value!r} must be an integer >= {low}")


# --------------------------------------------------------------------------------------
# the operations
# --------------------------------------------------------------------------------------
def _stochastic_count(rate: float, n: int, rng: np.random.Generator) -> int:
    """floor(rate*n) plus one with probability frac(rate*n): E[count] = rate*n exactly.

    Plain flooring would never touch sequences shorter than 1/rate (at rate 0.1, nothing
    below 10 items); rounding up would over-augment them. Rate 0 gives 0 and draws nothing.
    """
    x = rate * n
    if x <= 0.0:
        return 0
    k = int(x + _EPS)
    frac = x - k
    if frac > _EPS and rng.random() < frac:
        k += 1
    return k


def _positions(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct positions in ``range(n)``, uniformly at random."""
    return rng.permutation(n)[:k]


def mask(seq: np.ndarray, rate: float, mask_token: int, rng: np.random.Generator) -> np.ndarray:
    """Replace about ``rate`` of the positions by ``mask_token``.

    The count is ``rate * n`` rounded stochastically (its mean is exactly ``rate * n``),
    capped at ``n - 1`` so at least one item stays visible; a length-1 sequence is
    returned unchanged.
    """
    out = seq.copy()
    n = len(seq)
    k = min(_stochastic_count(rate, n, rng), n - 1)
    if k > 0:
        out[_positions(n, k, rng)] = mask_token
    return out


def crop(seq: np.ndarray, keep: float, rng: np.random.Generator) -> np.ndarray:
    """A contiguous sub-sequence of length ``max(1, floor(keep * n))`` at a uniform start.

    ``keep = 1`` is the identity; an empty input is returned as an empty copy.
    """
    n = len(seq)
    length = max(1, int(keep * n + _EPS))
    if n == 0 or length >= n:
        return seq.copy()
    start = int(rng.random() * (n - length + 1))
    return seq[start : start + length].copy()


def session_bounds(times: np.ndarray, gap: float) -> np.ndarray:
    """Session boundaries ``(S + 1,)`` of a chronological ``times`` array: ``0``, every
    position whose gap to the previous interaction is at least ``gap`` seconds, and
    ``n``. Session ``s`` is ``[bounds[s], bounds[s + 1])``."""
    n = len(times)
    gaps = np.diff(np.asarray(times, dtype=np.float64))  # (n - 1,) seconds
    starts = np.flatnonzero(gaps >= gap) + 1
    return np.concatenate([[0], starts, [n]]).astype(np.int64)


def session_crop(
    seq: np.ndarray, times: np.ndarray, keep: float, gap: float, rng: np.random.Generator
) -> np.ndarray:
    """A crop made of whole sessions: a contiguous range of sessions of at most
    ``max(1, floor(keep * n))`` items in total, starting at a session drawn uniformly
    among those that fit alone, and extended over the following sessions while they fit.

    Falls back to :func:`crop` when the history is one session or no session fits (each
    is longer than the crop). ``keep = 1`` is the identity. ``times`` (n,) are the
    interactions' epoch seconds, aligned with ``seq``.
    """
    n = len(seq)
    if len(times) != n:
        raise ValueError(f"times has {len(times)} entries for a sequence of {n}")
    length = max(1, int(keep * n + _EPS))
    if n == 0 or length >= n:
        return seq.copy()
    bounds = session_bounds(times, gap)  # (S + 1,)
    sizes = np.diff(bounds)  # (S,)
    fits = np.flatnonzero(sizes <= length)  # sessions that fit alone
    if len(sizes) < 2 or len(fits) == 0:
        return crop(seq, keep, rng)
    first = fits[int(rng.random() * len(fits))]
    # the last boundary within `length` items of the start (at least the next one)
    end = bounds[np.searchsorted(bounds, bounds[first] + length, side="right") - 1]
    return seq[bounds[first] : end].copy()


def mask_for_prediction(
    seq: np.ndarray, rate: float, mask_token: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """BERT4Rec-style masking for masked-item prediction: ``(masked, targets)``.

    About ``rate`` of the real items (ids in ``1..mask_token-1``; MASK tokens already in
    the view are not chosen) are replaced by ``mask_token``; ``targets`` (n,) holds the
    replaced item at those positions and 0 elsewhere. The count is stochastically
    rounded and capped so that at least one real item stays visible.
    """
    out = seq.copy()
    targets = np.zeros_like(seq)
    real = np.flatnonzero((seq >= 1) & (seq < mask_token))  # (n_real,)
    k = min(_stochastic_count(rate, len(real), rng), len(real) - 1)
    if k > 0:
        pos = real[_positions(len(real), k, rng)]
        targets[pos] = seq[pos]
        out[pos] = mask_token
    return out, targets


def reorder(seq: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Shuffle one contiguous segment of length ``floor(ratio * n)`` at a uniform start.

    The multiset of items is preserved and positions outside the segment are untouched.
    A segment shorter than 2 (including every sequence of length < 2) is the identity.
    """
    out = seq.copy()
    n = len(seq)
    length = int(ratio * n + _EPS)
    if length < 2:
        return out
    start = int(rng.random() * (n - length + 1))
    out[start : start + length] = rng.permutation(seq[start : start + length])
    return out


def substitute(
    seq: np.ndarray, rate: float, cooc: CooccurrenceTable, rng: np.random.Generator
) -> np.ndarray:
    """Replace about ``rate`` of the positions by an item co-occurring with the original.

    Positions are distinct and their count is ``rate * n`` rounded stochastically; an item
    without neighbours in ``cooc`` stays as it is. The length never changes.
    """
    out = seq.copy()
    n = len(seq)
    k = min(_stochastic_count(rate, n, rng), n)
    if k > 0:
        pos = _positions(n, k, rng)
        out[pos] = cooc.sample(seq[pos], rng)
    return out


def insert(
    seq: np.ndarray,
    rate: float,
    cooc: CooccurrenceTable,
    rng: np.random.Generator,
    max_len: int | None = None,
) -> np.ndarray:
    """Insert an item co-occurring with ``seq[i]`` right after about ``rate * n`` positions.

    Positions are distinct (at most one insertion each) and their count is ``rate * n``
    rounded stochastically; a position whose item has no neighbours gets no insertion.
    With ``max_len``, the result keeps its ``max_len`` most recent items.
    """
    n = len(seq)
    k = min(_stochastic_count(rate, n, rng), n)
    out = seq
    if k > 0:
        pos = _positions(n, k, rng)
        src = seq[pos]
        new = cooc.sample(src, rng)
        has = new != src  # sample() returns the item itself when it has no neighbour
        if not has.all():
            pos, new = pos[has], new[has]
        if len(pos):
            reps = np.ones(n, dtype=np.intp)
            reps[pos] = 2
            out = np.repeat(seq, reps)  # (n + len(pos),): chosen items appear twice
            last = np.cumsum(reps) - 1  # index in `out` of the last copy of each item
            out[last[pos]] = new
    if max_len is not None and len(out) > max_len:
        out = out[len(out) - max_len :]
    # Never hand back (a view of) the caller's array.
    return out.copy() if np.may_share_memory(out, seq) else out


# --------------------------------------------------------------------------------------
# co-occurrence table
# --------------------------------------------------------------------------------------
class CooccurrenceTable:
    """Top-k co-occurring items per item, from windows over training histories.

    Items ``a`` and ``b != a`` co-occur once each time they appear within ``window``
    positions of each other in one user's history (both directions are counted). Each item
    keeps its ``top_k`` most frequent neighbours (ties: smaller item id first) in CSR form:
    ``neighbors[indptr[i]:indptr[i+1]]`` with counts ``counts[...]``, for ``i`` in
    ``0..num_items`` (row 0, padding, is empty). Plain numpy arrays, so it pickles cheaply
    into DataLoader workers.
    """

    def __init__(
        self, indptr: np.ndarray, neighbors: np.ndarray, counts: np.ndarray, window: int
    ) -> None:
        indptr = np.asarray(indptr, dtype=np.int64)
        neighbors = np.asarray(neighbors, dtype=np.int32)
        counts = np.asarray(counts, dtype=np.float64)
        if indptr.ndim != 1 or len(indptr) < 2 or indptr[0] != 0:
            raise ValueError("indptr must be 1-D, start at 0 and have num_items + 2 entries")
        if indptr[-1] != len(neighbors) or len(counts) != len(neighbors):
            raise ValueError("indptr[-1], len(neighbors) and len(counts) must agree")
        if np.any(np.diff(indptr) < 0) or np.any(counts <= 0):
            raise ValueError("indptr must be non-decreasing and counts positive")
        self.indptr = indptr
        self.neighbors = neighbors
        self.counts = counts
        self.window = int(window)
        # Sampling layout: rows 0..num_items+1 (num_items+1 catches larger ids), where a row
        # without neighbours holds its own id once, so sample() returns such items as
        # themselves without a separate branch.
        n_rows = len(indptr)  # num_items + 2
        deg = np.append(np.diff(indptr), 0)
        sdeg = np.maximum(deg, 1)
        self._nbrs = np.repeat(np.arange(n_rows, dtype=np.int32), sdeg)
        scounts = np.ones(len(self._nbrs), dtype=np.float64)
        real = np.repeat(deg > 0, sdeg)
        self._nbrs[real] = neighbors
        scounts[real] = counts
        # Row r's cumulative distribution shifted by r: one global, increasing array, so a
        # single searchsorted samples every row at once. Counts are integers, so the float64
        # sums are exact and the last entry of row r is exactly r + 1.0.
        sptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(sdeg, out=sptr[1:])
        cum = np.concatenate([[0.0], np.cumsum(scounts)])
        within = cum[1:] - np.repeat(cum[sptr[:-1]], sdeg)
        total = np.repeat(cum[sptr[1:]] - cum[sptr[:-1]], sdeg)
        self._cdf = np.repeat(np.arange(n_rows, dtype=np.float64), sdeg) + within / total

    @property
    def num_items(self) -> int:
        """Largest item id the table covers (ids above it have no neighbours)."""
        return len(self.indptr) - 2

    @property
    def nnz(self) -> int:
        """Number of stored (item, neighbour) pairs."""
        return len(self.neighbors)

    def degree(self, items: np.ndarray) -> np.ndarray:
        """Number of stored neighbours of each item (0 outside ``1..num_items``)."""
        items = np.asarray(items)
        rows = np.where((items >= 1) & (items <= self.num_items), items, 0)
        return self.indptr[rows + 1] - self.indptr[rows]

    def neighbours(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """Neighbours of ``item`` (most frequent first) and their co-occurrence counts."""
        if not 1 <= item <= self.num_items:
            return np.zeros(0, np.int32), np.zeros(0)
        lo, hi = self.indptr[item], self.indptr[item + 1]
        return self.neighbors[lo:hi].copy(), self.counts[lo:hi].copy()

    def sample(self, items: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One neighbour per input item, drawn proportionally to the co-occurrence count.

        ``items`` holds non-negative ids. An item with no neighbours (or outside
        ``1..num_items``, e.g. MASK or padding) is returned as itself. The output is a new
        array with the shape and dtype of ``items``.
        """
        items = np.asarray(items)
        n = self.num_items
        rows = np.minimum(items, n + 1)  # ids > num_items share the last (self) row
        # u < 1 - 2**-20, so rows + u stays below rows + 1 after rounding for any int32 id
        # (a plain u in [0, 1) can round up to the next row's first entry).
        u = rng.random(items.shape)
        u *= _U_SCALE
        u += rows
        idx = np.searchsorted(self._cdf, u, side="right")
        out = self._nbrs[idx]
        if out.dtype != items.dtype:
            out = out.astype(items.dtype)
        big = items > n
        if big.any():
            out[big] = items[big]
        return out

    def within_categories(
        self, categories: np.ndarray, popularity: np.ndarray, top_k: int
    ) -> CooccurrenceTable:
        """The table restricted to each item's own category (``augment.same_category``).

        ``categories`` (>= num_items + 1,) is the first-listed category code of each item
        id (-1 = none), ``popularity`` (>= num_items + 1,) its count in training histories.
        An item with a category keeps its co-occurring neighbours of that category (their
        co-occurrence counts); if none is left it gets the ``top_k`` most popular other
        items of its category (weighted by popularity). An item without a category keeps
        its neighbours as they are. Vectorised over all items.
        """
        n = self.num_items
        cat = np.full(n + 1, -1, dtype=np.int64)
        m = min(len(categories), n + 1)
        cat[:m] = np.asarray(categories[:m], dtype=np.int64)
        cat[0] = -1  # padding
        pop = np.zeros(n + 1, dtype=np.float64)
        pop[: min(len(popularity), n + 1)] = np.asarray(popularity, dtype=np.float64)[: n + 1]
        deg = np.diff(self.indptr)  # (n + 1,)
        row = np.repeat(np.arange(n + 1, dtype=np.int64), deg)  # (nnz,)
        keep = (cat[row] < 0) | (cat[row] == cat[self.neighbors])
        kept_deg = np.bincount(row[keep], minlength=n + 1)
        lonely = np.flatnonzero((cat >= 0) & (kept_deg == 0))  # no neighbour of its category
        fb_rows, fb_items = _popular_in_category(cat, pop, lonely, top_k)
        rows = np.concatenate([row[keep], fb_rows])
        order = np.argsort(rows, kind="stable")  # a row is all co-occurrence or all fallback
        neighbors = np.concatenate([self.neighbors[keep], fb_items])[order]
        counts = np.concatenate([self.counts[keep], pop[fb_items]])[order]
        indptr = np.zeros(n + 2, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n + 1), out=indptr[1:])
        return CooccurrenceTable(indptr, neighbors, counts, self.window)

    @classmethod
    def build(
        cls,
        sequences: Sequences,
        users: np.ndarray | Sequence[int] | None = None,
        *,
        num_items: int | None = None,
        window: int = 3,
        top_k: int = 20,
        chunk_interactions: int = 4_000_000,
    ) -> CooccurrenceTable:
        """Count co-occurrences over the histories of ``users`` (default: all users).

        Only ``items[offsets[u]:history_end[u]]`` is read: the held-out future window never
        enters the table. ``num_items`` defaults to the largest item id seen. Users are
        processed in chunks of about ``chunk_interactions`` history items, so peak memory
        is about ``chunk_interactions * window * 24`` bytes plus the sparse counts.
        Cost is O(history_items * window) plus a sort of the distinct pairs.
        """
        import scipy.sparse as sp

        if window < 1 or top_k < 1:
            raise ValueError(f"window={window} and top_k={top_k} must be >= 1")
        if users is None:
            users = np.arange(sequences.num_users)
        users = np.asarray(users, dtype=np.int64)
        starts = np.asarray(sequences.offsets[:-1])[users]
        lengths = np.asarray(sequences.history_end)[users] - starts
        all_items = sequences.items
        if num_items is None:
            num_items = 0
            for lo, hi in _chunks(lengths, chunk_interactions):
                flat = np.asarray(all_items[_gather_index(starts[lo:hi], lengths[lo:hi])])
                if len(flat):
                    num_items = max(num_items, int(flat.max()))
        n_rows = num_items + 1  # row/column i = item id i; 0 is padding and stays empty

        # Each unordered pair {a, b} is counted once, as the int64 key min*n_rows + max, in
        # the upper triangle; sorting the keys of a chunk turns them into a canonical CSR
        # matrix directly (no scipy COO conversion, whose per-row sort dominated).
        upper = sp.csr_matrix((n_rows, n_rows), dtype=np.int32)
        for lo, hi in _chunks(lengths, chunk_interactions):
            flat = np.asarray(all_items[_gather_index(starts[lo:hi], lengths[lo:hi])])
            if len(flat) and (flat.min() < 1 or flat.max() > num_items):
                raise ValueError(f"history item ids must lie in 1..num_items={num_items}")
            flat = flat.astype(np.int64)
            user = np.repeat(np.arange(hi - lo), lengths[lo:hi])  # (chunk_items,)
            parts = []
            for d in range(1, window + 1):
                # pairs (flat[t], flat[t + d]) inside one user's history, self-pairs dropped
                ok = (user[d:] == user[:-d]) & (flat[d:] != flat[:-d])
                a, b = flat[:-d][ok], flat[d:][ok]
                parts.append(np.minimum(a, b) * n_rows + np.maximum(a, b))
            key = np.concatenate(parts)
            if len(key) == 0:
                continue
            key.sort()
            first = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
            uniq = key[first]
            count = np.diff(np.append(first, len(key))).astype(np.int32)
            row = uniq // n_rows
            indptr = np.zeros(n_rows + 1, dtype=np.int64)
            np.cumsum(np.bincount(row, minlength=n_rows), out=indptr[1:])
            upper = upper + sp.csr_matrix(
                (count, uniq - row * n_rows, indptr), shape=(n_rows, n_rows)
            )
        full = (upper + upper.T.tocsr()).tocsr()  # both directions
        full.sum_duplicates()  # no-op on canonical input; guarantees sorted columns
        indptr, neighbors, counts = _top_k_rows(
            np.asarray(full.indptr, np.int64),
            np.asarray(full.indices, np.int32),
            np.asarray(full.data, np.int64),
            top_k,
        )
        return cls(indptr, neighbors, counts, window)


def _popular_in_category(
    cat: np.ndarray, pop: np.ndarray, rows: np.ndarray, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each item id in ``rows``: the ``top_k`` most popular other items (popularity
    > 0) of its category ``cat[row]``, most popular first (ties: smaller id first).
    Returns the flat ``(row, item)`` pairs."""
    items = np.flatnonzero((cat >= 0) & (pop > 0))  # candidate items
    order = np.lexsort((items, -pop[items], cat[items]))  # by category, popularity desc, id
    ranked = items[order]
    n_cat = int(cat.max()) + 1 if len(cat) else 0
    count = np.bincount(cat[ranked], minlength=n_cat)  # (C,)
    start = np.cumsum(count) - count
    c = cat[rows]
    take = np.minimum(count[c], top_k + 1)  # one more: the row's own item may be among them
    cand = ranked[_gather_index(start[c], take)]
    cand_row = np.repeat(rows, take)
    other = cand != cand_row
    before = np.concatenate([[0], np.cumsum(other)])[np.cumsum(take) - take]  # per row
    rank = np.cumsum(other) - np.repeat(before, take)  # 1-based rank among the others
    ok = other & (rank <= top_k)
    return cand_row[ok], cand[ok]


def history_counts(
    sequences: Sequences, users: np.ndarray, num_items: int, chunk: int = 4_000_000
) -> np.ndarray:
    """How often each item id ``0..num_items`` occurs in the histories of ``users``."""
    users = np.asarray(users, dtype=np.int64)
    starts = np.asarray(sequences.offsets[:-1])[users]
    lengths = np.asarray(sequences.history_end)[users] - starts
    counts = np.zeros(num_items + 1, dtype=np.int64)
    for lo, hi in _chunks(lengths, chunk):
        flat = np.asarray(sequences.items[_gather_index(starts[lo:hi], lengths[lo:hi])])
        counts += np.bincount(flat, minlength=num_items + 1)[: num_items + 1]
    return counts


def _chunks(lengths: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive user ranges [lo, hi) whose summed lengths stay near ``budget``."""
    n = len(lengths)
    if n == 0:
        return []
    cum = np.cumsum(lengths)
    bounds = [0]
    while bounds[-1] < n:
        base = cum[bounds[-1] - 1] if bounds[-1] else 0
        nxt = int(np.searchsorted(cum, base + budget, side="right"))
        bounds.append(max(nxt, bounds[-1] + 1))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _gather_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat indices of the concatenated ranges ``[starts[i], starts[i] + lengths[i])``."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.cumsum(lengths) - lengths  # position of each range in the output
    return np.arange(total, dtype=np.int64) + np.repeat(starts - first, lengths)


def _top_k_rows(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, k: int, block: int = 4_000_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the ``k`` largest entries per CSR row, sorted by count desc then column asc.

    Expects canonical CSR (columns ascending within each row). Rows are processed in
    blocks of about ``block`` entries to bound the temporary arrays.
    """
    n_rows = len(indptr) - 1
    deg = np.diff(indptr)
    span = int(data.max()) + 1 if len(data) else 1
    keep_parts = []
    for lo, hi in _chunks(deg, block):
        a, b = indptr[lo], indptr[hi]
        bdeg = deg[lo:hi]
        rows = np.repeat(np.arange(hi - lo, dtype=np.int64), bdeg)
        # One int64 key per entry orders rows ascending and counts descending; the stable
        # sort keeps ascending columns among equal counts.
        order = np.argsort(rows * span + (span - 1 - data[a:b]), kind="stable")
        rank = np.arange(b - a, dtype=np.int64) - np.repeat(indptr[lo:hi] - a, bdeg)
        keep_parts.append(order[rank < k] + a)
    keep = np.concatenate(keep_parts) if keep_parts else np.zeros(0, dtype=np.int64)
    new_indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.minimum(deg, k), out=new_indptr[1:])
    return new_indptr, indices[keep], data[keep].astype(np.float64)


# --------------------------------------------------------------------------------------
# the two-view transform
# --------------------------------------------------------------------------------------
class TwoViewTransform:
    """Two independent augmented views of one user history, for Barlow Twins.

    ``transform(seq, rng) -> (view_a, view_b)``: each view holds at most ``cfg.max_len``
    items (the most recent ones) and at least one, keeps ``seq``'s dtype, and depends only
    on ``seq`` and the state of ``rng``. Picklable (DataLoader workers).
    """

    def __init__(
        self, cfg: AugmentConfig, mask_token: int, cooc: CooccurrenceTable | None = None
    ) -> None:
        if cfg.needs_cooccurrence and cooc is None:
            need = sorted(COOC_OPS.intersection(cfg.ops))
            raise ValueError(
                f"augment.ops={list(cfg.ops)} enables {need}, which need a co-occurrence "
                "table: pass cooc=CooccurrenceTable.build(...) or drop them from augment.ops"
            )
        if isinstance(mask_token, bool) or int(mask_token) < 1:
            raise ValueError(f"mask_token={mask_token!r} must be an integer >= 1")
        if cooc is not None and 1 <= mask_token <= cooc.num_items:
            raise ValueError(
                f"mask_token={mask_token} is a real item id (1..{cooc.num_items}); use "
                "num_items + 1 (SequenceDataset.mask_token)"
            )
        self.cfg = cfg
        self.mask_token = int(mask_token)
        self.cooc = cooc
        self._ops = self._bind(cfg.ops)
        short = tuple(o for o in cfg.ops if o in cfg.short_ops)
        self._short_ops = self._bind(short) if short else self._ops

    def _bind(self, names: tuple[str, ...]) -> tuple[tuple[str, Op], ...]:
        cfg, token, cooc = self.cfg, self.mask_token, self.cooc
        if cfg.mode == "chain":
            names = tuple(o for o in CHAIN_ORDER if o in names)
        table: dict[str, Op] = {
            "mask": lambda s, r: mask(s, cfg.mask_rate, token, r),
            "crop": lambda s, r: crop(s, cfg.crop_keep, r),
            "reorder": lambda s, r: reorder(s, cfg.reorder_ratio, r),
        }
        if cooc is not None:
            table["substitute"] = lambda s, r: substitute(s, cfg.substitute_rate, cooc, r)
            table["insert"] = lambda s, r: insert(s, cfg.insert_rate, cooc, r, cfg.max_len)
        return tuple((o, table[o]) for o in names)

    @property
    def uses_times(self) -> bool:
        """Whether views depend on the interactions' times (``augment.session_crop`` with
        ``crop`` enabled): then pass ``times`` to :meth:`__call__`."""
        return self.cfg.session_crop and "crop" in self.cfg.ops

    def __getstate__(self) -> dict[str, Any]:
        # The bound lambdas do not pickle; they are rebuilt from the config.
        return {"cfg": self.cfg, "mask_token": self.mask_token, "cooc": self.cooc}

    def __setstate__(self, state: dict[str, Any]) -> None:
        fresh = TwoViewTransform(state["cfg"], state["mask_token"], state["cooc"])
        self.__dict__.update(fresh.__dict__)

    @classmethod
    def from_sequences(
        cls,
        cfg: AugmentConfig,
        sequences: Sequences,
        train_users: np.ndarray,
        num_items: int,
        mask_token: int | None = None,
        item_categories: np.ndarray | None = None,
    ) -> TwoViewTransform:
        """Build the transform, with a co-occurrence table over the train users' histories
        only when ``cfg`` needs one. ``mask_token`` defaults to ``num_items + 1``.
        ``item_categories`` (num_items + 2,) first-listed category codes (-1 = none)
        restrict that table to each item's category when ``cfg.same_category``; without
        them it stays the plain co-occurrence table."""
        cooc = None
        if cfg.needs_cooccurrence:
            cooc = CooccurrenceTable.build(
                sequences,
                train_users,
                num_items=num_items,
                window=cfg.cooc_window,
                top_k=cfg.cooc_top_k,
            )
            if cfg.same_category and item_categories is not None:
                popularity = history_counts(sequences, train_users, num_items)
                cooc = cooc.within_categories(item_categories, popularity, cfg.cooc_top_k)
        return cls(cfg, num_items + 1 if mask_token is None else mask_token, cooc)

    @classmethod
    def for_dataset(
        cls, cfg: AugmentConfig, ds: SequenceDataset, train_users: np.ndarray
    ) -> TwoViewTransform:
        """:meth:`from_sequences` for a dataset: its item categories when
        ``cfg.same_category`` asks for them and it has some."""
        cats = ds.item_categories()[0] if cfg.same_category and ds.has_categories else None
        return cls.from_sequences(cfg, ds.sequences, train_users, ds.num_items,
                                  item_categories=cats)  # fmt: skip

    def view(
        self, seq: np.ndarray, rng: np.random.Generator, times: np.ndarray | None = None
    ) -> np.ndarray:
        """One augmented view of ``seq`` (1-D, item ids >= 1, non-empty). ``times`` (n,)
        the interactions' epoch seconds: with them, and ``augment.session_crop``, ``crop``
        cuts at session boundaries."""
        n = len(seq)
        if n == 0:
            raise ValueError("cannot augment an empty sequence; filter out empty histories")
        max_len = self.cfg.max_len
        if max_len is not None and n > max_len:
            seq = seq[n - max_len :]
            times = None if times is None else times[n - max_len :]
            n = max_len
        ops = self._short_ops if n <= self.cfg.short_len else self._ops
        if not ops:
            return seq.copy()
        if self.cfg.mode == "random":
            ops = (ops[int(rng.random() * len(ops))],)
        out = seq
        for name, op in ops:
            if name == "crop" and times is not None and self.uses_times:
                # crop comes first in a chain: `out` is still aligned with `times`
                cfg = self.cfg
                out = session_crop(out, times, cfg.crop_keep, cfg.session_gap, rng)
            else:
                out = op(out, rng)
        return out  # only insert lengthens a sequence, and it caps to max_len itself

    def __call__(
        self, seq: np.ndarray, rng: np.random.Generator, times: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Two independent views of ``seq`` (``times``: see :meth:`view`)."""
        return self.view(seq, rng, times), self.view(seq, rng, times)
