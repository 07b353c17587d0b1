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

All work on interactions is vectorised (polars / numpy); Python loops run per distinct user
only for pseudonyms.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from seqtwins.data.dataset import SPLITS, Sequences, write_dataset
from seqtwins.data.formats import RawLog, ReaderOptions, read_log
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
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds per phase: read, build (order, filter, index), write."""

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
    t0 = time.perf_counter()
    log = read_log(input, options.reader)
    t1 = time.perf_counter()
    built = _build(log, options)
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
    stats = {
        "rows_read": log.rows_read,
        "bad_rows_skipped": log.bad_rows_skipped,
        "input": built.input_counts,
        "dropped": built.dropped,
        "item_order": "item_idx 1..N in ascending order of original item id",
        "user_order": (
            "ascending pseudonym" if options.pseudonymize else "ascending original user id"
        ),
        "order": (
            "per user by time, ties in file order"
            if built.sequences.times is not None
            else "per user in file (line) order"
        ),
        "pseudonymized": options.pseudonymize,
    }
    params = {"format": log.format, **options.to_params()}
    t2 = time.perf_counter()
    write_dataset(
        out,
        sequences=built.sequences,
        items=built.items,
        users=users,
        source=f"{log.format}:{log.source}",
        params=params,
        extra_meta={"prepare": stats},
        overwrite=options.overwrite,
    )
    splits = {s: int(np.sum(split == s)) for s in SPLITS}
    t3 = time.perf_counter()
    return PrepareSummary(
        out=out,
        format=log.format,
        num_users=built.sequences.num_users,
        num_items=built.items.height,
        num_interactions=built.sequences.num_interactions,
        splits=splits,
        fields={
            "times": built.sequences.times is not None,
            "ratings": built.sequences.ratings is not None,
            "categories": "categories" in built.items.columns,
            "user_attributes": [c for c in users.columns if c not in ("user_id", "split")],
        },
        dropped=built.dropped,
        rows_read=log.rows_read,
        bad_rows_skipped=log.bad_rows_skipped,
        seconds={"read": t1 - t0, "build": t2 - t1, "write": t3 - t2},
    )


# --- the transformation ------------------------------------------------------------------


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


def _dense_codes(ids: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """Codes 0..K-1 in ascending id order, and the K distinct ids (ascending)."""
    if ids.dtype.is_integer():
        lo, hi = int(ids.min()), int(ids.max())  # type: ignore[arg-type]
        if hi - lo < max(ids.len(), 1 << 24):
            # lookup table: O(n + range), no sort of the n ids
            shifted = ids.to_numpy()
            if shifted.flags.writeable:  # polars made a copy (zero-copy views are read-only)
                shifted -= lo
            else:
                shifted = shifted - lo
            present = np.zeros(hi - lo + 1, dtype=bool)
            present[shifted] = True
            lut = np.cumsum(present, dtype=np.int32) - 1
            uniq_np = np.flatnonzero(present) + lo
            codes = lut[shifted]
            return _narrow(codes, len(uniq_np)), pl.Series(ids.name, uniq_np).cast(ids.dtype)
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


def _zero_left(log: RawLog, dropped: dict[str, int], options: PrepareOptions) -> SeqtwinsError:
    what = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in dropped.items() if v)
    return SeqtwinsError(
        f"no users left after filtering {log.source} (dropped: {what or 'nothing'}); relax "
        f"--min-rating / --min-user-count / --min-item-count / --min-history "
        f"(now {options.min_rating} / {options.min_user_count} / {options.min_item_count} / "
        f"{options.min_history})"
    )


def _build(log: RawLog, options: PrepareOptions) -> _Built:
    """Order, filter and index ``log``; its interaction frame is released (memory)."""
    df = log.interactions
    log.interactions = df.clear()  # keep the schema, drop the rows: only arrays stay alive
    has_time, has_rating = "time" in df.columns, "rating" in df.columns
    if options.min_rating is not None and not has_rating:
        raise SeqtwinsError(
            f"--min-rating needs ratings, but {log.source} has none (name the column with "
            "--rating-col)"
        )
    dropped: dict[str, int] = {}
    ucode, user_ids = _dense_codes(df["user"])
    icode, item_ids = _dense_codes(df["item"])
    times = df["time"].to_numpy() if has_time else None
    ratings = df["rating"].to_numpy() if has_rating else None
    del df
    n_users, n_items = len(user_ids), len(item_ids)
    input_counts = {
        "interactions": len(ucode),
        "users": n_users + log.empty_users,
        "items": n_items,
    }

    cu = np.bincount(ucode, minlength=n_users)  # interactions per user code

    def user_codes() -> np.ndarray:
        """The user code of each row (after sorting: rebuilt from the counts on demand)."""
        nonlocal ucode
        if len(ucode) != len(icode):
            ucode = np.repeat(np.arange(n_users, dtype=np.int32), cu)
        return ucode

    def apply(mask: np.ndarray) -> None:
        nonlocal ucode, icode, times, ratings
        ucode, icode = user_codes()[mask], icode[mask]
        times = None if times is None else times[mask]
        ratings = None if ratings is None else ratings[mask]

    if options.min_rating is not None:
        assert ratings is not None
        keep = ratings >= options.min_rating
        dropped["low_rating_interactions"] = int(len(keep) - np.count_nonzero(keep))
        apply(keep)
        dropped["low_rating_users"] = n_users - int(
            np.count_nonzero(np.bincount(ucode, minlength=n_users))
        )
        if len(ucode) == 0:
            raise _zero_left(log, dropped, options)
        cu = np.bincount(ucode, minlength=n_users)

    order = _chronological_order(ucode, n_users, times)
    if order is not None:
        # sorted by user, the user column is a run of each code: rebuilt on demand below
        ucode = np.empty(0, dtype=ucode.dtype)
        icode = icode[order]
        times = None if times is None else times[order]
        ratings = None if ratings is None else ratings[order]
        del order

    if options.dedup:
        pair = user_codes().astype(np.int64) * n_items + icode
        keep = pl.Series(pair).is_first_distinct().to_numpy()
        dropped["duplicate_interactions"] = int(len(keep) - np.count_nonzero(keep))
        apply(keep)
        cu = np.bincount(ucode, minlength=n_users)

    if options.max_len is not None:
        ends = np.cumsum(cu)
        # rows of a user are contiguous: position from the end = end of row - 1 - index
        from_end = ends[user_codes()] - 1 - np.arange(len(icode))
        keep = from_end < options.max_len
        dropped["max_len_interactions"] = int(len(keep) - np.count_nonzero(keep))
        apply(keep)
        cu = np.minimum(cu, options.max_len)

    short = (cu > 0) & (cu < options.min_history + 1)
    dropped["short_users"] = int(short.sum()) + log.empty_users
    dropped["short_user_interactions"] = int(cu[short].sum())
    if short.any():
        apply(~short[user_codes()])
        cu[short] = 0
    ci = np.bincount(icode, minlength=n_items)

    # iterative k-core; with the default thresholds (users >= min_history + 1, which the
    # step above ensured, items >= 1) there is nothing to do
    users_before, items_before = int(np.count_nonzero(cu)), int(np.count_nonzero(ci))
    n_before = len(icode)
    ku = max(options.min_user_count, options.min_history + 1)
    ki = options.min_item_count
    if ku > options.min_history + 1 or ki > 1:
        while len(icode):
            ok = cu[user_codes()] >= ku
            if ki > 1:
                ok &= ci[icode] >= ki
            if ok.all():
                break
            apply(ok)
            cu = np.bincount(ucode, minlength=n_users)
            ci = np.bincount(icode, minlength=n_items)
    present_u, present_i = cu > 0, ci > 0
    dropped["kcore_users"] = users_before - int(np.count_nonzero(present_u))
    dropped["kcore_items"] = items_before - int(np.count_nonzero(present_i))
    dropped["kcore_interactions"] = n_before - len(icode)
    dropped["items_of_dropped_rows"] = n_items - items_before
    if len(icode) == 0:
        raise _zero_left(log, dropped, options)

    # --- index ------------------------------------------------------------------------
    if present_i.all() and icode.dtype == np.int32 and icode.flags.writeable:
        icode += 1  # in place: 1..N (icode is this function's own array)
        item_idx = icode
    elif present_i.all():
        item_idx = (icode + 1).astype(np.int32)
    else:
        item_idx = np.cumsum(present_i, dtype=np.int32)[icode]  # 1..N over kept items
    lengths = cu[present_u]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    hist = np.maximum(lengths - options.holdout, options.min_history)
    hist = np.minimum(hist, lengths)
    sequences = Sequences(
        offsets=offsets,
        items=item_idx,
        history_end=offsets[:-1] + hist,
        times=None if times is None else times.astype(np.int64, copy=False),
        ratings=None if ratings is None else ratings.astype(np.float32, copy=False),
    )

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
    return _Built(sequences, items, users, input_counts, dropped)


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
