"""Downstream tasks: per-user labels from the held-out future window and user attributes.

Every label comes from data that pretraining never sees: the future window
(``items[history_end[u]:offsets[u+1]]``, the last ``--holdout`` items, docs/prepare.md)
or the user attribute columns of ``users.parquet``. Which tasks exist depends on the fields a
dataset has (:func:`available_tasks`):

===================== ======================================== ===========================
task                  label                                    metrics
===================== ======================================== ===========================
``next_item``         first item of the future window          accuracy@1, HR@10, NDCG@10
                                                               over the full item set
``next_category``     primary category of that item            accuracy, macro-F1
``favorite_category`` most frequent primary category in the    accuracy, macro-F1
                      future window
``<attribute>``       each column in ``user_attributes``       accuracy, macro-F1 (+ AUC
                      (``gender``, ``age``, ``occupation``, …)  when it has two values)
``next_rating_high``  rating of the next item >= 4             accuracy, AUC
===================== ======================================== ===========================

Documented choices (see docs/evaluation.md, "Tasks"):

- **Multi-category items** count under their *first-listed* category
  (:meth:`SequenceDataset.item_categories`): the data sources list the main genre /
  category first. Items without a category give no category label.
- **favorite_category tie-break**: among the categories with the highest count in the
  window, the one that *appears first* in the window (the earliest future interaction)
  wins. Future items without a category are ignored; a window with no categorised item
  has no label.
- **Majority floor**: the most frequent class among labelled *train* users (ties: the
  smallest class code), scored on the labelled *test* users.

Labels are int64 class codes per ``user_idx``; ``-1`` means "no label" (no future window,
uncategorised item, missing attribute). ``next_item`` codes are ``item_idx - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError

NEXT_ITEM = "next_item"
NEXT_CATEGORY = "next_category"
FAVORITE_CATEGORY = "favorite_category"
NEXT_RATING_HIGH = "next_rating_high"
HIGH_RATING = 4.0
"""``next_rating_high`` is 1 when the next item's rating is at least this (1-5 stars)."""
RANK_K = 10
"""Cut-off of HR@K / NDCG@K for ``next_item``."""

KIND_RANKING = "ranking"
KIND_MULTICLASS = "multiclass"
KIND_BINARY = "binary"
RANKING_METRICS = ("accuracy@1", f"hr@{RANK_K}", f"ndcg@{RANK_K}")


@dataclass(frozen=True)
class Task:
    """One downstream task: a class code per user and how it is scored.

    ``labels`` has shape (U,) int64 indexed by ``user_idx``; ``-1`` = no label.
    """

    name: str
    kind: str
    """``ranking`` (next_item), ``multiclass`` or ``binary`` (exactly two classes)."""
    labels: np.ndarray
    class_names: list[str]
    metrics: tuple[str, ...]
    primary_metric: str
    """The metric that selection on valid users maximises and plots show."""
    description: str
    majority_class: int
    majority_accuracy: float

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def labelled(self, users: np.ndarray) -> np.ndarray:
        """The users among ``users`` that have a label (order kept)."""
        users = np.asarray(users, dtype=np.int64)
        return users[self.labels[users] >= 0]

    def summary(self, ds: SequenceDataset) -> dict[str, object]:
        """JSON-ready description: kind, metrics, class counts, majority floor."""
        out: dict[str, object] = {
            "kind": self.kind,
            "description": self.description,
            "metrics": list(self.metrics),
            "primary_metric": self.primary_metric,
            "num_classes": self.num_classes,
            "majority_class": self.class_names[self.majority_class]
            if self.majority_class >= 0
            else None,
            "majority_accuracy": None
            if np.isnan(self.majority_accuracy)
            else self.majority_accuracy,
        }
        labelled: dict[str, int] = {}
        for split in ("train", "valid", "test"):
            labelled[split] = int(len(self.labelled(ds.split_users(split))))
        out["labelled_users"] = labelled
        train_labels = self.labels[self.labelled(ds.split_users("train"))]
        counts = np.bincount(train_labels, minlength=self.num_classes)
        out["train_classes_present"] = int((counts > 0).sum())
        if self.num_classes <= 64:  # per-class counts only where they stay readable
            out["train_class_counts"] = {
                name: int(c) for name, c in zip(self.class_names, counts, strict=True)
            }
        return out


# --- label builders (vectorised over the CSR arrays) --------------------------------------


