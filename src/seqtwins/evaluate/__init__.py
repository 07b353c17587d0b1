"""Downstream evaluation with few labels (docs/evaluation.md).

- :mod:`~seqtwins.evaluate.tasks` — labels from the held-out future window and user
  attributes: the headline set tasks ``future_categories`` (multi-label) and
  ``future_items`` (retrieval of new items), then ``next_item``, ``next_category``,
  ``favorite_category``, attributes, ``next_rating_high``;
- :mod:`~seqtwins.evaluate.probe` — linear (ridge / logistic) and MLP probes on frozen
  embeddings, and the metrics;
- :mod:`~seqtwins.evaluate.baselines` — the TF-IDF + truncated-SVD floor;
- :mod:`~seqtwins.evaluate.protocol` — methods x tasks x label fractions x seeds on fixed,
  shared labelled subsets, label-free scorers and the history floor; eval.json and
  JSON-lines output;
- :mod:`~seqtwins.evaluate.native` — a run's own item tower as a label-free scorer;
- :mod:`~seqtwins.evaluate.significance` — the per-user values (``per_user.npz``: keys,
  writer, reader) and the paired bootstrap over seeds and test users;
- :mod:`~seqtwins.evaluate.report` — report.md and plots (imported on demand: matplotlib).

The package itself is callable: ``seqtwins.evaluate(runs, data, out, ...)`` is
:func:`seqtwins.evaluate.runs.evaluate_runs` (the public API names the function after the
package, and Python binds a subpackage to its parent's attribute once it is imported).
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from seqtwins.evaluate.baselines import tfidf_svd_embeddings
    from seqtwins.evaluate.probe import Prediction, ProbeConfig, fit_probe, score
    from seqtwins.evaluate.protocol import (
        DEFAULT_FRACTIONS,
        Finetuner,
        Scorer,
        evaluate_embeddings,
        load_results,
        save_results,
        write_metrics_jsonl,
    )
    from seqtwins.evaluate.significance import compare, load_per_user, paired_bootstrap
    from seqtwins.evaluate.tasks import (
        MIN_TEST_USERS,
        Task,
        available_tasks,
        build_task,
        build_tasks,
        headline_tasks,
    )

_LAZY = {
    "tfidf_svd_embeddings": "baselines",
    "Prediction": "probe",
    "ProbeConfig": "probe",
    "fit_probe": "probe",
    "score": "probe",
    "DEFAULT_FRACTIONS": "protocol",
    "Finetuner": "protocol",
    "Scorer": "protocol",
    "evaluate_embeddings": "protocol",
    "load_results": "protocol",
    "save_results": "protocol",
    "write_metrics_jsonl": "protocol",
    "compare": "significance",
    "load_per_user": "significance",
    "paired_bootstrap": "significance",
    "MIN_TEST_USERS": "tasks",
    "Task": "tasks",
    "available_tasks": "tasks",
    "build_task": "tasks",
    "build_tasks": "tasks",
    "headline_tasks": "tasks",
}
"""The package's names and the submodule each lives in, imported on first use (PEP 562):
``import seqtwins.evaluate.native`` (what ``seqtwins explain`` and ``serve`` need) does not
import scikit-learn through the TF-IDF baseline."""

__all__ = [
    "DEFAULT_FRACTIONS",
    "MIN_TEST_USERS",
    "Finetuner",
    "Prediction",
    "ProbeConfig",
    "Scorer",
    "Task",
    "available_tasks",
    "build_task",
    "build_tasks",
    "compare",
    "evaluate_embeddings",
    "fit_probe",
    "headline_tasks",
    "load_per_user",
    "load_results",
    "paired_bootstrap",
    "save_results",
    "score",
    "tfidf_svd_embeddings",
    "write_metrics_jsonl",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from seqtwins.evaluate.runs import evaluate_runs

        return evaluate_runs(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
