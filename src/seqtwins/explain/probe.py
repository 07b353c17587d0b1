"""A task's probe, fitted as ``seqtwins evaluate`` fits it, for explanations.

The probe is the one ``evaluate`` scores at label budget 100 %, seed 0: the labelled train
users of :func:`seqtwins.evaluate.protocol.labelled_subset` (fraction 1.0 of the seed's
order), the solver ``ProbeConfig.for_task`` picks for the task's size, its L2 strength
selected on the labelled valid users by the task's primary metric
(:func:`seqtwins.evaluate.probe.fit_probe`). Labels come from
:mod:`seqtwins.evaluate.tasks` unchanged.

**Confidence** in a class is what the probe itself estimates as its probability: the
softmax over classes for ``logistic`` / ``mlp`` heads (trained with cross-entropy), the
sigmoid of the class logit for their one-vs-rest form on set tasks, and for ``ridge`` the
least-squares score itself (regression on one-hot targets estimates the class probability;
with an intercept its scores add up to 1 over the classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.probe import FittedProbe, ProbeConfig, fit_probe
from seqtwins.evaluate.protocol import labelled_subset, train_order
from seqtwins.evaluate.tasks import Task
from seqtwins.explain.attribution import probe_scores


@dataclass
class TaskProbe:
    """A fitted probe of one task and how to read its scores."""

    task: Task
    probe: FittedProbe
    n_train: int

    @property
    def solver(self) -> str:
        return str(self.probe.selection.get("solver", self.probe.kind))

    def scores(self, emb: Tensor) -> Tensor:
        """``(B, D)`` embeddings -> ``(B, K)`` scores over ``probe.classes``."""
        return probe_scores(self.probe, emb)

    def predicted(self, emb: Tensor, users: np.ndarray) -> np.ndarray:
        """(B,) column of each user's predicted class: the top score, where the task
        removes classes from a user's ranking (``future_items``: history items) among the
        rest."""
        s = self.scores(emb).detach().clone()  # (B, K)
        if self.task.exclude is not None:
            ex = self.task.exclude[np.asarray(users, np.int64)][:, self.probe.classes]  # (B, K)
            rows, cols = ex.nonzero()
            s[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf
        return s.argmax(dim=1).numpy()

    def confidence(self, emb: Tensor, columns: np.ndarray) -> Tensor:
        """(B,) the probe's confidence in class column ``columns[b]`` (module docstring)."""
        s = self.scores(emb)  # (B, K)
        idx = torch.as_tensor(np.asarray(columns), dtype=torch.long)[:, None]  # (B, 1)
        if self.solver == "ridge":
            p = s
        elif self.task.is_set:
            p = torch.sigmoid(s)
        else:
            p = torch.softmax(s, dim=1)
        return p.gather(1, idx)[:, 0]

    def class_name(self, column: int) -> str:
        return str(self.task.class_names[int(self.probe.classes[column])])


def fit_task_probe(
    ds: SequenceDataset,
    task: Task,
    emb: np.ndarray,
    config: ProbeConfig | None = None,
    seed: int = 0,
) -> TaskProbe:
    """Fit ``task``'s probe on the embeddings ``emb`` (U, D) of every user, as ``evaluate``
    does at label budget 100 % and seed ``seed`` (module docstring)."""
    train_l = task.labelled(ds.split_users("train"))
    valid_l = task.labelled(ds.split_users("valid"))
    if len(train_l) == 0 or len(valid_l) == 0:
        which = "train" if len(train_l) == 0 else "valid"
        raise SeqtwinsError(
            f"task {task.name!r}: no {which} user of {ds.path} has a label, so no probe "
            "can be fitted; choose another --task"
        )
    n_cls = int(np.count_nonzero(task.class_counts(train_l)))
    cfg = (config or ProbeConfig()).for_task(len(train_l), n_cls, multilabel=task.is_set)
    sub = labelled_subset(train_order(ds, seed), task.labels, 1.0)
    truth = task.targets if task.targets is not None else task.labels
    exclude_valid = task.exclude[valid_l] if task.exclude is not None else None
    try:
        probe = fit_probe(emb[sub], truth[sub], emb[valid_l], truth[valid_l],
                          task.primary_metric, cfg, seed=seed,
                          exclude_valid=exclude_valid)  # fmt: skip
    except ValueError as e:  # fewer than two classes
        raise SeqtwinsError(
            f"task {task.name!r} on {ds.path}: {e}; choose another --task"
        ) from None
    return TaskProbe(task, probe, len(sub))