def _next_positions(ds: SequenceDataset) -> np.ndarray:
    """Absolute index of each user's first future interaction; -1 when the window is empty."""
    seqs = ds.sequences
    he = np.asarray(seqs.history_end, dtype=np.int64)
    has = he < np.asarray(seqs.offsets[1:], dtype=np.int64)
    return np.where(has, he, -1)


def next_item_labels(ds: SequenceDataset) -> np.ndarray:
    """(U,) int64: ``item_idx - 1`` of each user's first future item, -1 without one."""
    pos = _next_positions(ds)
    out = np.full(len(pos), -1, dtype=np.int64)
    ok = pos >= 0
    out[ok] = np.asarray(ds.sequences.items)[pos[ok]].astype(np.int64) - 1
    return out


def next_category_labels(ds: SequenceDataset) -> tuple[np.ndarray, list[str]]:
    """(U,) int64 primary-category code of each user's next item (-1: none) and names."""
    codes, names = ds.item_categories()
    nxt = next_item_labels(ds)
    out = np.full(len(nxt), -1, dtype=np.int64)
    ok = nxt >= 0
    out[ok] = codes[nxt[ok] + 1]
    return out, names


def favorite_category_labels(ds: SequenceDataset) -> tuple[np.ndarray, list[str]]:
    """(U,) int64 most frequent primary category in each future window, and names.

    Ties go to the category that appears first in the window. Vectorised: count every
    (user, category) pair, sort future interactions by (user, -count, position), take
    the first per user.
    """
    codes, names = ds.item_categories()
    seqs = ds.sequences
    offsets = np.asarray(seqs.offsets, dtype=np.int64)
    he = np.asarray(seqs.history_end, dtype=np.int64)
    n_users = len(he)
    flen = offsets[1:] - he  # (U,) future window length
    total = int(flen.sum())
    out = np.full(n_users, -1, dtype=np.int64)
    if total == 0:
        return out, names
    user = np.repeat(np.arange(n_users, dtype=np.int64), flen)  # (F,)
    starts = np.cumsum(flen) - flen
    pos = np.arange(total, dtype=np.int64) - np.repeat(starts, flen) + np.repeat(he, flen)
    cat = codes[np.asarray(seqs.items)[pos]]
    keep = cat >= 0
    user, pos, cat = user[keep], pos[keep], cat[keep]
    if len(user) == 0:
        return out, names
    key = user * (len(names) + 1) + cat
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    count = counts[inverse]
    order = np.lexsort((pos, -count, user))  # last key is the primary sort key
    u_sorted = user[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = u_sorted[1:] != u_sorted[:-1]
    out[u_sorted[first]] = cat[order][first]
    return out, names


def next_rating_high_labels(ds: SequenceDataset) -> np.ndarray:
    """(U,) int64: 1 if the next item's rating >= :data:`HIGH_RATING`, 0 if lower, -1 none."""
    ratings = ds.sequences.ratings
    if ratings is None:
        raise SeqtwinsError(f"{ds.path} has no ratings; task {NEXT_RATING_HIGH!r} needs them")
    pos = _next_positions(ds)
    out = np.full(len(pos), -1, dtype=np.int64)
    ok = pos >= 0
    r = np.asarray(ratings)[pos[ok]]
    out[ok] = np.where(np.isfinite(r), (r >= HIGH_RATING).astype(np.int64), -1)
    return out


def attribute_labels(ds: SequenceDataset, column: str) -> tuple[np.ndarray, list[str]]:
    """(U,) int64 code of a user attribute (sorted distinct values; null/empty = -1)."""
    values = ds.users[column].cast(pl.String)
    values = pl.Series(column, values).replace("", None)
    names = sorted(v for v in values.unique().to_list() if v is not None)
    lookup = pl.DataFrame(
        {column: names, "_code": np.arange(len(names), dtype=np.int64)},
        schema={column: pl.String, "_code": pl.Int64},
    )
    joined = pl.DataFrame({column: values}).join(
        lookup, on=column, how="left", maintain_order="left"
    )
    return joined["_code"].fill_null(-1).to_numpy().astype(np.int64), names


# --- public API ----------------------------------------------------------------------------


def _builtin_supported(ds: SequenceDataset) -> dict[str, bool]:
    return {
        NEXT_ITEM: True,
        NEXT_CATEGORY: ds.has_categories,
        FAVORITE_CATEGORY: ds.has_categories,
        NEXT_RATING_HIGH: bool(ds.meta["fields"].get("ratings")),
    }


def available_tasks(ds: SequenceDataset) -> list[str]:
    """Names of the tasks this dataset supports, in a fixed order.

    ``next_item`` always; ``next_category`` and ``favorite_category`` with item
    categories; one task per user attribute column; ``next_rating_high`` with ratings.
    """
    sup = _builtin_supported(ds)
    names = [t for t in (NEXT_ITEM, NEXT_CATEGORY, FAVORITE_CATEGORY) if sup[t]]
    names += [a for a in ds.user_attributes if a not in sup]
    if sup[NEXT_RATING_HIGH]:
        names.append(NEXT_RATING_HIGH)
    return names


def _majority(labels: np.ndarray, train: np.ndarray, test: np.ndarray, n: int) -> tuple[int, float]:
    tr = labels[train]
    tr = tr[tr >= 0]
    te = labels[test]
    te = te[te >= 0]
    if len(tr) == 0:
        return -1, float("nan")
    cls = int(np.argmax(np.bincount(tr, minlength=n)))  # argmax: ties -> smallest code
    return cls, float(np.mean(te == cls)) if len(te) else float("nan")


def build_task(ds: SequenceDataset, name: str) -> Task:
    """Build task ``name`` for dataset ``ds``; SeqtwinsError if unknown or unsupported."""
    sup = _builtin_supported(ds)
    metrics: tuple[str, ...]
    if name in sup and not sup[name]:
        need = "ratings" if name == NEXT_RATING_HIGH else "item categories"
        raise SeqtwinsError(
            f"task {name!r} needs {need}, which dataset {ds.path} does not have; "
            f"its tasks are: {', '.join(available_tasks(ds))}"
        )
    if name == NEXT_ITEM:
        labels = next_item_labels(ds)
        class_names = ds.items["item_id"].cast(pl.String).to_list()
        kind, desc = KIND_RANKING, "first item of the future window (full item set)"
        metrics, primary = RANKING_METRICS, f"hr@{RANK_K}"
    elif name == NEXT_CATEGORY:
        labels, class_names = next_category_labels(ds)
        kind, desc = KIND_MULTICLASS, "first-listed category of the next item"
        metrics, primary = ("accuracy", "macro_f1"), "accuracy"
    elif name == FAVORITE_CATEGORY:
        labels, class_names = favorite_category_labels(ds)
        kind = KIND_MULTICLASS
        desc = "most frequent first-listed category in the future window (ties: first seen)"
        metrics, primary = ("accuracy", "macro_f1"), "accuracy"
    elif name == NEXT_RATING_HIGH:
        labels = next_rating_high_labels(ds)
        class_names = [f"<{HIGH_RATING:g}", f">={HIGH_RATING:g}"]
        kind, desc = KIND_BINARY, f"rating of the next item >= {HIGH_RATING:g}"
        metrics, primary = ("accuracy", "auc"), "auc"
    elif name in ds.user_attributes:
        labels, class_names = attribute_labels(ds, name)
        kind, desc = KIND_MULTICLASS, f"user attribute {name!r}"
        metrics, primary = ("accuracy", "macro_f1"), "accuracy"
        if len(class_names) == 2:  # e.g. gender: AUC as well
            kind, metrics = KIND_BINARY, ("accuracy", "macro_f1", "auc")
    else:
        raise SeqtwinsError(
            f"unknown task {name!r} for dataset {ds.path}; its tasks are: "
            f"{', '.join(available_tasks(ds))}"
        )
    maj, maj_acc = _majority(
        labels, ds.split_users("train"), ds.split_users("test"), len(class_names)
    )
    return Task(
        name=name,
        kind=kind,
        labels=labels,
        class_names=list(class_names),
        metrics=tuple(metrics),
        primary_metric=primary,
        description=desc,
        majority_class=maj,
        majority_accuracy=maj_acc,
    )


def build_tasks(ds: SequenceDataset, names: list[str] | None = None) -> list[Task]:
    """Build several tasks (default: all :func:`available_tasks`), refusing duplicates."""
    names = available_tasks(ds) if names is None else list(names)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SeqtwinsError(f"task(s) {', '.join(dup)} listed twice; list each task once")
    if not names:
        raise SeqtwinsError("no tasks to evaluate; pass at least one task name")
    return [build_task(ds, n) for n in names]
