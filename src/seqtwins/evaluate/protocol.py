"""The few-label protocol: methods x tasks x label budgets x seeds, on identical subsets.

A **label budget** is a fraction of the *train* users that have a label for the task.
The labelled subset for (task, fraction, seed) is fixed and shared by every method:

1. ``train_order(ds, seed)`` permutes the train users with
   ``numpy.random.default_rng([SUBSET_SALT, seed])`` — it depends on nothing but the seed
   and the dataset's train users, so reruns and all methods see the same order;
2. the subset is the first ``ceil(fraction x n_labelled)`` users of that order that have a
   label for the task. Budgets are therefore nested (the 1 % subset lies inside the 5 %
   one) and tasks whose users are all labelled share their subsets.

The results store every seed's order (``subsets.train_order``) and, per cell, the
subset's size and SHA-256 (:func:`subset_digest`), so identity across methods and reruns
can be checked and every subset rebuilt.

Selection (probe regularisation, epoch) uses the labelled **valid** users; the labelled
**test** users are scored once per (method, task, fraction, seed). A cell that cannot be
computed (fewer than two classes in the subset, no labelled valid or test user) is
recorded with status ``"n/a"`` and the reason — never skipped.

**Fine-tuning hook.** ``finetuners`` maps a method name to a callable
``finetune(task, train_users, valid_users, test_users, seed) -> scores`` (see
:class:`Finetuner`): it trains encoder + head on ``task.labels[train_users]``, selects
(early stopping, ...) on ``valid_users`` only, and returns class scores for
``test_users``, either an array (len(test_users), task.num_classes) or a
:class:`~seqtwins.evaluate.probe.Prediction`. It is evaluated on the very same cells and
subsets as the embedding methods.

**Label-free methods.** ``scorers`` maps a method name to a :data:`Scorer` (e.g. a
dual encoder's own item tower, method ``<run>:native``); the built-in ``history`` floor
(``future_categories``: category counts of the user's own history) is one too, and so is
``items-knn`` (``future_items``: user-based collaborative filtering on raw history
vectors, :func:`seqtwins.evaluate.baselines.items_knn_scorer`). Their scores need no
labels, so they are computed once per task and their cells repeat the result at every
fraction and seed (``n_train`` 0), so that tables line up.

**Set tasks** (``multilabel``, ``retrieval``): the truth is ``task.targets``, and the
per-user exclusion ``task.exclude`` (``future_items``: the user's history items) is applied
to **every** method's ranking in one place (:func:`_test_metrics`) before scoring, and to
the valid users' rankings during selection. ``majority`` is popularity: the class counts
among the targets of the labelled train subset.

**Per-user values.** For every run with status ``ok`` the per-test-user value of the
task's primary metric (not for AUC) is kept under ``results["per_user"][task]``:
``{"users": (n,) int64 test user_idx, "values": {"<method>|<fraction:g>|<seed>": (n,)
float32}}``, for paired significance tests. :func:`save_results` leaves it out of
eval.json; ``seqtwins evaluate`` saves it as ``per_user.npz``, whose writer, reader and
keys are :mod:`seqtwins.evaluate.significance`'s.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.faithfulness import FAITHFULNESS, check_section
from seqtwins.evaluate.probe import (
    Prediction,
    ProbeConfig,
    cpu_threads,
    fit_probe,
    score_users,
)
from seqtwins.evaluate.significance import value_key
from seqtwins.evaluate.tasks import Task, build_tasks
from seqtwins.files import atomic_write

DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 1.0)
SUBSET_SALT = 0x5EB7
"""First word of every subset RNG seed, so subset orders differ from other seeded streams."""
MAJORITY = "majority"
HISTORY = "history"
ITEMS_KNN = "items-knn"
"""The user-kNN floor on raw item lists (:func:`seqtwins.evaluate.baselines.items_knn_scorer`)."""
FLOOR_METHODS = (MAJORITY, HISTORY, ITEMS_KNN, "random-init", "tfidf-svd", "tfidf-svd-window")
"""Method names the report shows as floors beside every table."""
RESULTS_SCHEMA = "seqtwins.eval/1"
PROTOCOLS = ("linear", "mlp")


Scorer = Callable[[Task, np.ndarray], Prediction | None]
"""A label-free method: ``scorer(task, test_users)`` -> scores of the test users (a
:class:`~seqtwins.evaluate.probe.Prediction`, e.g. over all item codes), or None when
the method does not apply to the task (then it has no cells for that task)."""


class Finetuner(Protocol):
    """End-to-end fine-tuning of one method on one cell (see the module docstring)."""

    def __call__(
        self,
        task: Task,
        train_users: np.ndarray,
        valid_users: np.ndarray,
        test_users: np.ndarray,
        seed: int,
    ) -> np.ndarray | Prediction: ...


# --- fixed labelled subsets ----------------------------------------------------------------


def train_order(ds: SequenceDataset, seed: int) -> np.ndarray:
    """(n_train,) int64 train ``user_idx`` in the fixed random order of ``seed``."""
    train = ds.split_users("train").astype(np.int64)
    rng = np.random.default_rng([SUBSET_SALT, int(seed)])
    return train[rng.permutation(len(train))]


def labelled_subset(order: np.ndarray, labels: np.ndarray, fraction: float) -> np.ndarray:
    """The first ``ceil(fraction x n_labelled)`` labelled users of ``order``, sorted."""
    labelled = order[labels[order] >= 0]
    k = math.ceil(fraction * len(labelled) - 1e-9)
    return np.sort(labelled[:k])


def subset_digest(users: np.ndarray) -> str:
    """SHA-256 of a sorted int64 ``user_idx`` array (what results store per cell)."""
    return hashlib.sha256(np.ascontiguousarray(np.sort(users), dtype="<i8").tobytes()).hexdigest()


# --- validation ----------------------------------------------------------------------------


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    fr = [float(f) for f in fractions]
    if not fr:
        raise SeqtwinsError("fractions is empty; give label fractions in (0, 1], e.g. 0.1 1.0")
    bad = [f for f in fr if not (0.0 < f <= 1.0) or math.isnan(f)]
    if bad:
        raise SeqtwinsError(
            f"label fraction(s) {', '.join(f'{f:g}' for f in bad)} outside (0, 1]; "
            "a fraction is the share of labelled train users, e.g. 0.05"
        )
    if len(set(fr)) != len(fr):
        raise SeqtwinsError(f"label fractions {fr} contain duplicates; list each once")
    return sorted(fr)


def _check_seeds(seeds: int | Sequence[int]) -> list[int]:
    out = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not out:
        raise SeqtwinsError("seeds must be >= 1 (the protocol asks for at least 3)")
    if len(set(out)) != len(out):
        raise SeqtwinsError(f"seeds {out} contain duplicates")
    return out


def _check_methods(ds: SequenceDataset, methods: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, emb in methods.items():
        if not name or name != name.strip():
            raise SeqtwinsError(f"method name {name!r} must be non-empty without outer spaces")
        arr = np.asarray(emb)
        if arr.ndim != 2 or arr.shape[0] != ds.num_users or arr.shape[1] < 1:
            raise SeqtwinsError(
                f"embeddings of method {name!r} have shape {arr.shape}; expected "
                f"({ds.num_users}, D), one row per user of {ds.path}"
            )
        if not np.issubdtype(arr.dtype, np.number):
            raise SeqtwinsError(f"embeddings of method {name!r} are not numeric ({arr.dtype})")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.all(np.isfinite(arr)):
            raise SeqtwinsError(
                f"embeddings of method {name!r} contain NaN or infinite values; "
                "check the run that produced them"
            )
        out[name] = arr
    return out


# --- the protocol --------------------------------------------------------------------------


def _majority_prediction(y_train: np.ndarray, n_test: int) -> Prediction:
    """Every test user gets the train-subset class frequencies as scores."""
    classes, counts = np.unique(y_train, return_counts=True)
    scores = np.broadcast_to(counts.astype(np.float32), (n_test, len(classes)))
    return Prediction(np.ascontiguousarray(scores), classes.astype(np.int64))


def _popularity_prediction(targets: sp.csr_matrix, n_test: int) -> Prediction:
    """Set tasks' ``majority``: every test user gets each class's count among the targets
    of the labelled train subset (``targets`` (n, C)); classes never seen rank last."""
    counts = np.bincount(targets.indices, minlength=targets.shape[1])
    classes = np.flatnonzero(counts > 0).astype(np.int64)
    row = counts[classes].astype(np.float32)  # (K,)
    return Prediction.lazy(n_test, classes, lambda a, b: np.broadcast_to(row, (b - a, len(row))))


def history_prediction(task: Task, users: np.ndarray) -> Prediction | None:
    """The label-free ``history`` floor: each user's class counts in their own pretraining
    history (``task.history``), or None for a task without them. Ties (above all the
    classes a short history never saw) rank by the class's count over all train users'
    histories (``task.history_prior``, label free), then by class code: by code alone the
    floor fell below popularity on Beauty (MAP 0.296 vs 0.329), with it it lies above
    (0.393), as a floor a representation must beat should."""
    if task.history is None:
        return None
    hist = task.history[np.asarray(users, dtype=np.int64)]  # (n, C) csr
    prior = np.zeros(hist.shape[1]) if task.history_prior is None else task.history_prior
    from scipy.stats import rankdata  # scipy.stats is slow to import: on use

    # dense ranks of the prior, scaled into [0, 0.5]: never outweighs one count
    tie = 0.5 * rankdata(prior, method="dense") / (len(prior) + 1)  # (C,)
    classes = np.arange(hist.shape[1], dtype=np.int64)
    return Prediction.lazy(
        hist.shape[0], classes, lambda a, b: (hist[a:b].toarray() + tie).astype(np.float32)
    )


def _aggregate(runs: list[dict[str, Any]], metrics: tuple[str, ...]) -> dict[str, Any]:
    """mean / sample std (ddof=1; 0 for one seed) over the seeds whose run is ``ok``."""
    ok = [r for r in runs if r["status"] == "ok"]
    cell: dict[str, Any] = {"n_seeds": len(runs), "n_ok": len(ok)}
    if not ok:
        cell["status"] = "n/a"
    else:
        cell["status"] = "ok" if len(ok) == len(runs) else "partial"
    reasons = sorted({r["reason"] for r in runs if r["status"] != "ok"})
    if reasons:
        cell["reasons"] = reasons
    mean: dict[str, float | None] = {}
    std: dict[str, float | None] = {}
    for m in metrics:
        vals = [r["metrics"][m] for r in ok if r["metrics"].get(m) is not None]
        if vals:
            mean[m] = float(np.mean(vals))
            std[m] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        else:
            mean[m] = std[m] = None
    cell["mean"], cell["std"] = mean, std
    return cell


def _task_problem(train_l: np.ndarray, valid_l: np.ndarray, test_l: np.ndarray) -> str | None:
    """Why a task cannot be evaluated at all (None when it can)."""
    if len(train_l) == 0:
        return "no train user has a label for this task"
    if len(valid_l) == 0:
        return "no valid user has a label, so nothing can be selected"
    if len(test_l) == 0:
        return "no test user has a label, so nothing can be scored"
    return None


def _subset_problem(task: Task, sub: np.ndarray, frac: float) -> str | None:
    """Why one labelled subset cannot train a classifier (None when it can)."""
    if task.targets is not None:
        n_cls = int(np.count_nonzero(task.targets[sub].getnnz(axis=0)))
        if n_cls < 2:
            return (
                f"only {n_cls} class among the targets of the {len(sub)} labelled train "
                f"users of fraction {frac:g}; a probe needs two"
            )
        return None
    n_cls = len(np.unique(task.labels[sub]))
    if n_cls < 2:
        return (
            f"only {n_cls} class among the {len(sub)} labelled train users of "
            f"fraction {frac:g}; a classifier needs two"
        )
    return None


FINETUNE_SET_REASON = "fine-tuning hooks score single-label tasks only"


@dataclass
class _CellTask:
    """What every method's runs on one task share."""

    task: Task
    valid_l: np.ndarray
    test_l: np.ndarray
    probe: ProbeConfig
    embs: dict[str, np.ndarray]
    hooks: dict[str, Finetuner]
    free: dict[str, tuple[dict[str, Any], np.ndarray | None] | str]
    """Label-free methods that apply to this task: test metrics and per-user values, or
    the reason they cannot be scored."""


