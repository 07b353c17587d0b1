"""The deletion test: do attributions find the items a prediction rests on?

For each test user the probe predicts a class from the full window (the items the encoder
reads). Then the user's ``k`` most attributed items (attribution to the probe's score of
that class, highest first) are taken out of the window, and, separately, ``k`` items drawn
at random; the **drop** is the probe's confidence in the originally predicted class before
minus after (:class:`seqtwins.explain.probe.TaskProbe.confidence`). Removal means what it
means for occlusion (:mod:`seqtwins.explain.attribution`): the item leaves the sequence.

Per ``k = 1..K`` the mean drop over users gives a deletion curve for each attribution
method and for random removal (the mean over ``draws`` random orders per user, each order
nested like the attribution's: the first ``k`` of one permutation). The **area under the
deletion curve** is the trapezoid from ``(0, 0)`` to ``(K, drop_K)``; the report gives the
areas, their ratio attribution / random, and the ratio of the drops at ``K`` (the issue's
target: top-5 attributed removal lowers confidence at least twice as much as 5 random
removals). Users need more than ``K`` items in the window, so that something is left.

A method no better than random has ratios near 1 (or below); that is what is reported.

``seqtwins evaluate --faithfulness`` runs the test on the encoders and embeddings it has
already loaded: :func:`plan_deletion_test` chooses the task before the evaluation starts,
:func:`run_deletion_test` writes the eval.json section that
:mod:`seqtwins.evaluate.faithfulness` describes and checks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqtwins.data.batching import histories
from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.faithfulness import DEFAULT_USERS, SCHEMA
from seqtwins.evaluate.probe import cpu_threads
from seqtwins.evaluate.tasks import Task, build_task, headline_tasks
from seqtwins.explain.attribution import batch_attributions, captum, embed_windows
from seqtwins.explain.probe import TaskProbe, fit_task_probe
from seqtwins.models.encoder import SequenceEncoder, embed_users
from seqtwins.run import Run

KS = (1, 2, 3, 4, 5)
METHODS = ("ig", "occlusion")
Confidence = Callable[[list[np.ndarray]], np.ndarray]
"""Confidence of every user's fixed class given their (reduced) windows: n windows -> (n,)."""


