"""Downstream tasks: per-user labels from the held-out future window and user attributes.

Every label comes from data that pretraining never sees: the future window
(``items[history_end[u]:offsets[u+1]]``, the last ``--holdout`` items, docs/prepare.md)
or the user attribute columns of ``users.parquet``. Which tasks exist depends on the fields a
dataset has (:func:`available_tasks`):

===================== ======================================== ===========================
task                  label                                    metrics
===================== ======================================== ===========================
``future_categories`` every category (every attribute id) of   MAP, recall@5 (multi-label)
                      every item in the future window, root
                      categories left out
``future_items``      the future window's items that are not   recall@10, recall@20,
                      in the user's history (new items)        NDCG@10 over the full item
                                                               set, history items removed
``next_item``         first item of the future window          accuracy@1, HR@10, NDCG@10
                                                               over the full item set
``next_category``     primary category of that item            accuracy, macro-F1
``favorite_category`` most frequent primary category in the    accuracy, macro-F1
                      future window
``<attribute>``       each column in ``user_attributes``       accuracy, macro-F1 (+ AUC
                      (``gender``, ``age``, ``occupation``, …)  when it has two values)
``next_rating_high``  rating of the next item >= 4             accuracy, AUC
===================== ======================================== ===========================

The first two are the **headline** tasks (:func:`headline_tasks`); the single-label ones
stay for continuity. A task with fewer than :data:`MIN_TEST_USERS` labelled test users is
flagged ``too_small`` in its summary ("too small to compare" in the report).

Documented choices (see docs/evaluation.md, "Tasks"):

- **Multi-category items**, in the single-label category tasks (``next_category``,
  ``favorite_category``), count under their *first-listed* category
  (:meth:`SequenceDataset.item_categories`): the data sources list the main genre /
  category first. Items without a category give no category label. ``future_categories``
  uses every category of every item instead (root categories left out).
- **favorite_category tie-break**: among the categories with the highest count in the
  window, the one that *appears first* in the window (the earliest future interaction)
  wins. Future items without a category are ignored; a window with no categorised item
  has no label.
- **Majority floor**: the most frequent class among labelled *train* users (ties: the
  smallest class code), scored on the labelled *test* users; on the set tasks the most
  popular target (the protocol's ``majority`` ranks every class by popularity).

- **Root categories** (carried by more than half of all items, e.g. Amazon's "Beauty")
  are not classes of ``future_categories``: they say nothing about a user. The summary
  names them (``excluded_classes``).
- **future_items** positives are the *new* items of the window (not in the user's
  history); the history items are removed from every ranking (:attr:`Task.exclude`), so a
  method gains nothing from predicting repeats on repeat-heavy data.

Labels are int64 class codes per ``user_idx``; ``-1`` means "no label" (no future window,
uncategorised item, missing attribute). ``next_item`` / ``future_items`` codes are
``item_idx - 1``. Multi-label tasks keep their targets in :attr:`Task.targets`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError

NEXT_ITEM = "next_item"
NEXT_CATEGORY = "next_category"
FAVORITE_CATEGORY = "favorite_category"
NEXT_RATING_HIGH = "next_rating_high"
FUTURE_CATEGORIES = "future_categories"
FUTURE_ITEMS = "future_items"
MIN_TEST_USERS = 500
"""A task with fewer labelled test users is flagged ``too_small`` ("too small to compare"):
one user would move a score by more than 0.2 points."""
ROOT_SHARE = 0.5
"""A category carried by more than this share of all items is a root category."""
HIGH_RATING = 4.0
"""``next_rating_high`` is 1 when the next item's rating is at least this (1-5 stars)."""
RANK_K = 10
"""Cut-off of HR@K / NDCG@K for ``next_item``."""