def _method_runs(
    ct: _CellTask,
    method: str,
    frac: float,
    subsets: Mapping[int, np.ndarray],
    problems: Mapping[int, str | None],
    seconds: dict[str, float],
    per_user: dict[str, np.ndarray],
) -> list[dict[str, Any]]:
    """One method's run per seed on one (task, fraction); a deterministic method on a
    subset it has already scored reuses that answer. Adds the time spent to ``seconds``
    and each ok run's per-user primary-metric values to ``per_user``."""
    runs: list[dict[str, Any]] = []
    reuse: dict[str, tuple[dict[str, Any], np.ndarray | None]] = {}
    deterministic = method == MAJORITY or (method in ct.embs and ct.probe.deterministic)
    for s, sub in subsets.items():
        digest = subset_digest(sub)
        run: dict[str, Any] = {"seed": s, "n_train": int(len(sub)), "subset": digest}
        values: np.ndarray | None = None
        free = ct.free.get(method)
        if isinstance(free, str):
            run.update(n_train=0, label_free=True, status="n/a", reason=free)
        elif free is not None:  # label free: one answer for every fraction and seed
            run.update(n_train=0, label_free=True, status="ok", metrics=free[0])
            values = free[1]
        elif problems[s] is not None:
            run.update(status="n/a", reason=problems[s])
        elif method in ct.hooks and ct.task.is_set:
            run.update(status="n/a", reason=FINETUNE_SET_REASON)
        elif deterministic and digest in reuse:  # same subset, same answer
            prev, values = reuse[digest]
            run.update(status="ok", metrics=prev["metrics"], selection=prev["selection"],
                       reused_from_seed=prev["seed"])  # fmt: skip
        else:
            t0 = time.perf_counter()
            metrics, selection, values = _score_method(ct, method, sub, s)
            run.update(status="ok", metrics=metrics, selection=selection,
                       seconds=round(time.perf_counter() - t0, 4))  # fmt: skip
            seconds[method] += time.perf_counter() - t0
            if deterministic:
                reuse[digest] = (run, values)
        if values is not None:
            per_user[value_key(method, frac, s)] = values
        runs.append(run)
    return runs