def deletion_drops(
    windows: Sequence[np.ndarray],
    order: Sequence[np.ndarray] | None,
    confidence: Confidence,
    ks: Sequence[int] = KS,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """(n, len(ks)) confidence drops when the first ``k`` positions of ``order[i]`` are
    removed from ``windows[i]``; with ``order=None`` a random order per user from ``rng``."""
    if order is None:
        gen = rng or np.random.default_rng(0)
        order = [gen.permutation(len(w)) for w in windows]
    base = np.asarray(confidence(list(windows)), dtype=np.float64)  # (n,)
    out = np.zeros((len(windows), len(ks)), dtype=np.float64)
    for j, k in enumerate(ks):
        reduced = [np.delete(w, o[:k]) for w, o in zip(windows, order, strict=True)]
        out[:, j] = base - np.asarray(confidence(reduced), dtype=np.float64)
    return out


def curve_summary(drops: np.ndarray, ks: Sequence[int] = KS) -> dict[str, Any]:
    """Mean drop per k and the area under the deletion curve (trapezoid from (0, 0))."""
    mean = drops.mean(axis=0) if len(drops) else np.full(len(ks), np.nan)
    x = np.concatenate([[0.0], np.asarray(ks, dtype=np.float64)])
    y = np.concatenate([[0.0], mean])
    auc = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
    return {"drop": [float(v) for v in mean], "auc": auc}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def compare(
    windows: Sequence[np.ndarray],
    orders: Mapping[str, Sequence[np.ndarray]],
    confidence: Confidence,
    ks: Sequence[int] = KS,
    draws: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Deletion curves of each attribution ``orders[method]`` and of random removal
    (``draws`` random orders per user), with their areas and ratios to random."""
    rng = np.random.default_rng(seed)
    rand = np.mean(
        [deletion_drops(windows, None, confidence, ks, rng) for _ in range(draws)], axis=0
    )
    random = curve_summary(rand, ks)
    out: dict[str, Any] = {"ks": list(ks), "users": len(windows), "random_draws": draws,
                           "random": random, "methods": {}}  # fmt: skip
    for name, order in orders.items():
        s = curve_summary(deletion_drops(windows, order, confidence, ks), ks)
        s["auc_ratio"] = _ratio(s["auc"], random["auc"])
        s["drop_ratio_at_k"] = _ratio(s["drop"][-1], random["drop"][-1])
        out["methods"][name] = s
    return out


def _attribution_orders(
    encoder: SequenceEncoder,
    windows: list[np.ndarray],
    columns: np.ndarray,
    tp: TaskProbe,
    methods: Sequence[str],
) -> dict[str, list[np.ndarray]]:
    """Positions of each window, most attributed (to the predicted class's score) first."""
    orders: dict[str, list[np.ndarray]] = {}
    for m in methods:
        values = batch_attributions(encoder, windows, tp.scores, columns, m)
        orders[m] = [np.argsort(-v, kind="stable") for v in values]
    return orders


def faithfulness(
    run: Path | str | Run,
    data: Path | str,
    task: str,
    users: int = 500,
    ks: Sequence[int] = KS,
    methods: Sequence[str] = METHODS,
    draws: int = 3,
    seed: int = 0,
    checkpoint: str = "best",
    threads: int = 1,
) -> dict[str, Any]:
    """The deletion test of ``run`` on ``task`` over up to ``users`` labelled test users
    (a seeded random sample of those with more than ``max(ks)`` window items), with
    ``threads`` torch / BLAS threads (restored after)."""
    bad = sorted(set(methods) - set(METHODS))
    if bad:
        raise SeqtwinsError(f"unknown attribution method(s) {bad}; choose from {METHODS}")
    with cpu_threads(threads):
        return _faithfulness(run, data, task, users, ks, methods, draws, seed, checkpoint)


def _faithfulness(
    run: Path | str | Run,
    data: Path | str,
    task: str,
    users: int,
    ks: Sequence[int],
    methods: Sequence[str],
    draws: int,
    seed: int,
    checkpoint: str,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = run if isinstance(run, Run) else Run.open(run)
    ds = SequenceDataset.open(data, mmap=False)
    encoder = r.encoder(checkpoint, ds)
    task_obj = build_task(ds, task)
    emb = embed_users(encoder, ds, np.arange(ds.num_users))
    loaded = time.perf_counter() - t0
    out = deletion_test(encoder, ds, task_obj, emb, users, ks, methods, draws, seed)
    if "reason" in out:
        raise SeqtwinsError(f"{out['reason']} of {ds.path}; choose another task")
    out["seconds"]["setup"] = round(out["seconds"]["setup"] + loaded, 2)
    out.update(run=str(r.path), dataset=str(ds.path), objective=r.config.objective,
               checkpoint=checkpoint)  # fmt: skip
    return out


def eligible_users(
    ds: SequenceDataset, task: Task, max_len: int, ks: Sequence[int] = KS
) -> tuple[np.ndarray, int]:
    """The labelled test users of ``task`` with more than ``max(ks)`` items in their window
    (the last ``max_len`` history items), and how many test users are labelled."""
    test = task.labelled(ds.split_users("test"))
    lengths = np.array([len(w) for w in histories(ds.sequences, test, max_len)], dtype=np.int64)
    return test[lengths > max(ks)], len(test)


def deletion_test(
    encoder: SequenceEncoder,
    ds: SequenceDataset,
    task: Task,
    emb: np.ndarray,
    users: int = 500,
    ks: Sequence[int] = KS,
    methods: Sequence[str] = METHODS,
    draws: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """The deletion test of ``encoder`` (whose embeddings of every user are ``emb`` (U, D))
    on ``task`` over up to ``users`` eligible test users (:func:`eligible_users`, a seeded
    random sample), in the caller's threads: :func:`compare`'s result plus the task, the
    probe's solver, the eligible and labelled test users, the mean confidence before
    removal and the seconds spent. Without an eligible user: ``users`` 0 and ``reason``."""
    t0 = time.perf_counter()
    eligible, n_test = eligible_users(ds, task, encoder.cfg.max_len, ks)
    info: dict[str, Any] = {"task": task.name, "eligible_test_users": int(len(eligible)),
                            "labelled_test_users": int(n_test)}  # fmt: skip
    if len(eligible) == 0:
        return {"ks": list(ks), "users": 0, **info, "reason": (
            f"no labelled test user of task {task.name!r} has more than {max(ks)} items "
            "in the encoder's window")}  # fmt: skip
    tp = fit_task_probe(ds, task, emb)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(eligible)[:users])
    windows = histories(ds.sequences, chosen, encoder.cfg.max_len)
    columns = tp.predicted(torch.from_numpy(emb[chosen]), chosen)

    def confidence(ws: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return tp.confidence(embed_windows(encoder, ws), columns).numpy()

    t1 = time.perf_counter()
    orders = _attribution_orders(encoder, windows, columns, tp, methods)
    t2 = time.perf_counter()
    out = compare(windows, orders, confidence, ks, draws, seed)
    out.update(info, probe_solver=tp.solver, confidence=float(confidence(windows).mean()),
               seconds={"setup": round(t1 - t0, 2), "attribution": round(t2 - t1, 2),
                        "deletion": round(time.perf_counter() - t2, 2)})  # fmt: skip
    return out


# --- in eval.json (``seqtwins evaluate --faithfulness``) ---------------------------------


@dataclass
class DeletionPlan:
    """What ``evaluate --faithfulness`` settles before any work: the task and its users."""

    task: Task
    eligible_by_task: dict[str, int]
    """Eligible test users of every headline task that can be probed."""
    users: int = DEFAULT_USERS


def plan_deletion_test(
    ds: SequenceDataset, encoders: Sequence[SequenceEncoder], users: int = DEFAULT_USERS
) -> DeletionPlan:
    """Check that the test can run (Captum importable, ``users`` >= 1) and choose its task
    (:mod:`seqtwins.evaluate.faithfulness`), before the evaluation starts; SeqtwinsError
    when no headline task has an eligible test user."""
    if users < 1:
        raise SeqtwinsError(f"--faithfulness-users {users} must be >= 1")
    if not encoders:
        raise SeqtwinsError("--faithfulness needs a run to explain; pass a run directory")
    captum()  # one line on how to install it, now rather than after the evaluation
    max_len = min(e.cfg.max_len for e in encoders)
    tasks: dict[str, Task] = {}
    eligible: dict[str, int] = {}
    for name in headline_tasks(ds):
        task = build_task(ds, name)
        if all(len(task.labelled(ds.split_users(s))) for s in ("train", "valid")):
            tasks[name] = task
            eligible[name] = int(len(eligible_users(ds, task, max_len, KS)[0]))
    if not any(eligible.values()):
        raise SeqtwinsError(
            f"--faithfulness: no headline task of {ds.path} ({', '.join(headline_tasks(ds))}) "
            f"has a labelled test user with more than {max(KS)} items in the window and "
            "labelled train and valid users; leave --faithfulness out"
        )
    enough = [n for n, c in eligible.items() if c >= users]
    chosen = enough[0] if enough else max(eligible, key=lambda n: eligible[n])
    return DeletionPlan(tasks[chosen], eligible, users)


def run_deletion_test(
    plan: DeletionPlan,
    ds: SequenceDataset,
    runs: Mapping[str, SequenceEncoder],
    embeddings: Mapping[str, np.ndarray],
    say: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """The eval.json section (:mod:`seqtwins.evaluate.faithfulness`) for the encoders
    ``runs`` (method name -> encoder), whose embeddings of every user are
    ``embeddings[name]``; one torch / BLAS thread (the attributions are many small
    operations: docs/explain.md)."""
    t0 = time.perf_counter()
    draws, seed = 3, 0
    out: dict[str, Any] = {
        "schema": SCHEMA, "task": plan.task.name, "eligible_by_task": plan.eligible_by_task,
        "users_requested": plan.users, "ks": list(KS), "methods": list(METHODS),
        "random_draws": draws, "seed": seed, "runs": {},
    }  # fmt: skip
    for name, encoder in runs.items():
        say(f"faithfulness: {name} on {plan.task.name}, up to {plan.users} test users")
        try:
            with cpu_threads(1):
                res = deletion_test(encoder, ds, plan.task, embeddings[name], plan.users,
                                    KS, METHODS, draws, seed)  # fmt: skip
        except SeqtwinsError as e:  # e.g. a probe that cannot be fitted: say so, go on
            res = {"users": 0, "reason": str(e)}
        for key in ("ks", "task", "random_draws"):  # the section's, once
            res.pop(key, None)
        out["runs"][name] = res
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out