KIND_RANKING = "ranking"
KIND_MULTICLASS = "multiclass"
KIND_BINARY = "binary"
KIND_MULTILABEL = "multilabel"
KIND_RETRIEVAL = "retrieval"
SET_KINDS = (KIND_MULTILABEL, KIND_RETRIEVAL)
"""Kinds whose truth is a set of classes per user (:attr:`Task.targets`)."""
RANKING_METRICS = ("accuracy@1", f"hr@{RANK_K}", f"ndcg@{RANK_K}")
CATEGORY_K = 5
"""Cut-off of recall@K for ``future_categories``."""
MULTILABEL_METRICS = ("map", f"recall@{CATEGORY_K}")
RETRIEVAL_METRICS = (f"recall@{RANK_K}", "recall@20", f"ndcg@{RANK_K}")


@dataclass(frozen=True)
class Task:
    """One downstream task: the truth per user and how it is scored.

    ``labels`` has shape (U,) int64 indexed by ``user_idx``; ``-1`` = no label. For the
    set kinds (``multilabel``, ``retrieval``) the truth is ``targets``, a
    ``scipy.sparse.csr_matrix`` (U, K) of 0/1 (row = ``user_idx``, column = class code),
    and ``labels`` is 0 for a user with at least one target, -1 for one without, so
    :meth:`labelled` and the label-budget subsets work unchanged.

    ``exclude`` (set kinds only, optional) is a csr (U, K) whose non-zeros are the classes
    removed from that user's ranking for *every* method (``future_items``: the items of the
    user's history). An excluded class takes no rank and is never a target. ``history``
    (optional, label free) is a csr (U, K) of class counts in each user's pretraining
    history, the ``history`` floor's scores (``future_categories``); ``history_prior``
    (K,) breaks its ties: each class's count over all *train* users' histories (label
    free too), then the class code.
    """

    name: str
    kind: str
    """``ranking`` (next_item), ``multiclass``, ``binary`` (exactly two classes),
    ``multilabel`` (future_categories) or ``retrieval`` (future_items)."""
    labels: np.ndarray
    class_names: list[str]
    metrics: tuple[str, ...]
    primary_metric: str
    """The metric that selection on valid users maximises and plots show."""
    description: str
    majority_class: int
    """Single-label: the most frequent train class. Set kinds: the most popular target."""
    majority_accuracy: float
    """Test accuracy of ``majority_class`` (NaN for the set kinds: not an accuracy)."""
    targets: sp.csr_matrix | None = None
    exclude: sp.csr_matrix | None = None
    history: sp.csr_matrix | None = None
    history_prior: np.ndarray | None = None
    excluded_classes: tuple[str, ...] = ()
    """Names of classes left out of the task (root categories of ``future_categories``)."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_set(self) -> bool:
        """True when the truth is a set of classes per user (``targets``)."""
        return self.kind in SET_KINDS

    def labelled(self, users: np.ndarray) -> np.ndarray:
        """The users among ``users`` that have a label (order kept)."""
        users = np.asarray(users, dtype=np.int64)
        return users[self.labels[users] >= 0]

    def class_counts(self, users: np.ndarray) -> np.ndarray:
        """(K,) int64: labelled users of ``users`` per class (a target counts once)."""
        users = self.labelled(users)
        if self.targets is not None:
            return np.bincount(self.targets[users].indices, minlength=self.num_classes)
        return np.bincount(self.labels[users], minlength=self.num_classes)

    def summary(self, ds: SequenceDataset) -> dict[str, object]:
        """JSON-ready description: kind, metrics, class counts, majority floor, flags."""
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
        out["headline"] = self.name in headline_tasks(ds)
        out["too_small"] = labelled["test"] < MIN_TEST_USERS
        if self.is_set:
            out["excluded_classes"] = list(self.excluded_classes)
            assert self.targets is not None
            test = self.labelled(ds.split_users("test"))
            out["mean_targets_per_test_user"] = (
                float(self.targets[test].getnnz(axis=1).mean()) if len(test) else None
            )
        counts = self.class_counts(ds.split_users("train"))
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
    n_users = ds.num_users
    out = np.full(n_users, -1, dtype=np.int64)
    user, pos = window_positions(ds, future=True)  # (F,), (F,)
    cat = codes[np.asarray(ds.sequences.items)[pos]]
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


def window_positions(
    ds: SequenceDataset, future: bool, max_len: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(user_idx, absolute position) of every interaction in each user's future window
    (``future=True``) or pretraining history (only its last ``max_len`` items when given),
    user-major and in sequence order: (F,), (F,)."""
    seqs = ds.sequences
    offsets = np.asarray(seqs.offsets, dtype=np.int64)
    he = np.asarray(seqs.history_end, dtype=np.int64)
    start, stop = (he, offsets[1:]) if future else (offsets[:-1], he)
    if max_len is not None:
        start = np.maximum(start, stop - max_len)
    length = stop - start  # (U,)
    total = int(length.sum())
    user = np.repeat(np.arange(len(length), dtype=np.int64), length)
    first = np.cumsum(length) - length
    pos = np.arange(total, dtype=np.int64) - np.repeat(first, length) + np.repeat(start, length)
    return user, pos


