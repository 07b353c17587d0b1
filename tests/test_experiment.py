from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.config import to_dict
from seqtwins.errors import SeqtwinsError
from seqtwins.experiment import load_experiment

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
runner = CliRunner()


@pytest.mark.parametrize(
    "preset",
    sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("*.yaml"))
    + sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("tuned/*.yaml")),
)
def test_presets_load_and_validate(preset):
    cfg = load_experiment(CONFIGS / preset)
    assert cfg.objectives and {"barlow", "dual"} <= set(cfg.objectives)


def test_configs_demo_is_the_embedded_default():
    assert to_dict(load_experiment(None)) == to_dict(load_experiment(CONFIGS / "demo.yaml"))


def _amazon_like_s3rec(folder: Path, users: int = 600, items: int = 300) -> Path:
    """An Amazon review set in S3-Rec format that no preset was tuned on: every item lists
    the root category ``1`` first, then two of 60 leaf categories users have tastes for."""
    rng = np.random.default_rng(0)
    leaf = rng.integers(2, 62, size=(items, 2))
    attrs = {str(i + 1): [1, *map(int, leaf[i])] for i in range(items)}
    lines = []
    for u in range(users):
        pool = np.flatnonzero(np.isin(leaf, rng.integers(2, 62, size=3)).any(axis=1)) + 1
        seq = rng.choice(pool, size=int(rng.integers(5, 40)))
        lines.append(" ".join(map(str, [u + 1, *seq])))
    folder.mkdir()
    (folder / "Toys_item2attributes.json").write_text(json.dumps(attrs))
    path = folder / "Toys.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_shipped_amazon_preset_runs_on_an_unseen_amazon_set(tmp_path, monkeypatch):
    # the product owner runs configs/tuned/beauty.yaml as shipped on an Amazon set the team
    # never saw, changing only the input; here shortened to one epoch (train.min_steps off),
    # one seed, one budget
    monkeypatch.delenv("SEQTWINS_DATA", raising=False)
    log = _amazon_like_s3rec(tmp_path / "toys")
    out = tmp_path / "out"
    args = ["run", str(CONFIGS / "tuned" / "beauty.yaml"), "--out", str(out), "--no-progress",
            "--set", f"data.prepare.input={log}", "--set", "pretrain.train.epochs=1",
            "--set", "pretrain.train.min_steps=0",
            "--set", "evaluate.seeds=1", "--set", "evaluate.fractions=[0.1]"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    root = out / "beauty"
    res = json.loads((root / "eval.json").read_text())
    preset = load_experiment(CONFIGS / "tuned" / "beauty.yaml")
    assert set(preset.objectives) | set(preset.evaluate.baselines) <= set(res["methods"])
    assert res["tasks"]["future_categories"]["excluded_classes"] == ["1"]  # the root
    scored = [c for c in res["cells"] if c["task"] in ("future_categories", "future_items")]
    assert scored and all(v is not None for c in scored for v in c["mean"].values())
    for objective in preset.objectives:
        summary = json.loads((root / "runs" / objective / "summary.json").read_text())
        assert summary["best_score"] is not None and np.isfinite(summary["best_score"])


def test_bad_experiment_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"synth": {}}, "objectives": {"triplet": {}}}))
    with pytest.raises(SeqtwinsError, match="objectives.triplet"):
        load_experiment(bad)
    bad.write_text(yaml.safe_dump({"data": {}}))
    with pytest.raises(SeqtwinsError, match="exactly one of data.synth or data.prepare"):
        load_experiment(bad)
    encoder = {"dim": 70, "heads": 4}
    bad.write_text(yaml.safe_dump({"data": {"synth": {}}, "pretrain": {"encoder": encoder},
                                   "objectives": {"barlow": {}}}))  # fmt: skip
    with pytest.raises(SeqtwinsError, match="encoder.dim=70 must be divisible"):
        load_experiment(bad)


