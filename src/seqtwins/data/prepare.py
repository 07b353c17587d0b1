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
   interactions (and, with ``min_item_users`` in ``drop`` mode, fewer distinct users) until
   none is left to drop. The result is the largest sub-log in which every user and item
   meets its threshold (the k-core is unique: removal order does not matter); with
   ``rare_items: token``, items of the result with fewer than ``min_item_users`` distinct
   users then become one rare-item token;
7. index: items get ``item_idx`` 1..N **in ascending order of their original id** (numeric
   order for integer ids, else lexicographic); user rows are in ascending order of original
   id, or of pseudonym with ``pseudonymize`` (so that row order does not reveal raw ids);
8. split users train / valid / test by a seeded permutation (sizes ``round(frac * U)`` for
   valid and test, the rest train) and mark the held-out future: the last ``holdout`` items,
   shortened so that at least ``min_history`` remain as history;
9. write atomically (:func:`seqtwins.data.finish.finish`); ``meta.json`` holds the options
   (``params``) and what each step dropped (``prepare``).

Steps 2 and 4-8 are public functions of :mod:`seqtwins.data.steps`, step 9 is
:mod:`seqtwins.data.finish`: both paths below run the same code.

How (the result is the same on every path; ``tests/data/test_prepare_stream.py`` and
``test_prepare_outofcore.py`` check that):

- a Parquet log with integer ids grouped by user in ascending id order is streamed batch by
  batch and ordered on the way (:func:`_order_stream`: reading, ordering and coding in one
  pass, on threads, without whole-column copies); anything else is read whole
  (:func:`_order`); the rating threshold is applied after ordering (a row filter commutes
  with a stable sort);
- with ``memory_budget`` set and a CSV / TSV / Parquet log too large for it, the log is
  prepared out of core (:mod:`seqtwins.data.outofcore`), bucket by bucket on disk.

