from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.probe import Prediction, ProbeConfig, score
from seqtwins.evaluate.protocol import (
    evaluate_embeddings,
    labelled_subset,
    load_results,
    metric_records,
    save_results,
    subset_digest,
    train_order,
    write_metrics_jsonl,
)
from seqtwins.evaluate.significance import load_per_user, save_per_user
from seqtwins.evaluate.tasks import Task, build_task

FRACS = (0.05, 0.25, 1.0)


def _cells(res: dict) -> dict[tuple[str, str, float], dict]:
    return {(c["task"], c["method"], c["fraction"]): c for c in res["cells"]}


def test_subsets_are_fixed_nested_and_shared(ds: SequenceDataset, kind_embeddings: dict) -> None:
    a = evaluate_embeddings(ds, kind_embeddings, tasks=["kind", "age"], fractions=FRACS, seeds=2)
    b = evaluate_embeddings(  # a rerun with other methods in another order
        ds, {"noise": kind_embeddings["noise"], "other": -kind_embeddings["good"]},
        tasks=["age", "kind"], fractions=FRACS, seeds=2, include_majority=False,
    )  # fmt: skip
    assert a["subsets"]["train_order"] == b["subsets"]["train_order"]
    digests: dict[tuple, set[str]] = {}
    for res in (a, b):
        for c in res["cells"]:
            for run in c["runs"]:
                key = (c["task"], c["fraction"], run["seed"])
                digests.setdefault(key, set()).add(run["subset"])
    assert all(len(d) == 1 for d in digests.values())  # same subset for every method and run
    # the stored order rebuilds each subset; budgets are nested
    task = build_task(ds, "age")
    order = np.array(a["subsets"]["train_order"]["1"])
    np.testing.assert_array_equal(order, train_order(ds, 1))
    small, big = (labelled_subset(order, task.labels, f) for f in (0.05, 0.25))
    assert set(small) <= set(big) and np.all(task.labels[big] >= 0)
    n_lab = int((task.labels[ds.split_users("train")] >= 0).sum())
    assert len(big) == math.ceil(0.25 * n_lab)
    assert digests[("age", 0.25, 1)] == {subset_digest(big)}
    assert len(digests[("age", 0.25, 0)] | digests[("age", 0.25, 1)]) == 2  # seeds differ


def test_planted_embedding_beats_noise_and_floors(
    ds: SequenceDataset, kind_embeddings: dict
) -> None:
    res = evaluate_embeddings(ds, kind_embeddings, tasks=["kind"], fractions=FRACS, seeds=3,
                              probe=ProbeConfig(solver="ridge"))  # fmt: skip
    cells = _cells(res)
    good = cells[("kind", "good", 1.0)]["mean"]
    noise = cells[("kind", "noise", 1.0)]["mean"]
    assert good["accuracy"] > 0.95 and good["auc"] > 0.97
    assert noise["accuracy"] < 0.7 and abs(noise["auc"] - 0.5) < 0.2
    assert cells[("kind", "majority", 1.0)]["mean"]["auc"] == 0.5
    assert res["methods"] == ["majority", "good", "noise"] and res["floors"] == ["majority"]
    info = res["tasks"]["kind"]
    assert info["num_classes"] == 2 and info["probe_solver"] == "ridge"
    assert 0.3 < info["majority_accuracy"] < 0.7
    assert res["dataset"]["content_hash"] == ds.content_hash
    # ridge is deterministic: at fraction 1 all seeds share one subset, fitted once
    runs = cells[("kind", "good", 1.0)]["runs"]
    assert [r.get("reused_from_seed") for r in runs] == [None, 0, 0]
    assert cells[("kind", "good", 1.0)]["std"]["accuracy"] == 0.0


