"""``seqtwins prepare``: a raw interaction log in, a canonical dataset directory out.

Steps, in this order (each optional one is off by default, so that prepared counts can be
checked against the source):

1. read and validate (:func:`seqtwins.data.formats.read_log`);
2. ``min_rating``: keep interactions with ``rating >= min_rating``;
3. chronological order per user: by (user, time), ties -- and logs without times -- in file
   (line) order;
4. ``dedup``: keep the first (earliest) interaction of each repeated (user, item);
5. ``max_len``: keep each user's most recent ``max_len`` interactions;
6. drop users with fewer than ``min_history + 1`` interactions (counted as ``short_users``),
   then iterative k-core: repeatedly drop users with fewer than
   ``max(min_user_count, min_history + 1)`` and items with fewer than ``min_item_count``
   interactions until none is left to drop. The result is the largest sub-log in which every
   user and item meets its threshold (the k-core is unique: removal order does not matter);
7. index: items get ``item_idx`` 1..N **in ascending order of their original id** (numeric
   order for integer ids, else lexicographic); user rows are in ascending order of original
   id, or of pseudonym with ``pseudonymize`` (so that row order does not reveal raw ids);
8. split users train / valid / test by a seeded permutation (sizes ``round(frac * U)`` for
   valid and test, the rest train) and mark the held-out future: the last ``holdout`` items,
   shortened so that at least ``min_history`` remain as history (DESIGN.md);
9. write atomically with :func:`seqtwins.data.dataset.write_dataset`; ``meta.json`` holds the
   options (``params``) and what each step dropped (``prepare``).

How (the result is the same on every path; ``tests/data/test_prepare_stream.py`` and
``test_prepare_outofcore.py`` check that):

- a Parquet log with integer ids grouped by user in ascending id order is streamed batch by
  batch and ordered on the way (:func:`_order_stream`: reading, ordering and coding in one
  pass, on threads, without whole-column copies); anything else is read whole
  (:func:`_order`); the rating threshold is applied after ordering (a row filter commutes
  with a stable sort);
- with ``memory_budget`` set and a CSV / TSV / Parquet log too large for it, the log is
  prepared out of core (:mod:`seqtwins.data.outofcore`), reusing the per-user steps
  (:func:`_user_steps`), the k-core rounds and the indexing below.

All work on interactions is vectorised (polars / numpy); Python loops run per batch, per
block of users, and per distinct user only for pseudonyms.
"""

from __future__ import annotations

import ctypes
import gc
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from seqtwins.data.dataset import SPLITS, Sequences, write_dataset
from seqtwins.data.formats import (
    STREAM_FORMATS,
    LogScan,
    RawLog,
    ReaderOptions,
    check_overlap,
    detect_format,
    estimate_rows,
    read_log,
    scan_log,
)
from seqtwins.data.memory import MIN_BUDGET, current_rss, format_size, peak_rss
from seqtwins.data.privacy import load_or_create_key, pseudonymize
from seqtwins.errors import SeqtwinsError


