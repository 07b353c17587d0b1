"""Replay: a reservoir of older training sequences mixed into an update's epochs.

The reservoir is a uniform sample of every training sequence seen by the runs of a
lineage (Vitter's Algorithm R): each update continues it over its parent's training
histories and stores it in the new run (``replay.parquet``), so that a chain of updates
keeps sampling from all earlier windows, not only from the latest. Its sequences are kept
by original item id (they survive re-indexing) and join the new dataset's training users,
so every shuffled epoch mixes old and new sequences in each batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from seqtwins.data.dataset import SequenceDataset, Sequences

REPLAY_PREFIX = "replay:"
"""User ids of replayed sequences in an update's training data (never written to a dataset)."""


def reservoir_slots(seen: int, count: int, capacity: int, rng: np.random.Generator) -> np.ndarray:
    """Algorithm R, vectorised: where each of ``count`` new stream elements lands in a
    reservoir of ``capacity`` that has already seen ``seen`` elements (``-1``: not kept).
    Later elements overwrite earlier ones in the same slot, as in the sequential algorithm.

    Element ``i`` (0-based over the whole stream) fills slot ``i`` while ``i < capacity``;
    after that it replaces slot ``j`` drawn uniformly from ``0..i`` when ``j < capacity``.
    Every element ends up in the reservoir with probability ``capacity / seen_total``.
    """
    index = np.arange(seen, seen + count, dtype=np.int64)
    draws = rng.integers(0, index + 1)  # one draw per element: j ~ U{0..i}
    return np.where(index < capacity, index, np.where(draws < capacity, draws, -1))


@dataclass
class Reservoir:
    """A replay reservoir: sequences by original ids, and how many sequences it has seen."""

    frame: pl.DataFrame
    """Columns ``user_id`` (str), ``items`` (list of str ids, oldest first), ``times``
    (list of int64, where the data had times)."""
    seen: int = 0

    @classmethod
    def empty(cls) -> Reservoir:
        return cls(pl.DataFrame(schema=[("user_id", pl.String), ("items", pl.List(pl.String))]))

    def add(self, stream: pl.DataFrame, capacity: int, rng: np.random.Generator) -> Reservoir:
        """The reservoir after ``stream`` (same columns) of further sequences; a reservoir
        larger than ``capacity`` is first cut to a uniform sample of that size."""
        frame = self.frame
        if frame.height > capacity:
            frame = frame[np.sort(rng.choice(frame.height, capacity, replace=False))]
        if frame.height and set(frame.columns) != set(stream.columns):
            common = [c for c in frame.columns if c in stream.columns]  # times: not in all
            frame, stream = frame.select(common), stream.select(common)
        slots = reservoir_slots(self.seen, stream.height, capacity, rng)
        size = max(frame.height, int(slots.max()) + 1 if len(slots) else 0)
        source = np.full(size, -1, dtype=np.int64)  # -1: keep the old row in that slot
        kept = np.flatnonzero(slots >= 0)
        source[slots[kept]] = kept  # fancy assignment: the last writer wins
        old_rows = np.flatnonzero(source[: frame.height] < 0)
        new_rows = source[source >= 0]
        parts = [frame[old_rows]] if len(old_rows) else []
        parts.append(stream[new_rows])
        merged = pl.concat(parts, how="vertical_relaxed") if parts else frame
        return Reservoir(merged, self.seen + stream.height)

    def write(self, file: Path) -> None:
        self.frame.write_parquet(file)

    @classmethod
    def read(cls, file: Path, seen: int) -> Reservoir:
        return cls(pl.read_parquet(file), seen)


def histories(ds: SequenceDataset, max_len: int) -> pl.DataFrame:
    """The training users' histories of ``ds`` (the last ``max_len`` items, what an encoder
    reads) as a reservoir stream, by original ids."""
    seqs, users = ds.sequences, ds.split_users("train")
    ends = seqs.history_end[users]
    starts = np.maximum(seqs.offsets[users], ends - max_len)
    lengths = ends - starts
    pos = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    ids = ds.items["item_id"].cast(pl.String).to_numpy()[np.asarray(seqs.items)[pos] - 1]
    cols = {
        "user_id": ds.users["user_id"].cast(pl.String).to_numpy()[users],
        "items": _lists(ids, lengths),
    }
    if seqs.times is not None:
        cols["times"] = _lists(np.asarray(seqs.times)[pos], lengths)
    return pl.DataFrame(cols)


def _lists(values: np.ndarray, lengths: np.ndarray) -> pl.Series:
    """A list column: element ``k`` holds the next ``lengths[k]`` of ``values``."""
    rows = np.repeat(np.arange(len(lengths)), lengths)
    grouped = pl.DataFrame({"row": rows, "v": values}).group_by("row", maintain_order=True).agg("v")
    full = pl.DataFrame({"row": np.arange(len(lengths), dtype=rows.dtype)})
    return full.join(grouped, on="row", how="left", maintain_order="left")["v"]


def with_replay(ds: SequenceDataset, reservoir: Reservoir) -> tuple[SequenceDataset, int]:
    """``ds`` with the reservoir's sequences appended as extra training users (their whole
    sequence is history; item ids unknown to ``ds`` dropped; sequences left with fewer than
    two items skipped), and how many were added. Path, meta and content hash stay those of
    ``ds``: the run's lineage names the real dataset."""
    frame = reservoir.frame
    if frame.height == 0:
        return ds, 0
    lookup = ds.items.select(pl.col("item_id").cast(pl.String), pl.col("item_idx"))
    flat = frame.select(
        pl.int_range(pl.len()).alias("row"),
        "items",
        *(["times"] if "times" in frame.columns else []),
    ).explode(["items", *(["times"] if "times" in frame.columns else [])])
    flat = flat.join(
        lookup, left_on="items", right_on="item_id", how="inner", maintain_order="left"
    )
    lengths = np.bincount(flat["row"].to_numpy(), minlength=frame.height)
    keep = lengths >= 2
    flat = flat.filter(pl.Series(keep[flat["row"].to_numpy()]))
    lengths = lengths[keep]
    if not len(lengths):
        return ds, 0
    s = ds.sequences
    add_offsets = s.offsets[-1] + np.cumsum(lengths)
    offsets = np.concatenate([s.offsets, add_offsets])
    times = None
    if s.times is not None:
        extra = (
            flat["times"].to_numpy() if "times" in flat.columns else np.zeros(len(flat), np.int64)
        )
        times = np.concatenate([np.asarray(s.times), extra.astype(np.int64)])
    seqs = Sequences(
        offsets=offsets,
        items=np.concatenate([np.asarray(s.items), flat["item_idx"].to_numpy().astype(np.int32)]),
        history_end=np.concatenate([s.history_end, add_offsets]),
        times=times,
        ratings=None
        if s.ratings is None
        else np.concatenate([np.asarray(s.ratings), np.zeros(len(flat), np.float32)]),
    )
    ids = (REPLAY_PREFIX + frame["user_id"].filter(pl.Series(keep))).rename("user_id")
    added = pl.DataFrame({"user_id": ids, "split": ["train"] * len(ids)})
    if "user_idx" in ds.users.columns:
        idx = np.arange(ds.num_users, ds.num_users + len(ids))
        added = added.with_columns(pl.Series("user_idx", idx).cast(ds.users["user_idx"].dtype))
    users = pl.concat([ds.users, added], how="diagonal_relaxed")
    return SequenceDataset(ds.path, ds.meta, seqs, ds.items, users), len(ids)
