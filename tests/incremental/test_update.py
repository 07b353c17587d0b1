"""``pretrain NEW --init OLD``: weights carried over, lineage, config checks, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import seqtwins.train as train_mod
from seqtwins.api import pretrain
from seqtwins.checkpoint import load_model_tensors
from seqtwins.cli import app
from seqtwins.data.dataset import SequenceDataset
from seqtwins.run import Run

runner = CliRunner()


def test_update_grows_the_table_and_records_its_lineage(windows, old_run, update_run):
    new = update_run  # the default strategy: replay+distill, with the compatibility loss
    w1, w2 = (SequenceDataset.open(p) for p in windows)
    record = json.loads((new / "incremental.json").read_text())
    assert record["parent_run"] == str(old_run)
    assert record["parent_data"]["content_hash"] == w1.content_hash
    assert record["data"]["content_hash"] == w2.content_hash
    assert record["items"]["kept"] == w1.num_items
    added = w2.num_items - w1.num_items
    assert added > 0 and record["items"]["from_neighbours"] + record["items"]["random"] == added
    assert record["replay"]["mixed_in"] > 0 and (new / "replay.parquet").is_file()
    # the new run is a run like any other: its config is the old one (epochs overridden)
    run = Run.open(new)
    assert run.config.encoder == Run.open(old_run).config.encoder
    assert run.encoder().item_emb.weight.shape[0] == w2.vocab_size
    run.objective()  # the predictor is not part of the objective: strict load still works
    tensors = load_model_tensors(new / "checkpoints/last/model.safetensors")
    assert any(k.startswith("incremental.predictor") for k in tensors)


def test_attach_keeps_old_rows_by_original_id(windows, old_run):
    from seqtwins.incremental.config import IncrementalConfig
    from seqtwins.incremental.update import start_update
    from seqtwins.models.encoder import build_encoder
    from seqtwins.objectives import build_objective

    parent = Run.open(old_run)
    w2 = SequenceDataset.open(windows[1])
    cfg = parent.config
    update, train_ds = start_update(Run(old_run.parent / "x"), w2, cfg, old_run,
                                    IncrementalConfig(strategy="naive"), False)  # fmt: skip
    model = build_objective(cfg.objective, build_encoder(cfg.encoder, w2), cfg.barlow, cfg.dual,
                            cfg.next)  # fmt: skip
    update.attach(model, train_ds, torch.device("cpu"))
    old_w = parent.encoder().item_emb.weight.detach()
    new_w = model.encoder.item_emb.weight.detach()
    old_ids = SequenceDataset.open(windows[0]).items["item_id"].to_list()
    new_ids = w2.items["item_id"].to_list()
    for i, item in enumerate(old_ids[:10]):
        torch.testing.assert_close(new_w[new_ids.index(item) + 1], old_w[i + 1])
    assert not torch.equal(new_w[len(old_ids) + 1], torch.zeros_like(new_w[0]))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "encoder.dim=32"], "encoder.dim=32 differs from the old run's encoder.dim=16"),
        (["--set", "encoder.layers=3"], "encoder.layers=3 differs"),
        (["--objective", "dual"], "objective='dual' differs from the old run's 'barlow'"),
        (["--strategy", "forget"], "incremental.strategy='forget' must be one of"),
    ],
)
def test_mismatched_init_is_one_line_exit_2(windows, old_run, tmp_path, args, message):
    out = tmp_path / "new"
    r = runner.invoke(app, ["pretrain", str(windows[1]), "--init", str(old_run), "--out",
                            str(out), "--no-progress", *args])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_strategy_needs_init(windows, tmp_path):
    r = runner.invoke(app, ["pretrain", str(windows[1]), "--out", str(tmp_path / "r"),
                            "--strategy", "replay"])  # fmt: skip
    assert r.exit_code == 2 and "need --init" in r.output


def _losses(run) -> list[float]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "step" in x]


def test_killed_update_resumes_exactly(windows, old_run, tmp_path, monkeypatch):
    args = dict(overrides=["train.epochs=2", "train.checkpoint_every=2"], progress=False,
                init=old_run, incremental=["strategy=replay+distill"])  # fmt: skip
    full, killed = tmp_path / "full", tmp_path / "killed"
    pretrain(windows[1], full, **args)

    def kill(step: int) -> None:
        if step == 7:  # after the checkpoint at step 6
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_after_step", kill)
    with pytest.raises(KeyboardInterrupt):
        pretrain(windows[1], killed, **args)
    monkeypatch.setattr(train_mod, "_after_step", lambda step: None)
    pretrain(windows[1], killed, resume=True, progress=False)

    a = load_model_tensors(full / "checkpoints/last/model.safetensors")
    b = load_model_tensors(killed / "checkpoints/last/model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("incremental.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert _losses(full) == _losses(killed)
    assert np.isfinite(_losses(full)).all()
    assert (full / "incremental.json").read_text() == (killed / "incremental.json").read_text()


def test_experiment_init_names_an_objective_and_updates_it(windows, old_run, tmp_path):
    from seqtwins.experiment import ExperimentConfig, pretrain_run

    with pytest.raises(ValueError, match="init.dual names no objective"):
        ExperimentConfig(data={"synth": {}}, objectives={"barlow": {}}, init={"dual": "x"})
    cfg = Run.open(old_run).config
    run = pretrain_run(cfg, windows[1], tmp_path / "run", False, lambda *_: None,
                       (str(old_run), {"strategy": "naive", "compat": False}))  # fmt: skip
    record = json.loads((run / "incremental.json").read_text())
    assert record["incremental"]["strategy"] == "naive" and not record["incremental"]["compat"]
