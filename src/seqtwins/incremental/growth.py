"""Growing an item table when an update brings new items.

Old rows are kept by original item id; a new item's row starts as the mean of the old
rows of the known items it co-occurs with in the new training histories (weighted by how
often), so that it starts where its neighbours are rather than at random. Only an item
with no known neighbour gets a random row (N(0, 0.02), the encoder's own init).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
from torch import Tensor

from seqtwins.data.dataset import PAD, Sequences


def vocab_map(old_ids: pl.Series, new_ids: pl.Series) -> np.ndarray:
    """``(new vocab_size,)`` int64: the old item index of each new item index (by original
    id), ``0`` (padding) for items the old table lacks; padding maps to padding and the new
    MASK token to the old one. Ids are tables in ``item_idx`` order (index 1 first)."""
    old = old_ids.cast(pl.String).to_frame("item_id").with_row_index("old")
    found = (
        new_ids.cast(pl.String)
        .to_frame("item_id")
        .join(old, on="item_id", how="left", maintain_order="left")["old"]
    )
    out = np.zeros(len(new_ids) + 2, dtype=np.int64)
    out[1:-1] = np.where(found.is_null().to_numpy(), -1, found.fill_null(0).to_numpy()) + 1
    out[-1] = len(old_ids) + 1  # MASK -> MASK
    return out


def presence(seqs: Sequences, users: np.ndarray, vocab: int) -> sp.csc_matrix:
    """``(len(users), vocab)`` 0/1: which items each of ``users`` holds in its history."""
    starts, ends = seqs.offsets[users], seqs.history_end[users]
    lengths = ends - starts
    rows = np.repeat(np.arange(len(users)), lengths)
    # positions of every history interaction of ``users``: start of its row + rank in row
    pos = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    items = np.asarray(seqs.items)[pos]
    a = sp.csc_matrix((np.ones(len(items), np.float32), (rows, items)), shape=(len(users), vocab))
    a.data[:] = 1.0  # duplicates summed: back to presence
    return a


def cooccurrence(held: sp.csc_matrix, rows: np.ndarray, cols: np.ndarray) -> sp.csr_matrix:
    """``(len(rows), len(cols))`` counts of users holding both item ``rows[i]`` and item
    ``cols[j]`` (``held`` from :func:`presence`): only the block asked for, never the
    ``(vocab, vocab)`` product, which grows with the square of the catalogue."""
    return (held[:, rows].T @ held[:, cols]).tocsr()


def grow_item_table(
    old_weight: Tensor,
    new_to_old: np.ndarray,
    held: sp.csc_matrix,
    generator: torch.Generator,
    std: float = 0.02,
) -> tuple[Tensor, dict[str, int]]:
    """The new item table ``(new vocab, D)``: rows of known items (``new_to_old > 0``) and
    padding / MASK copied from ``old_weight``; each new item the co-occurrence-weighted mean
    of the old rows of the known items it co-occurs with in the histories ``held`` (from
    :func:`presence`, new indices); a random row only where it has none. Also counts: kept,
    from_neighbours, random."""
    vocab, dim = len(new_to_old), old_weight.shape[1]
    out = torch.empty(vocab, dim, dtype=old_weight.dtype)
    known = new_to_old > 0
    out[known] = old_weight[torch.from_numpy(new_to_old[known])]
    out[PAD] = old_weight[PAD]
    new = np.flatnonzero(~known)
    new = new[new != PAD]
    n_neigh = 0
    if len(new):
        known_idx = np.flatnonzero(known)
        m = cooccurrence(held, new, known_idx)  # (new, known) co-occurrence counts
        weights = torch.from_numpy(np.asarray(m.sum(1)).ravel()).to(old_weight.dtype)
        mean = torch.from_numpy((m @ out[known_idx].numpy()).astype(np.float32)).to(out.dtype)
        has = weights > 0
        n_neigh = int(has.sum())
        rows = torch.from_numpy(new)
        rand = torch.randn(len(new), dim, generator=generator, dtype=out.dtype) * std
        out[rows] = torch.where(has[:, None], mean / weights.clamp_min(1)[:, None], rand)
    stats = {
        "kept": int(known.sum()) - 1,
        "from_neighbours": n_neigh,
        "random": len(new) - n_neigh,
    }  # fmt: skip  (kept: without MASK)
    return out, stats
