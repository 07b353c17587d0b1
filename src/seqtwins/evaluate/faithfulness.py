"""The deletion test in eval.json: ``seqtwins evaluate --faithfulness`` (docs/explain.md).

For every evaluated run, :func:`seqtwins.explain.faithfulness.deletion_test` removes each
test user's top-k attributed items (integrated gradients, occlusion) and k random items,
k = 1..5, and records how much the task probe's confidence in its prediction drops. One
task for all runs: the first headline task (:func:`seqtwins.evaluate.tasks.headline_tasks`)
with at least ``users`` eligible test users (labelled, more than 5 items in the window),
or, when none has that many, the headline task with the most. The section is written
under the eval.json key :data:`FAITHFULNESS`, checked on read (:func:`check_section`;
eval.json files without it stay valid), and ``seqtwins report`` renders it::

    "faithfulness": {
      "schema": "seqtwins.faithfulness/1",
      "task": "future_categories",
      "eligible_by_task": {"future_categories": 838, "future_items": 1204},
      "users_requested": 500, "ks": [1, 2, 3, 4, 5], "methods": ["ig", "occlusion"],
      "random_draws": 3, "seed": 0, "seconds": 66.1,
      "runs": {"<method name>": {
        "users": 500, "eligible_test_users": 838, "labelled_test_users": 4473,
        "probe_solver": "ridge", "confidence": 0.79,       # mean, before removal
        "random": {"drop": [...], "auc": ...},             # one drop per k
        "methods": {"ig": {"drop": [...], "auc": ..., "auc_ratio": ..., "drop_ratio_at_k": ...}},
        "seconds": {"setup": ..., "attribution": ..., "deletion": ...}}}
    }

A run without an eligible user, or whose probe cannot be fitted, has ``"users": 0`` and a
``"reason"``. A ratio is ``null`` where random removal did not lower the confidence.

This module imports :mod:`seqtwins.explain` (and Captum) only when the test runs, so that
reading and checking eval.json never needs them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.tasks import Task, build_task, headline_tasks

if TYPE_CHECKING:
    from seqtwins.models.encoder import SequenceEncoder

FAITHFULNESS = "faithfulness"
"""The eval.json key of the section."""
SCHEMA = "seqtwins.faithfulness/1"
DEFAULT_USERS = 500
"""Test users per run (issue 13: the test runs over at least 500 test users)."""
RERUN = "rerun `seqtwins evaluate --faithfulness`"


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
    (module docstring), before the evaluation starts; SeqtwinsError when no headline task
    has an eligible test user."""
    from seqtwins.explain.attribution import captum
    from seqtwins.explain.faithfulness import KS, eligible_users

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
    """The section (module docstring) for the encoders ``runs`` (method name -> encoder),
    whose embeddings of every user are ``embeddings[name]``; one torch / BLAS thread (the
    attributions are many small operations: docs/explain.md)."""
    from seqtwins.evaluate.probe import cpu_threads
    from seqtwins.explain.faithfulness import KS, METHODS, deletion_test

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


# --- reading -------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_curve(s: Any, n: int, where: str, ratios: bool, path: Path | str) -> None:
    if not isinstance(s, dict):
        raise _bad(path, where, "is missing")
    drop = s.get("drop")
    if not isinstance(drop, list) or len(drop) != n or not all(map(_is_number, drop)):
        raise _bad(path, f"{where}.drop", f"is not a list of {n} numbers (one per k)")
    if not _is_number(s.get("auc")):
        raise _bad(path, f"{where}.auc", "is not a number")
    for key in ("auc_ratio", "drop_ratio_at_k") if ratios else ():
        if s.get(key, 0) is not None and not _is_number(s.get(key)):
            raise _bad(path, f"{where}.{key}", "is missing or not a number or null")


def _bad(path: Path | str, where: str, what: str) -> SeqtwinsError:
    return SeqtwinsError(f"{path}: {FAITHFULNESS}{where} {what}; {RERUN}")


def check_section(section: Any, path: Path | str) -> None:
    """SeqtwinsError (one line naming the file and the entry) unless ``section`` is a
    deletion-test section as :func:`run_deletion_test` writes it."""
    if not isinstance(section, dict) or section.get("schema") != SCHEMA:
        raise _bad(path, "", f"is not a deletion-test section (schema {SCHEMA!r})")
    kinds: dict[str, type | tuple[type, ...]] = {
        "task": str, "users_requested": int, "ks": list, "methods": list, "runs": dict,
    }  # fmt: skip
    for key, kind in kinds.items():
        if not isinstance(section.get(key), kind):
            raise _bad(path, f".{key}", "is missing or of the wrong type")
    ks = section["ks"]
    if not ks or not all(isinstance(k, int) and k >= 1 for k in ks):
        raise _bad(path, ".ks", "must list positive integers")
    for name, run in section["runs"].items():
        where = f".runs.{name}"
        if not isinstance(run, dict) or not isinstance(run.get("users"), int):
            raise _bad(path, where, "lacks 'users'")
        if run["users"] == 0:
            if not isinstance(run.get("reason"), str):
                raise _bad(path, where, "has no users and no 'reason'")
            continue
        _check_curve(run.get("random"), len(ks), f"{where}.random", False, path)
        methods = run.get("methods")
        if not isinstance(methods, dict) or not methods:
            raise _bad(path, f"{where}.methods", "is missing or empty")
        for m, s in methods.items():
            _check_curve(s, len(ks), f"{where}.methods.{m}", True, path)
