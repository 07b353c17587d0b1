"""The validation proxy of embedding quality that selects a run's best epoch.

Pretraining asks, after every epoch, how good the embeddings of the **valid** users are
(never train or test users). The answer is one number, identical for every objective: the
mean, over the dataset's headline tasks (:func:`seqtwins.evaluate.tasks.headline_tasks`:
``future_categories`` where items have categories, and ``future_items``), of

    probe score of the embeddings / score of the popularity floor

on the same users, each task scored with its primary metric exactly as ``seqtwins
evaluate`` scores it (the same ridge probe, :func:`~seqtwins.evaluate.probe.fit_probe`,
and metrics, :func:`~seqtwins.evaluate.probe.score`, history items excluded from the item
ranking). Dividing by the floor puts tasks on one scale (1.0 = no better than
popularity), so a task with large absolute numbers does not outvote the other.

To use every valid user once and select honestly, the users are split into :data:`FOLDS`
folds; each fold in turn is scored by a probe fitted on three other folds, with the L2
strength chosen on the remaining one of the first fold's split. The floor is computed on
the same folds, once. The
ridge solver is closed form, so the whole proxy costs a small fraction of an epoch (the
``valid`` records of metrics.jsonl say how much: ``proxy_seconds``).

Training does not import this module: :func:`headline_proxy` is handed to
:func:`seqtwins.train.pretrain` as its ``proxy`` factory. A dataset where no headline task
can be scored gets no proxy (None) and training selects on minus the validation loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
import torch

from seqtwins.data.dataset import SequenceDataset
from seqtwins.evaluate.probe import Prediction, ProbeConfig, fit_probe, score
from seqtwins.evaluate.tasks import Task, build_task, headline_tasks

FOLDS = 5
MIN_USERS = 20
"""A task with fewer labelled valid users is left out of the proxy (too few to fold)."""
PROBE = ProbeConfig(solver="ridge", ridge_alphas=(1.0, 10.0, 100.0))

Proxy = Callable[[np.ndarray], float | None]
"""Embeddings ``(n, D)`` of the valid users the proxy was built for -> score (higher is
better), or None when it cannot be computed."""


@dataclass(frozen=True)
class _Part:
    """One headline task on the labelled valid users."""

    task: Task
    rows: np.ndarray
    """(m,) positions, in the proxy's user array, of the users with a label."""
    truth: np.ndarray | sp.csr_matrix
    """(m,) class codes or (m, C) 0/1 targets."""
    exclude: sp.csr_matrix | None
    """(m, C) classes removed from each user's ranking (history items), or None."""
    fold: np.ndarray
    """(m,) fold of each user."""
    floor: float
    """Popularity floor's score on the same folds (> 0)."""

    def scores(self, emb: np.ndarray) -> float | None:
        """Rotated-fold probe score of the embeddings ``emb`` (m, D) of these users: the L2
        strength is chosen once, on the first fold's select users, and used for every fold
        (choosing it per fold cost 3x more and moved the proxy by less than its noise)."""
        alpha: list[float] = []

        def fold_score(fit: np.ndarray, sel: np.ndarray, test: np.ndarray) -> float | None:
            return _probe(self, emb, fit, sel, test, alpha)

        return _rotated(self.fold, fold_score)


def _rows(m: np.ndarray | sp.csr_matrix, mask: np.ndarray) -> np.ndarray | sp.csr_matrix:
    return m[np.flatnonzero(mask)] if sp.issparse(m) else m[mask]


def _rotated(
    fold: np.ndarray, fold_score: Callable[[np.ndarray, np.ndarray, np.ndarray], float | None]
) -> float | None:
    """Mean over folds k of ``fold_score(fit, select, test)``: test = fold k, select = fold
    k+1, fit = the rest (boolean masks over the users of ``fold``)."""
    values = []
    for k in range(FOLDS):
        test, select = fold == k, fold == (k + 1) % FOLDS
        fit = ~(test | select)
        value = fold_score(fit, select, test)
        if value is not None:
            values.append(value)
    return float(np.mean(values)) if values else None


