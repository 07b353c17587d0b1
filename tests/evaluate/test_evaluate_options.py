"""``seqtwins evaluate --checkpoint`` and the window TF-IDF floor, on a tiny trained run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.evaluate.protocol import FLOOR_METHODS
from seqtwins.run import Run
from tests.helpers import tiny_run

runner = CliRunner()
FAST = ["--tasks", "favorite_category", "--fractions", "1.0", "--seeds", "1", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_run(tmp_path_factory.mktemp("opts"), epochs=2)


def test_last_checkpoint_is_used_and_recorded(trained, tmp_path, monkeypatch) -> None:
    data, run = trained
    asked: list[str] = []
    encoder = Run.encoder

    def spy(self: Run, which: str = "best", ds: object = None) -> object:
        asked.append(which)
        return encoder(self, which, ds)  # type: ignore[arg-type]

    monkeypatch.setattr(Run, "encoder", spy)
    out = tmp_path / "eval.json"
    args = ["evaluate", str(run), "--data", str(data), "--out", str(out), *FAST]
    result = runner.invoke(app, [*args, "--checkpoint", "last"])
    assert result.exit_code == 0, result.output
    assert "(last checkpoints)" in result.output
    res = json.loads(out.read_text())
    assert res["checkpoint"] == "last" and asked == ["last"]
    # both TF-IDF floors, reported as floors
    assert {"tfidf-svd", "tfidf-svd-window"} <= set(res["floors"])
    assert "tfidf-svd-window" in FLOOR_METHODS

    asked.clear()
    result = runner.invoke(app, [*args, "--baselines", "majority"])
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["checkpoint"] == "best" and asked == ["best"]


def test_bad_or_missing_checkpoint_is_one_line(trained, tmp_path) -> None:
    data, run = trained
    out = tmp_path / "eval.json"
    args = ["evaluate", str(run), "--data", str(data), "--out", str(out), *FAST]
    result = runner.invoke(app, [*args, "--checkpoint", "final"])
    assert result.exit_code == 2 and "--checkpoint 'final' must be one of best, last" in (
        result.output
    )
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "last")
    args[1] = str(copy)
    result = runner.invoke(app, [*args, "--checkpoint", "last"])
    assert result.exit_code == 2, result.output
    assert f"--checkpoint last: {copy} has no last checkpoint" in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_items_knn_floor_is_on_by_default_and_left_out_without_it(trained, tmp_path) -> None:
    data, run = trained
    out = tmp_path / "eval.json"
    args = ["evaluate", str(run), "--data", str(data), "--out", str(out), "--tasks",
            "future_items", "--fractions", "0.5", "--fractions", "1.0", "--seeds", "2",
            "--no-progress"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert "items-knn" in res["floors"] and "items-knn" in FLOOR_METHODS
    cells = [c for c in res["cells"] if c["method"] == "items-knn"]
    assert [c["fraction"] for c in cells] == [0.5, 1.0]
    assert all(c["protocol"] == "items-knn" and c["status"] == "ok" for c in cells)
    assert all(r["n_train"] == 0 for c in cells for r in c["runs"])
    assert cells[0]["mean"] == cells[1]["mean"]

    result = runner.invoke(app, [*args, "--baselines", "majority", "--baselines", "history"])
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert "items-knn" not in res["methods"] and res["floors"] == ["majority"]
    assert all(c["method"] != "items-knn" for c in res["cells"])
