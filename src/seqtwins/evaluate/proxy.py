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
the same folds, once. The ridge solver is closed form and the (task, fold) probes run on
as many worker threads as training uses, so the whole proxy costs a small fraction of an
epoch (the ``valid`` records of metrics.jsonl say how much: ``proxy_seconds``).

Training does not import this module: :func:`headline_proxy` is handed to
:func:`seqtwins.train.pretrain` as its ``proxy`` factory. A dataset where no headline task
can be scored gets no proxy (None) and training selects on minus the validation loss.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from seqtwins.data.dataset import SequenceDataset
from seqtwins.evaluate.probe import Prediction, ProbeConfig, cpu_threads, fit_probe, score
from seqtwins.evaluate.tasks import Task, build_task, headline_tasks

if TYPE_CHECKING:
    from seqtwins.train import Proxy

FOLDS = 5
MIN_USERS = 20
"""A task with fewer labelled valid users is left out of the proxy (too few to fold)."""
PROBE = ProbeConfig(solver="ridge", ridge_alphas=(1.0, 10.0, 100.0))

FoldScore = Callable[[np.ndarray, np.ndarray, np.ndarray], float | None]
"""``(fit, select, test)`` boolean masks over a task's users -> that fold's score or None."""


@dataclass(frozen=True)
class _Part:
    """One headline task (a set task) on its labelled valid users."""

    task: Task
    rows: np.ndarray
    """(m,) positions, in the proxy's user array, of the users with a label."""
    truth: sp.csr_matrix
    """(m, C) 0/1 targets."""
    exclude: sp.csr_matrix | None
    """(m, C) classes removed from each user's ranking (history items), or None."""
    fold: np.ndarray
    """(m,) fold of each user."""
    floor: np.ndarray
    """(FOLDS,) the popularity floor's score per fold (NaN where it has none)."""

    def fold_score(self, emb: np.ndarray, k: int, alpha: list[float]) -> float | None:
        """Round ``k``'s probe score of the embeddings ``emb`` (m, D) of these users (see
        :func:`_per_fold`); the first call chooses the L2 strength, kept in ``alpha``."""
        return _probe(self, emb, *_round(self.fold, k), alpha)

    def ratio(self, probe: np.ndarray) -> float | None:
        """Probe score / floor score, from the probe's (FOLDS,) scores per round (NaN where
        it has none), each the mean over the rounds where both scored."""
        both = np.isfinite(probe) & np.isfinite(self.floor)
        if not both.any() or not self.floor[both].mean() > 0:
            return None
        return float(probe[both].mean() / self.floor[both].mean())


def _per_fold(fold: np.ndarray, fold_score: FoldScore) -> np.ndarray:
    """(FOLDS,) ``fold_score(fit, select, test)`` per round k: test = fold k, select =
    fold k+1, fit = the rest; NaN where it returned None."""
    out = np.full(FOLDS, np.nan)
    for k in range(FOLDS):
        value = fold_score(*_round(fold, k))
        if value is not None:
            out[k] = value
    return out


def _round(fold: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round ``k``'s (fit, select, test) masks: test = fold k, select = fold k+1, fit =
    the rest."""
    test, select = fold == k, fold == (k + 1) % FOLDS
    return ~(test | select), select, test


def _rows(m: sp.csr_matrix | None, mask: np.ndarray) -> sp.csr_matrix | None:
    return None if m is None else m[np.flatnonzero(mask)]


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
    y_fit = _rows(y, fit)
    if y_fit is None or (y_fit.getnnz(axis=0) > 0).sum() < 2:
        return None
    cfg = replace(PROBE, ridge_alphas=tuple(alpha)) if alpha else PROBE
    probe = fit_probe(emb[fit], y_fit, emb[sel], _rows(y, sel), metric, cfg,
                      exclude_valid=_rows(part.exclude, sel))  # fmt: skip
    if not alpha:
        alpha.append(float(probe.selection["alpha"]))
    pred = probe.predict(emb[test], lazy=True)
    return score(pred, _rows(y, test), (metric,), _rows(part.exclude, test))[metric]


def _popularity(part: _Part, fit: np.ndarray, test: np.ndarray) -> float | None:
    """The popularity floor of one fold: class frequencies among the fit users."""
    counts = np.asarray(part.truth[np.flatnonzero(fit)].sum(axis=0), dtype=np.float32).ravel()
    classes = np.arange(len(counts), dtype=np.int64)
    pred = Prediction.lazy(int(test.sum()), classes, lambda a, b: np.tile(counts, (b - a, 1)))
    metric = part.task.primary_metric
    return score(pred, _rows(part.truth, test), (metric,), _rows(part.exclude, test))[metric]


def _part(ds: SequenceDataset, name: str, users: np.ndarray, seed: int) -> _Part | None:
    task = build_task(ds, name)
    assert task.targets is not None, f"headline task {name} is a set task"
    rows = np.flatnonzero(np.asarray(task.labels)[users] >= 0)
    if len(rows) < MIN_USERS:
        return None
    who = users[rows]
    truth = task.targets[who]
    exclude = task.exclude[who] if task.exclude is not None else None
    fold = np.empty(len(rows), dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(len(rows))] = np.arange(len(rows)) % FOLDS
    part = _Part(task, rows, truth, exclude, fold, np.full(FOLDS, np.nan))
    floor = _per_fold(fold, lambda fit, _sel, test: _popularity(part, fit, test))
    return replace(part, floor=floor) if np.isfinite(floor).any() else None


def _ratios(parts: list[_Part], emb: np.ndarray, pool: ThreadPoolExecutor) -> list[float | None]:
    """Each part's :meth:`_Part.ratio` for the embeddings ``emb`` of the proxy's users, its
    rounds spread over ``pool`` (numpy, scipy and torch release the GIL in the algebra):
    round 0 of every part first, which chooses the part's L2 strength, then the rest. The
    result does not depend on the number of workers."""
    alphas: list[list[float]] = [[] for _ in parts]
    rows = [emb[p.rows] for p in parts]
    scores = np.full((len(parts), FOLDS), np.nan)

    def run(job: tuple[int, int]) -> None:
        i, k = job
        value = parts[i].fold_score(rows[i], k, alphas[i])
        if value is not None:
            scores[i, k] = value

    for ks in ([0], range(1, FOLDS)):
        list(pool.map(run, [(i, k) for i in range(len(parts)) for k in ks]))
    return [p.ratio(scores[i]) for i, p in enumerate(parts)]


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
        # as many workers as training has threads, one torch and BLAS thread each: the
        # algebra is small, and OpenBLAS threads beside torch's spinning OpenMP threads ran
        # a 64x64 eigh in 36 ms instead of 0.3 ms on the 2-core machine
        workers = max(1, torch.get_num_threads())
        with cpu_threads(PROBE.threads), ThreadPoolExecutor(max_workers=workers) as pool:
            ratios = [r for r in _ratios(parts, emb, pool) if r is not None]
        return float(np.mean(ratios)) if ratios else None

    return proxy
