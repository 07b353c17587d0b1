"""Non-neural floors: a bag-of-items TF-IDF + truncated-SVD user embedding, and user-based
collaborative filtering on raw item lists (``items-knn``).

TF-IDF + SVD is reported twice (docs/evaluation.md): ``tfidf-svd`` on each user's whole
history, and ``tfidf-svd-window`` on only the most recent ``encoder.max_len`` history items,
the window the encoder sees, so a reader can tell what the encoder gains from its input and
what from its model.

``items-knn`` (:func:`items_knn_scorer`) is label free and scores ``future_items`` only: a
user's nearest train users by cosine of their binary history vectors vote for the items of
their own histories. It is no representation but the classic readout a representation must
beat on item retrieval: the spike ``benchmarks/spike_knn.py`` found it above every learned
embedding and the dual encoder's own item tower on Beauty and ML-1M.

The majority-class floor needs no embedding and lives in the protocol
(:func:`seqtwins.evaluate.protocol.evaluate_embeddings`, method ``majority``); the
random-init encoder floor is an encoder with untrained weights, embedded like any run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfTransformer

from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.probe import Prediction
from seqtwins.evaluate.tasks import KIND_RETRIEVAL, Task, binary_pattern, user_item_counts

TFIDF_SVD = "tfidf-svd"
"""Method name under which the TF-IDF + SVD floor (whole history) is reported."""
TFIDF_SVD_WINDOW = "tfidf-svd-window"
"""Method name of the same floor on the encoder's window (the last ``encoder.max_len``
history items)."""
ITEMS_KNN_K = 200
"""Neighbours per user of ``items-knn``: fixed, never selected on test users. The spike
(benchmarks/results/spike_knn.md, grid K in {20, 50, 200} x p in {1, 3} chosen on half of
the valid users) picked K = 200 for 5 of its 6 methods on Beauty, ``items:knn`` included."""
ITEMS_KNN_P = 1.0
"""Exponent of the neighbours' similarity weights ``max(cos, 0) ** p``: fixed. The spike
picked p = 1 for ``items:knn`` on Beauty (1,118 selection users) and p = 3 on ML-1M, where
the choice rested on 150 users (recall@10 0.077 vs 0.073 at p = 1): the larger sample
decides."""
KNN_CHUNK = 512
"""Users per block of the (users x train users) similarities: 512 x 17,891 train users of
Beauty is 37 MB of float32."""


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


# --- user-based collaborative filtering: items-knn ----------------------------------------


def unit_rows(x: np.ndarray | sp.csr_matrix) -> np.ndarray | sp.csr_matrix:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float32)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        return sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-12)) @ x)
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def neighbours(
    query: np.ndarray | sp.csr_matrix,
    base: np.ndarray | sp.csr_matrix,
    k: int,
    own: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar rows of ``base`` for every row of ``query``: indices
    (n, k) into ``base`` and similarities (n, k), best first. ``own`` (n,) is each query's
    own row of ``base`` (-1: none): it gets similarity -inf, so a user is never its own
    neighbour (it can only fill a place when ``k`` is all of ``base``, with no weight).
    The similarities are computed :data:`KNN_CHUNK` queries at a time."""
    q, b = unit_rows(query), unit_rows(base)
    n, k = q.shape[0], min(k, b.shape[0])
    idx = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float32)
    if k == 0:  # an empty base: no neighbours
        return idx, sim
    for a in range(0, n, KNN_CHUNK):
        s = q[a : a + KNN_CHUNK] @ b.T
        s = np.asarray(s.toarray() if sp.issparse(s) else s, dtype=np.float32)  # (c, n_base)
        if own is not None:
            mine = np.asarray(own[a : a + KNN_CHUNK], dtype=np.int64)
            rows = np.flatnonzero(mine >= 0)
            s[rows, mine[rows]] = -np.inf
        top = top_k(s, k)
        idx[a : a + KNN_CHUNK] = top
        sim[a : a + KNN_CHUNK] = np.take_along_axis(s, top, axis=1)
    return idx, sim


