"""embed / evaluate through the CLI on a tiny trained run, and their bad inputs."""

from __future__ import annotations

import json
import sys
import types

import polars as pl
import pytest
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.config import PretrainConfig, build
from seqtwins.train import pretrain
from tests.helpers import tiny_dataset
from tests.test_train import TINY

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ee")
    data = tiny_dataset(root / "ds")
    cfg = build(PretrainConfig, {"objective": "barlow"}, overrides=[*TINY, "train.epochs=1"])
    pretrain(data, root / "run", cfg, progress=False)
    return data, root / "run"


def test_embed_every_user(trained, tmp_path):
    data, run = trained
    out = tmp_path / "emb.parquet"
    result = runner.invoke(app, ["embed", str(run), "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    df = pl.read_parquet(out)
    assert df.height == 240 and df["user_id"][0] == "user0"
    assert set(df["split"].unique()) == {"train", "valid", "test"}
    assert len(df["embedding"][0]) == 16


def test_embed_new_sequences_drops_unknown_ids(trained, tmp_path):
    data, run = trained
    seqs = tmp_path / "new.jsonl"
    seqs.write_text('{"id": "a", "items": ["it1", "it2", "nope"]}\n{"id": "b", "items": ["x"]}\n')
    out = tmp_path / "new.parquet"
    result = runner.invoke(app, ["embed", str(run), "--data", str(data), "--out", str(out),
                                 "--sequences", str(seqs)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "dropped 2 unknown item ids" in result.output
    assert "1 sequences became empty" in result.output
    assert pl.read_parquet(out)["user_id"].to_list() == ["a"]
    seqs.write_text('{"items": ["zzz"]}\n')
    result = runner.invoke(app, ["embed", str(run), "--data", str(data), "--out", str(out),
                                 "--sequences", str(seqs)])  # fmt: skip
    assert result.exit_code == 2 and "no sequence has an item known" in result.output


def test_evaluate_cli_and_bad_inputs(trained, tmp_path):
    data, run = trained
    out = tmp_path / "eval.json"
    args = ["evaluate", str(run), "--data", str(data), "--out", str(out), "--tasks",
            "favorite_category", "--fractions", "0.5", "--fractions", "1.0", "--seeds", "1"]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert {"barlow", "majority", "random-init", "tfidf-svd"} <= set(res["methods"])
    assert res["artifacts"]["cross_correlation"]["method"] == "barlow"

    other = tiny_dataset(tmp_path / "other", seed=5)
    bad = [
        (["evaluate", str(run), "--data", str(other), "--out", str(out)], "was trained on"),
        (["evaluate", str(tmp_path), "--data", str(data), "--out", str(out)], "not a seqtwins run"),
        (["evaluate", str(run), "--data", str(data), "--out", str(out), "--fractions", "1.5"],
         "1.5"),
        (["evaluate", str(run), "--data", str(data), "--out", str(out), "--tasks", "gender"],
         "gender"),
        (["evaluate", str(run), "--data", str(data), "--out", str(out), "--protocol", "knn"],
         "knn"),
    ]  # fmt: skip
    for args, message in bad:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_metrics_mirrored_to_tensorboard_when_installed(trained, tmp_path, monkeypatch):
    calls: list[tuple[str, float, int]] = []

    class Writer:
        def __init__(self, logdir: str) -> None:
            self.logdir = logdir

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            calls.append((tag, value, step))

        def flush(self) -> None:
            pass

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    data, _ = trained
    cfg = build(PretrainConfig, {"objective": "dual"}, overrides=[*TINY, "train.epochs=1"])
    pretrain(data, tmp_path / "run", cfg, progress=False)
    tags = {c[0] for c in calls}
    assert "train/loss" in tags and "valid/loss" in tags


def test_evaluate_finetune_protocol(trained, tmp_path):
    from seqtwins.evaluate.runs import evaluate_runs

    data, run = trained
    res = evaluate_runs(
        [run], data, tmp_path / "eval.json", tasks=["favorite_category"], fractions=[0.5, 1.0],
        seeds=1, protocol="finetune", progress=False,
    )  # fmt: skip
    cells = [c for c in res["cells"] if c["method"] == "barlow+finetune"]
    assert [c["fraction"] for c in cells] == [0.5]  # fine-tuned at the smallest fraction
    assert cells[0]["protocol"] == "finetune"
    assert cells[0]["runs"][0]["status"] == "ok"
    acc = cells[0]["runs"][0]["metrics"]["accuracy"]
    # the tiny dataset's favourite category follows each user's taste: learnable
    assert acc > res["tasks"]["favorite_category"]["majority_accuracy"]
