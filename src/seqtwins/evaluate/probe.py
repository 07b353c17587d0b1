"""Probes on frozen user embeddings, and the metrics they are scored with.

Two probe kinds (docs/evaluation.md, "Probes on frozen embeddings"):

- ``linear`` — a linear classifier on standardised embeddings, with three solvers:

  * ``ridge`` (default): the regularised least-squares classifier (one-hot targets,
    closed form through one eigendecomposition of the D x D Gram matrix, intercept =
    class frequencies). Each L2 strength of the grid costs one D x D x K product, so the
    strength is chosen on valid users from a wide grid nearly for free, and the fit is
    deterministic (seeds vary only the labelled subset). Regularised least squares
    classifies about as well as logistic regression (Rifkin & Klautau, JMLR 2004, "In
    defense of one-vs-all classification"); its cost does not grow with users x classes
    x epochs, which is what makes ``next_item`` over 20k items, or 661 Yelp categories x
    24k users, affordable on 2 cores. Measured on ML-1M tasks (TF-IDF+SVD features) its
    test accuracy was within a few points of ``logistic`` either way; its macro-F1 is
    lower (least squares favours frequent classes).
  * ``logistic``: multinomial logistic regression, a PyTorch softmax head trained with
    Adam on the mean cross-entropy + L2 penalty; the L2 grid is trained as one batched
    model (Adam is per coordinate, so G heads summed are G independent runs) and the
    stopping point is chosen by early stopping on valid users. 10-300x slower than
    ``ridge``.
  * ``auto``: ``logistic`` for a task whose labelled train users x classes is at most
    :attr:`ProbeConfig.auto_logistic_max`, ``ridge`` above (decided once per task, so
    every method and label budget of a task uses the same solver).

- ``mlp`` — one hidden ReLU layer, trained like ``logistic``.

Both learn only the classes present among the labelled train users; every other class
ranks below all of them (an L2-regularised softmax pushes a class with no positive
example below the rest as well). Selection (L2 strength, epoch) uses **valid** users
only; :meth:`FittedProbe.predict` on test users is the single scoring pass.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from threadpoolctl import ThreadpoolController

from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.tasks import binary_pattern

PROBE_KINDS = ("linear", "mlp")
SOLVERS = ("auto", "ridge", "logistic")


# --- predictions and metrics ---------------------------------------------------------------


class Prediction:
    """Class scores for n users over the listed classes; higher = more likely.

    ``scores`` (n, K) float32, ``classes`` (K,) int64 ascending class codes. A class not
    listed ranks below every listed one; ties break towards the smaller class code, the
    same rule ``argmax`` follows, so accuracy@1 equals HR@1.

    A *lazy* prediction (:meth:`lazy`) computes its rows on demand (:meth:`rows`), so that
    scores over thousands of items for thousands of users are never held at once: the
    set metrics (:func:`score` with a sparse truth) read it in chunks of users.
    """

    def __init__(self, scores: np.ndarray, classes: np.ndarray) -> None:
        scores, classes = np.asarray(scores), np.asarray(classes, dtype=np.int64)
        if scores.ndim != 2 or scores.shape[1] != len(classes):
            raise ValueError(f"scores {scores.shape} must be (n, {len(classes)}) for the classes")
        _check_classes(classes)
        _check_finite(scores)
        self._scores: np.ndarray | None = scores
        self._rows: Callable[[int, int], np.ndarray] | None = None
        self.classes = classes
        self.num_rows = int(scores.shape[0])

    @classmethod
    def lazy(
        cls, n: int, classes: np.ndarray, rows: Callable[[int, int], np.ndarray]
    ) -> Prediction:
        """A prediction for ``n`` users whose scores ``rows(start, stop)`` returns as a
        (stop - start, K) array when asked."""
        out = cls.__new__(cls)
        out.classes = np.asarray(classes, dtype=np.int64)
        _check_classes(out.classes)
        out._scores, out._rows, out.num_rows = None, rows, int(n)
        return out

    @classmethod
    def full(cls, scores: np.ndarray) -> Prediction:
        """Scores over all classes ``0..C-1`` (the form a fine-tuning hook returns)."""
        scores = np.asarray(scores, dtype=np.float32)
        return cls(scores, np.arange(scores.shape[1], dtype=np.int64))

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Scores (stop - start, K) of users ``start:stop``."""
        if self._scores is not None:
            return self._scores[start:stop]
        assert self._rows is not None
        out = np.asarray(self._rows(start, stop))
        if out.shape != (stop - start, len(self.classes)):
            raise ValueError(
                f"lazy rows {start}:{stop} have shape {out.shape}; expected "
                f"({stop - start}, {len(self.classes)})"
            )
        _check_finite(out)
        return out

    @property
    def scores(self) -> np.ndarray:
        """(n, K) all scores (computed now for a lazy prediction)."""
        if self._scores is None:
            return self.rows(0, self.num_rows)
        return self._scores

    def top1(self, chunk: int = 2048) -> np.ndarray:
        """(n,) predicted class code (first maximum); a lazy prediction's rows are read
        once, ``chunk`` users at a time."""
        out = np.zeros(self.num_rows, dtype=np.int64)
        if len(self.classes) == 0:
            return out
        for a in range(0, self.num_rows, chunk):
            b = min(a + chunk, self.num_rows)
            out[a:b] = self.classes[np.argmax(self.rows(a, b), axis=1)]
        return out

    def ranks(self, y: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """(n,) 0-based rank of the true class ``y`` among all classes; the rows are read
        once, ``chunk`` users at a time."""
        y = np.asarray(y, dtype=np.int64)
        k = len(self.classes)
        col = np.searchsorted(self.classes, y)
        listed = (
            (col < k) & (self.classes[np.minimum(col, max(k - 1, 0))] == y)
            if k
            else (np.zeros(len(y), dtype=bool))
        )
        # unlisted classes follow all listed ones, in class-code order
        ranks = k + y - col
        cols = np.arange(k)
        for a in range(0, len(y), chunk):
            b = min(a + chunk, len(y))
            sel = np.flatnonzero(listed[a:b])  # chunk rows whose class is listed
            if not len(sel):
                continue
            s = self.rows(a, b)[sel]  # (b', K)
            c = col[a + sel]
            st = s[np.arange(len(sel)), c][:, None]  # (b', 1)
            ahead = (s > st) | ((s == st) & (cols[None, :] < c[:, None]))
            ranks[a + sel] = ahead.sum(axis=1)
        return ranks


def _check_classes(classes: np.ndarray) -> None:
    if len(classes) > 1 and np.any(np.diff(classes) <= 0):
        raise ValueError("classes must be strictly ascending")


def _check_finite(scores: np.ndarray) -> None:
    if not np.all(np.isfinite(scores)):
        raise SeqtwinsError("a prediction contains NaN or infinite scores")


def score(
    pred: Prediction,
    y: np.ndarray | sp.spmatrix,
    metrics: tuple[str, ...],
    exclude: sp.spmatrix | None = None,
) -> dict[str, float | None]:
    """The named metrics of ``pred`` against the truth ``y``; None where undefined.

    Single-label truth ``y`` (n,) int class codes: ``accuracy``/``accuracy@1``: top-1
    hits. ``hr@K``: true class within the top K of all classes. ``ndcg@K``:
    ``1/log2(rank+2)`` inside the top K (one relevant class). ``macro_f1``: mean F1 over
    the classes in ``y`` or predicted (scikit-learn's ``f1_score(average="macro",
    zero_division=0)``). ``auc``: ROC AUC of the class-1 score margin (binary tasks; None
    if ``y`` holds one class).

    Set truth ``y`` (n, C) sparse 0/1 (``multilabel`` / ``retrieval`` tasks, see
    :func:`set_user_values`): ``map``, ``recall@K``, ``ndcg@K``; ``exclude`` (n, C) removes
    classes from each user's ranking.
    """
    return score_users(pred, y, metrics, exclude)[0]


def score_users(
    pred: Prediction,
    y: np.ndarray | sp.spmatrix,
    metrics: tuple[str, ...],
    exclude: sp.spmatrix | None = None,
) -> tuple[dict[str, float | None], dict[str, np.ndarray]]:
    """:func:`score`, plus the per-user values (n,) float64 of every metric that is a
    mean over users (all but ``macro_f1`` and ``auc``): what paired tests resample."""
    if sp.issparse(y):
        values = set_user_values(pred, sp.csr_matrix(y), metrics, exclude)
        return {m: float(v.mean()) if len(v) else None for m, v in values.items()}, values
    if exclude is not None:
        raise ValueError("exclude applies to set truth (multilabel / retrieval) only")
    y = np.asarray(y, dtype=np.int64)
    out: dict[str, float | None] = {}
    per_user: dict[str, np.ndarray] = {}
    top1: np.ndarray | None = None
    ranks: np.ndarray | None = None
    for m in metrics:
        if m in ("accuracy", "accuracy@1"):
            top1 = pred.top1() if top1 is None else top1
            per_user[m] = (top1 == y).astype(np.float64)
        elif m == "macro_f1":
            top1 = pred.top1() if top1 is None else top1
            out[m] = macro_f1(y, top1)
        elif m.startswith(("hr@", "ndcg@")):
            k = int(m.split("@")[1])
            ranks = pred.ranks(y) if ranks is None else ranks
            if m.startswith("hr@"):
                per_user[m] = (ranks < k).astype(np.float64)
            else:
                per_user[m] = np.where(
                    ranks < k, 1.0 / np.log2(ranks.astype(np.float64) + 2.0), 0.0
                )
        elif m == "auc":
            out[m] = _auc(pred, y)
        else:
            raise ValueError(f"unknown metric {m!r}")
        if m in per_user:
            out[m] = float(np.mean(per_user[m]))
    return out, per_user


# --- set metrics (multilabel / retrieval tasks) --------------------------------------------

SET_CHUNK_BYTES = 96 << 20
"""Working memory of one chunk of users in :func:`positive_ranks` (the full score rows of
the chunk and one compared row per target)."""


def _ranks_exact(full: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """(P,) rank of class ``col`` in row ``row`` of ``full`` (b, C): the classes scoring
    higher, plus those tied with a smaller code (NaN = excluded: compares False)."""
    s = full[row]  # (P, C)
    key = s[np.arange(len(row)), col][:, None]  # (P, 1) the target's own score
    code = np.arange(full.shape[1])
    return (s > key).sum(axis=1) + ((s == key) & (code[None, :] < col[:, None])).sum(axis=1)


def _ranks_capped(
    scores: np.ndarray,
    classes: np.ndarray,
    pos: np.ndarray,
    excluded: sp.csr_matrix | None,
    row: np.ndarray,
    col: np.ndarray,
    cap: int,
) -> np.ndarray | None:
    """:func:`_ranks_exact` where it is below ``cap``, else ``cap``, computed on the listed
    classes alone: ``scores`` (b, L) of ``classes`` (L,), ``pos`` (C,) the column of each
    class code in ``scores`` (-1 = unlisted), ``excluded`` (b, C). A target scoring below
    its row's ``cap``-th largest score ranks at least ``cap``; one scoring above it can be
    outranked only by the ``cap`` largest, so it is compared with those alone; one tied
    with that threshold is counted exactly. An unlisted target follows every listed class,
    so it ranks at least ``cap``. None when a row has fewer than ``cap`` listed classes left
    after exclusion (the caller takes the exact path). O(L) per row, not O(C) per target."""
    vals = np.array(scores, dtype=np.float32)  # (b, L), a copy: exclusions are set below
    if excluded is not None:
        er = np.repeat(np.arange(len(vals)), np.diff(excluded.indptr))
        ec = pos[excluded.indices]
        keep = ec >= 0
        vals[er[keep], ec[keep]] = -np.inf  # below every listed score: never ahead
        left = vals.shape[1] - np.bincount(er[keep], minlength=len(vals))
        if left.min(initial=cap) < cap:
            return None
    # torch's top-k is ~10x numpy's argpartition on (users x 12k items)
    top_t = torch.topk(torch.from_numpy(vals), cap, dim=1, sorted=False)
    top_vals, codes = top_t.values.numpy(), classes[top_t.indices.numpy()]  # (b, cap) each
    thr = top_vals.min(axis=1)  # (b,) the cap-th largest score
    tp = pos[col]  # (P,) column of each target; -1: unlisted, ranks >= cap
    key = np.where(tp >= 0, vals[row, np.maximum(tp, 0)], -np.inf)  # (P,)
    out = np.full(len(row), cap, dtype=np.int64)
    fast = (tp >= 0) & (key > thr[row])
    r, c, k = row[fast], col[fast], key[fast][:, None]
    out[fast] = (top_vals[r] > k).sum(axis=1) + ((top_vals[r] == k) & (codes[r] < c[:, None])).sum(
        axis=1
    )
    tied = np.flatnonzero((tp >= 0) & (key == thr[row]))
    if len(tied):
        sv, kt = vals[row[tied]], key[tied][:, None]  # (T, L), (T, 1)
        exact = (sv > kt).sum(axis=1) + ((sv == kt) & (classes[None, :] < col[tied][:, None])).sum(
            axis=1
        )
        out[tied] = np.minimum(exact, cap)
    return out


def positive_ranks(
    pred: Prediction,
    targets: sp.csr_matrix,
    exclude: sp.spmatrix | None = None,
    chunk_bytes: int = SET_CHUNK_BYTES,
    cap: int | None = None,
) -> tuple[np.ndarray, sp.csr_matrix]:
    """0-based rank of every target among each user's ranked classes.

    Classes are ordered by (score descending, class code): a class ``pred`` does not list
    follows every listed one, in class-code order. The classes of ``exclude`` (n, C) take
    no rank and are never targets. Returns (P,) int64 ranks aligned with the returned
    targets' (n, C) csr entries (row-major, sorted columns). Users are processed in chunks
    so that no more than ~``chunk_bytes`` of scores are held at once. With ``cap`` (for
    top-``cap`` metrics: recall@K, NDCG@K with K <= cap) ranks of ``cap`` or more are
    reported as ``cap``, which is several times faster over large item sets.
    """
    n, n_cls = targets.shape
    t = binary_pattern(targets)
    ex = binary_pattern(exclude) if exclude is not None else None
    if ex is not None:
        t = binary_pattern(t - t.multiply(ex))
    if len(pred.classes) and pred.classes[-1] >= n_cls:
        raise ValueError(f"prediction lists class {pred.classes[-1]}; the truth has {n_cls}")
    npos = np.diff(t.indptr)  # (n,)
    cost = (4 + 8 * npos) * max(n_cls, 1)  # bytes per user: its row + compared target rows
    chunk_id = np.cumsum(cost) // max(chunk_bytes, 1)
    bounds = np.flatnonzero(np.diff(chunk_id)) + 1
    ranks = np.zeros(t.nnz, dtype=np.int64)
    capped = cap is not None and 0 < cap <= len(pred.classes)
    pos = np.full(n_cls, -1, dtype=np.int64)
    pos[pred.classes] = np.arange(len(pred.classes))
    for a, b in zip(np.r_[0, bounds], np.r_[bounds, n], strict=True):
        a, b = int(a), int(b)
        if b <= a:
            continue
        lo, hi = t.indptr[a], t.indptr[b]
        row = np.repeat(np.arange(b - a), npos[a:b])  # (P,) chunk row of each target
        col = t.indices[lo:hi]  # (P,)
        rows = pred.rows(a, b)  # (b - a, L), computed once for either path
        if capped:
            got = _ranks_capped(rows, pred.classes, pos,
                                None if ex is None else ex[a:b], row, col, int(cap))  # type: ignore[arg-type]  # fmt: skip
            if got is not None:
                ranks[lo:hi] = got
                continue
        full = np.full((b - a, n_cls), -np.inf, dtype=np.float32)  # unlisted: below all
        full[:, pred.classes] = rows
        if ex is not None:  # excluded: NaN compares False with everything, takes no rank
            sub = ex[a:b]
            full[np.repeat(np.arange(b - a), np.diff(sub.indptr)), sub.indices] = np.nan
        ranks[lo:hi] = _ranks_exact(full, row, col)
    if cap is not None:
        np.minimum(ranks, cap, out=ranks)
    return ranks, t


def set_user_values(
    pred: Prediction,
    targets: sp.csr_matrix,
    metrics: tuple[str, ...],
    exclude: sp.spmatrix | None = None,
) -> dict[str, np.ndarray]:
    """Per-user values (n,) float64 of set metrics; the task's score is their mean.

    With the targets' ranks r_1 < ... < r_m (0-based, :func:`positive_ranks`):
    ``map`` = average precision, mean_j j / (r_j + 1) (the mean of AP over users);
    ``recall@K`` = #{r_j < K} / min(K, m) (as in Mult-VAE, Liang et al. 2018, so 1.0 is
    reachable when a user has more than K targets); ``ndcg@K`` = sum_{r_j < K}
    1/log2(r_j + 2) over the ideal DCG of min(K, m) targets. Score ties rank by class code.
    A user without any (non-excluded) target scores 0.
    """
    # only top-K metrics asked: ranks past the largest K need not be exact
    ks = [int(m.split("@")[1]) for m in metrics if m.startswith(("recall@", "ndcg@"))]
    cap = max(ks) if ks and len(ks) == len(metrics) else None
    ranks, t = positive_ranks(pred, targets, exclude, cap=cap)
    n = t.shape[0]
    m = np.diff(t.indptr)  # (n,) targets per user
    user = np.repeat(np.arange(n), m)  # (P,)
    order = np.lexsort((ranks, user))
    ranks, user = ranks[order], user[order]
    j = np.arange(len(ranks)) - np.repeat(t.indptr[:-1], m) + 1  # 1-based rank among targets
    denom = np.maximum(m, 1).astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for metric in metrics:
        if metric == "map":
            prec = j / (ranks + 1.0)
            out[metric] = np.bincount(user, weights=prec, minlength=n) / denom
        elif metric.startswith(("recall@", "ndcg@")):
            k = int(metric.split("@")[1])
            top = np.minimum(m, k)  # (n,)
            if metric.startswith("recall@"):
                hits = np.bincount(user, weights=(ranks < k).astype(np.float64), minlength=n)
                out[metric] = hits / np.maximum(top, 1)
            else:
                gain = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
                dcg = np.bincount(user, weights=gain, minlength=n)
                ideal = np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))][top]
                out[metric] = np.divide(dcg, ideal, out=np.zeros(n), where=ideal > 0)
        else:
            raise ValueError(f"unknown metric {metric!r} for a multi-label / retrieval task")
    return out


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Macro F1 over the classes present in ``y`` or ``pred`` (vectorised, no sklearn
    input validation: this runs for every grid point of every cell)."""
    classes, inv = np.unique(np.concatenate([y, pred]), return_inverse=True)
    k = len(classes)
    yt, yp = inv[: len(y)], inv[len(y) :]
    tp = np.bincount(yt[yt == yp], minlength=k).astype(np.float64)
    denom = np.bincount(yt, minlength=k) + np.bincount(yp, minlength=k)  # 2TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    return float(f1.mean()) if k else 0.0


def binary_auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """ROC AUC of scores ``s`` for 0/1 labels ``y`` (Mann-Whitney U, ties count half)."""
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    from scipy.stats import rankdata  # scipy.stats is slow to import: on use

    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _auc(pred: Prediction, y: np.ndarray) -> float | None:
    if len(np.unique(y)) < 2:
        return None
    scores = pred.scores  # once: a lazy prediction computes it on every read
    s = {int(c): scores[:, i] for i, c in enumerate(pred.classes)}
    if 1 in s and 0 in s:
        margin = s[1] - s[0]
    elif 1 in s:
        margin = s[1]
    elif 0 in s:
        margin = -s[0]
    else:
        return None
    return binary_auc(y, margin)


# --- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeConfig:
    """How a probe is fitted. Defaults are what ``seqtwins evaluate`` uses."""

    kind: str = "linear"
    """``linear`` or ``mlp``."""
    solver: str = "auto"
    """Linear probe solver: ``ridge`` (closed form), ``logistic`` (multinomial logistic
    regression: softmax + L2, Adam) or ``auto`` (the default): logistic regression,
    except where it would crawl (``next_item`` over thousands of items, see
    ``auto_logistic_max``), which takes ridge. On the demo dataset ``auto`` evaluates
    2 runs + floors in ~53 s."""
    auto_logistic_max: float = 3e5
    """``auto`` uses ``logistic`` when (labelled train users x classes) <= this, else ``ridge``.
    Measured on 2 CPU threads: a logistic fit over Yelp's 661 categories x 24k users takes
    ~35 s, the ridge fit 0.1 s; over ML-1M's 21 occupations x 2.4k users 0.3 s."""
    ridge_alphas: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
    """L2 strengths tried by ``ridge`` (per-user scale: loss = mean squared error + a|W|^2,
    on standardised features, so the grid means the same at every label budget)."""
    weight_decays: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
    """L2 strengths tried by ``logistic`` and ``mlp`` (loss = mean cross-entropy + wd|W|^2)."""
    hidden: int = 128
    """Hidden width of the ``mlp`` probe."""
    lr: float = 1e-2
    """Adam learning rate of ``logistic`` / ``mlp``."""
    batch_size: int = 1024
    """Minibatch size; subsets up to this size train full-batch."""
    min_steps_per_eval: int = 10
    """Adam steps between two valid evaluations are max(this, one epoch)."""
    max_evals: int = 25
    """At most this many valid evaluations (the training length cap)."""
    patience: int = 3
    """Stop after this many valid evaluations without improvement of any grid member."""
    threads: int = 1
    """CPU threads (torch and BLAS) while fitting and scoring. Probe problems are small and
    many: on the 2-core machine under load one thread was 2-6x faster than two (ridge
    next_item on Yelp 3.8 s vs 8.0 s; an MLP fit on ML-1M 1.3 s vs 8.1 s)."""

    def __post_init__(self) -> None:
        if self.kind not in PROBE_KINDS:
            raise SeqtwinsError(f"probe kind {self.kind!r} must be one of {PROBE_KINDS}")
        if self.solver not in SOLVERS:
            raise SeqtwinsError(f"probe solver {self.solver!r} must be one of {SOLVERS}")
        if not self.ridge_alphas or min(self.ridge_alphas) <= 0:
            raise SeqtwinsError("probe ridge_alphas must be a non-empty list of values > 0")
        if not self.weight_decays or min(self.weight_decays) < 0:
            raise SeqtwinsError("probe weight_decays must be a non-empty list of values >= 0")
        for name in (
            "hidden",
            "batch_size",
            "min_steps_per_eval",
            "max_evals",
            "patience",
            "threads",
        ):
            if getattr(self, name) < 1:
                raise SeqtwinsError(f"probe {name}={getattr(self, name)} must be >= 1")
        if self.lr <= 0:
            raise SeqtwinsError(f"probe lr={self.lr} must be > 0")

    @property
    def deterministic(self) -> bool:
        """True when the fit does not depend on the seed (only on the labelled subset)."""
        return self.kind == "linear" and self.solver == "ridge"

    def for_task(self, n_train: int, n_classes: int, multilabel: bool = False) -> ProbeConfig:
        """This config with ``auto`` resolved for a task of that size (all its label budgets).

        Multi-label / retrieval tasks (``multilabel=True``) always take ``ridge``: the
        sigmoid one-vs-rest ``logistic`` probe cost 536 s against ridge's 2.2 s on Beauty
        ``future_items`` (11k item classes) and selected a worse probe (docs/evaluation.md)."""
        if self.solver != "auto":
            return self
        small = n_train * n_classes <= self.auto_logistic_max
        return replace(self, solver="logistic" if small and not multilabel else "ridge")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- fitting -------------------------------------------------------------------------------


