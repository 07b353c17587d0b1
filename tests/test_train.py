from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import seqtwins.train as train_mod
from seqtwins.checkpoint import load_model_tensors
from seqtwins.cli import app
from seqtwins.config import PretrainConfig, build
from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError
from seqtwins.objectives import OBJECTIVES
from seqtwins.train import load_encoder, pretrain
from tests.helpers import tiny_dataset

TINY = [
    "encoder.dim=16", "encoder.heads=2", "encoder.ff_dim=32", "encoder.max_len=12",
    "augment.max_len=12", "barlow.projector=[32,32]", "train.batch_size=32",
    "train.epochs=3", "train.log_every=1", "train.lr=0.003",
]  # fmt: skip
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data") / "ds")


def _cfg(objective: str, *extra: str) -> PretrainConfig:
    return build(PretrainConfig, {"objective": objective}, overrides=[*TINY, *extra])


def _losses(run) -> list[float]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "step" in x and "event" not in x]


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_pretrain_cli_each_objective(data, tmp_path, objective):
    run = tmp_path / "run"
    args = ["pretrain", str(data), "--objective", objective, "--out", str(run), "--no-progress"]
    for s in TINY:
        args += ["--set", s]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    losses = _losses(run)
    assert all(np.isfinite(losses))
    # loss goes down: mean of the last steps below the mean of the first steps
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    for f in (
        "config.yaml",
        "dataset.json",
        "summary.json",
        "checkpoints/last/model.safetensors",
        "checkpoints/best/model.safetensors",
        "checkpoints/last/optim.safetensors",
    ):
        assert (run / f).is_file(), f
    encoder, cfg = load_encoder(run)
    assert cfg.objective == objective
    assert encoder.embed(torch.tensor([[1, 2, 3]])).shape == (1, 16)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_summary_records_the_precision_trained_under(data, tmp_path, precision):
    # bf16 autocast on one CPU and fp32 on another do not give the same numbers
    run = tmp_path / "run"
    pretrain(data, run, _cfg("barlow", "train.epochs=1", f"train.precision={precision}"),
             progress=False)  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["device"], summary["precision"]) == ("cpu", precision)


def test_checkpoint_round_trip(data, tmp_path):
    run = tmp_path / "run"
    pretrain(data, run, _cfg("barlow", "train.epochs=1"), progress=False)
    enc, _ = load_encoder(run, which="last")
    saved = load_model_tensors(run / "checkpoints/last/model.safetensors")
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(v, saved[f"encoder.{k}"])


@pytest.mark.parametrize("objective", ["barlow+next", "barlow+mask"])
def test_kill_and_resume_reproduces_uninterrupted_run(data, tmp_path, monkeypatch, objective):
    cfg = _cfg(objective, "train.epochs=2", "train.checkpoint_every=2")
    full = tmp_path / "full"
    pretrain(data, full, cfg, progress=False)

    killed = tmp_path / "killed"

    def kill(step: int) -> None:
        if step == 7:  # after the checkpoint at step 6, mid-epoch 2
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_after_step", kill)
    with pytest.raises(KeyboardInterrupt):
        pretrain(data, killed, cfg, progress=False)
    monkeypatch.setattr(train_mod, "_after_step", lambda step: None)
    pretrain(data, killed, None, resume=True, progress=False)

    a = load_model_tensors(full / "checkpoints/last/model.safetensors")
    b = load_model_tensors(killed / "checkpoints/last/model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert _losses(full) == _losses(killed)


def test_nan_loss_stops_with_clear_message(data, tmp_path, monkeypatch):
    from seqtwins.objectives.barlow import BarlowObjective

    real = BarlowObjective.forward

    def poisoned(self, batch):
        loss, logs = real(self, batch)
        return loss * float("nan"), logs

    monkeypatch.setattr(BarlowObjective, "forward", poisoned)
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", str(data), "--out", str(run), "--no-progress",
                                 *sum([["--set", s] for s in TINY], [])])  # fmt: skip
    assert result.exit_code == 2
    assert "loss became nan" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "select_from, best_epoch, epochs_done", [(0.0, 0, 3), (0.25, 2, 5), (0.5, 4, 7)]
)
def test_selection_starts_after_select_from(data, tmp_path, monkeypatch, select_from,
                                            best_epoch, epochs_done):  # fmt: skip
    # a noisy proxy that peaks at epoch 0 then stays flat: without select_from, epoch 0 is
    # "best" and patience stops the run two epochs later
    real = train_mod.validate

    def scripted(t, epoch):  # type: ignore[no-untyped-def]
        record = real(t, epoch)
        record["score"] = 2.0 if epoch == 0 else 1.0
        return record

    monkeypatch.setattr(train_mod, "validate", scripted)
    cfg = _cfg("barlow", "train.epochs=8", "train.patience=2", f"train.select_from={select_from}")
    summary = pretrain(data, tmp_path / "run", cfg, progress=False)
    assert (summary.best_epoch, summary.epochs_done) == (best_epoch, epochs_done)
    assert summary.stopped_early and summary.best_score == (2.0 if best_epoch == 0 else 1.0)
    assert (tmp_path / "run" / "checkpoints" / "best" / "model.safetensors").is_file()