@dataclass(frozen=True)
class PrepareOptions:
    """Everything ``prepare`` does besides reading; defaults filter nothing."""

    reader: ReaderOptions = field(default_factory=ReaderOptions)
    """How to read the input (format, column names, item/user tables, bad rows)."""
    dedup: bool = False
    """Keep only the first (earliest) interaction of each repeated (user, item) pair."""
    min_rating: float | None = None
    """Keep interactions with ``rating >= min_rating``; ``None`` keeps all."""
    min_user_count: int = 1
    """k-core: every kept user has at least this many interactions (1 = no user k-core)."""
    min_item_count: int = 1
    """k-core: every kept item has at least this many interactions (1 = no item k-core)."""
    max_len: int | None = None
    """Keep each user's most recent ``max_len`` interactions; ``None`` keeps all."""
    holdout: int = 5
    """Size of the held-out future window (the last items of each user; DESIGN.md: k=5)."""
    min_history: int = 3
    """The future window is shortened so that at least this many items remain as history;
    users with fewer than ``min_history + 1`` interactions are dropped and counted."""
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Fractions of users in train / valid / test (sum 1)."""
    split_seed: int = 0
    """Seed of the user permutation that assigns splits."""
    pseudonymize: bool = False
    """Replace raw user ids by HMAC-SHA256 pseudonyms keyed by ``salt_file``."""
    salt_file: Path | None = None
    """Key file for ``pseudonymize``; a random key is written there if it does not exist."""
    overwrite: bool = False
    """Replace an existing output directory (atomically)."""
    memory_budget: int | None = None
    """Bytes of memory ``prepare`` may use (``--memory-budget 4GB``); ``None``: no bound.
    A CSV / TSV / Parquet log whose whole-log processing would need more (about
    :data:`BYTES_PER_ROW` per interaction) is prepared out of core, bucket by bucket on disk
    (:mod:`seqtwins.data.outofcore`), with the same result. Other formats are read whole."""
    work_dir: Path | None = None
    """Folder for the out-of-core buckets (default: a temporary folder beside ``out``, so
    that the finished arrays are moved into place, not copied)."""

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise SeqtwinsError(msg)

        need(self.min_user_count >= 1, f"--min-user-count={self.min_user_count} must be >= 1")
        need(self.min_item_count >= 1, f"--min-item-count={self.min_item_count} must be >= 1")
        need(self.holdout >= 0, f"--holdout={self.holdout} must be >= 0")
        need(self.min_history >= 1, f"--min-history={self.min_history} must be >= 1")
        if self.max_len is not None:
            need(
                self.max_len >= self.min_history + 1,
                f"--max-len={self.max_len} must be >= --min-history + 1 = "
                f"{self.min_history + 1} (shorter users are dropped)",
            )
        need(
            len(self.split) == 3
            and all(f >= 0 for f in self.split)
            and abs(sum(self.split) - 1) < 1e-6,
            f"--split={','.join(map(str, self.split))} must be three fractions >= 0 "
            "(train,valid,test) that sum to 1",
        )
        if self.memory_budget is not None:
            need(
                self.memory_budget >= MIN_BUDGET,
                f"--memory-budget={format_size(self.memory_budget)} is below the minimum of "
                f"{format_size(MIN_BUDGET)}",
            )
        need(
            not self.pseudonymize or self.salt_file is not None,
            "--pseudonymize needs --salt-file FILE (its key is created if the file is absent; "
            "keep it secret and reuse it for the same pseudonyms)",
        )

    def to_params(self) -> dict[str, Any]:
        """JSON-able parameters for ``meta.json`` (paths as strings, no key material)."""
        out = asdict(self)
        reader = {k: (str(v) if isinstance(v, Path) else v) for k, v in out.pop("reader").items()}
        out.pop("salt_file")
        out.pop("overwrite")
        out.pop("memory_budget")  # resources, not data: the same dataset either way
        out.pop("work_dir")
        out["split"] = list(self.split)
        return {**out, "reader": reader}


@dataclass(frozen=True)
class PrepareSummary:
    """What ``prepare`` wrote (counts as in ``meta.json``)."""

    out: Path
    format: str
    num_users: int
    num_items: int
    num_interactions: int
    splits: dict[str, int]
    fields: dict[str, Any]
    dropped: dict[str, int]
    rows_read: int
    bad_rows_skipped: int
    peak_rss: int = 0
    """The highest resident memory of the process up to the end of ``prepare`` (bytes)."""
    mode: str = "in memory"
    """``in memory`` or ``out of core (B buckets)``."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds per phase: ``read`` then ``build`` (order, filter, index) and ``write``;
    a log streamed in one pass reports ``read+order`` (read and ordered together), then
    ``build`` (filter, index) and ``write``."""

    def lines(self) -> list[str]:
        """Human-readable report lines (what the CLI prints)."""
        splits = " / ".join(f"{self.splits[s]:,} {s}" for s in SPLITS)
        have = [k for k in ("times", "ratings", "categories") if self.fields.get(k)]
        attrs = self.fields.get("user_attributes") or []
        if attrs:
            have.append("user attributes " + ", ".join(attrs))
        lines = [
            f"prepared {self.out} ({self.format}): {self.num_users:,} users, "
            f"{self.num_items:,} items, {self.num_interactions:,} interactions",
            f"  users: {splits}; fields: {', '.join(have) or 'none beyond items'}",
        ]
        drops = [f"{k.replace('_', ' ')} {v:,}" for k, v in self.dropped.items() if v]
        if self.bad_rows_skipped:
            drops.insert(0, f"bad rows skipped {self.bad_rows_skipped:,}")
        lines.append("  dropped: " + ("; ".join(drops) if drops else "nothing"))
        took = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        lines.append(
            f"  {self.mode}; peak memory {format_size(self.peak_rss)}"
            + (f"; {took}" if took else "")
        )
        return lines


def prepare(
    input: Path | str, out: Path | str, options: PrepareOptions | None = None
) -> PrepareSummary:
    """Turn the raw log at ``input`` into a canonical dataset directory at ``out``.

    Raises :class:`SeqtwinsError` (and leaves no ``out``) on bad input or settings.
    """
    options = options or PrepareOptions()
    input, out = Path(input), Path(out)
    if out.exists() and not options.overwrite:
        raise SeqtwinsError(f"{out} already exists; choose another --out or pass --overwrite")
    if options.pseudonymize and options.salt_file is not None:
        salt = Path(options.salt_file).resolve()
        if salt.is_relative_to(out.resolve()):
            raise SeqtwinsError(
                f"--salt-file {options.salt_file} lies inside --out {out}; keep the key apart "
                "from the data it protects"
            )
    _tune_malloc()
    gc_was_on = gc.isenabled()
    gc.disable()  # no reference cycles here; the collector would only walk the heap
    try:
        return _prepare(input, out, options)
    finally:
        if gc_was_on:
            gc.enable()


def _prepare(input: Path, out: Path, options: PrepareOptions) -> PrepareSummary:
    if options.memory_budget is not None and needs_out_of_core(
        input, options.reader, options.memory_budget
    ):
        scan = scan_log(input, options.reader)
        if scan is not None:
            from seqtwins.data.outofcore import prepare_out_of_core

            return prepare_out_of_core(scan, out, options)
    t0 = time.perf_counter()
    log, ordered, read_phase = _read_ordered(input, options)
    t1 = time.perf_counter()
    built = _build(log, ordered, options)
    del ordered
    users = built.users
    if options.pseudonymize:
        assert options.salt_file is not None
        key = load_or_create_key(Path(options.salt_file))
        pseudo = pseudonymize(users["user_id"].cast(pl.String).to_list(), key)
        pseudo_s = pl.Series("user_id", pseudo, dtype=pl.String)
        perm = pseudo_s.arg_sort().to_numpy().astype(np.int64)  # pseudonyms are distinct
        built.reorder(perm)
        built.users = built.users.with_columns(pseudo_s.gather(perm))
    split = assign_splits(built.sequences.num_users, options.split, options.split_seed)
    users = built.users.with_columns(pl.Series("split", split, dtype=pl.String))
    stats = prepare_stats(
        log, built.input_counts, built.dropped, built.sequences.times is not None, options
    )
    t2 = time.perf_counter()
    write_dataset(
        out,
        sequences=built.sequences,
        items=built.items,
        users=users,
        source=f"{log.format}:{log.source}",
        params={"format": log.format, **options.to_params()},
        extra_meta={"prepare": stats},
        overwrite=options.overwrite,
    )
    t3 = time.perf_counter()
    return PrepareSummary(
        out=out,
        format=log.format,
        num_users=built.sequences.num_users,
        num_items=built.items.height,
        num_interactions=built.sequences.num_interactions,
        splits={s: int(np.sum(split == s)) for s in SPLITS},
        fields={
            "times": built.sequences.times is not None,
            "ratings": built.sequences.ratings is not None,
            "categories": "categories" in built.items.columns,
            "user_attributes": [c for c in users.columns if c not in ("user_id", "split")],
        },
        dropped=built.dropped,
        rows_read=log.rows_read,
        bad_rows_skipped=log.bad_rows_skipped,
        peak_rss=peak_rss(),
        seconds={read_phase: t1 - t0, "build": t2 - t1, "write": t3 - t2},
    )


BYTES_PER_ROW = 100
"""Peak bytes per interaction of the whole-log path, rounded up (measured: ~35 streamed,
~80 read whole; ``benchmarks/results/prepare.md``). A budget below ``rows * BYTES_PER_ROW``
plus what the process already holds sends a CSV / TSV / Parquet log out of core."""


def needs_out_of_core(input: Path, reader: ReaderOptions, budget: int) -> bool:
    """Whether preparing ``input`` whole would exceed ``budget`` bytes; ``False`` for the
    formats that are always read whole. Rows are estimated before anything is parsed
    (:func:`seqtwins.data.formats.estimate_rows`)."""
    fmt = detect_format(input) if reader.format == "auto" else reader.format
    if fmt not in STREAM_FORMATS or input.name.lower().endswith(".gz"):
        return False
    rows = estimate_rows(input, fmt)
    return current_rss() + rows * BYTES_PER_ROW > budget


def prepare_stats(
    log: RawLog,
    input_counts: dict[str, int],
    dropped: dict[str, int],
    has_times: bool,
    options: PrepareOptions,
) -> dict[str, Any]:
    """The ``prepare`` section of ``meta.json``: what was read and what each step dropped."""
    return {
        "rows_read": log.rows_read,
        "bad_rows_skipped": log.bad_rows_skipped,
        "input": input_counts,
        "dropped": dropped,
        "item_order": "item_idx 1..N in ascending order of original item id",
        "user_order": (
            "ascending pseudonym" if options.pseudonymize else "ascending original user id"
        ),
        "order": (
            "per user by time, ties in file order" if has_times else "per user in file (line) order"
        ),
        "pseudonymized": options.pseudonymize,
    }


# --- the transformation ------------------------------------------------------------------


def _read_ordered(input: Path, options: PrepareOptions) -> tuple[RawLog, _Ordered, str]:
    """Read ``input`` and put it in chronological order per user; the name of the phase.

    Parquet input grouped by integer user id (the usual export) is streamed batch by batch
    and ordered on the way (:func:`_order_stream`); anything else is read whole.
    """
    scan = None
    fmt = options.reader.format
    if fmt == "parquet" or (fmt == "auto" and detect_format(input) == "parquet"):
        # integer id columns only: text ids would need a pass of their own first
        scan = scan_log(input, options.reader, id_pass=False)
    if scan is not None:
        ordered = _order_stream(scan)
        if ordered is not None:
            log = RawLog(
                pl.DataFrame(), scan.format, scan.source, scan.items, scan.users,
                rows_read=scan.rows_read, bad_rows_skipped=scan.bad_rows_skipped,
            )  # fmt: skip
            if log.items is not None:
                check_overlap(log.items["item_id"], ordered.item_ids, "item", log)
            if log.users is not None:
                check_overlap(log.users["user_id"], ordered.user_ids, "user", log)
            return log, ordered, "read+order"
    log = read_log(input, options.reader)
    return log, _order(log), "read"


@dataclass
class _Built:
    sequences: Sequences
    items: pl.DataFrame
    users: pl.DataFrame
    input_counts: dict[str, int]
    dropped: dict[str, int]

    def reorder(self, perm: np.ndarray) -> None:
        """Put user row ``perm[k]`` at row ``k`` (CSR rows move as whole segments)."""
        s = self.sequences
        lengths = np.diff(s.offsets)[perm]
        offsets = np.zeros(len(perm) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # source index of each output interaction: start of its old row + position in row
        gather = np.repeat(s.offsets[:-1][perm] - offsets[:-1], lengths) + np.arange(
            offsets[-1], dtype=np.int64
        )
        hist = (s.history_end - s.offsets[:-1])[perm]
        self.sequences = Sequences(
            offsets=offsets,
            items=s.items[gather],
            history_end=offsets[:-1] + hist,
            times=None if s.times is None else s.times[gather],
            ratings=None if s.ratings is None else s.ratings[gather],
        )
        self.users = self.users[perm]


def _id_lut(ids: pl.Series) -> tuple[np.ndarray, int, pl.Series] | None:
    """A lookup table ``id - base -> code`` (codes 0..K-1 in ascending id order), ``base``
    and the K distinct ids, for integer ids of a moderate range; ``None`` otherwise.

    O(n + range) and chunk by chunk: no sort and no copy of the n ids.
    """
    if not ids.dtype.is_integer() or ids.len() == 0:
        return None
    lo, hi = int(ids.min()), int(ids.max())  # type: ignore[arg-type]
    bound = max(ids.len(), 1 << 24)
    if hi - lo >= bound:
        return None
    base = 0 if lo >= 0 and hi < bound else lo  # ids index the table directly when they can
    present = np.zeros(hi - base + 1, dtype=bool)
    for chunk in _Column.of(ids).chunks:
        present[chunk - base if base else chunk] = True
    uniq = np.flatnonzero(present)
    lut = np.cumsum(present, dtype=np.int32 if len(uniq) < 2**31 else np.int64)
    np.subtract(lut, 1, out=lut)
    return lut, base, pl.Series(ids.name, uniq + base).cast(ids.dtype)


def _dense_codes(ids: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """Codes 0..K-1 in ascending id order, and the K distinct ids (ascending)."""
    table = _id_lut(ids)
    if table is not None:
        lut, base, uniq_ids = table
        raw = ids.to_numpy()
        return lut[raw - base if base else raw], uniq_ids
    uniq = ids.unique().sort()
    codes = (
        ids.to_frame("id")
        .join(
            pl.DataFrame({"id": uniq, "code": pl.int_range(len(uniq), eager=True)}),
            on="id",
            how="left",
            maintain_order="left",
        )["code"]
        .to_numpy()
    )
    return _narrow(codes, len(uniq)), uniq


def _sorted_runs(ids: pl.Series) -> tuple[np.ndarray, pl.Series] | None:
    """Run lengths and ids when integer ``ids`` are non-decreasing (rows grouped by user in
    ascending id order, as most exported logs are); ``None`` otherwise.

    Then the dense code of a row is its run number: no per-row code array is needed.
    """
    if not ids.dtype.is_integer() or ids.len() == 0:
        return None
    starts, firsts = [np.zeros(1, dtype=np.int64)], []
    offset, last = 0, None
    for chunk in _Column.of(ids).chunks:
        if not bool(np.all(chunk[1:] >= chunk[:-1])) or (last is not None and chunk[0] < last):
            return None
        inner = np.flatnonzero(chunk[1:] != chunk[:-1]) + 1
        if last is not None and chunk[0] != last:
            starts.append(np.array([offset], dtype=np.int64))
        starts.append(inner + offset)
        firsts.append(chunk[:1] if last is None or chunk[0] != last else chunk[:0])
        firsts.append(chunk[inner])
        offset, last = offset + len(chunk), chunk[-1]
    bounds = np.concatenate([*starts, [offset]])
    return np.diff(bounds), pl.Series(ids.name, np.concatenate(firsts)).cast(ids.dtype)


class _Column:
    """A column as a list of numpy arrays (polars reads a file into many chunks), so that
    blocks of rows can be taken without first copying the whole column into one array."""

    def __init__(self, chunks: list[np.ndarray]) -> None:
        self.dtype = chunks[0].dtype if chunks else np.dtype(np.int64)
        self.chunks = [c for c in chunks if len(c)]
        self.bounds = np.zeros(len(self.chunks) + 1, dtype=np.int64)
        np.cumsum([len(c) for c in self.chunks], out=self.bounds[1:])

    @classmethod
    def of(cls, s: pl.Series) -> _Column:
        """The chunks of ``s`` (zero-copy, read-only views for numeric data without nulls)."""
        return cls([c.to_numpy() for c in s.get_chunks()])

    def min(self) -> int:
        return min(int(c.min()) for c in self.chunks)

    def max(self) -> int:
        return max(int(c.max()) for c in self.chunks)

    def rows(self, a: int, b: int) -> np.ndarray:
        """Rows ``a:b``: a view inside one chunk, else a copy of just those rows."""
        i = int(np.searchsorted(self.bounds, a, side="right")) - 1
        j = int(np.searchsorted(self.bounds, b, side="left"))
        if j - i <= 1:
            lo = int(self.bounds[i])
            return self.chunks[i][a - lo : b - lo]
        parts = [
            self.chunks[k][max(a, int(self.bounds[k])) - int(self.bounds[k]) :
                           min(b, int(self.bounds[k + 1])) - int(self.bounds[k])]
            for k in range(i, j)
        ]  # fmt: skip
        return np.concatenate(parts)


def _narrow(codes: np.ndarray, k: int) -> np.ndarray:
    return codes.astype(np.int32 if k < 2**31 else np.int64, copy=False)


def _chronological_order(
    ucode: np.ndarray, n_users: int, times: np.ndarray | None
) -> np.ndarray | None:
    """Permutation that sorts by (user code, time), ties in file order; ``None`` if sorted.

    One int64 key ``user << bits | (time - min)`` when it fits (it does for real logs);
    numpy's stable timsort when rows are already grouped by user (it exploits the runs),
    else polars' parallel sort with the row number as last key (unique keys, so any sort
    is stable).
    """
    n = len(ucode)
    if n == 0:
        return None
    key: np.ndarray | None
    if times is None:
        key = ucode.astype(np.int64)
    else:
        tmin, tmax = int(times.min()), int(times.max())
        tbits = max(tmax - tmin, 1).bit_length()
        ubits = max(n_users - 1, 1).bit_length()
        key = None
        if ubits + tbits <= 62:
            key = ucode.astype(np.int64)
            key <<= tbits
            key -= tmin  # in place: key = (user << tbits) + (time - tmin), no temporaries
            key += times
    if key is not None:
        if bool(np.all(key[1:] >= key[:-1])):
            return None
        if bool(np.all(ucode[1:] >= ucode[:-1])):
            return np.argsort(key, kind="stable")
        frame = pl.DataFrame({"k": key})
        return frame.with_row_index("r").sort(["k", "r"])["r"].to_numpy().astype(np.int64)
    assert times is not None
    frame = pl.DataFrame({"u": ucode, "t": times})
    return frame.with_row_index("r").sort(["u", "t", "r"])["r"].to_numpy().astype(np.int64)


def counts(codes: np.ndarray, n: int) -> np.ndarray:
    """``np.bincount(codes, minlength=n)`` block by block: bincount casts int32 codes to
    int64 first, a temporary as large as the input (fresh pages: costly) that blocks avoid."""
    step = 1 << 20
    if len(codes) <= step:
        return np.bincount(codes, minlength=n)
    out = np.zeros(n, dtype=np.int64)
    for a in range(0, len(codes), step):
        out += np.bincount(codes[a : a + step], minlength=n)
    return out


def _threads() -> int:
    """Worker threads for the parallel steps: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