def test_run_tiny_experiment_end_to_end_and_resume(tmp_path):
    exp = tmp_path / "tiny.yaml"
    exp.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "data": {"synth": {"users": 400, "items": 120, "seed": 1}},
                "pretrain": {
                    "encoder": {"dim": 16, "ff_dim": 32, "max_len": 20},
                    "augment": {"max_len": 20},
                    "barlow": {"projector": [32, 32]},
                    "train": {"epochs": 1, "batch_size": 64},
                },
                "objectives": {"barlow": {}, "dual": {}},
                "evaluate": {
                    "fractions": [0.25, 1.0],
                    "seeds": 1,
                    "tasks": ["favorite_category", "segment"],
                },
            }
        )
    )
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(exp), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    root = out / "tiny"
    report = (root / "report" / "report.md").read_text()
    assert "barlow vs dual" in report
    assert list((root / "report").glob("*.png"))
    results = json.loads((root / "eval.json").read_text())
    assert {"barlow", "dual", "majority", "random-init", "tfidf-svd"} <= set(results["methods"])
    # a second run reuses data and finished runs
    again = runner.invoke(app, ["run", str(exp), "--out", str(out), "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "reusing" in again.output and "done already" in again.output
    # a run written before a setting existed (its key missing from config.yaml) was trained
    # without it, even where the default reads back equal: retrained, not reused
    config = root / "runs" / "barlow" / "config.yaml"
    written = yaml.safe_load(config.read_text())
    del written["train"]["select_from"]
    config.write_text(yaml.safe_dump(written, sort_keys=False))
    third = runner.invoke(app, ["run", str(exp), "--out", str(out), "--no-progress"])
    assert third.exit_code == 0, third.output
    assert "pretrain barlow: training" in third.output
    assert "pretrain dual: done already" in third.output
    assert "select_from" in config.read_text()


def test_run_never_replaces_a_data_folder_seqtwins_did_not_write(tmp_path):
    from seqtwins.experiment import build_data

    cfg = load_experiment(None, ["data.synth.users=300"])
    data = tmp_path / "data"
    data.mkdir()
    (data / "thesis.tex").write_text("precious")
    with pytest.raises(SeqtwinsError, match="data folder .* seqtwins did not write"):
        build_data(cfg, data, say=lambda *a: None)
    assert [p.name for p in data.iterdir()] == ["thesis.tex"]
    (data / "thesis.tex").unlink()
    assert build_data(cfg, data, say=lambda *a: None) == data
    cfg2 = load_experiment(None, ["data.synth.users=310"])  # another spec: rebuilt in place
    assert build_data(cfg2, data, say=lambda *a: None) == data


@pytest.mark.parametrize(
    "override, message",
    [
        ("evaluate.fractions=[2.0]", "evaluate.fractions=[2.0] must be label shares in (0, 1]"),
        ("evaluate.seeds=0", "evaluate.seeds=0 must be >= 1"),
        ("evaluate.faithfulness_users=0", "evaluate.faithfulness_users=0 must be >= 1"),
        ("evaluate.protocol=knn", "evaluate.protocol='knn' must be one of"),
        ("evaluate.baselines=[popular]", "evaluate.baselines: unknown ['popular']"),
    ],
)
def test_evaluate_settings_are_checked_up_front(override, message):
    with pytest.raises(SeqtwinsError, match=re.escape(message)):
        load_experiment(None, [override])


def test_unknown_evaluate_task_is_refused_before_pretraining(tmp_path):
    from seqtwins.experiment import run_experiment

    cfg = load_experiment(None, ["data.synth.users=300", "evaluate.tasks=[gender]"])
    with pytest.raises(SeqtwinsError, match="evaluate.tasks: gender not available"):
        run_experiment(cfg, tmp_path / "out", progress=False, say=lambda *a: None)
    assert not (tmp_path / "out" / cfg.name / "runs").exists()


def test_run_never_writes_into_a_foreign_experiment_folder(tmp_path):
    from seqtwins.experiment import load_experiment, run_experiment

    root = tmp_path / "o" / "foreign"
    root.mkdir(parents=True)
    (root / "experiment.yaml").write_text("# my lab notebook\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text("name: foreign\ndata: {synth: {users: 60, items: 30}}\n")
    with pytest.raises(SeqtwinsError, match="seqtwins did not write"):
        run_experiment(load_experiment(exp), tmp_path / "o", progress=False)
    assert [p.name for p in root.iterdir()] == ["experiment.yaml"]
    assert (root / "experiment.yaml").read_text() == "# my lab notebook\n"


def test_a_damaged_data_spec_rebuilds_the_data(tmp_path):
    from seqtwins.experiment import build_data, load_experiment

    exp = tmp_path / "exp.yaml"
    exp.write_text("name: spec\ndata: {synth: {users: 60, items: 30}}\n")
    cfg = load_experiment(exp)
    data_dir = tmp_path / "o" / "data"
    build_data(cfg, data_dir, say=lambda _m: None)
    (tmp_path / "o" / "data.spec.json").write_text("{not json")
    said: list[str] = []
    build_data(cfg, data_dir, say=said.append)
    assert said and said[0].startswith("data: synthesised")
    assert json.loads((tmp_path / "o" / "data.spec.json").read_text())["synth"]["users"] == 60
