from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqtwins.data.dataset import SequenceDataset, Sequences, write_dataset
from seqtwins.data.synth import SynthConfig, synthesize
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.tasks import (
    available_tasks,
    build_task,
    build_tasks,
    favorite_category_labels,
    future_category_targets,
    future_item_targets,
    headline_tasks,
)

from .conftest import make_dataset

# item idx -> categories (first-listed is the primary one); item 6 has none
CATS = {1: ["A", "Z"], 2: ["B"], 3: ["C", "A"], 4: ["A"], 5: ["B", "C"], 6: []}


def _hand(tmp_path: Path) -> SequenceDataset:
    seqs = [
        [1, 2, 3, 2, 1],  # future [3, 2, 1] -> C, B, A: all once -> first seen C
        [4, 5, 2, 1, 5],  # future [1, 5] -> A, B tie -> A (first)
        [1, 1, 2, 5, 2],  # future [5, 2] -> B, B -> B ; next item 5 -> B
        [6, 3, 6, 6, 4],  # future [6, 4] -> (none), A -> A ; next item 6 has no category
        [1, 2, 3],  # no future window
        [2, 2, 2, 6, 6],  # future [6, 6] -> only uncategorised items -> no label
        [3, 3, 1, 2, 4, 4],  # future [2, 4, 4] -> B, A, A -> A (count 2 beats first-seen B)
    ]
    hist = [2, 3, 3, 3, 3, 3, 3]
    seq = Sequences.from_lists(seqs, hist)
    ratings = np.ones(seq.num_interactions, dtype=np.float32)
    ratings[seq.history_end[0]] = 4.0  # user 0's next item: high (>= 4)
    ratings[seq.history_end[1]] = 3.5  # user 1's next item: not high
    seq = dataclasses.replace(seq, ratings=ratings)
    items = pl.DataFrame(
        {"item_id": [f"i{i}" for i in range(1, 7)], "categories": [CATS[i] for i in range(1, 7)]}
    )
    users = pl.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(7)],
            "split": ["train", "train", "train", "valid", "test", "test", "test"],
            "gender": ["F", "M", "F", None, "M", "", "F"],
        }
    )
    out = write_dataset(tmp_path / "hand", sequences=seq, items=items, users=users, source="t")
    return SequenceDataset.open(out)


def test_labels_on_hand_made_sequences(tmp_path: Path) -> None:
    ds = _hand(tmp_path)
    assert available_tasks(ds) == [
        "future_categories", "future_items", "next_item", "next_category", "favorite_category",
        "gender", "next_rating_high",
    ]  # fmt: skip
    nxt = build_task(ds, "next_item")
    assert nxt.labels.tolist() == [2, 0, 4, 5, -1, 5, 1]  # item_idx - 1
    assert nxt.class_names[:2] == ["i1", "i2"] and nxt.num_classes == 6
    assert nxt.metrics == ("accuracy@1", "hr@10", "ndcg@10")

    cat = build_task(ds, "next_category")
    names = cat.class_names
    assert names == ["A", "B", "C"]  # primary categories only: "Z" is never first-listed
    decoded = [names[c] if c >= 0 else None for c in cat.labels]
    assert decoded == ["C", "A", "B", None, None, None, "B"]

    fav = build_task(ds, "favorite_category")
    decoded = [names[c] if c >= 0 else None for c in fav.labels]
    assert decoded == ["C", "A", "B", "A", None, None, "A"]

    high = build_task(ds, "next_rating_high")
    assert high.labels[:4].tolist() == [1, 0, 0, 0]
    assert high.labels[4] == -1 and high.metrics == ("accuracy", "auc")

    gender = build_task(ds, "gender")
    assert gender.class_names == ["F", "M"]
    assert gender.labels.tolist() == [0, 1, 0, -1, 1, -1, 0]  # null and "" -> no label
    assert gender.kind == "binary" and "auc" in gender.metrics


def test_majority_uses_train_labels_scored_on_test(tmp_path: Path) -> None:
    ds = _hand(tmp_path)
    gender = build_task(ds, "gender")
    # train: F, M, F -> F; labelled test users: M, F -> accuracy 1/2
    assert gender.class_names[gender.majority_class] == "F"
    assert gender.majority_accuracy == pytest.approx(0.5)
    summary = gender.summary(ds)
    assert summary["labelled_users"] == {"train": 3, "valid": 0, "test": 2}
    assert summary["train_class_counts"] == {"F": 2, "M": 1}


