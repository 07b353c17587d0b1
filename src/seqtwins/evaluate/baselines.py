"""Non-neural floors: a bag-of-items TF-IDF + truncated-SVD user embedding.

Reported twice (docs/evaluation.md): ``tfidf-svd`` on each user's whole history, and
``tfidf-svd-window`` on only the most recent ``encoder.max_len`` history items, the window
the encoder sees, so a reader can tell what the encoder gains from its input and what from
its model.

The majority-class floor needs no embedding and lives in the protocol
(:func:`seqtwins.evaluate.protocol.evaluate_embeddings`, method ``majority``); the
random-init encoder floor is an encoder with untrained weights, embedded like any run.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfTransformer

from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.tasks import user_item_counts

TFIDF_SVD = "tfidf-svd"
"""Method name under which the TF-IDF + SVD floor (whole history) is reported."""
TFIDF_SVD_WINDOW = "tfidf-svd-window"
"""Method name of the same floor on the encoder's window (the last ``encoder.max_len``
history items)."""


def history_count_matrix(ds: SequenceDataset, max_len: int | None = None) -> sp.csr_matrix:
    """(U, num_items) CSR matrix of item counts in each user's *history* (never the future).

    With ``max_len`` only each user's most recent ``max_len`` history items count (the
    encoder's window). Column ``j`` is ``item_idx = j + 1``; repeat visits are summed.
    """
    if max_len is not None and max_len < 1:
        raise SeqtwinsError(f"history window max_len={max_len} must be >= 1")
    return user_item_counts(ds, future=False, max_len=max_len)


def tfidf_svd_embeddings(
    ds: SequenceDataset,
    dim: int = 64,
    seed: int = 0,
    n_iter: int = 5,
    max_len: int | None = None,
) -> np.ndarray:
    """(U, dim) float32 embedding of every user from a TF-IDF bag of history items + SVD.

    TF-IDF (scikit-learn defaults: smooth idf, l2-normalised rows) and the truncated SVD
    (randomized, ``random_state=seed``, so the result is deterministic) are fitted on
    *train* users' histories only, then applied to all users. ``dim`` should match the
    encoder's embedding dimension so the floor has the same capacity; ``max_len`` (the
    encoder's ``max_len``) limits every user to the most recent history items, for
    ``tfidf-svd-window``.
    """
    if dim < 1 or dim >= ds.num_items:
        raise SeqtwinsError(
            f"tfidf-svd dim={dim} must lie in 1..{ds.num_items - 1} (number of items - 1)"
        )
    train = ds.split_users("train")
    if len(train) == 0:
        raise SeqtwinsError(f"{ds.path} has no train users; tfidf-svd is fitted on them")
    counts = history_count_matrix(ds, max_len)  # (U, N)
    tfidf = TfidfTransformer().fit(counts[train])
    x = tfidf.transform(counts)  # (U, N) sparse, rows l2-normalised
    svd = TruncatedSVD(n_components=dim, algorithm="randomized", n_iter=n_iter, random_state=seed)
    svd.fit(x[train])
    return np.ascontiguousarray(svd.transform(x), dtype=np.float32)  # (U, dim)
