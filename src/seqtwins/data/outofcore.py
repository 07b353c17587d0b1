"""``prepare`` for logs larger than memory: partition by user on disk, then bucket by bucket.

The result is the dataset the whole-log path writes for the same input and options (same
arrays, tables, ``meta.json`` counts and content hash); only memory and time differ.

1. **Dictionary pass** -- stream the log once (:class:`~seqtwins.data.formats.LogScan`)
   and collect its distinct users with their row counts and its distinct items: arrays of
   size ``n_users`` / ``n_items``, small next to the log. Users are ranked in their output
   order (ascending id, or ascending pseudonym with ``pseudonymize``), items coded in
   ascending id order, as the whole-log path does.
2. **Plan** -- cut the ranked users into B buckets of consecutive ranks holding about the
   same number of rows, as many rows as the memory budget allows per bucket
   (:data:`BUCKET_BYTES_PER_ROW`). Every bucket holds whole users, so each user's order,
   de-duplication, ``max_len``, held-out window and short-user check are local to it.
3. **Partition pass** -- stream the log again; each row becomes a 24-byte record (user
   rank within its bucket, item code, time, rating) appended to its bucket's file, in
   file order (so ties keep their file order).
4. **Bucket pass** -- per bucket: load it, sort each user's rows by time (stable), run the
   per-user steps (:func:`seqtwins.data.steps.user_steps`), save the result, count
   rows per item.
5. **k-core** (only with ``--min-user-count`` / ``--min-item-count`` /
   ``--min-item-users``) -- rounds over the saved buckets with the global item counts (and
   distinct users per item) of the previous round (small arrays), the same rounds as the
   whole-log path, until a round drops nothing; with ``--rare-items token`` one more pass
   counts each kept item's users.
6. **Assembly** -- buckets are consecutive in output order, so the final ``items`` /
   ``times`` / ``ratings`` arrays are their concatenation (items re-indexed 1..N over the
   kept items), written to ``.npy`` files chunk by chunk and moved into the dataset
   directory (:func:`seqtwins.data.finish.finish`, as the whole-log path does).

Peak memory is the bucket size times :data:`BUCKET_BYTES_PER_ROW` plus the fixed cost of
the process and of a streamed batch; the per-user and per-item arrays are extra (16-32
bytes per user or item).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import polars as pl

from seqtwins.data.dataset import iter_npy_chunks, write_errors
from seqtwins.data.finish import Prepared, finish
from seqtwins.data.formats import STREAM_BATCH_ROWS, LogScan, RawLog, check_overlap
from seqtwins.data.memory import current_rss, format_size
from seqtwins.data.options import PrepareOptions, PrepareSummary
from seqtwins.data.steps import (
    UserRows,
    check_window,
    chronological_order,
    counts,
    drop_threshold,
    history_bounds,
    item_lut,
    item_users,
    kcore_dropped,
    kcore_round,
    kcore_thresholds,
    kept_item_ids,
    no_users_left,
    rare_dropped,
    rare_summary,
    rating_drops,
    token_threshold,
    user_order,
    user_steps,
)
from seqtwins.errors import SeqtwinsError
from seqtwins.files import temp_dir

BUCKET_BYTES_PER_ROW = 120
"""Peak bytes per row while a bucket is sorted and filtered: the record (24), sort key and
permutation (16), the ordered copies (16), user codes, masks and the filtered copies of
the per-user steps; rounded up."""
STREAM_RESERVE = 256 << 20
"""At most this much (and at most a quarter of what the budget leaves) is kept aside for
the streamed batches (polars' decode buffers) and the flush buffer of the partition pass."""
FLUSH_BYTES_PER_ROW = 96
"""Bytes per row of the flush buffer: the batch frames, the records, the bucket sort."""
MAX_BUCKETS = 4096
BUCKET_ROWS = 1 << 22
"""Rows per bucket at most, whatever the budget: smaller buckets sort faster (caches) and
fault in less fresh memory (measured on 100M rows: the bucket pass took 18 s in 30 buckets
of ~3.3M rows, 29 s in 4 of 25M)."""
FLUSH_ROWS = 1 << 21
"""At most this many rows are gathered from the stream before they go to bucket files."""
PER_USER_BYTES, PER_ITEM_BYTES = 64, 32
"""The dictionaries: ids, counts, ranks, lookup tables."""


def _record_dtype(wide_users: bool) -> np.dtype:
    return np.dtype(
        [
            ("u", np.int64 if wide_users else np.int32),
            ("i", np.int32),
            ("t", np.int64),
            ("r", np.float32),
        ]  # fmt: skip
    )


class _IdMap:
    """Map ids to their position in a sorted array of distinct ids (a lookup table for
    integer ids of a moderate range, else a hash join)."""

    def __init__(self, ids: pl.Series, values: np.ndarray) -> None:
        self.values = values
        self.lut: np.ndarray | None = None
        self.base = 0
        if ids.dtype.is_integer() and ids.len():
            lo, hi = int(ids.min()), int(ids.max())  # type: ignore[arg-type]
            if hi - lo < max(4 * ids.len(), 1 << 24):
                self.lut = np.full(hi - lo + 1, -1, dtype=values.dtype)
                self.lut[ids.to_numpy() - lo] = values
                self.base = lo
        if self.lut is None:
            self.frame = pl.DataFrame({"id": ids, "v": values})

    def __call__(self, s: pl.Series) -> np.ndarray:
        if self.lut is not None:
            return self.lut[s.to_numpy() - self.base]
        return (
            s.to_frame("id")
            .join(self.frame, on="id", how="left", maintain_order="left")["v"]
            .to_numpy()
        )


@dataclass
class _Dictionary:
    """Distinct users (sorted) with row counts and distinct items (sorted)."""

    user_ids: pl.Series
    user_rows: np.ndarray
    item_ids: pl.Series
    has_time: bool
    has_rating: bool

    @property
    def rows(self) -> int:
        return int(self.user_rows.sum())


class _Tally:
    """Distinct ids and their row counts, batch by batch, in bounded memory.

    While the ids are integers in ``0..limit``, ids are buffered and counted with one
    ``bincount`` per few million rows into an array indexed by id (fast, and as large as
    the id range); other ids go through polars group-bys, merged now and then.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: np.ndarray | None = np.zeros(0, dtype=np.int64)
        self.buffer: list[np.ndarray] = []
        self.buffered = self.top = 0
        self.frames: list[pl.DataFrame] = []
        self.pending = 0
        self.dtype: pl.DataType | None = None

    def add(self, ids: pl.Series) -> None:
        self.dtype = ids.dtype
        if self.counts is not None:
            if ids.dtype.is_integer() and ids.len():
                lo, hi = int(ids.min()), int(ids.max())  # type: ignore[arg-type]
                if lo >= 0 and hi < self.limit:
                    self.buffer.append(ids.to_numpy())
                    self.buffered += ids.len()
                    self.top = max(self.top, hi + 1)
                    if self.buffered >= 1 << 22:
                        self._count()
                    return
            self._to_frames()  # ids outside the table: group-bys from now on
        self.frames.append(ids.to_frame("id").group_by("id").len())
        self.pending += ids.len()
        if self.pending >= 1 << 22:
            self.frames = [self._merged()]
            self.pending = 0

    def _count(self) -> None:
        assert self.counts is not None
        if self.buffer:
            c = np.bincount(np.concatenate(self.buffer), minlength=self.top)
            if len(c) > len(self.counts):
                grown = np.zeros(len(c), dtype=np.int64)
                grown[: len(self.counts)] = self.counts
                self.counts = grown
            self.counts[: len(c)] += c
            self.buffer, self.buffered = [], 0

    def _to_frames(self) -> None:
        if self.counts is None:
            return
        self._count()
        ids = np.flatnonzero(self.counts)
        if len(ids):
            self.frames.append(
                pl.DataFrame({"id": ids, "len": self.counts[ids]}).cast(
                    {"id": self.dtype or pl.Int64(), "len": pl.UInt32}
                )
            )
        self.counts = None

    def _merged(self) -> pl.DataFrame:
        return (
            pl.concat(self.frames, how="vertical_relaxed").group_by("id").agg(pl.col("len").sum())
        )

    def result(self) -> tuple[pl.Series, np.ndarray]:
        """Distinct ids (ascending) and their row counts."""
        if self.counts is not None:
            self._count()
            ids = np.flatnonzero(self.counts)
            return (
                pl.Series("id", ids).cast(self.dtype or pl.Int64()),
                self.counts[ids].astype(np.int64),
            )
        merged = self._merged().sort("id")
        return merged["id"], merged["len"].to_numpy().astype(np.int64)


def _dictionary(scan: LogScan, budget: int) -> _Dictionary:
    """Pass 1: distinct users with their row counts, distinct items (bounded memory: the
    id-indexed count tables hold at most ``budget / 64`` ids each)."""
    limit = max(1 << 20, budget // 64)
    users, items = _Tally(limit), _Tally(limit)
    has_time = has_rating = False
    for batch in scan.batches(STREAM_BATCH_ROWS):
        has_time, has_rating = "time" in batch.columns, "rating" in batch.columns
        users.add(batch["user"])
        items.add(batch["item"])
    user_ids, user_rows = users.result()
    item_ids, _ = items.result()
    return _Dictionary(user_ids.rename("user"), user_rows, item_ids.rename("item"), has_time,
                       has_rating)  # fmt: skip


def _plan(user_rows: np.ndarray, n_items: int, budget: int) -> tuple[np.ndarray, int]:
    """Bucket boundaries over users in rank order (``bounds[b]:bounds[b+1]``) and the rows
    per flush of the partition pass, so that the whole run stays within ``budget``."""
    fixed = current_rss() + PER_USER_BYTES * len(user_rows) + PER_ITEM_BYTES * n_items
    room = budget - fixed
    stream = max(0, min(STREAM_RESERVE, room // 4))
    per_bucket = (room - stream) // BUCKET_BYTES_PER_ROW
    n = int(user_rows.sum())
    biggest = int(user_rows.max()) if len(user_rows) else 0
    if per_bucket < max(biggest, 1) or math.ceil(n / max(per_bucket, 1)) > MAX_BUCKETS:
        rows = max(biggest, math.ceil(n / MAX_BUCKETS))
        need = fixed + 4 * BUCKET_BYTES_PER_ROW * rows // 3
        raise SeqtwinsError(
            f"--memory-budget={format_size(budget)} is too small for this log ({n:,} rows, "
            f"{len(user_rows):,} users, the longest user {biggest:,} rows; this process "
            f"already holds {format_size(current_rss())}); give at least {format_size(need)}"
        )
    per_bucket = max(min(per_bucket, BUCKET_ROWS), math.ceil(n / MAX_BUCKETS), biggest)
    ends = np.cumsum(user_rows)
    cuts = np.searchsorted(ends, np.arange(per_bucket, n, per_bucket), side="right")
    bounds = np.unique(np.concatenate([[0], cuts, [len(user_rows)]]))
    flush = int(min(FLUSH_ROWS, max(1 << 14, stream // FLUSH_BYTES_PER_ROW)))
    return bounds, flush


class _Buckets:
    """Per-bucket record files in a work folder, appended to in file order."""

    def __init__(self, folder: Path, n: int, dtype: np.dtype) -> None:
        self.folder, self.n, self.dtype = folder, n, dtype
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, b: int) -> Path:
        return self.folder / f"bucket-{b:05d}.rec"

    def append(self, bucket: np.ndarray, records: np.ndarray) -> None:
        """Append ``records`` to the files of their ``bucket``; both are sorted by bucket
        (stably: file order kept within a bucket)."""
        edges = np.flatnonzero(np.diff(bucket)) + 1
        starts = np.concatenate([[0], edges])
        ends = np.concatenate([edges, [len(bucket)]])
        for a, z in zip(starts.tolist(), ends.tolist(), strict=True):
            with open(self.path(int(bucket[a])), "ab") as f:
                records[a:z].tofile(f)

    def load(self, b: int) -> np.ndarray:
        p = self.path(b)
        return np.fromfile(p, dtype=self.dtype) if p.exists() else np.empty(0, self.dtype)


def _partition(scan: LogScan, d: _Dictionary, ranks: np.ndarray, bounds: np.ndarray,
               buckets: _Buckets, flush_rows: int) -> None:  # fmt: skip
    """Pass 2: every row as a record (rank within bucket, item code, time, rating)."""
    n_users = len(d.user_ids)
    user_map = _IdMap(d.user_ids, ranks)
    item_map = _IdMap(d.item_ids, np.arange(len(d.item_ids), dtype=np.int32))
    bucket_of_rank = np.repeat(
        np.arange(len(bounds) - 1, dtype=np.int16 if len(bounds) < 2**15 else np.int32),
        np.diff(bounds),
    )
    first_rank = bounds[:-1].astype(np.int64)
    parts: list[pl.DataFrame] = []
    held = 0

    def flush() -> None:
        nonlocal parts, held
        if not parts:
            return
        frame = pl.concat(parts, rechunk=True)
        parts, held = [], 0
        rank = user_map(frame["user"])
        bucket = bucket_of_rank[rank]
        order = np.argsort(bucket, kind="stable")  # int16 buckets: numpy's radix sort
        bucket = bucket[order]
        # records filled field by field in bucket order (gathering whole records is slow)
        rec = np.empty(frame.height, dtype=buckets.dtype)
        rec["u"] = rank[order] - first_rank[bucket]
        rec["i"] = item_map(frame["item"])[order]
        rec["t"] = frame["time"].to_numpy()[order] if d.has_time else 0
        rec["r"] = frame["rating"].to_numpy()[order] if d.has_rating else 0
        buckets.append(bucket, rec)

    assert n_users == len(ranks)
    for batch in scan.batches(STREAM_BATCH_ROWS):
        parts.append(batch)
        held += batch.height
        if held >= flush_rows:
            flush()
    flush()


def _save(folder: Path, b: int, rows: UserRows) -> None:
    np.save(folder / f"cu-{b:05d}.npy", rows.cu)
    np.save(folder / f"items-{b:05d}.npy", rows.icode)
    if rows.times is not None:
        np.save(folder / f"times-{b:05d}.npy", rows.times)
    if rows.ratings is not None:
        np.save(folder / f"ratings-{b:05d}.npy", rows.ratings)


def _load(folder: Path, b: int, d: _Dictionary) -> UserRows:
    def get(name: str) -> np.ndarray:
        return np.load(folder / f"{name}-{b:05d}.npy")

    return UserRows(
        get("cu"),
        get("items"),
        get("times") if d.has_time else None,
        get("ratings") if d.has_rating else None,
    )


def _order_bucket(rec: np.ndarray, n_users: int, d: _Dictionary) -> UserRows:
    """A bucket's rows sorted by user then time (ties in file order)."""
    ucode = np.ascontiguousarray(rec["u"])
    times = np.ascontiguousarray(rec["t"]) if d.has_time else None
    order = chronological_order(ucode, n_users, times)
    cu = counts(ucode, n_users)
    del ucode

    def field(name: str) -> np.ndarray:  # one column at a time (gathering records is slow)
        col = np.ascontiguousarray(rec[name])
        return col if order is None else col[order]

    return UserRows(
        cu,
        field("i"),
        (times if order is None else times[order]) if times is not None else None,
        field("r") if d.has_rating else None,
    )


def _write_npy(path: Path, dtype: type[np.generic], n: int) -> BinaryIO:
    """An open ``.npy`` file of ``n`` values whose data is still to be written."""
    f = open(path, "wb")  # noqa: SIM115 (closed by the caller after the chunks)
    np.lib.format.write_array_header_1_0(
        f,
        {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
            "fortran_order": False,
            "shape": (n,),
        },  # fmt: skip
    )
    return f


def prepare_out_of_core(scan: LogScan, out: Path, options: PrepareOptions) -> PrepareSummary:
    """Prepare ``scan`` into ``out`` within ``options.memory_budget`` (module docstring)."""
    assert options.memory_budget is not None
    budget = options.memory_budget
    if options.min_rating is not None and "rating" not in scan.roles:
        raise SeqtwinsError(
            f"--min-rating needs ratings, but {scan.source} has none (name the column with "
            "--rating-col)"
        )
    check_window(options, "time" in scan.roles, scan.source)
    base = Path(options.work_dir or out.parent)
    what = "--work-dir" if options.work_dir else "--out"
    with write_errors(base, what):
        work = temp_dir(out, "work", base=base)  # PID-tagged: clean_stale finds it if killed
    try:
        with write_errors(base, what, under=work):  # bucket files on a full disk
            return _run(scan, out, options, budget, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(
    scan: LogScan, out: Path, options: PrepareOptions, budget: int, work: Path
) -> PrepareSummary:
    t0 = time.perf_counter()
    d = _dictionary(scan, budget)
    log = RawLog(pl.DataFrame(), scan.format, scan.source, scan.items, scan.users)
    if log.items is not None:
        check_overlap(log.items["item_id"], d.item_ids, "item", log)
    if log.users is not None:
        check_overlap(log.users["user_id"], d.user_ids, "user", log)
    n_users, n_items = len(d.user_ids), len(d.item_ids)
    # output order of users: ascending id, or ascending pseudonym
    by_rank, pseudo = user_order(d.user_ids, options)  # user index of each rank
    ranks = np.empty(n_users, dtype=np.int64)
    ranks[by_rank] = np.arange(n_users)
    rows_by_rank = d.user_rows[by_rank]
    bounds, flush_rows = _plan(rows_by_rank, n_items, budget)
    n_buckets = len(bounds) - 1
    t1 = time.perf_counter()

    widest = int(np.diff(bounds).max())
    buckets = _Buckets(work / "records", n_buckets, _record_dtype(widest >= 2**31))
    _partition(scan, d, ranks, bounds, buckets, flush_rows)
    log.rows_read, log.bad_rows_skipped = scan.rows_read, scan.bad_rows_skipped
    t2 = time.perf_counter()

    saved = work / "buckets"
    saved.mkdir()
    dropped: dict[str, int] = {}
    ci, du = _bucket_pass(buckets, bounds, d, options, saved, dropped)
    if options.min_rating is not None and dropped["low_rating_interactions"] == d.rows:
        raise no_users_left(log.source, rating_drops(dropped), options)
    cu_all, ci = _kcore_buckets(saved, n_buckets, d, (ci, du), options, dropped)
    if not cu_all.sum():
        raise no_users_left(log.source, dropped, options)
    rare = _rare_token_buckets(saved, n_buckets, d, ci, options)
    present_u, present_i = cu_all > 0, ci > 0
    t3 = time.perf_counter()

    arrays = _assemble(work / "final", saved, cu_all[present_u], item_lut(present_i, rare),
                       n_buckets, d, options)  # fmt: skip
    kept = pl.Series(present_u)
    prepared = Prepared(
        log, arrays, kept_item_ids(d.item_ids, present_i, rare),
        d.user_ids.gather(by_rank).filter(kept),
        None if pseudo is None else pseudo.gather(by_rank).filter(kept),
        {"interactions": d.rows, "users": n_users, "items": n_items}, dropped,
        rare_summary(options, ci, dropped, rare),
    )  # fmt: skip
    seconds = {"dictionary": t1 - t0, "partition": t2 - t1, "buckets": t3 - t2}
    mode = f"out of core ({n_buckets} buckets, budget {format_size(budget)})"
    return finish(out, prepared, options, seconds, ("assemble", t3), mode)


def _bucket_pass(
    buckets: _Buckets,
    bounds: np.ndarray,
    d: _Dictionary,
    options: PrepareOptions,
    saved: Path,
    dropped: dict[str, int],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pass 3, bucket by bucket: order each user's rows, run the per-user steps (counts
    added into ``dropped``), save the result; the items' row counts over all buckets and,
    when rare items are dropped, their distinct users (buckets hold whole users)."""
    n_items = len(d.item_ids)
    ci = np.zeros(n_items, dtype=np.int64)
    du = np.zeros(n_items, dtype=np.int64) if drop_threshold(options) > 1 else None
    for b in range(len(bounds) - 1):
        rec = buckets.load(b)
        buckets.path(b).unlink(missing_ok=True)
        rows = _order_bucket(rec, int(bounds[b + 1] - bounds[b]), d)
        del rec
        part: dict[str, int] = {}
        rows = user_steps(rows, n_items, options, part)
        for k, v in part.items():
            dropped[k] = dropped.get(k, 0) + v
        ci += counts(rows.icode, n_items)
        if du is not None:
            du += item_users(rows, n_items, options.dedup)
        _save(saved, b, rows)
    return ci, du


def _kcore_buckets(
    saved: Path,
    n_buckets: int,
    d: _Dictionary,
    item_counts: tuple[np.ndarray, np.ndarray | None],
    options: PrepareOptions,
    dropped: dict[str, int],
) -> tuple[np.ndarray, np.ndarray]:
    """The k-core rounds over the saved buckets (each round uses the previous round's
    global item counts ``ci`` and, when rare items are dropped, distinct users ``du``);
    rows per user (all buckets) and per item after it."""
    n_items = len(d.item_ids)
    ci, du = item_counts
    kd = drop_threshold(options)

    def rows_per_user() -> np.ndarray:
        return np.concatenate([np.load(saved / f"cu-{b:05d}.npy") for b in range(n_buckets)])

    def totals(cu_all: np.ndarray, ci_all: np.ndarray) -> tuple[int, int, int]:
        return int(np.count_nonzero(cu_all)), int(np.count_nonzero(ci_all)), int(cu_all.sum())

    cu_all = rows_per_user()
    before = totals(cu_all, ci)
    rare = rare_dropped(dropped, ci, du, kd) if du is not None else (0, 0)
    thresholds = kcore_thresholds(options)
    while thresholds is not None and cu_all.sum():
        changed, ci_next = False, np.zeros(n_items, dtype=np.int64)
        du_next = np.zeros(n_items, dtype=np.int64) if du is not None else None
        for b in range(n_buckets):
            rows = _load(saved, b, d)
            # ci, du: the previous round's counts
            nxt = kcore_round(rows, ci, *thresholds[:2], du, kd)
            if nxt is not None:
                changed, rows = True, nxt
                _save(saved, b, rows)
            ci_next += counts(rows.icode, n_items)
            if du_next is not None:
                du_next += item_users(rows, n_items, options.dedup)
        if not changed:
            break
        ci, du = ci_next, du_next
        cu_all = rows_per_user()
    kcore_dropped(dropped, before, totals(cu_all, ci), n_items, rare)
    return cu_all, ci


def _rare_token_buckets(
    saved: Path, n_buckets: int, d: _Dictionary, ci: np.ndarray, options: PrepareOptions
) -> np.ndarray | None:
    """:func:`~seqtwins.data.steps.rare_token_items` over the saved buckets (a pass that
    adds up each bucket's distinct users per item); ``None`` unless ``rare_items: token``."""
    k = token_threshold(options)
    if k <= 1:
        return None
    du = np.zeros(len(ci), dtype=np.int64)
    for b in range(n_buckets):
        du += item_users(_load(saved, b, d), len(ci), options.dedup)
    return (ci > 0) & (du < k)


def _assemble(
    final: Path,
    saved: Path,
    lengths: np.ndarray,
    item_idx: np.ndarray,
    n_buckets: int,
    d: _Dictionary,
    options: PrepareOptions,
) -> dict[str, Path]:
    """The dataset's ``.npy`` files in ``final``: buckets are consecutive in output order,
    so the per-interaction arrays are their concatenation (items re-indexed by
    ``item_idx``, item code -> 1..N over the kept items), written chunk by chunk."""
    n_rows = int(lengths.sum())
    offsets, history_end = history_bounds(lengths, options)
    final.mkdir()
    np.save(final / "offsets.npy", offsets)
    np.save(final / "history_end.npy", history_end)
    outs = {"items": _write_npy(final / "items.npy", np.int32, n_rows)}
    if d.has_time:
        outs["times"] = _write_npy(final / "times.npy", np.int64, n_rows)
    if d.has_rating:
        outs["ratings"] = _write_npy(final / "ratings.npy", np.float32, n_rows)
    try:
        for b in range(n_buckets):
            for name, f in outs.items():
                src = saved / f"{name}-{b:05d}.npy"
                for chunk in iter_npy_chunks(src):
                    f.write((item_idx[chunk] if name == "items" else chunk).data)
                src.unlink()
    finally:
        for f in outs.values():
            f.close()
    names = ["offsets", "items", "history_end", *(n for n in ("times", "ratings") if n in outs)]
    return {name: final / f"{name}.npy" for name in names}