def test_select_from_must_be_a_fraction():
    with pytest.raises(SeqtwinsError, match=r"train.select_from=1.0 must be in \[0, 1\)"):
        _cfg("barlow", "train.select_from=1.0")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--objective", "triplet"], "objective='triplet' is unknown"),
        (
            ["--set", "encoder.dim=70", "--set", "encoder.heads=4"],
            "encoder.dim=70 must be divisible by encoder.heads=4",
        ),
        (["--set", "train.epochs=abc"], "train.epochs='abc' must be an integer"),
        (["--set", "train.epoch=1"], "unknown setting 'train.epoch'"),
    ],
)
def test_bad_settings_one_line_exit_2(data, tmp_path, args, message):
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", str(data), "--out", str(run), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not run.exists()


def test_bad_dataset_dirs(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", str(tmp_path / "missing"), "--out", str(run)])
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "meta.json").write_text("{not json")
    result = runner.invoke(app, ["pretrain", str(tmp_path / "junk"), "--out", str(run)])
    assert result.exit_code == 2 and "corrupt" in result.output
    assert not run.exists()


def test_batch_larger_than_split_is_clipped(data, tmp_path):
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="clipped"):
        s = pretrain(data, run, _cfg("barlow", "train.batch_size=5000", "train.epochs=1"),
                     progress=False)  # fmt: skip
    assert s.steps == 1


