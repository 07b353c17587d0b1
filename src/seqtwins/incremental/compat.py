"""``seqtwins evaluate --compat OLD_RUN NEW_RUN``: do downstream models of the old
embeddings still work on the new ones?

For each task (default: the headline tasks) a probe is fitted on the OLD run's embeddings
of the dataset's labelled train users (selected on valid users, as ``seqtwins evaluate``
does, :func:`seqtwins.evaluate.probe.fit_probe`) and scored on the test users twice: on
their old embeddings and on their NEW embeddings, unchanged. ``compat`` is the second score
as a fraction of the first (1.0: the old probe works as well as before; Shen et al.,
CVPR 2020, call a model backward-compatible when this holds). A probe fitted on the new
embeddings themselves is scored beside it (``new_probe``): what the new run is worth to a
downstream model retrained on it.

Both ratios come with a 95 % paired-bootstrap interval over the test users where the
metric is a mean over users (all but ``auc``;
:func:`seqtwins.evaluate.significance.paired_bootstrap`: the same users resampled for both
scores): ``compat_interval`` for ``old_probe_on_new / old`` and ``new_probe_interval`` for
``new_probe / old``. On a task with few hits (``future_items`` on a few hundred users) a
ratio of 80 % can be one or two users' hits, and the interval says so.

Both runs embed the same users of one dataset (default: the old run's), each through its
own item vocabulary, matched by original item id (items a run does not know are left out
of that run's input).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from seqtwins.data.dataset import SequenceDataset, Sequences
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.probe import ProbeConfig, fit_probe, score_users
from seqtwins.evaluate.significance import paired_bootstrap
from seqtwins.evaluate.tasks import Task, build_task, headline_tasks
from seqtwins.incremental.growth import vocab_map
from seqtwins.models.encoder import embed_users
from seqtwins.run import Run


def reindex(ds: SequenceDataset, lut: np.ndarray) -> SequenceDataset:
    """``ds`` with every interaction's item index mapped through ``lut`` (another run's
    vocabulary); interactions whose item maps to 0 (unknown there) are removed."""
    s = ds.sequences
    mapped = lut[np.asarray(s.items)]
    keep = mapped > 0
    before = np.concatenate([[0], np.cumsum(keep)])  # kept interactions before each position
    seqs = Sequences(
        offsets=before[s.offsets],
        items=mapped[keep].astype(np.int32),
        history_end=before[s.history_end],
        times=None if s.times is None else np.asarray(s.times)[keep],
        ratings=None if s.ratings is None else np.asarray(s.ratings)[keep],
    )
    meta = {**ds.meta, "counts": {**ds.meta["counts"], "items": len(lut) - 2}}
    return SequenceDataset(ds.path, meta, seqs, ds.items, ds.users)


def run_embeddings(run: Run, ds: SequenceDataset, users: np.ndarray, which: str) -> np.ndarray:
    """Embeddings (n, D) of ``users`` of ``ds`` by ``run``, through the run's own item
    vocabulary (matched by original id when ``ds`` is not the run's dataset)."""
    if run.lineage.content_hash == ds.content_hash:
        return embed_users(run.encoder(which, ds), ds, users)
    own = run.dataset(verify=False)
    lut = vocab_map(own.items["item_id"], ds.items["item_id"])
    return embed_users(run.encoder(which, own), reindex(ds, lut), users)


def _truth(task: Task, users: np.ndarray) -> Any:
    return task.targets[users] if task.targets is not None else task.labels[users]


def _score(
    task: Task, probe: Any, emb: np.ndarray, users: np.ndarray
) -> tuple[float | None, np.ndarray | None]:
    """The task's primary metric, and its per-user values (n,) where it is a mean over
    users (not for ``auc``)."""
    exclude = task.exclude[users] if task.exclude is not None else None
    pred = probe.predict(emb, lazy=True)
    value, per = score_users(pred, _truth(task, users), (task.primary_metric,), exclude)
    return value[task.primary_metric], per.get(task.primary_metric)


def _ratio(
    a: tuple[float | None, np.ndarray | None], b: tuple[float | None, np.ndarray | None], seed: int
) -> tuple[float | None, list[float] | None]:
    """``b / a`` and, when both have per-user values, its 95 % paired-bootstrap interval
    over users (None as well when a resampled ``a`` scored 0); ``(None, None)`` when ``a``
    is 0 or missing."""
    if a[0] is None or b[0] is None or a[0] == 0:
        return None, None
    if a[1] is None or b[1] is None:
        return b[0] / a[0], None
    boot = paired_bootstrap(b[1], a[1], seed=seed)
    if boot.gain_low is None or boot.gain_high is None:
        return b[0] / a[0], None
    return b[0] / a[0], [1.0 + boot.gain_low, 1.0 + boot.gain_high]


def task_compat(
    ds: SequenceDataset, task: Task, emb: dict[str, np.ndarray], seed: int
) -> dict[str, Any] | None:
    """One task's row of :func:`compat_scores` (``None`` without labelled users)."""
    tr, va, te = (task.labelled(ds.split_users(s)) for s in ("train", "valid", "test"))
    if min(len(tr), len(va), len(te)) == 0:
        return None
    exclude_valid = task.exclude[va] if task.exclude is not None else None
    got: dict[str, tuple[float | None, np.ndarray | None]] = {}
    for kind in ("old", "new"):
        x = emb[kind]
        probe = fit_probe(x[tr], _truth(task, tr), x[va], _truth(task, va), task.primary_metric,
                          ProbeConfig(solver="ridge"), seed, exclude_valid)  # fmt: skip
        if kind == "old":
            got["old"] = _score(task, probe, x[te], te)
            got["old_probe_on_new"] = _score(task, probe, emb["new"][te], te)
        else:
            got["new_probe"] = _score(task, probe, x[te], te)
    row: dict[str, Any] = {"metric": task.primary_metric, "test_users": int(len(te))}
    row.update({k: v[0] for k, v in got.items()})
    row["compat"], row["compat_interval"] = _ratio(got["old"], got["old_probe_on_new"], seed)
    row["new_probe_ratio"], row["new_probe_interval"] = _ratio(got["old"], got["new_probe"], seed)
    return row


def compat_scores(
    old_run: Path | str,
    new_run: Path | str,
    data: Path | str | None = None,
    tasks: list[str] | None = None,
    which: str = "best",
    seed: int = 0,
    verify: bool = True,
) -> dict[str, Any]:
    """Per task: ``old`` (old probe on old embeddings), ``old_probe_on_new``, ``compat``
    (their ratio), ``new_probe`` (a probe fitted on the new embeddings); JSON-ready."""
    old, new = Run.open(old_run), Run.open(new_run)
    ds = SequenceDataset.open(data if data is not None else old.lineage.path, verify=verify)
    names = tasks or headline_tasks(ds)
    if not names:
        raise SeqtwinsError(f"{ds.path} supports no headline task; name tasks with --tasks")
    every = np.arange(ds.num_users)
    emb = {
        "old": run_embeddings(old, ds, every, which),
        "new": run_embeddings(new, ds, every, which),
    }
    out: dict[str, Any] = {"old_run": str(old.path), "new_run": str(new.path),
                           "data": str(ds.path), "checkpoint": which, "tasks": {}}  # fmt: skip
    for name in names:
        row = task_compat(ds, build_task(ds, name), emb, seed)
        if row is not None:
            out["tasks"][name] = row
    return out


def compat_lines(result: dict[str, Any]) -> list[str]:
    """What ``evaluate --compat`` prints: one line per task."""

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    lines = []
    for name, row in result["tasks"].items():
        lines.append(
            f"{name} ({row['metric']}, {row['test_users']} test users): old probe on old "
            f"embeddings {num(row['old'])}, on new ones {num(row['old_probe_on_new'])} = "
            f"{ratio_text(row['compat'], row['compat_interval'])}; a probe fitted on the new "
            f"ones {num(row['new_probe'])} = "
            f"{ratio_text(row['new_probe_ratio'], row['new_probe_interval'])}"
        )
    return lines or ["no task had labelled train, valid and test users"]


def ratio_text(ratio: float | None, interval: list[float] | None) -> str:
    """``87.2% (95% CI 61.0%-110.3%)``, ``87.2%`` without an interval, or ``n/a``."""
    if ratio is None:
        return "n/a"
    if interval is None:
        return f"{ratio:.1%}"
    return f"{ratio:.1%} (95% CI {interval[0]:.1%}-{interval[1]:.1%})"