def _test_metrics(ct: _CellTask, pred: Prediction) -> tuple[dict[str, Any], np.ndarray | None]:
    """Every method's test scoring, in one place: metrics, and the per-user values of the
    primary metric (float32; None for AUC). For set tasks the task's exclusion (history
    items of ``future_items``) is applied here, to every method alike."""
    task = ct.task
    if task.targets is not None:
        exclude = task.exclude[ct.test_l] if task.exclude is not None else None
        metrics, per = score_users(pred, task.targets[ct.test_l], task.metrics, exclude)
    else:
        metrics, per = score_users(pred, task.labels[ct.test_l], task.metrics)
    values = per.get(task.primary_metric)
    return metrics, None if values is None else values.astype(np.float32)


def _score_method(
    ct: _CellTask, method: str, sub: np.ndarray, seed: int
) -> tuple[dict[str, Any], dict[str, Any], np.ndarray | None]:
    """Test-user metrics of ``method`` trained on the labelled subset ``sub``, what its
    probe selected on valid users, and the per-user primary-metric values."""
    task, labels = ct.task, ct.task.labels
    truth = task.targets if task.targets is not None else labels
    selection: dict[str, Any] = {}
    if method in ct.hooks:  # the hook owns its threads
        out = ct.hooks[method](task, sub, ct.valid_l, ct.test_l, seed)
        pred = (
            out
            if isinstance(out, Prediction)
            else _hook_prediction(method, out, len(ct.test_l), task.num_classes)
        )
    with cpu_threads(ct.probe.threads):
        if method == MAJORITY:
            pred = (
                _popularity_prediction(task.targets[sub], len(ct.test_l))
                if task.targets is not None
                else _majority_prediction(labels[sub], len(ct.test_l))
            )
        elif method in ct.embs:
            emb = ct.embs[method]
            exclude_valid = task.exclude[ct.valid_l] if task.exclude is not None else None
            fitted = fit_probe(emb[sub], truth[sub], emb[ct.valid_l], truth[ct.valid_l],
                               task.primary_metric, ct.probe, seed=seed,
                               exclude_valid=exclude_valid)  # fmt: skip
            pred = fitted.predict(emb[ct.test_l], lazy=task.is_set)
            selection = fitted.selection
        metrics, values = _test_metrics(ct, pred)
    return metrics, selection, values


