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

This module is the section's layout and its check on read (it imports neither
:mod:`seqtwins.explain` nor Captum); :func:`seqtwins.explain.faithfulness.plan_deletion_test`
and :func:`~seqtwins.explain.faithfulness.run_deletion_test` write it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seqtwins.errors import SeqtwinsError

FAITHFULNESS = "faithfulness"
"""The eval.json key of the section."""
SCHEMA = "seqtwins.faithfulness/1"
DEFAULT_USERS = 500
"""Test users per run (issue 13: the test runs over at least 500 test users)."""
RERUN = "rerun `seqtwins evaluate --faithfulness`"


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
    deletion-test section as
    :func:`seqtwins.explain.faithfulness.run_deletion_test` writes it."""
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