def test_impossible_cells_are_recorded_not_skipped(ds: SequenceDataset) -> None:
    emb = {"x": np.random.default_rng(0).normal(size=(ds.num_users, 4)).astype(np.float32)}
    # 0.005 of ~170 labelled train users = 1 user: one class only
    res = evaluate_embeddings(ds, emb, tasks=["age", "next_item"], fractions=(0.005, 1.0), seeds=2)
    cells = _cells(res)
    for method in ("majority", "x"):
        tiny = cells[("age", method, 0.005)]
        assert tiny["status"] == "n/a" and tiny["mean"]["accuracy"] is None
        assert "only 1 class among the 1 labelled train users" in tiny["reasons"][0]
        assert all(r["status"] == "n/a" and r["n_train"] == 1 for r in tiny["runs"])
        assert cells[("age", method, 1.0)]["status"] == "ok"
    assert cells[("next_item", "x", 1.0)]["mean"]["hr@10"] is not None
    records = metric_records(res)
    assert len(records) == len(res["cells"]) * 2
    assert any(r["status"] == "n/a" and "reason" in r for r in records)


def test_finetune_hook_gets_the_same_cells(ds: SequenceDataset, kind_embeddings: dict) -> None:
    calls: list[tuple[int, str]] = []

    def oracle(task: Task, train: np.ndarray, valid: np.ndarray, test: np.ndarray, seed: int):
        assert np.all(task.labels[train] >= 0) and np.all(task.labels[valid] >= 0)
        calls.append((seed, "".join(map(str, train[:3]))))
        return np.eye(task.num_classes, dtype=np.float32)[task.labels[test]]  # perfect

    res = evaluate_embeddings(
        ds, {"good": kind_embeddings["good"]}, tasks=["kind"], fractions=(0.25,), seeds=2,
        finetuners={"oracle": oracle},
    )  # fmt: skip
    cells = _cells(res)
    assert cells[("kind", "oracle", 0.25)]["mean"]["accuracy"] == 1.0
    assert cells[("kind", "oracle", 0.25)]["protocol"] == "finetune"
    assert [r["subset"] for r in cells[("kind", "oracle", 0.25)]["runs"]] == [
        r["subset"] for r in cells[("kind", "good", 0.25)]["runs"]
    ]
    assert len(calls) == 2

    def bad_shape(task: Task, train, valid, test, seed):  # type: ignore[no-untyped-def]
        return np.zeros((len(test), task.num_classes + 1), np.float32)

    with pytest.raises(SeqtwinsError, match="hook of method 'bad' returned scores of shape"):
        evaluate_embeddings(ds, {}, tasks=["kind"], fractions=(1.0,), seeds=1,
                            finetuners={"bad": bad_shape})  # fmt: skip


def test_logistic_and_mlp_protocols_run(ds: SequenceDataset, kind_embeddings: dict) -> None:
    quick = {"max_evals": 5, "hidden": 16}
    for protocol, probe in (
        ("linear", ProbeConfig(solver="logistic", **quick)),
        ("mlp", ProbeConfig(kind="mlp", **quick)),
    ):
        res = evaluate_embeddings(
            ds, {"good": kind_embeddings["good"]}, tasks=["kind"], fractions=(1.0,), seeds=2,
            protocol=protocol, probe=probe, include_majority=False,
        )  # fmt: skip
        cell = res["cells"][0]
        assert cell["mean"]["accuracy"] > 0.9 and res["protocol"] == protocol
        assert all("reused_from_seed" not in r for r in cell["runs"])  # seed matters here


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fractions": (0.0, 0.5)}, r"fraction\(s\) 0 outside \(0, 1\]"),
        ({"fractions": (1.5,)}, r"1.5 outside \(0, 1\]"),
        ({"fractions": (float("nan"),)}, "outside"),
        ({"fractions": ()}, "fractions is empty"),
        ({"fractions": (0.5, 0.5)}, "duplicates"),
        ({"tasks": ["nope"]}, "unknown task 'nope'"),
        ({"seeds": 0}, "seeds must be >= 1"),
        ({"protocol": "svm"}, "protocol 'svm'"),
        ({"protocol": "mlp", "probe": ProbeConfig()}, "conflicts with protocol"),
    ],
)
def test_bad_settings_are_one_line_errors(ds: SequenceDataset, kwargs: dict, match: str) -> None:
    emb = {"x": np.zeros((ds.num_users, 2), np.float32)}
    with pytest.raises(SeqtwinsError, match=match):
        evaluate_embeddings(ds, emb, **{"tasks": ["kind"], **kwargs})


