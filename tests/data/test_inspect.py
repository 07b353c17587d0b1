"""``seqtwins inspect``: exact numbers on hand-built datasets, JSON and table output."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from rich.console import Console
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.data.dataset import Sequences, write_dataset
from seqtwins.data.inspect import inspect_dataset, render_summary
from seqtwins.data.synth import SynthConfig, synthesize


@pytest.fixture
def handmade(tmp_path):  # type: ignore[no-untyped-def]
    """4 users, 4 items, every optional field; numbers checkable by hand."""
    seqs = [[1, 2, 3, 4, 1], [2, 2, 3], [1, 3, 4, 4, 4, 4, 2], [3, 1, 2, 4]]
    hist = [3, 2, 5, 3]
    s = Sequences.from_lists(seqs, hist)
    n = s.num_interactions
    s = Sequences(
        offsets=s.offsets,
        items=s.items,
        history_end=s.history_end,
        times=np.arange(n, dtype=np.int64) * 86400 + 1_000_000_000,
        ratings=np.array([5, 4, 3, 2, 1] * 3 + [4, 4, 4, 4], dtype=np.float32),
    )
    items = pl.DataFrame(
        {"item_id": ["a", "b", "c", "d"], "categories": [["x", "y"], ["y"], [], ["x"]]},
        schema={"item_id": pl.String, "categories": pl.List(pl.String)},
    )
    users = pl.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "u4"],
            "split": ["train", "train", "valid", "test"],
            "gender": ["F", "M", "F", None],
        }
    )
    return write_dataset(
        tmp_path / "hand",
        sequences=s,
        items=items,
        users=users,
        source="handmade",
        params={"k": 1},
    )


def test_numbers_of_a_handmade_dataset(handmade):  # type: ignore[no-untyped-def]
    summary = inspect_dataset(handmade)
    assert summary["source"] == "handmade" and summary["params"] == {"k": 1}
    assert summary["counts"] == {
        "users": 4,
        "items": 4,
        "interactions": 19,
        "history_interactions": 13,
        "future_interactions": 6,
        "items_never_seen": 0,
        "users_without_future": 0,
    }
    assert summary["splits"] == {"train": 2, "valid": 1, "test": 1}
    lens = np.array([5, 3, 7, 4])
    seq = summary["lengths"]["sequence"]
    assert seq["min"] == 3 and seq["max"] == 7 and seq["mean"] == pytest.approx(4.75)
    for p in (5, 25, 50, 75, 95):
        assert seq[f"p{p}"] == pytest.approx(np.percentile(lens, p), abs=0.01)
    assert summary["lengths"]["history"]["max"] == 5
    assert summary["lengths"]["future"]["min"] == 1

    cats = summary["categories"]
    assert cats["count"] == 2 and cats["primary_count"] == 2
    assert cats["items_without_category"] == 1
    by_name = {row["category"]: row for row in cats["top"]}
    # x: items a (primary) and d (primary); y: a (secondary) and b (primary)
    assert by_name["x"] == {"category": "x", "items": 2, "primary_items": 2, "interactions": 10}
    assert by_name["y"] == {"category": "y", "items": 2, "primary_items": 1, "interactions": 9}

    gender = summary["user_attributes"]["gender"]
    assert gender["distinct"] == 3
    assert gender["top"][0] == {"value": "F", "users": 2}
    assert summary["times"]["first"].startswith("2001-09-09")
    assert summary["ratings"]["counts"] == {"1": 3, "2": 3, "3": 3, "4": 7, "5": 3}
    json.dumps(summary)  # plain data only


def test_minimal_dataset_without_optional_fields(tmp_path):  # type: ignore[no-untyped-def]
    out = write_dataset(
        tmp_path / "min",
        sequences=Sequences.from_lists([[1, 2, 3], [2, 3]]),
        items=pl.DataFrame({"item_id": ["a", "b", "c"]}),
        users=pl.DataFrame({"user_id": ["u", "v"], "split": ["train", "test"]}),
        source="tiny",
    )
    summary = inspect_dataset(out)
    assert summary["categories"] is None and summary["times"] is None
    assert summary["ratings"] is None and summary["user_attributes"] == {}
    assert summary["counts"]["users_without_future"] == 2
    console = Console(record=True, width=100)
    render_summary(summary, console)
    text = console.export_text()
    assert "tiny" in text and "sequence lengths" in text and "categories:" not in text


def test_cli_table_and_json_on_synth(tmp_path):  # type: ignore[no-untyped-def]
    out = synthesize(tmp_path / "syn", SynthConfig(users=400, items=300, seed=3))
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data == json.loads(json.dumps(inspect_dataset(out)))
    assert data["source"] == "synth" and data["params"]["seed"] == 3
    assert data["counts"]["users"] == 400 and sum(data["splits"].values()) == 400
    assert data["fields"]["user_attributes"] == ["age_group", "segment"]
    assert data["categories"]["count"] == 20

    table = runner.invoke(app, ["inspect", str(out)])
    assert table.exit_code == 0, table.output
    head = data["content_hash"][:16]  # the table folds the hash at narrow widths
    for text in ("synth", head, "sequence lengths", "p95", "cat", "age_group"):
        assert text in table.output, text


def test_cli_not_a_dataset(tmp_path):  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "not a seqtwins dataset" in result.output and "Traceback" not in result.output