_BLOCK_ROWS = 1 << 17
"""Rows per block of the within-user sort: its temporaries (1 MiB each) are small enough for
the allocator to reuse them from block to block, so fresh pages (costly in a VM) are not
faulted in again and again, and a block's key fits in the CPU's caches."""


def _chronological_columns(
    lengths: np.ndarray,
    times: _Column | None,
    items: _Column,
    item_lut: tuple[np.ndarray, int] | None,
    ratings: _Column | None,
    out: tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Item codes, times and ratings with each user's rows stably sorted by time.

    ``out``: the three destination arrays (rows ``0..n``), else new ones; ``threads``:
    at most this many (default: the CPUs).

    Rows must be grouped by user; ``lengths`` are the users' row counts in row order.
    ``item_lut`` (table, base) maps raw item ids to codes on the way; ``None``: ``items``
    are codes already. The rows are cut into blocks of whole users, handled on threads
    (numpy's argsort and take release the GIL): per block one int64 key ``local user <<
    bits | (time - min)`` sorted by numpy's stable timsort (it exploits the runs of an
    almost sorted log), or a stable lexsort when that key would not fit in 63 bits.
    """
    n = int(lengths.sum())
    starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    tmin, tbits = 0, 0
    if times is not None and n:
        tmin = times.min()
        tbits = max(times.max() - tmin, 1).bit_length()
    cuts = np.searchsorted(starts, np.arange(_BLOCK_ROWS, n, _BLOCK_ROWS), side="left")
    user_bounds = np.unique(np.concatenate([[0], cuts, [len(lengths)]]))
    blocks = [(int(a), int(b)) for a, b in zip(user_bounds[:-1], user_bounds[1:], strict=True)]
    if out is not None:
        out_items, out_times, out_ratings = out
    else:
        code_dtype = item_lut[0].dtype if item_lut is not None else items.dtype
        out_items = np.empty(n, dtype=code_dtype)
        out_times = None if times is None else np.empty(n, dtype=np.int64)
        out_ratings = None if ratings is None else np.empty(n, dtype=np.float32)

    def run(block: tuple[int, int]) -> None:
        ua, ub = block
        a, b = int(starts[ua]), int(starts[ub])
        order = None
        if times is not None and out_times is not None:
            t = times.rows(a, b)
            local = np.repeat(np.arange(ub - ua, dtype=np.int64), lengths[ua:ub])
            if (ub - ua - 1).bit_length() + tbits > 62:
                order = np.lexsort((t, local))  # stable
            else:
                local <<= tbits
                local -= tmin  # in place: key = (user << tbits) + (time - tmin)
                local += t
                if not bool(np.all(local[1:] >= local[:-1])):
                    order = np.argsort(local, kind="stable")
            del local
            # mode="clip": no buffered bounds check (order is a permutation of the block)
            if order is None:
                out_times[a:b] = t
            else:
                np.take(t, order, out=out_times[a:b], mode="clip")
        raw = items.rows(a, b)
        if order is not None:
            raw = np.take(raw, order, mode="clip")
        if item_lut is None:
            out_items[a:b] = raw
        else:
            lut, base = item_lut
            np.take(lut, raw - base if base else raw, out=out_items[a:b], mode="clip")
        if ratings is not None and out_ratings is not None:
            r = ratings.rows(a, b)
            if order is None:
                out_ratings[a:b] = r
            else:
                np.take(r, order, out=out_ratings[a:b], mode="clip")

    workers = min(threads or _threads(), len(blocks))
    if workers <= 1:
        for block in blocks:
            run(block)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, blocks))
    return out_items, out_times, out_ratings


def _zero_left(log: RawLog, dropped: dict[str, int], options: PrepareOptions) -> SeqtwinsError:
    what = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in dropped.items() if v)
    return SeqtwinsError(
        f"no users left after filtering {log.source} (dropped: {what or 'nothing'}); relax "
        f"--min-rating / --min-user-count / --min-item-count / --min-history "
        f"(now {options.min_rating} / {options.min_user_count} / {options.min_item_count} / "
        f"{options.min_history})"
    )


@dataclass
class _Ordered:
    """A log as arrays in chronological order per user (users in ascending id order)."""

    lengths: np.ndarray
    """Rows per user code (code k = the k-th smallest user id)."""
    user_ids: pl.Series
    icode: np.ndarray
    """Item code per row (code k = the k-th smallest item id)."""
    item_ids: pl.Series
    times: np.ndarray | None
    ratings: np.ndarray | None


def _order(log: RawLog) -> _Ordered:
    """Codes and chronological order of an in-memory log (its frame is released: memory)."""
    df = log.interactions
    log.interactions = df.clear()  # keep the schema, drop the rows: only arrays stay alive
    has_time, has_rating = "time" in df.columns, "rating" in df.columns
    runs = _sorted_runs(df["user"])
    lut = _id_lut(df["item"]) if runs is not None else None
    if runs is not None and lut is not None:
        # the usual export (grouped by user in id order, integer items): codes and order in
        # one pass over blocks of the columns as polars read them (no whole-column copies)
        cu, user_ids = runs
        item_ids = lut[2]
        icode, times, ratings = _chronological_columns(
            cu,
            _Column.of(df["time"]) if has_time else None,
            _Column.of(df["item"]),
            lut[:2],
            _Column.of(df["rating"]) if has_rating else None,
        )
        return _Ordered(cu, user_ids, icode, item_ids, times, ratings)
    ucode = np.empty(0, dtype=np.int32)
    if runs is not None:
        cu, user_ids = runs
    else:
        ucode, user_ids = _dense_codes(df["user"])
        cu = counts(ucode, len(user_ids))
    icode, item_ids = _dense_codes(df["item"])
    times = df["time"].to_numpy() if has_time else None
    ratings = df["rating"].to_numpy() if has_rating else None
    del df
    if runs is not None or bool(np.all(ucode[1:] >= ucode[:-1])):  # grouped by user
        if times is not None:
            icode, times, ratings = _chronological_columns(
                cu,
                _Column([times]),
                _Column([icode]),
                None,
                None if ratings is None else _Column([ratings]),
            )
    else:
        order = _chronological_order(ucode, len(user_ids), times)
        if order is not None:
            icode = icode[order]
            times = None if times is None else times[order]
            ratings = None if ratings is None else ratings[order]
    return _Ordered(cu, user_ids, icode, item_ids, times, ratings)


_STREAM_BATCH_ROWS: int | None = 1 << 19
"""Rows per streamed batch (``None``: polars' choice, about a row group). Fewer, larger
batches cost less Python and polars overhead per row (measured at 20M rows: 512k-row batches
used ~10% less CPU than polars' ~120k)."""
_ITEM_INTS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)


class _NotGrouped(Exception):
    """The streamed log is not grouped by user in ascending id order."""


def _order_stream(scan: LogScan) -> _Ordered | None:
    """Codes and chronological order of a log read batch by batch, in one pass, for a log
    grouped by integer user id in ascending order (as exports usually are); ``None`` as
    soon as a batch shows that it is not (then read it whole with :func:`_order`).

    A user whose rows continue in the next batch is carried over, so that each piece holds
    whole users. Pieces are ordered on worker threads while polars decodes the next
    batches, straight into the output arrays: no whole-log frame and no whole-column copy
    (fewer fresh pages: on a VM, page faults cost as much as the sort).
    """
    cap = scan.num_rows or 0
    store = _Store(cap)
    lengths_parts: dict[int, np.ndarray] = {}
    users_parts: dict[int, np.ndarray] = {}
    user_dtype: pl.DataType = pl.Int64()
    carry: pl.DataFrame | None = None
    last_user: int | None = None  # the last user of the pieces handed on
    pos, k = 0, 0

    def order_piece(k: int, frame: pl.DataFrame, dest: tuple[np.ndarray, ...]) -> None:
        runs = _sorted_runs(frame["user"])
        if runs is None:
            raise _NotGrouped
        lengths, ids = runs
        _chronological_columns(
            lengths,
            _Column.of(frame["time"]) if "time" in frame.columns else None,
            _Column.of(frame["item"]),
            None,
            _Column.of(frame["rating"]) if "rating" in frame.columns else None,
            out=(
                dest[0],
                dest[1] if "time" in frame.columns else None,
                dest[-1] if "rating" in frame.columns else None,
            ),
            threads=1,
        )
        lengths_parts[k] = lengths
        users_parts[k] = ids.to_numpy()

    workers = _threads()
    pending: list[Future[None]] = []

    def drain() -> None:
        """Wait for every piece in flight (they write into the store's arrays)."""
        for f in pending:
            f.result()
        pending.clear()

    with ThreadPoolExecutor(workers) as pool:

        def hand_on(frame: pl.DataFrame) -> None:
            nonlocal pos, k, last_user
            first, last = frame["user"][0], frame["user"][-1]
            if last_user is not None and first <= last_user:
                raise _NotGrouped
            last_user = last
            dest = store.slices(pos, frame, drain)
            pending.append(pool.submit(order_piece, k, frame, dest))
            pos, k = pos + frame.height, k + 1
            while len(pending) > 2 * workers:  # bounded memory: a few batches in flight
                pending.pop(0).result()

        try:
            for batch in scan.batches(_STREAM_BATCH_ROWS):
                user_dtype = batch["user"].dtype
                if not user_dtype.is_integer() or batch["item"].dtype not in _ITEM_INTS:
                    return None
                frame = batch if carry is None else pl.concat([carry, batch])
                # the last user may continue in the next batch: hold its rows back (in an
                # unsorted frame this cut lands anywhere; the checks then find the disorder)
                tail = int(frame["user"].search_sorted(frame["user"][-1], side="left"))
                carry = frame.slice(tail)
                if tail:
                    hand_on(frame.slice(0, tail))
            if carry is not None and carry.height:
                hand_on(carry)
            for f in pending:
                f.result()
        except _NotGrouped:
            for f in pending:
                f.cancel()
            return None
    if pos == 0:
        return None
    raw_items, times, ratings = store.finish(pos)
    icode, item_ids = _codes_in_place(raw_items)
    order = sorted(lengths_parts)
    lengths = np.concatenate([lengths_parts[i] for i in order])
    users = np.concatenate([users_parts[i] for i in order])
    user_ids = pl.Series("user", users).cast(user_dtype)
    return _Ordered(lengths, user_ids, icode, item_ids, times, ratings)


class _Store:
    """Growable output arrays (item ids, [times], [ratings]) filled piece by piece.

    Raw item ids are kept as int32 while they fit (half the memory of int64), then int64.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.arrays: list[np.ndarray] | None = None
        self.has_time = self.has_rating = False

    def slices(
        self, pos: int, frame: pl.DataFrame, drain: Callable[[], None]
    ) -> tuple[np.ndarray, ...]:
        """Destination views for the ``frame.height`` rows starting at ``pos``.

        Widening or growing the arrays copies them: ``drain`` is called first, so that no
        earlier piece is still being written into the old ones (its rows would be lost)."""
        n = frame.height
        items = frame["item"]
        wide = bool(items.min() < -(2**31) or items.max() >= 2**31)  # type: ignore[operator]
        if self.arrays is None:
            self.has_time, self.has_rating = "time" in frame.columns, "rating" in frame.columns
            cap = max(self.capacity, pos + n, 1 << 16)
            self.arrays = [np.empty(cap, dtype=np.int64 if wide else np.int32)]
            if self.has_time:
                self.arrays.append(np.empty(cap, dtype=np.int64))
            if self.has_rating:
                self.arrays.append(np.empty(cap, dtype=np.float32))
        if wide and self.arrays[0].dtype != np.int64:
            drain()
            self.arrays[0] = self.arrays[0].astype(np.int64)
        if pos + n > len(self.arrays[0]):  # unknown size (or more than the metadata said)
            drain()
            cap = max(2 * len(self.arrays[0]), pos + n)
            grown = []
            for arr in self.arrays:
                new = np.empty(cap, dtype=arr.dtype)
                new[:pos] = arr[:pos]
                grown.append(new)
            self.arrays = grown
        return tuple(arr[pos : pos + n] for arr in self.arrays)

    def finish(self, n: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The first ``n`` rows: item ids, times, ratings (``None`` where absent)."""
        assert self.arrays is not None
        arrs = iter(a[:n] for a in self.arrays)
        items = next(arrs)
        times = next(arrs) if self.has_time else None
        ratings = next(arrs) if self.has_rating else None
        return items, times, ratings


def _codes_in_place(raw: np.ndarray) -> tuple[np.ndarray, pl.Series]:
    """Dense codes (ascending id order) of integer ids, written over ``raw`` when a lookup
    table applies (block by block: no second array of n codes), and the distinct ids."""
    s = pl.Series("item", raw)  # zero-copy view of numpy data
    table = _id_lut(s)
    if table is None or raw.dtype != table[0].dtype:
        return _dense_codes(s)
    lut, base, ids = table
    for a in range(0, len(raw), _BLOCK_ROWS):
        block = raw[a : a + _BLOCK_ROWS]
        block[:] = lut[block - base if base else block]
    return raw, ids


_MALLOC_TUNED = False


def _tune_malloc() -> None:
    """Keep glibc from returning freed memory to the OS between batches (once a process).

    Batch by batch, the same few MiB are allocated and freed thousands of times; with
    glibc's defaults each block is mmapped fresh or trimmed off the heap, and the page
    faults that refill it cost as much as the work itself on a VM (measured: 300k faults
    and 2 s of system time for 20M rows, 50-65k and 1 s with this). The thresholds are
    glibc's own maxima for its dynamic tuning (mmap threshold 32 MiB), trim at 128 MiB.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 128 << 20)


@dataclass
class _UserRows:
    """Rows of whole users, sorted by user code then time: rows per user code and the row
    arrays (item code, time, rating)."""

    cu: np.ndarray
    icode: np.ndarray
    times: np.ndarray | None
    ratings: np.ndarray | None

    def user_codes(self) -> np.ndarray:
        """The user code of each row (rows are sorted by user: rebuilt from the counts)."""
        return np.repeat(np.arange(len(self.cu), dtype=np.int32), self.cu)

    def keep(self, mask: np.ndarray, ucode: np.ndarray | None = None) -> _UserRows:
        """The rows where ``mask`` holds (``ucode``: the rows' user codes, if at hand)."""
        kept_u = (self.user_codes() if ucode is None else ucode)[mask]
        return _UserRows(
            counts(kept_u, len(self.cu)),
            self.icode[mask],
            None if self.times is None else self.times[mask],
            None if self.ratings is None else self.ratings[mask],
        )


def _user_steps(
    rows: _UserRows, n_items: int, options: PrepareOptions, dropped: dict[str, int]
) -> _UserRows:
    """The steps that look at one user at a time: rating threshold, de-duplication,
    ``max_len`` and dropping short users (counted into ``dropped``). They need no global
    state, so out of core they run bucket by bucket; counts add up across buckets."""
    n_users = len(rows.cu)
    # filtering by rating commutes with the (stable) chronological order: done after it
    if options.min_rating is not None:
        assert rows.ratings is not None
        keep = rows.ratings >= options.min_rating
        dropped["low_rating_interactions"] = int(len(keep) - np.count_nonzero(keep))
        rows = rows.keep(keep)
        # every user had rows before (codes come from the rows): those without now
        dropped["low_rating_users"] = int(np.count_nonzero(rows.cu == 0))
    if options.dedup:
        ucode = rows.user_codes()
        pair = ucode.astype(np.int64) * n_items + rows.icode
        keep = pl.Series(pair).is_first_distinct().to_numpy()
        dropped["duplicate_interactions"] = int(len(keep) - np.count_nonzero(keep))
        rows = rows.keep(keep, ucode)
    if options.max_len is not None:
        ends = np.cumsum(rows.cu)
        ucode = rows.user_codes()
        # rows of a user are contiguous: position from the end = end of row - 1 - index
        from_end = ends[ucode] - 1 - np.arange(len(rows.icode))
        keep = from_end < options.max_len
        dropped["max_len_interactions"] = int(len(keep) - np.count_nonzero(keep))
        rows = rows.keep(keep, ucode)
    cu = rows.cu
    short = (cu > 0) & (cu < options.min_history + 1)
    dropped["short_users"] = int(short.sum())
    dropped["short_user_interactions"] = int(cu[short].sum())
    if short.any():
        rows = rows.keep(~short[rows.user_codes()])
    assert len(rows.cu) == n_users
    return rows


def _kcore_thresholds(options: PrepareOptions) -> tuple[int, int] | None:
    """(users, items) k-core thresholds, ``None`` when the k-core drops nothing more: users
    >= min_history + 1 hold after :func:`_user_steps`, items >= 1 always."""
    ku = max(options.min_user_count, options.min_history + 1)
    ki = options.min_item_count
    return (ku, ki) if ku > options.min_history + 1 or ki > 1 else None


def _kcore_round(rows: _UserRows, ci: np.ndarray, ku: int, ki: int) -> _UserRows | None:
    """One round of the k-core: drop rows of users with < ``ku`` rows and of items with
    < ``ki`` rows (``ci``: the items' row counts over the whole log); ``None`` if none."""
    ucode = rows.user_codes()
    ok = rows.cu[ucode] >= ku
    if ki > 1:
        ok &= ci[rows.icode] >= ki
    return None if ok.all() else rows.keep(ok, ucode)


def _kcore_dropped(
    dropped: dict[str, int],
    before: tuple[int, int, int],
    after: tuple[int, int, int],
    n_items: int,
) -> None:
    """k-core counts from (users, items, rows) before and after it."""
    dropped["kcore_users"] = before[0] - after[0]
    dropped["kcore_items"] = before[1] - after[1]
    dropped["kcore_interactions"] = before[2] - after[2]
    dropped["items_of_dropped_rows"] = n_items - before[1]


def _item_index(icode: np.ndarray, present_i: np.ndarray) -> np.ndarray:
    """``item_idx`` 1..N over the kept items, in place when possible (int32)."""
    if present_i.all() and icode.dtype == np.int32 and icode.flags.writeable:
        icode += 1  # in place: 1..N (icode is this function's own array)
        return icode
    if present_i.all():
        return (icode + 1).astype(np.int32)
    return np.cumsum(present_i, dtype=np.int32)[icode]  # 1..N over kept items


def _history_end(lengths: np.ndarray, options: PrepareOptions) -> tuple[np.ndarray, np.ndarray]:
    """CSR offsets (U+1) and history ends (U) of users with these lengths."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    hist = np.maximum(lengths - options.holdout, options.min_history)
    hist = np.minimum(hist, lengths)
    return offsets, offsets[:-1] + hist


def _tables(
    log: RawLog,
    item_ids: pl.Series,
    present_i: np.ndarray,
    user_ids: pl.Series,
    present_u: np.ndarray,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The item and user tables of the kept items and users (with the log's side tables)."""
    kept_items = item_ids.filter(pl.Series(present_i)).cast(pl.String)
    items = pl.DataFrame({"item_id": kept_items})
    if log.items is not None:
        items = items.join(log.items, on="item_id", how="left", maintain_order="left")
        if "categories" in items.columns:
            items = items.with_columns(
                pl.col("categories").fill_null(pl.lit([], dtype=pl.List(pl.String)))
            )
    kept_users = user_ids.filter(pl.Series(present_u)).cast(pl.String)
    users = pl.DataFrame({"user_id": kept_users})
    if log.users is not None:
        users = users.join(log.users, on="user_id", how="left", maintain_order="left")
    return items, users


def _build(log: RawLog, ordered: _Ordered, options: PrepareOptions) -> _Built:
    """Filter and index the chronologically ordered ``ordered`` log."""
    if options.min_rating is not None and ordered.ratings is None:
        raise SeqtwinsError(
            f"--min-rating needs ratings, but {log.source} has none (name the column with "
            "--rating-col)"
        )
    dropped: dict[str, int] = {}
    user_ids, item_ids = ordered.user_ids, ordered.item_ids
    n_users, n_items = len(user_ids), len(item_ids)
    rows = _UserRows(ordered.lengths, ordered.icode, ordered.times, ordered.ratings)
    del ordered
    input_counts = {
        "interactions": len(rows.icode),
        "users": n_users + log.empty_users,
        "items": n_items,
    }
    rows = _user_steps(rows, n_items, options, dropped)
    dropped["short_users"] += log.empty_users
    if (
        options.min_rating is not None
        and dropped["low_rating_interactions"] == input_counts["interactions"]
    ):
        raise _zero_left(log, _rating_drops(dropped), options)
    ci = counts(rows.icode, n_items)
    before = (int(np.count_nonzero(rows.cu)), int(np.count_nonzero(ci)), len(rows.icode))
    thresholds = _kcore_thresholds(options)
    while thresholds is not None and len(rows.icode):
        nxt = _kcore_round(rows, ci, *thresholds)
        if nxt is None:
            break
        rows = nxt
        ci = counts(rows.icode, n_items)
    present_u, present_i = rows.cu > 0, ci > 0
    after = (int(np.count_nonzero(present_u)), int(np.count_nonzero(present_i)), len(rows.icode))
    _kcore_dropped(dropped, before, after, n_items)
    if len(rows.icode) == 0:
        raise _zero_left(log, dropped, options)

    offsets, history_end = _history_end(rows.cu[present_u], options)
    sequences = Sequences(
        offsets=offsets,
        items=_item_index(rows.icode, present_i),
        history_end=history_end,
        times=None if rows.times is None else rows.times.astype(np.int64, copy=False),
        ratings=None if rows.ratings is None else rows.ratings.astype(np.float32, copy=False),
    )
    items, users = _tables(log, item_ids, present_i, user_ids, present_u)
    return _Built(sequences, items, users, input_counts, dropped)


def _rating_drops(dropped: dict[str, int]) -> dict[str, int]:
    """What the rating threshold dropped (the message when it drops everything)."""
    return {k: v for k, v in dropped.items() if k.startswith("low_rating")}


def assign_splits(n: int, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """Split name per user row: a seeded permutation cut into train / valid / test.

    ``round(fraction * n)`` users go to valid and to test, the rest to train.
    """
    n_valid = round(fractions[1] * n)
    n_test = min(round(fractions[2] * n), n - n_valid)
    perm = np.random.default_rng(seed).permutation(n)
    code = np.zeros(n, dtype=np.int64)
    code[perm[n - n_valid - n_test : n - n_test]] = 1
    code[perm[n - n_test :]] = 2
    return np.asarray(SPLITS)[code]


_assign_splits = assign_splits  # the name synth.py imports
