"""The validation proxy of embedding quality that selects a run's best epoch.

Pretraining asks, after every epoch, how good the embeddings of a fixed sample of
**valid** users are (never train or test users). With item categories the answer is the
``favorite_category`` task that ``seqtwins evaluate`` reports, probed the same way: a
linear probe (:func:`seqtwins.evaluate.probe.fit_probe`, ridge solver) scored with the
task's primary metric (:func:`seqtwins.evaluate.probe.score`). To use every valid user
once and select honestly, the users are split into :data:`FOLDS` folds; each fold in turn
is scored by a probe fitted on three other folds whose L2 strength was chosen on the
remaining one. The ridge solver is closed form: the whole proxy costs a few
milliseconds per epoch.

Without categories there is no proxy (:func:`category_proxy` returns None) and training
selects on minus the validation loss.

Training does not import this module: :func:`category_proxy` is handed to
:func:`seqtwins.train.pretrain` as its ``proxy`` factory.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from seqtwins.data.dataset import SequenceDataset
from seqtwins.evaluate.probe import ProbeConfig, fit_probe, score
from seqtwins.evaluate.tasks import FAVORITE_CATEGORY, build_task

FOLDS = 5
MIN_CLASS_USERS = 5
"""Classes with fewer labelled valid users are left out (too rare to score stably)."""
PROBE = ProbeConfig(solver="ridge", ridge_alphas=(0.1, 1.0, 10.0, 100.0))

Proxy = Callable[[np.ndarray], float | None]
"""Embeddings ``(n, D)`` of the valid users the proxy was built for -> score (higher is
better), or None when it cannot be computed."""


def probe_score(emb: np.ndarray, labels: np.ndarray, metric: str, seed: int) -> float | None:
    """Rotated-fold probe score of embeddings ``emb`` (n, D) for class codes ``labels``
    (n,; -1 = unlabelled), or None when fewer than two classes have enough users. NaN
    when an embedding is not finite (training stops on it)."""
    if not np.isfinite(emb).all():
        return float("nan")
    keep = labels >= 0
    x, y = emb[keep], labels[keep]
    classes, counts = np.unique(y, return_counts=True)
    common = np.isin(y, classes[counts >= MIN_CLASS_USERS])
    x, y = x[common], y[common]
    if len(np.unique(y)) < 2 or len(y) < FOLDS:
        return None
    # stratified folds: users of each class dealt round-robin in a seeded order
    order = np.random.default_rng(seed).permutation(len(y))
    order = order[np.argsort(y[order], kind="stable")]
    fold = np.empty(len(y), dtype=np.int64)
    fold[order] = np.arange(len(y)) % FOLDS
    values = []
    for k in range(FOLDS):
        test, select = fold == k, fold == (k + 1) % FOLDS
        fit = ~(test | select)
        if len(np.unique(y[fit])) < 2:
            continue
        probe = fit_probe(x[fit], y[fit], x[select], y[select], metric, PROBE, seed)
        value = score(probe.predict(x[test]), y[test], (metric,))[metric]
        if value is not None:
            values.append(value)
    return float(np.mean(values)) if values else None


def category_proxy(ds: SequenceDataset, users: np.ndarray, seed: int) -> Proxy | None:
    """The favourite-category proxy for the valid users ``users`` of ``ds``, or None when
    the dataset has no item categories."""
    if not ds.has_categories:
        return None
    task = build_task(ds, FAVORITE_CATEGORY)
    labels = np.asarray(task.labels)[users]
    metric = task.primary_metric

    def proxy(emb: np.ndarray) -> float | None:
        return probe_score(emb, labels, metric, seed)

    return proxy