@dataclass
class FittedProbe:
    """A fitted probe: standardisation + a scorer over the classes seen in training."""

    mean: np.ndarray
    scale: np.ndarray
    classes: np.ndarray
    weights: list[np.ndarray]
    kind: str
    selection: dict[str, Any] = field(default_factory=dict)
    """What was chosen on valid users (L2 strength, steps, valid metric)."""

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Standardise with the train-subset statistics: (n, D) float32."""
        return ((np.asarray(x, dtype=np.float32) - self.mean) / self.scale).astype(np.float32)

    def predict(self, x: np.ndarray, lazy: bool = False) -> Prediction:
        """Scores (n, K) of the users whose embeddings are ``x`` (n, D); ``lazy``: computed
        per chunk of users when read (:meth:`Prediction.lazy`)."""
        if lazy:
            return Prediction.lazy(
                len(x),
                self.classes,
                lambda a, b: _forward(self.kind, self.weights, self.transform(x[a:b])),
            )
        return Prediction(_forward(self.kind, self.weights, self.transform(x)), self.classes)


def _forward(kind: str, w: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Scores of one head: ``x`` (n, D) -> (n, K) float32."""
    if kind == "mlp":
        h = np.maximum(x @ w[0] + w[1], 0.0)  # (n, H)
        return (h @ w[2] + w[3]).astype(np.float32, copy=False)
    return (x @ w[0] + w[1]).astype(np.float32, copy=False)