def _favorite_reference(ds: SequenceDataset) -> list[int]:
    """Plain loop: most frequent primary category in the window, ties -> first seen."""
    codes, _ = ds.item_categories()
    out = []
    for u in range(ds.num_users):
        cats = [int(codes[i]) for i in ds.sequences.future(u) if codes[i] >= 0]
        if not cats:
            out.append(-1)
            continue
        best = max(cats, key=lambda c: (cats.count(c), -cats.index(c)))
        out.append(best)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_favorite_category_matches_a_loop_reference(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_items, n_users = 12, 80
    seqs = [rng.integers(1, n_items + 1, int(rng.integers(1, 9))).tolist() for _ in range(n_users)]
    hist = [int(rng.integers(0, len(s) + 1)) for s in seqs]
    cats = [[f"k{rng.integers(0, 4)}"] if rng.random() < 0.8 else [] for _ in range(n_items)]
    out = write_dataset(
        tmp_path / "r",
        sequences=Sequences.from_lists(seqs, hist),
        items=pl.DataFrame({"item_id": [str(i) for i in range(n_items)], "categories": cats},
                           schema={"item_id": pl.String, "categories": pl.List(pl.String)}),
        users=pl.DataFrame({"user_id": [str(u) for u in range(n_users)],
                            "split": ["train"] * n_users}),
        source="t",
    )  # fmt: skip
    ds = SequenceDataset.open(out)
    labels, _ = favorite_category_labels(ds)
    assert labels.tolist() == _favorite_reference(ds)


def test_tasks_follow_the_fields_a_dataset_has(tmp_path: Path) -> None:
    bare = make_dataset(tmp_path / "bare", categories=False, ratings=False, attributes=False)
    assert available_tasks(bare) == ["future_items", "next_item"]
    with pytest.raises(SeqtwinsError, match="needs item categories"):
        build_task(bare, "favorite_category")
    with pytest.raises(SeqtwinsError, match="needs ratings"):
        build_task(bare, "next_rating_high")
    with pytest.raises(SeqtwinsError, match="unknown task 'gender'.*next_item"):
        build_task(bare, "gender")
    with pytest.raises(SeqtwinsError, match="listed twice"):
        build_tasks(bare, ["next_item", "next_item"])
    full = make_dataset(tmp_path / "full")
    assert available_tasks(full) == [
        "future_categories", "future_items", "next_item", "next_category", "favorite_category",
        "kind", "age", "next_rating_high",
    ]  # fmt: skip
    assert [t.name for t in build_tasks(full)] == available_tasks(full)


# --- the headline tasks: future_categories (multi-label) and future_items (retrieval) ------


def _sets(m) -> list[set[int]]:  # type: ignore[no-untyped-def]
    """Rows of a csr matrix as sets of column codes."""
    return [set(m.indices[m.indptr[u] : m.indptr[u + 1]].tolist()) for u in range(m.shape[0])]


def test_headline_tasks_on_hand_made_sequences(tmp_path: Path) -> None:
    ds = _hand(tmp_path)
    assert headline_tasks(ds) == ["future_categories", "future_items"]
    cats = build_task(ds, "future_categories")
    assert cats.kind == "multilabel" and cats.metrics == ("map", "recall@5")
    assert cats.primary_metric == "map" and cats.class_names == ["A", "B", "C", "Z"]
    assert cats.excluded_classes == ()  # A is on 3 of 6 items: half is not "more than half"
    A, B, C, Z = range(4)
    # every category of every future item (not only the first-listed one)
    assert _sets(cats.targets) == [
        {A, B, C, Z}, {A, B, C, Z}, {B, C}, {A}, set(), set(), {A, B}
    ]  # fmt: skip
    assert cats.labels.tolist() == [0, 0, 0, 0, -1, -1, 0]
    assert set(np.unique(cats.targets.data)) == {1.0}
    # the history floor's counts: user 0's history [1, 2] -> A, Z, B once each
    assert cats.history is not None
    assert cats.history[0].toarray().ravel().tolist() == [1, 1, 0, 1]
    assert cats.history[2].toarray().ravel().tolist() == [2, 1, 0, 2]  # [1, 1, 2]
    # train users 0-2: B and C on 3 each, ties -> smaller code
    assert cats.class_names[cats.majority_class] == "B" and math.isnan(cats.majority_accuracy)

    items = build_task(ds, "future_items")
    assert items.kind == "retrieval" and items.primary_metric == "recall@10"
    # new items only (codes = item_idx - 1); repeats of history items are no targets
    assert _sets(items.targets) == [{0, 1, 2} - {0, 1}, {0}, {4}, {3}, set(), {5}, {1, 3}]
    assert items.labels.tolist() == [0, 0, 0, 0, -1, 0, 0]
    assert items.exclude is not None
    assert _sets(items.exclude) == [{0, 1}, {3, 4, 1}, {0, 1}, {5, 2}, {0, 1, 2}, {1}, {2, 0}]
    assert items.targets.multiply(items.exclude).nnz == 0
    summary = items.summary(ds)
    assert summary["headline"] is True and summary["too_small"] is True  # < 500 test users
    assert summary["labelled_users"] == {"train": 3, "valid": 1, "test": 2}
    assert build_task(ds, "next_item").summary(ds)["headline"] is False


def _reference(ds: SequenceDataset) -> dict[str, list]:
    """Plain loops: every category of every future item minus the root categories; the
    history's category counts; the future's new items and the history items."""
    cats = ds.items["categories"].to_list()  # row i = item_idx i + 1
    names = sorted({c for cs in cats for c in cs})
    per_cat = {c: sum(c in set(cs) for cs in cats) for c in names}
    kept = [c for c in names if per_cat[c] <= 0.5 * ds.num_items]
    code = {c: i for i, c in enumerate(kept)}
    out: dict[str, list] = {"names": kept, "root": [c for c in names if c not in code]}
    out.update(cat_targets=[], cat_history=[], item_targets=[], item_exclude=[])
    for u in range(ds.num_users):
        fut, hist = ds.sequences.future(u).tolist(), ds.sequences.history(u).tolist()
        out["cat_targets"].append({code[c] for i in fut for c in cats[i - 1] if c in code})
        counts = [0] * len(kept)
        for i in hist:
            for c in set(cats[i - 1]):
                if c in code:
                    counts[code[c]] += 1
        out["cat_history"].append(counts)
        out["item_targets"].append({i - 1 for i in fut} - {i - 1 for i in hist})
        out["item_exclude"].append({i - 1 for i in hist})
    return out


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10_000), n_items=st.integers(2, 15), root_p=st.floats(0.0, 1.0))
def test_set_labels_match_a_loop_reference(
    tmp_path: Path, seed: int, n_items: int, root_p: float
) -> None:
    rng = np.random.default_rng(seed)
    n_users = 40
    seqs = [rng.integers(1, n_items + 1, int(rng.integers(1, 10))).tolist() for _ in range(n_users)]
    hist = [int(rng.integers(0, len(s) + 1)) for s in seqs]
    cats = [
        sorted({f"k{c}" for c in rng.integers(0, 5, int(rng.integers(0, 4)))})
        + (["root"] if rng.random() < root_p else [])
        for _ in range(n_items)
    ]
    out = write_dataset(
        Path(tempfile.mkdtemp(dir=tmp_path)) / "ds",  # hypothesis may repeat an example
        sequences=Sequences.from_lists(seqs, hist),
        items=pl.DataFrame({"item_id": [str(i) for i in range(n_items)], "categories": cats},
                           schema={"item_id": pl.String, "categories": pl.List(pl.String)}),
        users=pl.DataFrame({"user_id": [str(u) for u in range(n_users)],
                            "split": ["train"] * n_users}),
        source="t",
    )  # fmt: skip
    ds = SequenceDataset.open(out)
    ref = _reference(ds)
    targets, history, names, root = future_category_targets(ds)
    assert names == ref["names"] and root == ref["root"]
    assert _sets(targets) == ref["cat_targets"]
    assert history.toarray().astype(int).tolist() == ref["cat_history"]
    items, exclude = future_item_targets(ds)
    assert _sets(items) == ref["item_targets"] and _sets(exclude) == ref["item_exclude"]


def test_set_tasks_on_synthetic_data(tmp_path: Path) -> None:
    ds = SequenceDataset.open(synthesize(tmp_path / "s", SynthConfig(users=300, items=120)))
    ref = _reference(ds)
    task = build_task(ds, "future_categories")
    assert _sets(task.targets) == ref["cat_targets"]
    assert task.labels.tolist() == [0 if t else -1 for t in ref["cat_targets"]]
    items = build_task(ds, "future_items")
    assert _sets(items.targets) == ref["item_targets"]
    summary = task.summary(ds)
    assert summary["too_small"] is True and summary["headline"] is True
    assert summary["excluded_classes"] == ref["root"]
