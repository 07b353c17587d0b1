"""embed / evaluate through the CLI on a tiny trained run, and their bad inputs."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
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
    args = [
        "evaluate",
        str(run),
        "--data",
        str(data),
        "--out",
        str(out),
        "--tasks",
        "favorite_category",
        "--fractions",
        "0.5",
        "--fractions",
        "1.0",
        "--seeds",
        "1",
    ]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert {"barlow", "majority", "random-init", "tfidf-svd"} <= set(res["methods"])
    assert res["artifacts"]["cross_correlation"]["method"] == "barlow"
    assert "per_user" not in res  # the per-user values live in per_user.npz beside it
    with np.load(out.parent / res["artifacts"]["per_user"]["path"], allow_pickle=False) as npz:
        assert {"favorite_category/users", "favorite_category/barlow|0.5|0"} <= set(npz.files)

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
    assert "barlow+finetune|0.5|0" in res["per_user"]["favorite_category"]["values"]
    acc = cells[0]["runs"][0]["metrics"]["accuracy"]
    # the tiny dataset's favourite category follows each user's taste: learnable
    assert acc > res["tasks"]["favorite_category"]["majority_accuracy"]


def test_evaluate_a_run_trained_with_item_categories(trained, tmp_path):
    """The random-init floor copies the run's category table (this crashed before)."""
    data, _ = trained
    run = tmp_path / "run"
    cfg = build(PretrainConfig, {"objective": "barlow"},
                overrides=[*TINY, "train.epochs=1", "encoder.use_categories=true"])  # fmt: skip
    pretrain(data, run, cfg, progress=False)
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["evaluate", str(run), "--data", str(data), "--out", str(out),
                                 "--tasks", "favorite_category", "--fractions", "1.0",
                                 "--seeds", "1", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {"barlow", "random-init"} <= set(json.loads(out.read_text())["methods"])
    emb = tmp_path / "e.parquet"
    result = runner.invoke(app, ["embed", str(run), "--data", str(data), "--out", str(emb)])
    assert result.exit_code == 0, result.output


def test_embed_out_never_replaces_a_file_seqtwins_did_not_write(trained, tmp_path):
    data, run = trained
    meta = data / "meta.json"
    before = meta.read_bytes()
    result = runner.invoke(app, ["embed", str(run), "--data", str(data), "--out", str(meta)])
    assert result.exit_code == 2 and "was not written by seqtwins" in result.output
    assert meta.read_bytes() == before
    other = tmp_path / "other.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(other)  # a Parquet file, but not embeddings
    result = runner.invoke(app, ["embed", str(run), "--data", str(data), "--out", str(other)])
    assert result.exit_code == 2 and "was not written by seqtwins" in result.output
    result = runner.invoke(app, ["embed", str(run), "--data", str(data), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "is a folder" in result.output
    out = tmp_path / "emb.parquet"
    for _ in range(2):  # its own earlier output is replaced
        result = runner.invoke(app, ["embed", str(run), "--data", str(data), "--out", str(out)])
        assert result.exit_code == 0, result.output
    import pyarrow.parquet as pq

    assert pq.read_schema(out).metadata[b"seqtwins"] == b"embeddings"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.parquet", "other.parquet"]


def test_two_embeds_to_one_file_the_second_fails_in_one_line(trained, tmp_path):
    from seqtwins.files import file_lock

    data, run = trained
    out = tmp_path / "emb.parquet"
    with file_lock(out):
        result = runner.invoke(app, ["embed", str(run), "--data", str(data), "--out", str(out)])
    assert result.exit_code == 2 and "is in use by another seqtwins process" in result.output
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_embed_non_utf8_sequences_file_is_one_line(trained, tmp_path, suffix):
    data, run = trained
    seqs = tmp_path / f"new{suffix}"
    seqs.write_bytes(b'{"id": "a", "items": ["it1"]}\n\xff\xfe\n' if suffix == ".jsonl"
                     else b"id,items\na,it1 \xff\xfe\n")  # fmt: skip
    out = tmp_path / "e.parquet"
    result = runner.invoke(app, ["embed", str(run), "--data", str(data), "--out", str(out),
                                 "--sequences", str(seqs)])  # fmt: skip
    assert result.exit_code == 2 and "is not UTF-8" in result.output, result.output
    assert "Traceback" not in result.output and not out.exists()


def test_evaluate_out_and_artifacts_never_replace_foreign_files(trained, tmp_path):
    data, run = trained
    args = [
        "evaluate",
        str(run),
        "--data",
        str(data),
        "--tasks",
        "favorite_category",
        "--fractions",
        "1.0",
        "--seeds",
        "1",
        "--baselines",
        "majority",
        "--no-progress",
    ]
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"mine": true}\n')
    result = runner.invoke(app, [*args, "--out", str(foreign)])
    assert result.exit_code == 2 and "was not written by seqtwins" in result.output
    assert foreign.read_text() == '{"mine": true}\n'
    out = tmp_path / "eval.json"
    (tmp_path / "eval_artifacts").mkdir()
    (tmp_path / "eval_artifacts" / "thesis.tex").write_text("x")
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 2 and "did not write" in result.output, result.output
    assert not out.exists()
    (tmp_path / "eval_artifacts" / "thesis.tex").unlink()
    for _ in range(2):  # its own earlier outputs are replaced
        result = runner.invoke(app, [*args, "--out", str(out)])
        assert result.exit_code == 0, result.output
    from seqtwins.files import marker_kind

    assert marker_kind(tmp_path / "eval_artifacts") == "eval-artifacts"
    assert (tmp_path / "eval_artifacts" / "cross_correlation.npy").is_file()


def test_embed_empty_sequences_file_and_edited_config_are_one_line(trained, tmp_path):
    import shutil

    data, run = trained
    seqs = tmp_path / "empty.jsonl"
    seqs.write_text("\n")
    out = tmp_path / "e.parquet"
    result = runner.invoke(app, ["embed", str(run), "--data", str(data), "--out", str(out),
                                 "--sequences", str(seqs)])  # fmt: skip
    assert result.exit_code == 2 and "holds no sequences" in result.output
    edited = tmp_path / "run"
    shutil.copytree(run, edited)
    config = edited / "config.yaml"
    config.write_text(config.read_text().replace("dim: 16", "dim: 32", 1))
    result = runner.invoke(app, ["embed", str(edited), "--data", str(data), "--out", str(out)])
    assert result.exit_code == 2 and "does not match the model" in result.output, result.output
    assert "Traceback" not in result.output and not out.exists()


def test_only_seqtwins_embeddings_files_are_replaced(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from seqtwins.embed import is_embeddings_file

    emb = pa.FixedSizeListArray.from_arrays(pa.array([0.5, 1.5], pa.float32()), 2)
    legacy = tmp_path / "legacy.parquet"  # written by seqtwins before the schema marker
    pq.write_table(pa.table({"user_id": ["u1"], "split": ["train"], "embedding": emb}), legacy)
    assert is_embeddings_file(legacy)
    mine = tmp_path / "mine.parquet"  # a user's own table that happens to share two names
    pq.write_table(pa.table({"user_id": ["u1"], "embedding": emb, "model": ["v2"]}), mine)
    assert not is_embeddings_file(mine)
    (tmp_path / "notes.parquet").write_text("not parquet")
    assert not is_embeddings_file(tmp_path / "notes.parquet")