def user_item_counts(
    ds: SequenceDataset, future: bool, max_len: int | None = None
) -> sp.csr_matrix:
    """(U, num_items) csr: how often each item occurs in each user's future window
    (``future=True``) or history (its last ``max_len`` items when given); column =
    ``item_idx - 1``."""
    user, pos = window_positions(ds, future, max_len)
    cols = np.asarray(ds.sequences.items)[pos].astype(np.int64) - 1
    data = np.ones(len(user), dtype=np.float32)
    # repeats are summed by the COO -> CSR conversion
    return sp.csr_matrix((data, (user, cols)), shape=(ds.num_users, ds.num_items))


def binary_pattern(m: sp.spmatrix) -> sp.csr_matrix:
    """The 0/1 pattern of a non-negative sparse matrix, as float32 csr with sorted indices
    (task targets, exclusions, and the set metrics' truth)."""
    out = sp.csr_matrix(m, dtype=np.float32, copy=True)
    out.eliminate_zeros()
    out.data[:] = 1.0
    out.sort_indices()
    return out


def item_category_matrix(ds: SequenceDataset) -> tuple[sp.csr_matrix, list[str]]:
    """(num_items, C) csr of 0/1: every category (every attribute id) of every item (row =
    ``item_idx - 1``), and the sorted category names (column = code)."""
    if not ds.has_categories:
        raise SeqtwinsError(f"{ds.path} has no item categories")
    pairs = (
        ds.items.select(pl.col("categories"))
        .with_row_index("_row")
        .explode("categories")
        .filter(pl.col("categories").is_not_null() & (pl.col("categories") != ""))
    )
    names = sorted(pairs["categories"].unique().to_list())
    lookup = pl.DataFrame(
        {"categories": names, "_code": np.arange(len(names), dtype=np.int64)},
        schema={"categories": pl.String, "_code": pl.Int64},
    )
    coded = pairs.join(lookup, on="categories", how="left")
    rows = coded["_row"].to_numpy().astype(np.int64)
    cols = coded["_code"].to_numpy().astype(np.int64)
    m = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(ds.num_items, len(names))
    )
    return binary_pattern(m), names


def future_category_targets(
    ds: SequenceDataset,
) -> tuple[sp.csr_matrix, sp.csr_matrix, list[str], list[str]]:
    """``future_categories``: targets (U, K) 0/1 = every non-root category of every future
    item; history (U, K) = category counts in the user's history (the ``history`` floor);
    the kept category names (column = code) and the root categories left out (carried by
    more than :data:`ROOT_SHARE` of all items)."""
    ic, names = item_category_matrix(ds)  # (N, C)
    per_cat = np.asarray(ic.sum(axis=0)).ravel()  # (C,) items per category
    root = per_cat > ROOT_SHARE * ds.num_items
    keep = np.flatnonzero(~root)
    ic = ic[:, keep]  # (N, K)
    targets = binary_pattern(user_item_counts(ds, future=True) @ ic)  # (U, K)
    history = sp.csr_matrix(user_item_counts(ds, future=False) @ ic)  # (U, K) counts
    history.sort_indices()
    kept = [names[i] for i in keep]
    return targets, history, kept, [names[i] for i in np.flatnonzero(root)]