def _run_label_free(
    ct: _CellTask, scorers: Mapping[str, Scorer], seconds: dict[str, float]
) -> None:
    """Score the label-free methods that apply to the task (their scorer returns a
    prediction) once, into ``ct.free``; without labelled test users they are ``n/a``."""
    for name, scorer in scorers.items():
        t0 = time.perf_counter()
        pred = scorer(ct.task, ct.test_l)
        if pred is None:
            continue  # the method does not apply to this task: no cells
        if len(ct.test_l) == 0:
            ct.free[name] = "no test user has a label, so nothing can be scored"
            continue
        if pred.num_rows != len(ct.test_l):
            raise SeqtwinsError(
                f"scorer of method {name!r} returned {pred.num_rows} rows for "
                f"{len(ct.test_l)} test users of task {ct.task.name!r}"
            )
        with cpu_threads(ct.probe.threads):
            ct.free[name] = _test_metrics(ct, pred)
        seconds[name] += time.perf_counter() - t0


def evaluate_embeddings(
    ds: SequenceDataset,
    methods: Mapping[str, np.ndarray],
    tasks: Sequence[str] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: int | Sequence[int] = 3,
    protocol: str = "linear",
    probe: ProbeConfig | None = None,
    finetuners: Mapping[str, Finetuner] | None = None,
    include_majority: bool = True,
    progress: Callable[[str], None] | None = None,
    scorers: Mapping[str, Scorer] | None = None,
    include_history: bool = True,
    include_items_knn: bool = True,
) -> dict[str, Any]:
    """Evaluate user embeddings (and fine-tuning hooks, label-free scorers) on few-label
    downstream tasks.

    ``methods`` maps a method name (``barlow``, ``dual``, ``random-init``, ``tfidf-svd``,
    ...) to its (U, D) embedding of every user (row = ``user_idx``). ``protocol`` is the
    probe kind on frozen embeddings (``linear`` or ``mlp``); ``probe`` overrides its
    settings. ``include_majority`` adds the majority-class (popularity) floor as method
    ``majority``, ``include_history`` the ``history`` floor on the tasks that have it,
    ``include_items_knn`` the ``items-knn`` floor on ``future_items``. ``scorers`` adds
    label-free methods (cells with ``"protocol": "native"``). Returns a JSON-ready dict
    (see :func:`save_results`) plus ``per_user`` (module docstring).
    """
    if protocol not in PROTOCOLS:
        raise SeqtwinsError(f"protocol {protocol!r} must be one of {', '.join(PROTOCOLS)}")
    cfg = probe or ProbeConfig(kind=protocol)
    if cfg.kind != protocol:
        raise SeqtwinsError(f"probe kind {cfg.kind!r} conflicts with protocol {protocol!r}")
    fracs = _check_fractions(fractions)
    seed_list = _check_seeds(seeds)
    embs = _check_methods(ds, methods)
    hooks = dict(finetuners or {})
    free = dict(scorers or {})
    builtin = [MAJORITY] * include_majority + [HISTORY] * include_history
    builtin += [ITEMS_KNN] * include_items_knn
    names = [*builtin, *embs, *hooks, *free]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise SeqtwinsError(f"method name(s) {', '.join(clash)} given twice; rename one")
    if not embs and not hooks and not free and not include_majority:
        raise SeqtwinsError("no methods to evaluate; pass embeddings or fine-tuning hooks")
    task_list = build_tasks(ds, list(tasks) if tasks is not None else None)
    if include_items_knn:
        from seqtwins.evaluate.baselines import items_knn_scorer  # imports scikit-learn

        free = {ITEMS_KNN: items_knn_scorer(ds), **free}
    if include_history:
        free = {HISTORY: history_prediction, **free}
    run = _Run(ds, fracs, {s: train_order(ds, s) for s in seed_list}, cfg, protocol,
               include_majority, embs, hooks, free, progress or (lambda _msg: None))  # fmt: skip
    t_start = time.perf_counter()
    for task in task_list:
        run.task(task)
    used = {c["method"] for c in run.cells}
    method_names = [m for m in names if m not in free or m in used]
    return {
        "schema": RESULTS_SCHEMA,
        "dataset": {
            "path": str(ds.path),
            "content_hash": ds.content_hash,
            "num_users": ds.num_users,
            "num_items": ds.num_items,
            "splits": {s: int(len(ds.split_users(s))) for s in ("train", "valid", "test")},
        },
        "protocol": protocol,
        "probe": cfg.to_dict(),
        "fractions": fracs,
        "seeds": seed_list,
        "methods": method_names,
        "floors": [m for m in method_names if m in FLOOR_METHODS],
        "tasks": run.task_info,
        "subsets": {
            "rule": "first ceil(fraction * n_labelled) labelled users of train_order[seed]",
            "salt": SUBSET_SALT,
            "train_order": {str(s): run.orders[s].tolist() for s in seed_list},
        },
        "cells": run.cells,
        "artifacts": {},
        "seconds": {m: round(run.seconds.get(m, 0.0), 3) for m in method_names}
        | {"total": round(time.perf_counter() - t_start, 3)},
        "per_user": run.per_user,
    }