def _truth_classes(truth: np.ndarray | sp.csr_matrix) -> int:
    """Distinct classes with a positive among these users."""
    if isinstance(truth, sp.csr_matrix):
        return int((truth.getnnz(axis=0) > 0).sum())
    return len(np.unique(truth))


def _probe(
    part: _Part,
    emb: np.ndarray,
    fit: np.ndarray,
    sel: np.ndarray,
    test: np.ndarray,
    alpha: list[float],
) -> float | None:
    """One fold's test score; the first call chooses the L2 strength (kept in ``alpha``)."""
    y, metric = part.truth, part.task.primary_metric
    if _truth_classes(_rows(y, fit)) < 2:
        return None
    ex = part.exclude
    # the probes run inside training: with its threads (ProbeConfig's default is one)
    cfg = replace(PROBE, threads=torch.get_num_threads())
    cfg = replace(cfg, ridge_alphas=tuple(alpha)) if alpha else cfg
    probe = fit_probe(emb[fit], _rows(y, fit), emb[sel], _rows(y, sel), metric, cfg,
                      exclude_valid=None if ex is None else _rows(ex, sel))  # fmt: skip
    if not alpha:
        alpha.append(float(probe.selection["alpha"]))
    pred = probe.predict(emb[test], lazy=True)
    return score(pred, _rows(y, test), (metric,), None if ex is None else _rows(ex, test))[metric]


def _popularity(
    task: Task, y: np.ndarray | sp.csr_matrix, ex: sp.csr_matrix | None, fit: np.ndarray,
    test: np.ndarray,
) -> float | None:  # fmt: skip
    """The popularity floor of one fold: class frequencies among the fit users."""
    metric = task.primary_metric
    if sp.issparse(y):
        counts = np.asarray(_rows(y, fit).sum(axis=0)).ravel().astype(np.float32)
    else:
        counts = np.bincount(y[fit], minlength=int(y.max()) + 1).astype(np.float32)
    classes = np.arange(len(counts), dtype=np.int64)
    n_test = int(test.sum())
    pred = Prediction.lazy(n_test, classes, lambda a, b: np.tile(counts, (b - a, 1)))
    return score(pred, _rows(y, test), (metric,), None if ex is None else _rows(ex, test))[metric]


def _part(ds: SequenceDataset, name: str, users: np.ndarray, seed: int) -> _Part | None:
    task = build_task(ds, name)
    rows = np.flatnonzero(np.asarray(task.labels)[users] >= 0)
    if len(rows) < MIN_USERS:
        return None
    who = users[rows]
    truth = task.targets[who] if task.targets is not None else np.asarray(task.labels)[who]
    exclude = task.exclude[who] if task.exclude is not None else None
    fold = np.empty(len(rows), dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(len(rows))] = np.arange(len(rows)) % FOLDS
    floor = _rotated(fold, lambda fit, _sel, test: _popularity(task, truth, exclude, fit, test))
    if floor is None or not floor > 0:
        return None
    return _Part(task, rows, truth, exclude, fold, floor)


def headline_proxy(ds: SequenceDataset, users: np.ndarray, seed: int) -> Proxy | None:
    """The proxy for the valid users ``users`` of ``ds`` (see the module docstring), or None
    when no headline task has enough labelled users among them."""
    users = np.asarray(users, dtype=np.int64)
    parts = [p for p in (_part(ds, n, users, seed) for n in headline_tasks(ds)) if p is not None]
    if not parts:
        return None

    def proxy(emb: np.ndarray) -> float | None:
        if not np.isfinite(emb).all():
            return float("nan")  # training stops on it
        ratios = []
        for p in parts:
            value = p.scores(emb[p.rows])
            if value is not None:
                ratios.append(value / p.floor)
        return float(np.mean(ratios)) if ratios else None

    return proxy