def top_k(s: np.ndarray, k: int) -> np.ndarray:
    """(n, k) column indices of the ``k`` largest values of each row of ``s`` (n, m), best
    first; equal values, at the k-th place too, go to the smaller column. Binary history
    vectors tie often (on Beauty 283 of 2,236 valid users have a positive similarity tied
    across the 200th place), and ``argpartition``'s choice among ties depends on numpy's
    selection code for the CPU: this rule makes the neighbours, and the scores, the same
    on every machine."""
    kth = -np.partition(-s, k - 1, axis=1)[:, k - 1 : k]  # (n, 1) the k-th largest
    above = s > kth
    tied = s == kth
    need = k - above.sum(axis=1, keepdims=True)  # places left for the tied values
    take = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= need))
    cols = np.nonzero(take)[1].reshape(len(s), k)  # ascending within each row
    order = np.argsort(-np.take_along_axis(s, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


def knn_prediction(
    idx: np.ndarray, sim: np.ndarray, votes: sp.csr_matrix, prior: np.ndarray, k: int, p: float
) -> Prediction:
    """Lazy item scores from the first ``k`` neighbours (``idx``, ``sim`` from
    :func:`neighbours`): each neighbour's history items (``votes`` (n_base, N) 0/1) weighted
    by ``max(sim, 0) ** p``. ``prior`` (N,) in [0, 1) is added scaled by half the user's
    smallest positive weight, so an item no neighbour voted for never outranks a voted one;
    it orders the unvoted items and items with equal votes by the prior (and can swap two
    voted items whose votes differ by less than it). Rows are computed per chunk of users
    when scored: (users x items) is never held whole."""
    n, n_base = idx.shape[0], votes.shape[0]
    k = min(k, idx.shape[1])  # a base smaller than k: all of it
    w = np.maximum(sim[:, :k], 0.0) ** p  # (n, k)
    # scale the tie-break below the smallest possible positive vote of each user
    floor = np.where(w > 0, w, np.inf).min(axis=1, initial=np.inf)
    floor = np.where(np.isfinite(floor), floor, 1.0).astype(np.float32)
    classes = np.arange(votes.shape[1], dtype=np.int64)

    def rows(a: int, b: int) -> np.ndarray:
        m = b - a
        wm = sp.csr_matrix(
            (w[a:b].ravel(), idx[a:b, :k].ravel(), np.arange(m + 1) * k), shape=(m, n_base)
        )
        out = (wm @ votes).toarray().astype(np.float32)
        out += 0.5 * floor[a:b, None] * prior[None, :]
        return out

    return Prediction.lazy(n, classes, rows)


def knn_base(ds: SequenceDataset) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """What ``items-knn`` reads, all label free: every user's binary *pretraining* history
    over items (U, N) (never the future window, which holds the labels), the train
    ``user_idx`` (the only possible neighbours) and the tie-break prior (N,) in [0, 1):
    each item's count over the train users' histories, scaled."""
    history = binary_pattern(user_item_counts(ds, future=False))  # (U, N) 0/1
    train = ds.split_users("train").astype(np.int64)
    pop = np.asarray(history[train].sum(axis=0)).ravel()
    prior = (pop / (pop.max(initial=0.0) + 1.0)).astype(np.float32)
    return history, train, prior


def items_knn_scorer(
    ds: SequenceDataset, k: int = ITEMS_KNN_K, p: float = ITEMS_KNN_P
) -> Callable[[Task, np.ndarray], Prediction | None]:
    """The label-free ``items-knn`` floor as a protocol scorer: for a retrieval task
    (``future_items``; None for every other task) user ``u``'s score of item ``j`` is
    ``sum_v max(cos(u, v), 0) ** p * [j in history(v)]`` over the ``k`` train users ``v``
    most cosine-similar to ``u`` by binary history vectors (:func:`knn_base`; ``u`` itself
    never), ties and unvoted items ordered by train popularity (:func:`knn_prediction`).
    ``u``'s own history items are removed by the protocol (``Task.exclude``), as for every
    method. K and p are fixed (:data:`ITEMS_KNN_K`, :data:`ITEMS_KNN_P`): a floor selected
    on test users would be no floor."""

    def scorer(task: Task, users: np.ndarray) -> Prediction | None:
        if task.kind != KIND_RETRIEVAL:
            return None
        users = np.asarray(users, dtype=np.int64)
        history, train, prior = knn_base(ds)
        row = np.full(ds.num_users, -1, dtype=np.int64)
        row[train] = np.arange(len(train))  # a train user's own row of the base
        base = history[train]  # (n_train, N): the neighbours' vectors and their votes
        idx, sim = neighbours(history[users], base, k, own=row[users])
        return knn_prediction(idx, sim, base, prior, k, p)

    return scorer