def _finite(v: float) -> float | None:
    """A valid-set score for JSON: None where it was undefined (-inf)."""
    return v if math.isfinite(v) else None


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0, dtype=np.float64)
    std = x.std(axis=0, dtype=np.float64)
    return mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


def fit_probe(
    x_train: np.ndarray,
    y_train: np.ndarray | sp.spmatrix,
    x_valid: np.ndarray,
    y_valid: np.ndarray | sp.spmatrix,
    metric: str,
    config: ProbeConfig | None = None,
    seed: int = 0,
    exclude_valid: sp.spmatrix | None = None,
) -> FittedProbe:
    """Fit a probe on (x_train (n, D), y_train) choosing its settings on valid users.

    ``y_train`` is (n,) int class codes, or for multi-label / retrieval tasks a sparse
    (n, C) 0/1 target matrix (one-vs-rest: least squares on the multi-hot targets for
    ``ridge``, sigmoid heads for ``logistic`` / ``mlp``); ``y_valid`` has the same form and
    ``exclude_valid`` (m, C) removes classes from the valid users' rankings. ``metric`` (a
    :func:`score` metric name, higher is better) is what selection maximises on the valid
    users. Needs at least two classes among the training labels. The protocol resolves
    ``solver="auto"`` once per task (:meth:`ProbeConfig.for_task`).
    """
    multi = sp.issparse(y_train)
    if multi:
        t = sp.csr_matrix(y_train)
        classes = np.flatnonzero(t.getnnz(axis=0) > 0).astype(np.int64)
        y_fit: np.ndarray | sp.csr_matrix = binary_pattern(t[:, classes])  # (n, K) present classes
        n = t.shape[0]
    else:
        classes, y_fit = np.unique(np.asarray(y_train, dtype=np.int64), return_inverse=True)
        n = len(y_fit)
    if len(classes) < 2:
        raise ValueError("a probe needs at least two classes among its training labels")
    # ``auto`` left unresolved by the caller is resolved on this subset
    cfg = (config or ProbeConfig()).for_task(n, len(classes), multilabel=multi)
    with cpu_threads(cfg.threads):
        return _fit(x_train, y_fit, classes, x_valid, y_valid, metric, cfg, seed, exclude_valid)


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch and BLAS threads, restoring both afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with _threadpools().limit(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def _threadpools() -> ThreadpoolController:
    """The BLAS / OpenMP pools of this process, inspected once (``threadpool_limits`` reads
    the loaded libraries again on every call: ~3 ms, a tenth of a validation proxy)."""
    return ThreadpoolController()


def _fit(
    x_train: np.ndarray,
    y_fit: np.ndarray | sp.csr_matrix,
    classes: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray | sp.spmatrix,
    metric: str,
    cfg: ProbeConfig,
    seed: int,
    exclude_valid: sp.spmatrix | None,
) -> FittedProbe:
    """``y_fit``: (n,) index into ``classes``, or (n, K) 0/1 csr over ``classes``."""
    mean, scale = _standardiser(np.asarray(x_train, dtype=np.float32))
    probe = FittedProbe(mean, scale, classes, [], kind=cfg.kind)
    xt, xv = probe.transform(x_train), probe.transform(x_valid)  # (n, D), (m, D)
    multi = sp.issparse(y_fit)
    truth = sp.csr_matrix(y_valid) if multi else np.asarray(y_valid, dtype=np.int64)

    def valid_score(w: list[np.ndarray]) -> float:
        if multi:  # lazily: scores over thousands of items are read in chunks
            pred = Prediction.lazy(len(xv), classes, lambda a, b: _forward(cfg.kind, w, xv[a:b]))
        else:
            pred = Prediction(_forward(cfg.kind, w, xv), classes)
        v = score(pred, truth, (metric,), exclude_valid)[metric]
        return -math.inf if v is None else v

    if cfg.kind == "linear" and cfg.solver == "ridge":
        probe.weights, probe.selection = _fit_ridge(xt, y_fit, len(classes), cfg, valid_score)
    else:
        y_torch = y_fit if multi else torch.from_numpy(np.asarray(y_fit))
        probe.weights, probe.selection = _sgd_loop(
            torch.from_numpy(xt), y_torch, len(classes), cfg, seed, valid_score
        )
    probe.selection["metric"] = metric
    probe.selection["solver"] = "mlp" if cfg.kind == "mlp" else cfg.solver
    return probe


def _fit_ridge(
    x: np.ndarray, y: np.ndarray | sp.csr_matrix, k: int, cfg: ProbeConfig, valid_score: Any
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Least squares on one-hot (or multi-hot) targets for every alpha of the grid, best
    on valid.

    Minimises mean ||x W + b - Y||^2 + alpha ||W||^2 with Y = onehot(y) (n, K), or the 0/1
    target matrix ``y`` itself for multi-label tasks (one-vs-rest: each column is its own
    least-squares problem, all sharing one eigendecomposition): with centred x the
    intercept is the class frequency vector and W = (G + alpha I)^-1 X^T Y / n,
    G = X^T X / n.
    """
    n, d = x.shape
    xd = x.astype(np.float64)
    mu = xd.mean(0)  # ~0 after standardising on this subset; kept exact for any input
    xc = xd - mu
    gram = xc.T @ xc / n  # (D, D)
    evals, evecs = np.linalg.eigh(gram)
    if sp.issparse(y):
        xty = np.asarray(y.T @ xc).T / n  # (D, K): sum of x over each class's positives
        prior = np.asarray(y.sum(axis=0), dtype=np.float64).ravel() / n  # (K,)
    else:
        order = np.argsort(y, kind="stable")
        starts = np.searchsorted(y[order], np.arange(k))
        xty = np.add.reduceat(xc[order], starts, axis=0).T / n  # (D, K): sum of x per class
        prior = np.bincount(y, minlength=k) / n  # (K,) intercept = class frequency
    proj = evecs.T @ xty  # (D, K)
    best: tuple[float, float, list[np.ndarray]] | None = None
    tried = {}
    alphas = sorted(cfg.ridge_alphas, reverse=True)  # ties keep the stronger alpha
    for alpha in alphas:
        w = evecs @ (proj / (np.clip(evals, 0.0, None) + alpha)[:, None])  # (D, K)
        b = prior - mu @ w
        weights = [w.astype(np.float32), b.astype(np.float32)]
        v = valid_score(weights) if len(alphas) > 1 else math.nan  # one alpha: nothing to pick
        tried[f"{alpha:g}"] = _finite(v)
        if best is None or v > best[0]:
            best = (v, alpha, weights)
    assert best is not None
    return best[2], {"alpha": best[1], "valid": _finite(best[0]), "valid_by_alpha": tried}


def _head_loss(
    out: torch.Tensor, y: torch.Tensor | sp.csr_matrix, idx: torch.Tensor
) -> torch.Tensor:
    """(G,) loss of every head on one batch: logits ``out`` (G, B, K) against the batch's
    labels ``y[idx]`` — softmax cross-entropy for class codes, binary cross-entropy summed
    over classes for a multi-hot csr (one-vs-rest); mean over the batch's users."""
    g, _, k = out.shape
    if isinstance(y, torch.Tensor):
        ce = torch.nn.functional.cross_entropy(
            out.reshape(-1, k), y[idx].repeat(g), reduction="none"
        )
        return ce.view(g, -1).mean(1)
    yb = torch.from_numpy(y[idx.numpy()].toarray())  # (B, K) multi-hot
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        out, yb.expand_as(out), reduction="none"
    )  # (G, B, K)
    return bce.sum(2).mean(1)


def _sgd_loop(
    x: torch.Tensor,
    y: torch.Tensor | sp.csr_matrix,
    k: int,
    cfg: ProbeConfig,
    seed: int,
    valid_score: Any,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Softmax head(s) (logistic or one-hidden-layer MLP) for every weight decay at once;
    sigmoid one-vs-rest heads when ``y`` is a (n, K) 0/1 csr (loss: binary cross-entropy
    summed over classes, mean over users)."""
    gen = torch.Generator().manual_seed(seed)
    n, d = x.shape
    # strongest first, so that ties on valid go to the stronger regularisation
    wds = torch.tensor(sorted(cfg.weight_decays, reverse=True), dtype=torch.float32)
    g = len(wds)
    params: list[torch.Tensor]
    decayed: tuple[int, ...]
    if cfg.kind == "mlp":
        h = cfg.hidden
        params = [
            torch.randn(g, d, h, generator=gen) * math.sqrt(2.0 / d),  # (G, D, H)
            torch.zeros(g, 1, h),
            torch.randn(g, h, k, generator=gen) * math.sqrt(1.0 / h),  # (G, H, K)
            torch.zeros(g, 1, k),
        ]
        decayed = (0, 2)
    else:
        params = [torch.zeros(g, d, k), torch.zeros(g, 1, k)]  # (G, D, K), (G, 1, K)
        decayed = (0,)
    # start every head at the class prior (the intercept-only maximum-likelihood fit): with
    # hundreds of unbalanced classes, biases grown from zero by Adam at lr 1e-2 are still
    # far from log-priors when early stopping ends the fit, and the probe then scores below
    # the majority class (measured on Yelp, benchmarks/results/evidence/probe_check-yelp.json)
    if isinstance(y, torch.Tensor):
        counts = torch.bincount(y, minlength=k).to(torch.float32)  # (K,) every class present
        prior = torch.log(counts / n)
    else:  # sigmoid heads start at the log-odds of each class's frequency
        freq = torch.from_numpy(np.asarray(y.sum(axis=0), dtype=np.float32).ravel() / n)
        freq = freq.clamp(1e-6, 1 - 1e-6)
        prior = torch.log(freq / (1 - freq))
    with torch.no_grad():
        params[-1] += prior  # (G, 1, K) += (K,)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.lr)

    def logits(xb: torch.Tensor) -> torch.Tensor:  # (B, D) -> (G, B, K)
        if cfg.kind == "mlp":
            hid = torch.relu(torch.einsum("bd,gdh->gbh", xb, params[0]) + params[1])
            return torch.einsum("gbh,ghk->gbk", hid, params[2]) + params[3]
        return torch.einsum("bd,gdk->gbk", xb, params[0]) + params[1]

    bs = min(cfg.batch_size, n)
    steps_per_eval = max(cfg.min_steps_per_eval, math.ceil(n / bs))
    best_v = [-math.inf] * g
    best_w: list[list[np.ndarray] | None] = [None] * g
    best_eval = [0] * g
    since = 0
    order = torch.randperm(n, generator=gen)
    cursor = 0
    evals_done = 0
    for evals_done in range(1, cfg.max_evals + 1):  # noqa: B007 (reported below)
        for _ in range(steps_per_eval):
            if cursor + bs > n:
                order, cursor = torch.randperm(n, generator=gen), 0
            idx = order[cursor : cursor + bs]
            cursor += bs
            ce = _head_loss(logits(x[idx]), y, idx)  # (G,)
            l2 = sum((params[i] ** 2).sum(dim=(1, 2)) for i in decayed)  # (G,)
            loss = (ce + wds * l2).sum()  # heads are independent: the sum trains each
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        improved = False
        for j in range(g):
            # head j's weights; biases (1, K) -> (K,)
            w = [p[j].detach().squeeze(0).numpy().copy() for p in params]
            v = valid_score(w)
            if v > best_v[j]:
                best_v[j], best_w[j], best_eval[j] = v, w, evals_done
                improved = True
        since = 0 if improved else since + 1
        if since >= cfg.patience:
            break
    j = int(np.argmax(best_v))  # ties -> the first = strongest weight decay
    weights = best_w[j]
    assert weights is not None
    return weights, {
        "weight_decay": float(wds[j]),
        "steps": best_eval[j] * steps_per_eval,
        "valid": _finite(best_v[j]),
        "valid_by_weight_decay": {f"{float(wds[i]):g}": _finite(best_v[i]) for i in range(g)},
        "evaluations": evals_done,
    }