All work on interactions is vectorised (polars / numpy); Python loops run per batch, per
block of users, and per distinct user only for pseudonyms.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from seqtwins.data.dataset import Sequences, check_out, output_lock, shown
from seqtwins.data.finish import Prepared, finish
from seqtwins.data.formats import (
    STREAM_BATCH_ROWS,
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
from seqtwins.data.memory import current_rss
from seqtwins.data.options import PrepareOptions, PrepareSummary
from seqtwins.data.outofcore import prepare_out_of_core
from seqtwins.data.privacy import check_key_source
from seqtwins.data.steps import (
    UserRows,
    check_window,
    chronological_order,
    counts,
    history_bounds,
    item_index,
    kcore,
    kept_item_ids,
    no_users_left,
    rare_summary,
    rare_token_items,
    rating_drops,
    user_order,
    user_steps,
)
from seqtwins.data.update import check_parent
from seqtwins.errors import SeqtwinsError
from seqtwins.files import clean_stale

__all__ = [
    "BYTES_PER_ROW",
    "PrepareOptions",
    "PrepareSummary",
    "check_output",
    "needs_out_of_core",
    "prepare",
]


def prepare(
    input: Path | str, out: Path | str, options: PrepareOptions | None = None
) -> PrepareSummary:
    """Turn the raw log at ``input`` into a canonical dataset directory at ``out``.

    Raises :class:`SeqtwinsError` (and leaves no ``out``) on bad input or settings. The
    process is left as it was found: for the last bit of speed on very large logs, an
    entry point may run it inside :func:`seqtwins.data.memory.tuned_process` (the CLI does).
    """
    options = options or PrepareOptions()
    input, out = Path(input), Path(out)
    check_output(input, out, options)
    with output_lock(out):  # a second prepare / synth into the same --out is refused
        check_output(input, out, options)  # again: another run may have written it meanwhile
        return _prepare(input, out, options)


def _prepare(input: Path, out: Path, options: PrepareOptions) -> PrepareSummary:
    if options.memory_budget is not None and needs_out_of_core(
        input, options.reader, options.memory_budget
    ):
        scan = scan_log(input, options.reader)
        if scan is not None:
            return prepare_out_of_core(scan, out, options)
    t0 = time.perf_counter()
    log, ordered, read_phase = _read_ordered(input, options)
    t1 = time.perf_counter()
    prepared = _build(log, ordered, options)
    del ordered
    return finish(out, prepared, options, {read_phase: t1 - t0}, ("build", t1))


def check_output(input: Path, out: Path, options: PrepareOptions) -> None:
    """Refuse an ``out`` that ``prepare`` may not write (before any work): an existing one
    without ``overwrite``, one that is not a seqtwins dataset, the input itself (or a
    folder holding it), a key file inside it, ``pseudonymize`` without a key. Then remove
    the temporary folders a killed ``prepare`` left beside it (and in ``work_dir``)."""
    if options.pseudonymize:
        for flag, key in (("--key-file", options.key_file), ("--salt-file", options.salt_file)):
            if key is not None and Path(key).resolve().is_relative_to(out.resolve()):
                raise SeqtwinsError(
                    f"{flag} {key} lies inside --out {out}; keep the key apart from the data "
                    "it protects"
                )
        check_key_source(options.key_file, options.salt_file)
    dst = out.resolve()
    reader = options.reader
    for what, path in (("the input", input), ("the --items file", reader.items_file),
                       ("the --users file", reader.users_file)):  # fmt: skip
        if path is not None and Path(path).resolve().is_relative_to(dst):
            raise SeqtwinsError(
                f"--out {shown(out)} would overwrite {what} {shown(path)}; write the dataset "
                "elsewhere"
            )
    check_out(out, options.overwrite)
    if options.update is not None:
        check_parent(Path(options.update), out, options)
    if options.work_dir is not None:
        clean_stale(Path(options.work_dir) / out.name)


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


def _reorder(s: Sequences, perm: np.ndarray) -> Sequences:
    """Put user row ``perm[k]`` at row ``k`` (CSR rows move as whole segments)."""
    lengths = np.diff(s.offsets)[perm]
    offsets = np.zeros(len(perm) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # source index of each output interaction: start of its old row + position in row
    gather = np.repeat(s.offsets[:-1][perm] - offsets[:-1], lengths) + np.arange(
        offsets[-1], dtype=np.int64
    )
    hist = (s.history_end - s.offsets[:-1])[perm]
    return Sequences(
        offsets=offsets,
        items=s.items[gather],
        history_end=offsets[:-1] + hist,
        times=None if s.times is None else s.times[gather],
        ratings=None if s.ratings is None else s.ratings[gather],
    )


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
        order = chronological_order(ucode, len(user_ids), times)
        if order is not None:
            icode = icode[order]
            times = None if times is None else times[order]
            ratings = None if ratings is None else ratings[order]
    return _Ordered(cu, user_ids, icode, item_ids, times, ratings)


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
            for batch in scan.batches(STREAM_BATCH_ROWS):
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


def _build(log: RawLog, ordered: _Ordered, options: PrepareOptions) -> Prepared:
    """Filter and index the chronologically ordered ``ordered`` log."""
    if options.min_rating is not None and ordered.ratings is None:
        raise SeqtwinsError(
            f"--min-rating needs ratings, but {log.source} has none (name the column with "
            "--rating-col)"
        )
    check_window(options, ordered.times is not None, log.source)
    dropped: dict[str, int] = {}
    user_ids, item_ids = ordered.user_ids, ordered.item_ids
    n_users, n_items = len(user_ids), len(item_ids)
    rows = UserRows(ordered.lengths, ordered.icode, ordered.times, ordered.ratings)
    del ordered
    input_counts = {
        "interactions": len(rows.icode),
        "users": n_users + log.empty_users,
        "items": n_items,
    }
    rows = user_steps(rows, n_items, options, dropped)
    dropped["short_users"] += log.empty_users
    if (
        options.min_rating is not None
        and dropped["low_rating_interactions"] == input_counts["interactions"]
    ):
        raise no_users_left(log.source, rating_drops(dropped), options)
    rows, ci = kcore(rows, n_items, options, dropped)
    if len(rows.icode) == 0:
        raise no_users_left(log.source, dropped, options)
    rare = rare_token_items(rows, ci, n_items, options)

    present_u, present_i = rows.cu > 0, ci > 0
    offsets, history_end = history_bounds(rows.cu[present_u], options)
    sequences = Sequences(
        offsets=offsets,
        items=item_index(rows.icode, present_i, rare),
        history_end=history_end,
        times=None if rows.times is None else rows.times.astype(np.int64, copy=False),
        ratings=None if rows.ratings is None else rows.ratings.astype(np.float32, copy=False),
    )
    kept_users = user_ids.filter(pl.Series(present_u))
    order, pseudonyms = user_order(kept_users, options)
    if pseudonyms is not None:
        sequences = _reorder(sequences, order)
        kept_users, pseudonyms = kept_users.gather(order), pseudonyms.gather(order)
    return Prepared(
        log, sequences, kept_item_ids(item_ids, present_i, rare), kept_users, pseudonyms,
        input_counts, dropped, rare_summary(options, ci, dropped, rare),
    )  # fmt: skip
