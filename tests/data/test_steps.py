"""The public steps of ``prepare`` (``seqtwins.data.steps``) and the shape of the pipeline:
both paths share them and ``finish``, with no import cycle and no private name imported."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import polars as pl

from seqtwins.data.options import PrepareOptions
from seqtwins.data.steps import UserRows, assign_splits, kcore, user_order, user_steps

DATA = Path(__file__).resolve().parents[2] / "src" / "seqtwins" / "data"


def _rows(users: list[list[int]], ratings: list[list[float]] | None = None) -> UserRows:
    return UserRows(
        np.array([len(u) for u in users], dtype=np.int64),
        np.array([i for u in users for i in u], dtype=np.int32),
        None,
        None if ratings is None else np.array([r for u in ratings for r in u], np.float32),
    )


def _lists(rows: UserRows) -> list[list[int]]:
    ends = np.cumsum(rows.cu)
    return [rows.icode[e - c : e].tolist() for c, e in zip(rows.cu, ends, strict=True)]


def test_user_steps_against_a_plain_loop():
    users = [[0, 1, 0, 2, 1, 3], [4, 4, 4], [0, 1, 2, 3, 4, 0, 1], [2, 3]]
    ratings = [[5, 1, 4, 5, 5, 5], [5, 5, 5], [1, 5, 5, 5, 5, 5, 5], [5, 5]]
    opts = PrepareOptions(min_rating=3, dedup=True, max_len=3, min_history=1, holdout=1)
    dropped: dict[str, int] = {}
    got = _lists(user_steps(_rows(users, ratings), 5, opts, dropped))
    expected = []
    for items, rs in zip(users, ratings, strict=True):
        kept = [i for i, r in zip(items, rs, strict=True) if r >= 3]
        first = [i for k, i in enumerate(kept) if i not in kept[:k]][-3:]
        expected.append(first if len(first) >= 2 else [])
    assert got == expected
    assert dropped["low_rating_interactions"] == 2 and dropped["duplicate_interactions"] == 4
    assert dropped["short_users"] == 1  # user 1: one distinct item left


def test_kcore_is_the_largest_sub_log_meeting_the_thresholds():
    users = [[0, 1, 2], [0, 1, 3], [0, 4, 5], [1, 2]]
    opts = PrepareOptions(min_user_count=2, min_item_count=2, min_history=1, holdout=1)
    dropped: dict[str, int] = {}
    rows, ci = kcore(_rows(users), 6, opts, dropped)
    assert _lists(rows) == [[0, 1, 2], [0, 1], [], [1, 2]]
    assert ci.tolist() == [2, 3, 2, 0, 0, 0]
    assert (dropped["kcore_users"], dropped["kcore_items"]) == (1, 3)


def test_user_order_and_splits():
    ids = pl.Series("user", [3, 7, 9])
    order, pseudo = user_order(ids, PrepareOptions())
    assert order.tolist() == [0, 1, 2] and pseudo is None
    split = assign_splits(10, (0.6, 0.2, 0.2), 0)
    assert sorted(split.tolist()).count("valid") == 2 and list(split).count("test") == 2


def _imports(path: Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text())
    return [
        (node.module, a.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("seqtwins")
        for a in node.names
    ]


def test_pipeline_has_no_cycle_and_imports_no_private_name():
    graph: dict[str, set[str]] = {}
    for path in DATA.glob("*.py"):
        imports = _imports(path)
        private = [f"{m}.{n}" for m, n in imports if n.startswith("_")]
        assert not private, f"{path.name} imports private names {private}"
        graph[path.stem] = {
            m.rsplit(".", 1)[1] for m, _ in imports if m.startswith("seqtwins.data.")
        }

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), set()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert all(m not in reach(m) for m in graph), "an import cycle in seqtwins.data"
    # one finish() for both paths
    assert "finish" in graph["prepare"] and "finish" in graph["outofcore"]
    assert "prepare" not in graph["outofcore"]