def test_bad_embeddings_and_unsupported_tasks(ds: SequenceDataset, tmp_path: Path) -> None:
    with pytest.raises(SeqtwinsError, match=r"method 'x' have shape \(3, 2\)"):
        evaluate_embeddings(ds, {"x": np.zeros((3, 2))}, tasks=["kind"])
    bad = np.zeros((ds.num_users, 2), np.float32)
    bad[5, 1] = np.nan
    with pytest.raises(SeqtwinsError, match="NaN or infinite"):
        evaluate_embeddings(ds, {"x": bad}, tasks=["kind"])
    with pytest.raises(SeqtwinsError, match=r"method name\(s\) majority given twice"):
        evaluate_embeddings(ds, {"majority": np.zeros_like(bad)}, tasks=["kind"])
    from .conftest import make_dataset

    bare = make_dataset(tmp_path / "bare", categories=False, ratings=False)
    with pytest.raises(SeqtwinsError, match="'next_category' needs item categories"):
        evaluate_embeddings(bare, {}, tasks=["next_category"])


def test_results_files_round_trip(
    ds: SequenceDataset, kind_embeddings: dict, tmp_path: Path
) -> None:
    res = evaluate_embeddings(ds, kind_embeddings, tasks=["kind"], fractions=(0.25,), seeds=2)
    path = save_results(res, tmp_path / "out" / "eval.json")
    assert "per_user" in res and "per_user" not in json.loads(path.read_text())
    slim = {k: v for k, v in res.items() if k != "per_user"}
    assert load_results(path) == json.loads(json.dumps(slim))
    lines = write_metrics_jsonl(res, tmp_path / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert len(recs) == 3 * 2 and {r["method"] for r in recs} == {"majority", "good", "noise"}
    assert all({"task", "fraction", "seed", "subset", "accuracy", "auc"} <= set(r) for r in recs)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(SeqtwinsError, match="not valid JSON"):
        load_results(tmp_path / "junk.json")
    (tmp_path / "other.json").write_text('{"schema": "x"}')
    with pytest.raises(SeqtwinsError, match="not a seqtwins evaluation"):
        load_results(tmp_path / "other.json")
    with pytest.raises(SeqtwinsError, match="does not exist"):
        load_results(tmp_path / "missing.json")


# --- set tasks, floors, label-free scorers, per-user values -------------------------------

SET_TASKS = ["future_categories", "future_items"]


def test_set_tasks_floors_and_per_user_values(ds: SequenceDataset, kind_embeddings: dict) -> None:
    res = evaluate_embeddings(ds, kind_embeddings, tasks=SET_TASKS, fractions=(0.1, 1.0), seeds=2,
                              probe=ProbeConfig(solver="ridge"))  # fmt: skip
    cats, items = res["tasks"]["future_categories"], res["tasks"]["future_items"]
    assert cats["excluded_classes"] == ["extra"]  # on every item of the fixture: a root
    assert cats["headline"] and items["headline"] and cats["too_small"] and items["too_small"]
    assert cats["kind"] == "multilabel" and items["kind"] == "retrieval"
    assert res["methods"] == ["majority", "history", "items-knn", "good", "noise"]
    assert res["floors"] == ["majority", "history", "items-knn"]
    cells = _cells(res)
    assert ("future_items", "history", 1.0) not in cells  # history applies to categories only
    assert ("future_categories", "items-knn", 1.0) not in cells  # items-knn to items only
    test = build_task(ds, "future_categories").labelled(ds.split_users("test"))
    task = build_task(ds, "future_categories")
    # history floor: the user's own category counts, ties by the train users' history
    # counts, then class code; label free, the same at every fraction
    hist = cells[("future_categories", "history", 0.1)]
    counts = task.history.toarray()
    prior = counts[ds.split_users("train")].sum(0)
    aps = []
    for u in test:
        order = sorted(range(task.num_classes), key=lambda c: (-counts[u, c], -prior[c], c))
        pos = sorted(order.index(c) for c in task.targets[u].indices)
        aps.append(np.mean([(j + 1) / (r + 1) for j, r in enumerate(pos)]))
    assert hist["mean"]["map"] == pytest.approx(np.mean(aps)) and hist["protocol"] == "history"
    assert all(r["n_train"] == 0 and r["label_free"] for r in hist["runs"])
    assert cells[("future_categories", "history", 1.0)]["mean"] == hist["mean"]
    # majority = popularity among the targets of the labelled train subset
    sub = labelled_subset(train_order(ds, 1), task.labels, 0.1)
    counts = np.asarray(task.targets[sub].sum(axis=0)).ravel()
    pop = Prediction(np.tile(counts[counts > 0], (len(test), 1)), np.flatnonzero(counts > 0))
    maj = cells[("future_categories", "majority", 0.1)]["runs"][1]["metrics"]
    assert maj == pytest.approx(score(pop, task.targets[test], task.metrics))
    good, noise = (cells[("future_items", m, 1.0)]["mean"]["recall@10"] for m in ("good", "noise"))
    assert good is not None and noise is not None and good > noise  # the planted signal
    # per-user values of the primary metric, aligned with the labelled test users
    pu = res["per_user"]["future_categories"]
    np.testing.assert_array_equal(pu["users"], test)
    for method in ("majority", "history", "good", "noise"):
        for frac, seed in ((0.1, 0), (0.1, 1), (1.0, 0), (1.0, 1)):
            values = pu["values"][f"{method}|{frac:g}|{seed}"]
            assert values.dtype == np.float32 and values.shape == test.shape
            run = cells[("future_categories", method, frac)]["runs"][seed]
            assert float(values.mean()) == pytest.approx(run["metrics"]["map"], abs=1e-6)
    other = evaluate_embeddings(
        ds, kind_embeddings, tasks=["next_rating_high", "age"], fractions=(1.0,), seeds=1
    )
    assert "next_rating_high" not in other["per_user"]  # primary AUC: not a mean over users
    assert set(other["per_user"]["age"]["values"]) == {"majority|1|0", "good|1|0", "noise|1|0"}


def test_items_knn_floor_is_label_free_and_optional(ds: SequenceDataset, tmp_path: Path) -> None:
    """Its cells repeat one answer at every fraction (n_train 0), scored with the history
    exclusion like every method; include_items_knn=False leaves it out."""
    from seqtwins.evaluate.baselines import items_knn_scorer

    res = evaluate_embeddings(ds, {}, tasks=["future_items", "kind"], fractions=(0.1, 1.0),
                              seeds=2)  # fmt: skip
    assert res["methods"] == ["majority", "items-knn"] and "items-knn" in res["floors"]
    task = build_task(ds, "future_items")
    test = task.labelled(ds.split_users("test"))
    pred = items_knn_scorer(ds)(task, test)
    assert pred is not None
    want = score(pred, task.targets[test], task.metrics, exclude=task.exclude[test])
    cells = {(c["task"], c["method"], c["fraction"]): c
             for c in load_results(save_results(res, tmp_path / "eval.json"))["cells"]}  # fmt: skip
    assert ("kind", "items-knn", 1.0) not in cells
    for frac in (0.1, 1.0):
        cell = cells[("future_items", "items-knn", frac)]
        assert cell["protocol"] == "items-knn" and cell["status"] == "ok"
        assert cell["mean"] == pytest.approx(want)
        assert all(r["n_train"] == 0 and r["label_free"] for r in cell["runs"])
        assert len(cell["runs"]) == 2
    assert want["recall@10"] > cells[("future_items", "majority", 1.0)]["mean"]["recall@10"]
    assert "items-knn|0.1|1" in res["per_user"]["future_items"]["values"]
    off = evaluate_embeddings(ds, {}, tasks=["future_items"], fractions=(1.0,), seeds=1,
                              include_items_knn=False)  # fmt: skip
    assert off["methods"] == ["majority"] and {c["method"] for c in off["cells"]} == {"majority"}


def test_scorers_are_label_free_and_share_the_exclusion(ds: SequenceDataset) -> None:
    """A fake native scorer that ranks each user's history items first, then the true new
    items: the protocol removes history items from every ranking, so it scores perfectly."""
    items = build_task(ds, "future_items")
    calls: list[tuple[str, int]] = []

    def native(task: Task, users: np.ndarray) -> Prediction | None:
        calls.append((task.name, len(users)))
        if task.name != "future_items":
            return None  # does not apply: no cells
        assert task.exclude is not None and task.targets is not None
        np.testing.assert_array_equal(users, task.labelled(ds.split_users("test")))
        scores = 2.0 * task.exclude[users].toarray() + task.targets[users].toarray()
        return Prediction.full(scores)  # classes = all item codes

    emb = {"x": np.random.default_rng(0).normal(size=(ds.num_users, 4)).astype(np.float32)}
    res = evaluate_embeddings(ds, emb, tasks=["future_items", "kind"], fractions=(0.1, 1.0),
                              seeds=2, scorers={"x:native": native})  # fmt: skip
    assert calls == [("future_items", len(items.labelled(ds.split_users("test")))), ("kind", 60)]
    cells = _cells(res)
    assert ("kind", "x:native", 1.0) not in cells and "x:native" in res["methods"]
    for frac in (0.1, 1.0):
        cell = cells[("future_items", "x:native", frac)]
        assert cell["protocol"] == "native" and cell["status"] == "ok"
        assert cell["mean"]["recall@10"] == 1.0 and cell["mean"]["ndcg@10"] == pytest.approx(1.0)
    per = res["per_user"]["future_items"]["values"]
    assert np.all(per["x:native|0.1|1"] == 1.0)
    assert cells[("future_items", "x", 1.0)]["protocol"] == "linear"
    with pytest.raises(SeqtwinsError, match="x given twice"):
        evaluate_embeddings(ds, emb, tasks=["kind"], scorers={"x": native})


def test_finetune_hooks_are_not_applied_to_set_tasks(ds: SequenceDataset) -> None:
    def hook(task: Task, train, valid, test, seed):  # type: ignore[no-untyped-def]
        raise AssertionError("a single-label hook must not be asked for a set task")

    res = evaluate_embeddings(ds, {}, tasks=["future_items"], fractions=(1.0,), seeds=1,
                              finetuners={"ft": hook})  # fmt: skip
    cell = _cells(res)[("future_items", "ft", 1.0)]
    assert cell["status"] == "n/a" and "single-label" in cell["reasons"][0]


def test_per_user_npz_round_trip(
    ds: SequenceDataset, kind_embeddings: dict, tmp_path: Path
) -> None:
    res = evaluate_embeddings(ds, kind_embeddings, tasks=["future_categories", "age"],
                              fractions=(0.5,), seeds=2)  # fmt: skip
    path = save_per_user(res["per_user"], tmp_path / "per_user.npz")
    with np.load(path, allow_pickle=False) as npz:
        assert "future_categories/users" in npz.files
        assert "future_categories/good|0.5|1" in npz.files and "age/history|0.5|0" not in npz.files
    back = load_per_user(path)
    assert back.keys() == res["per_user"].keys()
    for task, entry in res["per_user"].items():
        np.testing.assert_array_equal(back[task]["users"], entry["users"])
        assert back[task]["values"].keys() == entry["values"].keys()
        for key, values in entry["values"].items():
            np.testing.assert_array_equal(back[task]["values"][key], values)
