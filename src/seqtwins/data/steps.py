"""The steps of ``prepare`` between reading and writing, shared by both of its paths.

The whole-log path (:mod:`seqtwins.data.prepare`) runs them once over all users; the
out-of-core path (:mod:`seqtwins.data.outofcore`) runs the per-user steps bucket by bucket
and the k-core rounds over the saved buckets. In order:

- :func:`chronological_order`: rows sorted by (user, time), ties in file order;
- :func:`user_steps`: time window (:func:`time_window`), rating threshold,
  de-duplication, ``max_len`` and short users, on :class:`UserRows` (each user's rows,
  contiguous); they look at one user at a time;
- :func:`kcore_thresholds` / :func:`kcore_round` / :func:`kcore`: the iterative k-core,
  :func:`kcore_dropped` its counts; with ``min_item_users`` in ``drop`` mode, "at least K
  distinct users" (:func:`item_users`) is one more item condition of the k-core, and
  :func:`rare_dropped` counts the items that miss it when the k-core starts;
- :func:`rare_token_items` (``min_item_users`` in ``token`` mode, after the k-core): the
  rare items that become one token; :func:`rare_summary` what was done;
- :func:`item_index` / :func:`item_lut`, :func:`kept_item_ids`, :func:`history_bounds`:
  item indices 1..N (+ the rare-item token) and the CSR arrays;
- :func:`user_order`: the output order of users (ascending id, or ascending pseudonym);
- :func:`assign_splits`: the seeded train / valid / test split (also used by ``synth``).

All work on interactions is vectorised (numpy / polars).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from seqtwins.data.dataset import SPLITS
from seqtwins.data.options import PrepareOptions
from seqtwins.data.privacy import pseudonym_key, pseudonymize
from seqtwins.errors import SeqtwinsError


def chronological_order(
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


@dataclass
class UserRows:
    """Rows of whole users, sorted by user code then time: rows per user code and the row
    arrays (item code, time, rating)."""

    cu: np.ndarray
    icode: np.ndarray
    times: np.ndarray | None
    ratings: np.ndarray | None

    def user_codes(self) -> np.ndarray:
        """The user code of each row (rows are sorted by user: rebuilt from the counts)."""
        return np.repeat(np.arange(len(self.cu), dtype=np.int32), self.cu)

    def keep(self, mask: np.ndarray, ucode: np.ndarray | None = None) -> UserRows:
        """The rows where ``mask`` holds (``ucode``: the rows' user codes, if at hand)."""
        kept_u = (self.user_codes() if ucode is None else ucode)[mask]
        return UserRows(
            counts(kept_u, len(self.cu)),
            self.icode[mask],
            None if self.times is None else self.times[mask],
            None if self.ratings is None else self.ratings[mask],
        )


def has_window(options: PrepareOptions) -> bool:
    """Whether ``options`` cut a time window (``since`` / ``until``)."""
    return options.since is not None or options.until is not None


def check_window(options: PrepareOptions, has_times: bool, source: str) -> None:
    """Refuse a time window on a log without times (S3-Rec files have none), before any
    work."""
    if has_window(options) and not has_times:
        raise SeqtwinsError(
            f"--since/--until need interaction times, but {source} has none (S3-Rec files "
            "carry no timestamps); name the time column with --time-col, or drop the window"
        )


def time_window(rows: UserRows, options: PrepareOptions, dropped: dict[str, int]) -> UserRows:
    """Keep the rows with ``since <= time < until`` (half-open: consecutive windows share
    no interaction); counts into ``dropped`` (``time_window_*``). A row filter: it commutes
    with the stable chronological order, so it runs after it."""
    assert rows.times is not None  # check_window refused a log without times
    keep = np.ones(len(rows.times), dtype=bool)
    if options.since is not None:
        keep &= rows.times >= options.since
    if options.until is not None:
        keep &= rows.times < options.until
    empty_before = int(np.count_nonzero(rows.cu == 0))
    dropped["time_window_interactions"] = int(len(keep) - np.count_nonzero(keep))
    rows = rows.keep(keep)
    dropped["time_window_users"] = int(np.count_nonzero(rows.cu == 0)) - empty_before
    return rows


def user_steps(
    rows: UserRows, n_items: int, options: PrepareOptions, dropped: dict[str, int]
) -> UserRows:
    """The steps that look at one user at a time: time window, rating threshold,
    de-duplication, ``max_len`` and dropping short users (counted into ``dropped``). They
    need no global state, so out of core they run bucket by bucket; counts add up across
    buckets."""
    n_users = len(rows.cu)
    if has_window(options):
        rows = time_window(rows, options, dropped)
    # filtering by rating commutes with the (stable) chronological order: done after it
    if options.min_rating is not None:
        assert rows.ratings is not None
        empty_before = int(np.count_nonzero(rows.cu == 0))  # 0 unless a window emptied some
        keep = rows.ratings >= options.min_rating
        dropped["low_rating_interactions"] = int(len(keep) - np.count_nonzero(keep))
        rows = rows.keep(keep)
        # every user had rows before (codes come from the rows): those without now
        dropped["low_rating_users"] = int(np.count_nonzero(rows.cu == 0)) - empty_before
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


def kcore_thresholds(options: PrepareOptions) -> tuple[int, int, int] | None:
    """(users, items, item users) k-core thresholds, ``None`` when the k-core drops nothing
    more: users >= min_history + 1 hold after :func:`user_steps`, items >= 1 always. The
    third is ``min_item_users`` in ``drop`` mode (distinct users per item), else 1."""
    ku = max(options.min_user_count, options.min_history + 1)
    ki = options.min_item_count
    kd = drop_threshold(options)
    return (ku, ki, kd) if ku > options.min_history + 1 or ki > 1 or kd > 1 else None


def drop_threshold(options: PrepareOptions) -> int:
    """``min_item_users`` when rare items are dropped (a k-core condition), else 1."""
    k = options.min_item_users
    return k if k is not None and k > 1 and options.rare_items == "drop" else 1


def item_users(rows: UserRows, n_items: int, distinct: bool = False) -> np.ndarray:
    """(n_items,) distinct users per item code (``distinct``: the (user, item) pairs are
    distinct already, after ``dedup``, so these are the row counts). Over whole users, so
    out of core the buckets' counts add up."""
    if distinct:
        return counts(rows.icode, n_items)
    pair = rows.user_codes().astype(np.int64) * n_items + rows.icode
    uniq = pl.Series(pair).unique().to_numpy()
    return counts(uniq % n_items, n_items)


def rare_dropped(
    dropped: dict[str, int], ci: np.ndarray, du: np.ndarray, k: int
) -> tuple[int, int]:
    """Items with fewer than ``k`` users (and their rows) when the k-core starts, counted
    into ``dropped`` as ``rare_items`` / ``rare_item_interactions``."""
    rare = (ci > 0) & (du < k)
    items, rows = int(rare.sum()), int(ci[rare].sum())
    dropped["rare_items"], dropped["rare_item_interactions"] = items, rows
    return items, rows


def kcore_round(
    rows: UserRows, ci: np.ndarray, ku: int, ki: int, du: np.ndarray | None = None, kd: int = 1
) -> UserRows | None:
    """One round of the k-core: drop rows of users with < ``ku`` rows, of items with
    < ``ki`` rows (``ci``: the items' row counts over the whole log) and of items with
    < ``kd`` distinct users (``du``, over the whole log); ``None`` if none."""
    ucode = rows.user_codes()
    ok = rows.cu[ucode] >= ku
    if ki > 1:
        ok &= ci[rows.icode] >= ki
    if kd > 1:
        assert du is not None
        ok &= du[rows.icode] >= kd
    return None if ok.all() else rows.keep(ok, ucode)


def kcore_dropped(
    dropped: dict[str, int],
    before: tuple[int, int, int],
    after: tuple[int, int, int],
    n_items: int,
    rare: tuple[int, int] = (0, 0),
) -> None:
    """k-core counts from (users, items, rows) before and after it (less the ``rare``
    items and rows counted by :func:`rare_dropped`)."""
    dropped["kcore_users"] = before[0] - after[0]
    dropped["kcore_items"] = before[1] - after[1] - rare[0]
    dropped["kcore_interactions"] = before[2] - after[2] - rare[1]
    dropped["items_of_dropped_rows"] = n_items - before[1]


def kcore(
    rows: UserRows, n_items: int, options: PrepareOptions, dropped: dict[str, int]
) -> tuple[UserRows, np.ndarray]:
    """The iterative k-core of ``rows`` (all users at once; counts into ``dropped``) and
    the kept items' row counts."""
    ci = counts(rows.icode, n_items)
    before = (int(np.count_nonzero(rows.cu)), int(np.count_nonzero(ci)), len(rows.icode))
    thresholds = kcore_thresholds(options)
    kd = drop_threshold(options)
    du = item_users(rows, n_items, options.dedup) if kd > 1 else None
    rare = rare_dropped(dropped, ci, du, kd) if du is not None else (0, 0)
    while thresholds is not None and len(rows.icode):
        nxt = kcore_round(rows, ci, *thresholds[:2], du, kd)
        if nxt is None:
            break
        rows = nxt
        ci = counts(rows.icode, n_items)
        du = item_users(rows, n_items, options.dedup) if kd > 1 else None
    after = (int(np.count_nonzero(rows.cu)), int(np.count_nonzero(ci)), len(rows.icode))
    kcore_dropped(dropped, before, after, n_items, rare)
    return rows, ci


RARE_TOKEN = "<rare item>"
"""``item_id`` of the one item that rare items become with ``rare_items: token``."""


def rare_token_items(
    rows: UserRows, ci: np.ndarray, n_items: int, options: PrepareOptions
) -> np.ndarray | None:
    """With ``rare_items: token``: the kept items seen by fewer than ``min_item_users``
    distinct users (after the k-core, so it holds in the written dataset); else ``None``."""
    k = token_threshold(options)
    if k <= 1:
        return None
    return (ci > 0) & (item_users(rows, n_items, options.dedup) < k)


def token_threshold(options: PrepareOptions) -> int:
    """``min_item_users`` when rare items become the token, else 1."""
    k = options.min_item_users
    return k if k is not None and k > 1 and options.rare_items == "token" else 1


def rare_summary(
    options: PrepareOptions, ci: np.ndarray, dropped: dict[str, int], rare: np.ndarray | None
) -> dict[str, Any] | None:
    """``prepare.rare_items`` of ``meta.json``: the setting, the action and its counts."""
    k = options.min_item_users
    if k is None:
        return None
    out: dict[str, Any] = {"min_item_users": k, "action": options.rare_items}
    if options.rare_items == "drop":
        out["items"] = dropped.get("rare_items", 0)
        out["interactions"] = dropped.get("rare_item_interactions", 0)
        return out
    n = int(rare.sum()) if rare is not None else 0
    out["items"], out["interactions"] = n, int(ci[rare].sum()) if n else 0
    kept = int(np.count_nonzero(ci)) - n
    out["token"] = {"item_id": RARE_TOKEN, "item_idx": kept + 1} if n else None
    return out


def item_lut(present_i: np.ndarray, rare: np.ndarray | None = None) -> np.ndarray:
    """item code -> ``item_idx``: 1..N over the kept items in code order; with ``rare``
    (token mode), the rare ones all map to N + 1, the token, after the others."""
    if rare is None or not rare.any():
        return np.cumsum(present_i, dtype=np.int32)
    plain = present_i & ~rare
    lut = np.cumsum(plain, dtype=np.int32)
    lut[rare] = int(plain.sum()) + 1
    return lut


def kept_item_ids(
    item_ids: pl.Series, present_i: np.ndarray, rare: np.ndarray | None = None
) -> pl.Series:
    """Original ids of the kept items in ``item_idx`` order (the token last, with
    ``rare``); an input item named :data:`RARE_TOKEN` is refused in token mode."""
    if rare is None or not rare.any():
        return item_ids.filter(pl.Series(present_i))
    ids = item_ids.cast(pl.String)
    if (ids == RARE_TOKEN).any():
        raise SeqtwinsError(
            f"an item of the log is named {RARE_TOKEN!r}, the rare-item token; rename it or "
            "use --rare-items drop"
        )
    kept = ids.filter(pl.Series(present_i & ~rare))
    return pl.concat([kept, pl.Series(ids.name, [RARE_TOKEN], dtype=pl.String)])


def user_order(user_ids: pl.Series, options: PrepareOptions) -> tuple[np.ndarray, pl.Series | None]:
    """The output order of ``user_ids`` (``order[k]`` = index of the k-th output user) and,
    with ``pseudonymize``, their pseudonyms (in the order of ``user_ids``).

    Users are written in ascending order of their id as given (callers pass ids in
    ascending order), or of their pseudonym, so that row order does not reveal raw ids.
    """
    if not options.pseudonymize:
        return np.arange(len(user_ids), dtype=np.int64), None
    key = pseudonym_key(options.key_file, options.salt_file)
    pseudo = pl.Series(
        "user_id", pseudonymize(user_ids.cast(pl.String).to_list(), key), dtype=pl.String
    )
    return pseudo.arg_sort().to_numpy().astype(np.int64), pseudo  # pseudonyms are distinct


def item_index(
    icode: np.ndarray, present_i: np.ndarray, rare: np.ndarray | None = None
) -> np.ndarray:
    """``item_idx`` 1..N over the kept items, in place when possible (int32); with
    ``rare`` (token mode) the rare items become the token (:func:`item_lut`)."""
    if rare is not None and rare.any():
        return item_lut(present_i, rare)[icode]
    if present_i.all() and icode.dtype == np.int32 and icode.flags.writeable:
        icode += 1  # in place: 1..N (icode is this function's own array)
        return icode
    if present_i.all():
        return (icode + 1).astype(np.int32)
    return np.cumsum(present_i, dtype=np.int32)[icode]  # 1..N over kept items


def history_bounds(lengths: np.ndarray, options: PrepareOptions) -> tuple[np.ndarray, np.ndarray]:
    """CSR offsets (U+1) and history ends (U) of users with these lengths."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    hist = np.maximum(lengths - options.holdout, options.min_history)
    hist = np.minimum(hist, lengths)
    return offsets, offsets[:-1] + hist


def no_users_left(source: str, dropped: dict[str, int], options: PrepareOptions) -> SeqtwinsError:
    """The error when the filters leave nothing: what each dropped, and the settings."""
    what = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in dropped.items() if v)
    rare = drop_threshold(options) > 1
    return SeqtwinsError(
        f"no users left after filtering {source} (dropped: {what or 'nothing'}); relax "
        f"{'--since / --until / ' if has_window(options) else ''}"
        f"--min-rating / --min-user-count / --min-item-count / --min-history"
        + (" / --min-item-users" if rare else "")
        + f" (now {options.min_rating} / {options.min_user_count} / {options.min_item_count} / "
        f"{options.min_history}" + (f" / {options.min_item_users})" if rare else ")")
    )


def rating_drops(dropped: dict[str, int]) -> dict[str, int]:
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