def future_item_targets(ds: SequenceDataset) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``future_items``: targets (U, num_items) 0/1 = future items not in the user's
    history; exclude (U, num_items) 0/1 = the history items (removed from every ranking).
    Column = ``item_idx - 1``."""
    future = binary_pattern(user_item_counts(ds, future=True))
    history = binary_pattern(user_item_counts(ds, future=False))
    targets = binary_pattern(future - future.multiply(history))
    return targets, history


def set_labels(targets: sp.csr_matrix) -> np.ndarray:
    """(U,) int64: 0 for a user with at least one target, -1 without."""
    return np.where(targets.getnnz(axis=1) > 0, 0, -1).astype(np.int64)


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
        FUTURE_CATEGORIES: ds.has_categories,
        FUTURE_ITEMS: True,
        NEXT_ITEM: True,
        NEXT_CATEGORY: ds.has_categories,
        FAVORITE_CATEGORY: ds.has_categories,
        NEXT_RATING_HIGH: bool(ds.meta["fields"].get("ratings")),
    }


def headline_tasks(ds: SequenceDataset) -> list[str]:
    """The tasks the study's claims rest on: ``future_categories`` (where items have
    categories) and ``future_items``."""
    return [FUTURE_CATEGORIES, FUTURE_ITEMS] if ds.has_categories else [FUTURE_ITEMS]


def available_tasks(ds: SequenceDataset) -> list[str]:
    """Names of the tasks this dataset supports, in a fixed order, headline tasks first.

    :func:`headline_tasks`; ``next_item`` always; ``next_category`` and
    ``favorite_category`` with item categories; one task per user attribute column;
    ``next_rating_high`` with ratings.
    """
    sup = _builtin_supported(ds)
    names = headline_tasks(ds)
    names += [t for t in (NEXT_ITEM, NEXT_CATEGORY, FAVORITE_CATEGORY) if sup[t]]
    names += [a for a in ds.user_attributes if a not in sup]
    if sup[NEXT_RATING_HIGH]:
        names.append(NEXT_RATING_HIGH)
    return names


def _set_task(ds: SequenceDataset, name: str) -> Task:
    """``future_categories`` or ``future_items`` (truth = a set of classes per user)."""
    exclude = history = None
    excluded: list[str] = []
    metrics: tuple[str, ...]
    if name == FUTURE_CATEGORIES:
        targets, history, class_names, excluded = future_category_targets(ds)
        kind, metrics, primary = KIND_MULTILABEL, MULTILABEL_METRICS, "map"
        desc = "every category of every future item (root categories left out)"
    else:
        targets, exclude = future_item_targets(ds)
        class_names = ds.items["item_id"].cast(pl.String).to_list()
        kind, metrics, primary = KIND_RETRIEVAL, RETRIEVAL_METRICS, f"recall@{RANK_K}"
        desc = "new items of the future window (full item set, history items removed)"
    labels = set_labels(targets)
    train = ds.split_users("train")
    counts = np.bincount(targets[train[labels[train] >= 0]].indices, minlength=len(class_names))
    popular = int(np.argmax(counts)) if counts.sum() > 0 else -1  # ties: smallest code
    return Task(
        name=name,
        kind=kind,
        labels=labels,
        class_names=list(class_names),
        metrics=metrics,
        primary_metric=primary,
        description=desc,
        majority_class=popular,
        majority_accuracy=float("nan"),
        targets=targets,
        exclude=exclude,
        history=history,
        history_prior=None if history is None else np.asarray(history[train].sum(axis=0)).ravel(),
        excluded_classes=tuple(excluded),
    )


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
    if name in (FUTURE_CATEGORIES, FUTURE_ITEMS):
        return _set_task(ds, name)
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