@dataclass
class _Run:
    """One :func:`evaluate_embeddings` call: its settings and what it has produced."""

    ds: SequenceDataset
    fracs: list[float]
    orders: dict[int, np.ndarray]
    cfg: ProbeConfig
    protocol: str
    majority: bool
    embs: dict[str, np.ndarray]
    hooks: dict[str, Finetuner]
    scorers: dict[str, Scorer]
    say: Callable[[str], None]

    def __post_init__(self) -> None:
        self.cells: list[dict[str, Any]] = []
        self.task_info: dict[str, Any] = {}
        self.per_user: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}

    def task(self, task: Task) -> None:
        """All cells of one task: every method x fraction, with every seed's run."""
        ds = self.ds
        train, valid, test = (ds.split_users(s) for s in ("train", "valid", "test"))
        info = task.summary(ds)
        valid_l, test_l, train_l = task.labelled(valid), task.labelled(test), task.labelled(train)
        n_cls = int(np.count_nonzero(task.class_counts(train_l)))
        task_cfg = self.cfg.for_task(len(train_l), n_cls, multilabel=task.is_set)
        info["probe_solver"] = "mlp" if task_cfg.kind == "mlp" else task_cfg.solver
        self.task_info[task.name] = info
        task_problem = _task_problem(train_l, valid_l, test_l)
        self.say(f"task {task.name}: {task.num_classes} classes, {len(train_l)} labelled "
                 "train users")  # fmt: skip
        ct = _CellTask(task, valid_l, test_l, task_cfg, self.embs, self.hooks, {})
        for m in self._names():
            self.seconds.setdefault(m, 0.0)
        _run_label_free(ct, self.scorers, self.seconds)
        methods = [m for m in self._names() if m not in self.scorers or m in ct.free]
        per_user: dict[str, np.ndarray] = {}
        for frac in self.fracs:
            subsets = {s: labelled_subset(o, task.labels, frac) for s, o in self.orders.items()}
            problems = {
                s: task_problem or _subset_problem(task, sub, frac) for s, sub in subsets.items()
            }
            for method in methods:
                runs = _method_runs(ct, method, frac, subsets, problems, self.seconds, per_user)
                cell = {"task": task.name, "method": method, "fraction": frac,
                        "protocol": self._protocol(method)}  # fmt: skip
                cell.update(_aggregate(runs, task.metrics))
                cell["runs"] = runs
                self.cells.append(cell)
            self.say(f"  {task.name} fraction {frac:g} done")
        if per_user:
            self.per_user[task.name] = {"users": test_l.astype(np.int64), "values": per_user}

    def _names(self) -> list[str]:
        """Every method in table order: the floors majority, history and items-knn first."""
        floors = [m for m in (HISTORY, ITEMS_KNN) if m in self.scorers]
        native = [m for m in self.scorers if m not in floors]
        builtin = [MAJORITY] * self.majority + floors
        return [*builtin, *self.embs, *self.hooks, *native]

    def _protocol(self, method: str) -> str:
        if method in self.hooks:
            return "finetune"
        if method in (MAJORITY, HISTORY, ITEMS_KNN):
            return method
        return "native" if method in self.scorers else self.protocol


