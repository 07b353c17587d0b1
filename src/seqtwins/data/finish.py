"""The last step of ``prepare``, one for both of its paths: tables, splits, ``meta.json``
and the atomic write of the dataset directory.

The whole-log path hands over its arrays in memory (:class:`~seqtwins.data.dataset.Sequences`),
the out-of-core path as ``.npy`` files it assembled on disk; the directory, its
``meta.json`` and its content hash are the same for the same content.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from seqtwins.data.dataset import (
    SPLITS,
    SequenceDataset,
    Sequences,
    write_dataset,
    write_dataset_files,
)
from seqtwins.data.formats import RawLog
from seqtwins.data.memory import peak_rss
from seqtwins.data.options import PrepareOptions, PrepareSummary
from seqtwins.data.privacy import key_id, pseudonym_key
from seqtwins.data.steps import assign_splits
from seqtwins.data.update import item_lookup, keep_splits, lineage, remap_items


@dataclass
class Prepared:
    """What both paths of ``prepare`` hand to :func:`finish`."""

    log: RawLog
    """The log read (its frame may be empty): source, format, side tables, row counts."""
    sequences: Sequences | Mapping[str, Path]
    """The CSR arrays in memory, or ``.npy`` files of them (moved into the dataset)."""
    item_ids: pl.Series
    """Original ids of the kept items, in ``item_idx`` order."""
    user_ids: pl.Series
    """Original ids of the kept users, in output row order."""
    pseudonyms: pl.Series | None
    """With ``pseudonymize``: the kept users' pseudonyms, in output row order."""
    input_counts: dict[str, int]
    dropped: dict[str, int]
    rare_items: dict[str, Any] | None = None
    """With ``min_item_users``: :func:`seqtwins.data.steps.rare_summary`."""


def tables(
    log: RawLog, item_ids: pl.Series, user_ids: pl.Series
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The item and user tables of the kept items and users (with the log's side tables)."""
    items = pl.DataFrame({"item_id": item_ids.cast(pl.String)})
    if log.items is not None:
        items = items.join(log.items, on="item_id", how="left", maintain_order="left")
        if "categories" in items.columns:
            items = items.with_columns(
                pl.col("categories").fill_null(pl.lit([], dtype=pl.List(pl.String)))
            )
    users = pl.DataFrame({"user_id": user_ids.cast(pl.String)})
    if log.users is not None:
        users = users.join(log.users, on="user_id", how="left", maintain_order="left")
    return items, users


def prepare_stats(
    log: RawLog,
    input_counts: dict[str, int],
    dropped: dict[str, int],
    has_times: bool,
    options: PrepareOptions,
    rare_items: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``prepare`` section of ``meta.json``: what was read and what each step dropped
    (with ``min_item_users``, ``rare_items``; with ``pseudonymize``, the key's public id,
    never the key)."""
    stats: dict[str, Any] = {
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
    if rare_items is not None:
        stats["rare_items"] = rare_items
        if rare_items.get("token"):
            stats["item_order"] += f"; the rare-item token last ({rare_items['token']['item_idx']})"
    if options.pseudonymize:
        stats["pseudonym_key_id"] = key_id(pseudonym_key(options.key_file, options.salt_file))
    return stats


def finish(
    out: Path,
    prepared: Prepared,
    options: PrepareOptions,
    seconds: dict[str, float],
    phase: tuple[str, float],
    mode: str = "in memory",
) -> PrepareSummary:
    """Write ``prepared`` to the dataset directory ``out`` (atomically) and report it.

    ``seconds`` holds the wall time of the phases done; ``phase`` names the phase in
    progress and its start (it ends where the write begins, timed as ``write``)."""
    p, log = prepared, prepared.log
    parent = None if options.update is None else SequenceDataset.open(options.update)
    if parent is not None:  # ids stable across windows: old items first (seqtwins.data.update)
        lut, item_ids = item_lookup(parent.items["item_id"], p.item_ids)
        p = replace(p, sequences=remap_items(p.sequences, lut) or p.sequences, item_ids=item_ids)
    items, users = tables(log, p.item_ids, p.user_ids)
    if p.pseudonyms is not None:
        users = users.with_columns(p.pseudonyms.alias("user_id"))
    if parent is None:
        split = assign_splits(users.height, options.split, options.split_seed)
    else:
        split = keep_splits(users["user_id"], parent, options.split, options.split_seed)
    users = users.with_columns(pl.Series("split", split, dtype=pl.String))
    if isinstance(p.sequences, Sequences):
        present = {n for n in ("times", "ratings") if getattr(p.sequences, n) is not None}
        n_interactions = p.sequences.num_interactions
    else:
        present = {n for n in ("times", "ratings") if n in p.sequences}
        n_interactions = len(np.load(p.sequences["items"], mmap_mode="r", allow_pickle=False))
    stats = prepare_stats(log, p.input_counts, p.dropped, "times" in present, options,
                          p.rare_items)  # fmt: skip
    extra: dict[str, Any] = {"prepare": stats}
    if parent is not None:
        stats["item_order"] = (
            f"the items of {parent.path} at their item_idx, then new items in ascending "
            "order of original item id"
        )
        extra["parent"] = lineage(parent, items.height, users)
    t_write = time.perf_counter()
    seconds[phase[0]] = t_write - phase[1]
    common: dict[str, Any] = dict(
        items=items,
        users=users,
        source=f"{log.format}:{log.source}",
        params={"format": log.format, **options.to_params()},
        extra_meta=extra,
        overwrite=options.overwrite,
    )
    if isinstance(p.sequences, Sequences):
        write_dataset(out, sequences=p.sequences, **common)
    else:
        write_dataset_files(out, arrays=p.sequences, **common)
    seconds["write"] = time.perf_counter() - t_write
    return PrepareSummary(
        out=out,
        format=log.format,
        num_users=users.height,
        num_items=items.height,
        num_interactions=n_interactions,
        splits={s: int(np.sum(split == s)) for s in SPLITS},
        fields={
            "times": "times" in present,
            "ratings": "ratings" in present,
            "categories": "categories" in items.columns,
            "user_attributes": [c for c in users.columns if c not in ("user_id", "split")],
        },
        dropped=p.dropped,
        rows_read=log.rows_read,
        bad_rows_skipped=log.bad_rows_skipped,
        peak_rss=peak_rss(),
        mode=mode,
        seconds=seconds,
        rare_items=p.rare_items,
    )
