"""Update datasets (``prepare --update OLD``): ids that stay stable across time windows.

A model trained on ``OLD`` indexes its item table by ``item_idx``; a dataset prepared from
a later window of the log with ``--update OLD`` keeps every item of ``OLD`` at its
``item_idx`` (matched by original id, also when the item does not occur in the new window)
and appends the items ``OLD`` did not have, in ascending order of original id. Users keep
their original ids (rows stay in ascending id order, as always) and the users of ``OLD``
keep their split, so that a user held out for evaluation before is never trained on
after; new users are split by ``split`` / ``split_seed`` among themselves.

Both paths of ``prepare`` call :func:`apply_update` from :func:`seqtwins.data.finish.finish`,
so the result is the same on each.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from seqtwins.data.dataset import SPLITS, SequenceDataset, Sequences, is_dataset, shown
from seqtwins.data.options import PrepareOptions
from seqtwins.data.privacy import dataset_key
from seqtwins.data.steps import assign_splits
from seqtwins.errors import SeqtwinsError


def check_parent(parent: Path, out: Path, options: PrepareOptions | None = None) -> None:
    """Refuse an ``--update`` that is not a dataset, or that is ``--out`` itself, or whose
    user ids the new window's would not match (pseudonymised one way and not the other, or
    under another key: every old user would silently become a new one) -- before any
    work."""
    if not is_dataset(parent):
        raise SeqtwinsError(
            f"--update {shown(parent)} is not a seqtwins dataset; give the dataset this one "
            "updates (written by seqtwins prepare)"
        )
    if parent.resolve() == out.resolve():
        raise SeqtwinsError(
            f"--update {shown(parent)} is --out itself; write the update to another folder"
        )
    if options is not None:
        _check_pseudonyms(json.loads((parent / "meta.json").read_text(encoding="utf-8")),
                          shown(parent), options)  # fmt: skip


def _check_pseudonyms(meta: Mapping[str, Any], where: str, options: PrepareOptions) -> None:
    """The update's users must be named as the parent's: both raw ids, or both pseudonyms
    under the parent's key (:func:`seqtwins.data.privacy.dataset_key` checks the key)."""
    was = bool((meta.get("prepare") or {}).get("pseudonymized"))
    if was != options.pseudonymize:
        how = (("is", "would not be", "add --pseudonymize with the key it was made with")
               if was else ("is not", "would be", "drop --pseudonymize"))  # fmt: skip
        raise SeqtwinsError(
            f"--update {where} {how[0]} pseudonymised and this dataset {how[1]}: its users "
            f"would not match the old ones; {how[2]}"
        )
    if was:
        dataset_key(meta, f"--update {where}", options.key_file or options.salt_file)


def item_lookup(old_ids: pl.Series, kept_ids: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """``lut`` (K+1,) int32 with ``lut[k]`` the new ``item_idx`` of kept item ``k`` (1..K,
    0 = padding stays 0), and the item ids of the new table: every old id in its old order,
    then the kept ids the old table lacks, in their (ascending) order."""
    old = old_ids.cast(pl.String)
    kept = kept_ids.cast(pl.String)
    found = kept.to_frame("item_id").join(
        old.to_frame("item_id").with_row_index("pos"),
        on="item_id",
        how="left",
        maintain_order="left",
    )["pos"]
    is_new = found.is_null().to_numpy()
    pos = found.fill_null(0).to_numpy().astype(np.int64)
    new_pos = len(old) + np.cumsum(is_new) - 1
    lut = np.zeros(len(kept) + 1, dtype=np.int32)
    lut[1:] = np.where(is_new, new_pos, pos) + 1
    return lut, pl.concat([old, kept.filter(pl.Series(is_new))]).rename("item_id")


def remap_items(sequences: Sequences | Mapping[str, Path], lut: np.ndarray) -> Sequences | None:
    """Apply ``lut`` to the interactions' item indices: a new :class:`Sequences` in memory,
    or in place in the (not yet published) ``items.npy`` of the out-of-core path."""
    if isinstance(sequences, Sequences):
        return replace(sequences, items=lut[sequences.items])
    items = np.load(sequences["items"], mmap_mode="r+", allow_pickle=False)
    step = 1 << 20
    for a in range(0, len(items), step):
        items[a : a + step] = lut[items[a : a + step]]
    items.flush()
    del items
    return None


def keep_splits(
    user_ids: pl.Series, parent: SequenceDataset, fractions: tuple[float, float, float], seed: int
) -> np.ndarray:
    """Split per user: a user of ``parent`` keeps its split; the others are split among
    themselves by ``fractions`` and ``seed`` (:func:`seqtwins.data.steps.assign_splits`)."""
    old = parent.users.select("user_id", "split")
    known = (
        user_ids.cast(pl.String)
        .to_frame("user_id")
        .join(old, on="user_id", how="left", maintain_order="left")["split"]
    )
    is_new = known.is_null().to_numpy()
    split = known.fill_null("").to_numpy().astype(object)
    split[is_new] = assign_splits(int(is_new.sum()), fractions, seed)
    return split.astype(str)


def lineage(parent: SequenceDataset, n_items: int, users: pl.DataFrame) -> dict[str, Any]:
    """The ``parent`` section of ``meta.json``: the parent's path and content hash and
    what this update kept and added."""
    old_users = users["user_id"].is_in(parent.users["user_id"].implode())
    n_kept = int(old_users.sum())
    return {
        "path": str(parent.path),
        "content_hash": parent.content_hash,
        "items_kept": parent.num_items,
        "items_added": n_items - parent.num_items,
        "users_kept": n_kept,
        "users_added": users.height - n_kept,
        "splits_kept": {s: int(((users["split"] == s) & old_users).sum()) for s in SPLITS},
    }