def _hook_prediction(method: str, out: Any, n_test: int, n_classes: int) -> Prediction:
    arr = np.asarray(out, dtype=np.float32)
    if arr.shape != (n_test, n_classes):
        raise SeqtwinsError(
            f"fine-tuning hook of method {method!r} returned scores of shape {arr.shape}; "
            f"expected ({n_test}, {n_classes}) = (test users, classes)"
        )
    return Prediction.full(arr)


# --- files ---------------------------------------------------------------------------------


def save_results(results: Mapping[str, Any], path: Path | str) -> Path:
    """Write results as JSON (atomically: a half-written eval.json never exists). The
    per-user arrays (``per_user``) are left out: ``seqtwins evaluate`` saves them as
    ``per_user.npz`` (:func:`seqtwins.evaluate.significance.save_per_user`)."""
    path = Path(path)
    doc = {k: v for k, v in results.items() if k != PER_USER}
    atomic_write(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")
    return path


PER_USER = "per_user"


def load_results(path: Path | str) -> dict[str, Any]:
    """Read an eval.json written by :func:`save_results`; SeqtwinsError if it is not one."""
    path = Path(path)
    if path.is_dir():
        raise SeqtwinsError(f"{path} is a folder; give an eval.json written by `seqtwins evaluate`")
    if not path.is_file():
        raise SeqtwinsError(f"{path} does not exist; create it with `seqtwins evaluate`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SeqtwinsError(f"{path} is not valid JSON ({e}); rerun `seqtwins evaluate`") from e
    if not isinstance(data, dict) or data.get("schema") != RESULTS_SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise SeqtwinsError(
            f"{path} is not a seqtwins evaluation (schema {got!r}, expected {RESULTS_SCHEMA!r})"
        )
    for key in ("cells", "tasks", "methods", "fractions"):
        if key not in data:
            raise SeqtwinsError(f"{path} lacks {key!r}; rerun `seqtwins evaluate`")
    if FAITHFULNESS in data:  # optional: eval.json files without the deletion test stay valid
        check_section(data[FAITHFULNESS], path)
    return data


def metric_records(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat record per (task, method, fraction, seed): the JSON-lines view."""
    out = []
    for cell in results["cells"]:
        for run in cell["runs"]:
            rec = {
                "task": cell["task"],
                "method": cell["method"],
                "protocol": cell["protocol"],
                "fraction": cell["fraction"],
                "seed": run["seed"],
                "n_train": run["n_train"],
                "subset": run["subset"],
                "status": run["status"],
            }
            if run["status"] == "ok":
                rec.update(run["metrics"])
            else:
                rec["reason"] = run["reason"]
            out.append(rec)
    return out


def write_metrics_jsonl(results: Mapping[str, Any], path: Path | str) -> Path:
    """Write :func:`metric_records` as JSON lines (atomically)."""
    path = Path(path)
    lines = [json.dumps(r, allow_nan=False) for r in metric_records(results)]
    atomic_write(path, "\n".join(lines) + ("\n" if lines else ""))
    return path