def test_config_preset_and_empty_training_split(data, tmp_path):
    from pathlib import Path

    import polars as pl

    from seqtwins.data.dataset import SequenceDataset, Sequences, write_dataset

    preset = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "small-cpu.yaml"
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", str(data), "--config", str(preset), "--out",
                                 str(run), "--set", "train.epochs=1", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "dim: 32" in (run / "config.yaml").read_text()

    ds = SequenceDataset.open(data)
    empty = write_dataset(
        tmp_path / "nosplit", sequences=Sequences.from_lists([[1, 2, 3, 4]] * 3, [3] * 3),
        items=ds.items.select("item_id").head(4),
        users=pl.DataFrame({"user_id": ["a", "b", "c"], "split": ["valid", "test", "test"]}),
        source="test",
    )  # fmt: skip
    result = runner.invoke(app, ["pretrain", str(empty), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 2 and "fewer than 2 usable training users" in result.output


def test_domain_aware_augmentations_on_synth_data(tmp_path):
    """Same-category draws and session crops end to end: the batches PretrainBatches builds
    from a dataset with categories and timestamps keep those invariants, and a barlow+mask
    run with them trains."""
    from seqtwins.augment import TwoViewTransform, session_bounds
    from seqtwins.data.batching import PretrainBatches, batch_plan, histories, history_times
    from seqtwins.data.dataset import SequenceDataset
    from seqtwins.data.synth import SynthConfig, synthesize

    data = synthesize(tmp_path / "syn", SynthConfig(users=300, items=60, seed=2))
    ds = SequenceDataset.open(data)
    gap = 3 * 86400  # synth gaps have a 12 h median: several sessions per user
    cfg = _cfg("barlow+mask", "augment.ops=[crop]", "augment.session_crop=true",
               f"augment.session_gap={gap}", "augment.crop_keep=0.5", "augment.short_len=0",
               "encoder.max_len=1000", "augment.max_len=1000")  # fmt: skip
    train = ds.split_users("train")
    t = TwoViewTransform.for_dataset(cfg.augment, ds, train)
    assert t.uses_times
    plan = batch_plan(train, ds.sequences.history_lengths(), 32, 0, 0, bucket=False)
    batches = PretrainBatches(ds.sequences, plan, "barlow", 1000, 0, 0, t)
    out = batches[0]
    hists, times = histories(ds.sequences, plan[0]), history_times(ds.sequences, plan[0])
    cut = 0
    for h, ts, view in zip(hists, times, out["view_a"].numpy(), strict=True):
        v = view[view > 0]
        bounds = session_bounds(ts, gap)
        starts = [i for i in range(len(h) - len(v) + 1) if (h[i : i + len(v)] == v).all()]
        assert starts  # a contiguous piece of the history
        if len(bounds) > 2 and np.diff(bounds).min() <= max(1, int(0.5 * len(h))):
            # whole sessions (items repeat: some occurrence starts and ends at boundaries)
            assert any(i in bounds and i + len(v) in bounds for i in starts)
            cut += 1
    assert cut > 0

    codes = ds.item_categories()[0]
    same = _cfg("barlow+mask", "augment.ops=[substitute]", "augment.substitute_rate=1.0",
                "augment.same_category=true", "augment.short_len=0")  # fmt: skip
    t = TwoViewTransform.for_dataset(same.augment, ds, train)
    rng = np.random.default_rng(0)
    for h in histories(ds.sequences, train[:50], 12):
        a, _ = t(h, rng)
        assert (codes[a] == codes[h]).all()
    run = tmp_path / "run"
    both = _cfg("barlow+mask", "augment.same_category=true", "augment.session_crop=true",
                "train.epochs=1")  # fmt: skip
    pretrain(data, run, both, progress=False)
    assert all(np.isfinite(_losses(run)))


@pytest.mark.parametrize(
    "epochs, patience, min_steps, users, expected",
    [
        (20, 4, 0, 2099, (20, 4)),  # off
        (20, 4, 500, 2099, (63, 13)),  # ML-1M: 8 steps per epoch -> 500 steps
        (20, 4, 500, 17891, (20, 4)),  # Beauty: 69 steps per epoch, already 1,380 steps
        (20, 0, 500, 2099, (63, 0)),  # patience 0 still never stops
        (3, 2, 10, 100, (10, 7)),  # fewer users than a batch: one (clipped) step per epoch
    ],
)
def test_min_steps_raises_epochs_and_patience(epochs, patience, min_steps, users, expected):
    tc = build(PretrainConfig, {}, overrides=[f"train.epochs={epochs}", f"train.min_steps="
                                              f"{min_steps}", f"train.patience={patience}",
                                              "train.batch_size=256"]).train  # fmt: skip
    assert train_mod.budget(tc, users) == expected


def test_min_steps_trains_that_many_steps(data, tmp_path, monkeypatch, capsys):
    # a flat proxy: patience 1 of 2 epochs stops a run after its second epoch; min_steps
    # raises the epochs and the patience alike, and the LR schedule spans all the steps
    real = train_mod.validate

    def flat(t, epoch):  # type: ignore[no-untyped-def]
        return real(t, epoch) | {"score": 1.0}

    monkeypatch.setattr(train_mod, "validate", flat)
    per_epoch = len(train_mod.training_users(SequenceDataset.open(data), "barlow")) // 32
    cfg = _cfg("barlow", "train.epochs=2", "train.patience=1", "train.select_from=0",
               f"train.min_steps={6 * per_epoch}")  # fmt: skip
    summary = pretrain(data, tmp_path / "run", cfg, progress=True)
    # the raised budget is said once, before training
    notes = [x for x in capsys.readouterr().err.splitlines() if "min_steps" in x]
    assert len(notes) == 1 and notes[0].startswith(
        f"train.min_steps={6 * per_epoch}: 6 epochs, patience 3 on "
    )
    # 6 epochs planned, patience 3: best at epoch 0, stopped after epochs 1-3 did not improve
    assert (summary.epochs_done, summary.best_epoch, summary.stopped_early) == (4, 0, True)
    assert summary.steps == 4 * per_epoch
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    last_lr = [x["lr"] for x in map(json.loads, lines) if "lr" in x][-1]
    assert last_lr > 0.1 * 0.003  # the cosine over 6 epochs, not yet at its floor
