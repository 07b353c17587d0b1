"""The item table grows for new items: old rows kept, new ones from their neighbours."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from seqtwins.data.dataset import Sequences
from seqtwins.incremental.growth import cooccurrence, grow_item_table, presence, vocab_map


def test_vocab_map_by_original_id():
    old = pl.Series(["a", "b", "c"])
    new = pl.Series(["b", "x", "a", "y"])  # any order: matched by id
    # padding, b, x, a, y, MASK  ->  0, 2, 0, 1, 0, old MASK (4)
    assert vocab_map(old, new).tolist() == [0, 2, 0, 1, 0, 4]


def test_cooccurrence_counts_users_holding_both_items():
    seqs = Sequences.from_lists([[1, 2, 2, 3], [2, 3, 4], [4, 1]], history_lens=[4, 3, 1])
    held = presence(seqs, np.array([0, 1, 2]), vocab=6)
    c = cooccurrence(held, np.arange(6), np.arange(6)).toarray()
    assert c[2, 3] == 2 and c[1, 2] == 1 and c[1, 4] == 0  # user 2's history is [4] only
    assert c[2, 2] == 2  # repeats count once per user
    # a block is the same block of the whole product
    rows, cols = np.array([4, 1]), np.array([3, 2, 1])
    np.testing.assert_array_equal(cooccurrence(held, rows, cols).toarray(), c[rows][:, cols])


def test_grown_table_keeps_old_rows_and_starts_new_ones_at_their_neighbours():
    old_w = torch.randn(5, 3)  # padding, 3 items, MASK
    old_w[0] = 0
    new_to_old = np.array([0, 1, 2, 3, 0, 0, 4])  # items 4, 5 new; 6 = MASK
    seqs = Sequences.from_lists([[1, 4, 2], [4, 3], [5]])
    held = presence(seqs, np.arange(3), vocab=7)
    gen = torch.Generator().manual_seed(0)
    w, stats = grow_item_table(old_w, new_to_old, held, gen)
    assert w.shape == (7, 3) and stats == {"kept": 3, "from_neighbours": 1, "random": 1}
    torch.testing.assert_close(w[1:4], old_w[1:4])
    torch.testing.assert_close(w[6], old_w[4])  # MASK stays MASK
    assert float(w[0].abs().sum()) == 0.0
    # item 4 co-occurs with items 1 and 2 (user 0) and 3 (user 1): the mean of their rows
    torch.testing.assert_close(w[4], (old_w[1] + old_w[2] + old_w[3]) / 3)
    # item 5 has no known neighbour: a small random row
    assert 0 < float(w[5].abs().max()) < 0.2
