"""The run folder (seqtwins.run.Run): layout, ownership, lock, lineage, loading, embedding;
and what training does with it (NaN/Inf, resume before the first checkpoint, progress)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import seqtwins.train as train_mod
from seqtwins.checkpoint import TrainState, load_model_tensors
from seqtwins.cli import app
from seqtwins.config import PretrainConfig, build
from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.proxy import headline_proxy
from seqtwins.experiment import pretrain_run
from seqtwins.files import MARKER, marker_kind
from seqtwins.run import Run
from seqtwins.train import Progress, pretrain
from tests.helpers import tiny_dataset
from tests.test_train import TINY

runner = CliRunner()


def _cfg(*extra: str) -> PretrainConfig:
    return build(PretrainConfig, {"objective": "barlow"}, overrides=[*TINY, *extra])


def _args(data: Path, run: Path, *extra: str) -> list[str]:
    args = ["pretrain", str(data), "--out", str(run), "--no-progress"]
    for s in [*TINY, *extra]:
        args += ["--set", s]
    return args


def _one_line_error(result, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in " ".join(result.output.split()), result.output


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("data") / "ds")


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    pretrain(data, run, _cfg("train.epochs=2"), progress=False, proxy=headline_proxy)
    return run


# --- layout, lineage, loading ----------------------------------------------------------------


def test_a_run_is_marked_and_records_its_lineage(data, trained):
    run = Run.open(trained)
    assert marker_kind(trained) == "run"
    assert not (trained / ".lock").exists()  # only while training
    ds = SequenceDataset.open(data)
    assert run.lineage.content_hash == ds.content_hash
    assert run.lineage.vocab_size == ds.vocab_size and run.lineage.seqtwins_version
    assert run.config.objective == "barlow"
    assert run.checkpoint("best") == trained / "checkpoints" / "best"
    assert run.state("last").epoch == 2 and run.finished
    with pytest.raises(SeqtwinsError, match="must be one of best, last"):
        run.checkpoint("middle")


def test_encoder_is_loaded_strictly_and_matches_the_checkpoint(trained):
    enc = Run.open(trained).encoder("last")
    saved = load_model_tensors(trained / "checkpoints/last/model.safetensors")
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(v, saved[f"encoder.{k}"], rtol=0, atol=0)
    assert not enc.training


def test_embed_python_api_equals_the_cli(data, trained, tmp_path):
    run = Run.open(trained)
    seqs = [["it1", "it5", "it9"], ["it2"], ["it3", "it7"]]
    emb = run.embed(seqs)  # the recorded dataset path
    assert emb.shape == (3, 16) and emb.dtype == np.float32 and np.isfinite(emb).all()
    file = tmp_path / "s.jsonl"
    file.write_text("".join(json.dumps({"id": i, "items": s}) + "\n" for i, s in enumerate(seqs)))
    out = tmp_path / "e.parquet"
    result = runner.invoke(app, ["embed", str(trained), "--data", str(data), "--out", str(out),
                                 "--sequences", str(file)])  # fmt: skip
    assert result.exit_code == 0, result.output
    cli = np.stack(pl.read_parquet(out)["embedding"].to_numpy())
    np.testing.assert_allclose(emb, cli, rtol=1e-5, atol=1e-6)
    with pytest.warns(UserWarning, match="dropped 1 unknown item ids"):
        again = run.embed([["it1", "nope", "it5", "it9"]])
    np.testing.assert_allclose(again[0], emb[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(SeqtwinsError, match="sequence 1 has no item known"):
        run.embed([["it1"], ["nope"]])
    with pytest.raises(SeqtwinsError, match="list of lists"):
        run.embed(["it1", "it2"])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "config.yaml").unlink(), "not a seqtwins run (no config.yaml)"),
        (lambda r: (r / "config.yaml").write_text("train: [1, 2"), "not valid YAML"),
        (lambda r: (r / "config.yaml").write_bytes(b"\xff\xfe\x00"), "config.yaml"),
        (lambda r: (r / "dataset.json").unlink(), "has no dataset.json"),
        (lambda r: (r / "dataset.json").write_text("{junk"), "dataset.json is not valid JSON"),
        (lambda r: (r / "dataset.json").write_text("{}"), "lacks 'path'"),
        (lambda r: (r / "checkpoints/best/model.safetensors").unlink(), "no best checkpoint"),
    ],
)
def test_damaged_runs_fail_in_one_line(data, trained, tmp_path, damage, message):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    damage(run)
    out = tmp_path / "e.parquet"
    result = runner.invoke(app, ["embed", str(run), "--data", str(data), "--out", str(out)])
    _one_line_error(result, message)
    assert not out.exists()


@pytest.mark.parametrize(
    "state, message",
    [
        ("{junk", "not valid JSON"),
        ('{"epoch": 1}', "missing bad_epochs, batch"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_junk_state_json_is_one_line_on_resume(data, trained, tmp_path, state, message):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "checkpoints/last/state.json").write_text(state)
    result = runner.invoke(app, ["pretrain", str(data), "--out", str(run), "--resume",
                                 "--no-progress"])  # fmt: skip
    _one_line_error(result, "state.json", message)


def test_train_state_round_trips_and_checks_types(tmp_path):
    state = TrainState(epoch=2, step=10, best_score=0.5, scheduler={"last_epoch": 10})
    assert TrainState.from_json(json.loads(json.dumps(state.to_json())), "x") == state
    bad = state.to_json() | {"step": "ten"}
    with pytest.raises(SeqtwinsError, match="step='ten' is not a count"):
        TrainState.from_json(bad, "x")
    with pytest.raises(SeqtwinsError, match="best_score=nan is not finite"):
        TrainState.from_json(state.to_json() | {"best_score": float("nan")}, "x")


# --- ownership and the lock --------------------------------------------------------------------


def test_overwrite_refuses_a_folder_seqtwins_did_not_write(data, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    result = runner.invoke(app, [*_args(data, mine, "train.epochs=1"), "--overwrite"])
    _one_line_error(result, "seqtwins did not write")
    assert (mine / "notes.txt").read_text() == "precious" and len(list(mine.iterdir())) == 1
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = runner.invoke(app, _args(data, afile, "train.epochs=1"))
    _one_line_error(result, "is a file")
    assert afile.read_text() == "x"


def test_overwrite_replaces_a_seqtwins_run_and_a_legacy_one(data, trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / MARKER).unlink()  # a run written before markers: config.yaml + dataset.json
    (run / "user-notes.txt").write_text("kept")
    result = runner.invoke(app, [*_args(data, run, "train.epochs=1"), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert marker_kind(run) == "run" and (run / "user-notes.txt").read_text() == "kept"
    assert Run.open(run).state("last").epoch == 1  # the old checkpoints are gone
    result = runner.invoke(app, _args(data, run, "train.epochs=1"))  # no --overwrite
    _one_line_error(result, "exists and is not empty")


def test_a_second_pretrain_into_a_locked_run_fails_in_one_line(data, trained, tmp_path):
    with Run(trained).lock():
        result = runner.invoke(app, [*_args(data, trained), "--overwrite"])
        _one_line_error(result, f"run {trained} is in use by another seqtwins process")
        result = runner.invoke(app, ["pretrain", str(data), "--out", str(trained), "--resume",
                                     "--no-progress"])  # fmt: skip
        _one_line_error(result, "is in use by another seqtwins process")
    assert Run.open(trained).finished  # untouched
    new = tmp_path / "new"
    with Run(new).lock():
        result = runner.invoke(app, _args(data, new))
        _one_line_error(result, "in use")


def test_failed_setup_leaves_no_folder(tmp_path, data):
    run = tmp_path / "run"
    result = runner.invoke(app, _args(data, run, "encoder.use_categories=true",
                                      "train.batch_size=100000"))  # fmt: skip
    assert result.exit_code == 0, result.output  # clipped batch: fine
    nocat = tmp_path / "nocat"
    ds = SequenceDataset.open(data)
    from seqtwins.data.dataset import write_dataset

    write_dataset(nocat, sequences=ds.sequences, items=ds.items.select("item_id"),
                  users=ds.users.select("user_id", "split"), source="test")  # fmt: skip
    bad = tmp_path / "bad"
    result = runner.invoke(app, _args(nocat, bad, "encoder.use_categories=true"))
    _one_line_error(result, "has no item categories")
    assert not bad.exists()


# --- NaN / Inf -----------------------------------------------------------------------------


def test_divergent_lr_stops_and_never_saves_a_non_finite_model(data, tmp_path):
    run = tmp_path / "run"  # (train.lr=.inf itself is refused by the config)
    result = runner.invoke(app, _args(data, run, "train.lr=1e30", "train.warmup_frac=0"))
    _one_line_error(result, "became", "no checkpoint was written")
    assert not Run(run).has_checkpoint("last") and not Run(run).has_checkpoint("best")


def test_non_finite_weights_stop_training(data, tmp_path, monkeypatch):
    real = torch.optim.AdamW.step

    def poisoned(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(self, *args, **kwargs)
        self.param_groups[0]["params"][0].data.fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    run = tmp_path / "run"
    result = runner.invoke(app, _args(data, run))
    _one_line_error(result, "weights became NaN or infinite", "no checkpoint was written")
    assert not Run(run).has_checkpoint("last") and not Run(run).has_checkpoint("best")


def test_divergence_after_a_checkpoint_names_it(data, tmp_path, monkeypatch):
    from seqtwins.objectives.barlow import BarlowObjective

    real = BarlowObjective.forward
    calls = {"n": 0}

    def poisoned(self, batch):  # type: ignore[no-untyped-def]
        loss, logs = real(self, batch)
        calls["n"] += 1
        # finite through the first epoch (5 steps, 1 validation batch), then NaN
        return (loss * float("nan") if calls["n"] > 6 else loss), logs

    monkeypatch.setattr(BarlowObjective, "forward", poisoned)
    run = tmp_path / "run"
    with pytest.raises(SeqtwinsError) as e:
        pretrain(data, run, _cfg(), progress=False)
    assert "loss became nan" in str(e.value)
    assert "at epoch 1 step 6" in str(e.value)
    assert f"the last finite checkpoint is {run / 'checkpoints/last'} (step 5)" in str(e.value)
    for which in ("best", "last"):
        tensors = load_model_tensors(run / f"checkpoints/{which}/model.safetensors")
        assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


def test_a_run_with_non_finite_weights_is_refused(data, trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    file = run / "checkpoints/best/model.safetensors"
    tensors = load_model_tensors(file)
    key = next(k for k in tensors if k.startswith("encoder.item_emb"))
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(file))
    out = tmp_path / "e.parquet"
    result = runner.invoke(app, ["embed", str(run), "--data", str(data), "--out", str(out)])
    _one_line_error(result, "NaN or infinite weights")
    assert not out.exists()
    result = runner.invoke(app, ["evaluate", str(run), "--data", str(data), "--out",
                                 str(tmp_path / "eval.json"), "--no-progress"])  # fmt: skip
    _one_line_error(result, "NaN or infinite weights")


# --- killed before the first checkpoint ------------------------------------------------------


def _kill_at(step: int):  # type: ignore[no-untyped-def]
    def kill(s: int) -> None:
        if s == step:
            raise KeyboardInterrupt

    return kill


def test_resume_before_the_first_checkpoint_starts_from_scratch(data, trained, tmp_path,
                                                                monkeypatch):  # fmt: skip
    run = tmp_path / "run"
    monkeypatch.setattr(train_mod, "_after_step", _kill_at(2))
    with pytest.raises(KeyboardInterrupt):
        pretrain(data, run, _cfg("train.epochs=2"), progress=False, proxy=headline_proxy)
    monkeypatch.setattr(train_mod, "_after_step", lambda step: None)
    assert (run / "config.yaml").is_file() and not Run(run).has_checkpoint("last")
    result = runner.invoke(app, ["pretrain", str(data), "--out", str(run), "--resume",
                                 "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "no checkpoint yet" in result.output and "from scratch" in result.output
    a = load_model_tensors(trained / "checkpoints/last/model.safetensors")
    b = load_model_tensors(run / "checkpoints/last/model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)


def test_experiment_retrains_a_run_killed_before_its_first_checkpoint(data, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    run = tmp_path / "run"
    cfg = _cfg("train.epochs=1")
    monkeypatch.setattr(train_mod, "_after_step", _kill_at(1))
    with pytest.raises(KeyboardInterrupt):
        pretrain(data, run, cfg, progress=False)
    monkeypatch.setattr(train_mod, "_after_step", lambda step: None)
    said: list[str] = []
    pretrain_run(cfg, data, run, progress=False, say=said.append)
    assert Run.open(run).finished and said == [f"pretrain barlow: training -> {run}"]
    pretrain_run(cfg, data, run, progress=False, say=said.append)
    assert said[-1] == f"pretrain barlow: done already ({run})"


# --- progress --------------------------------------------------------------------------------


def test_progress_prints_plain_lines_on_a_non_terminal():
    stream = io.StringIO()
    bar = Progress(True, total=20, done=0, epochs=2, stream=stream, interval=0.0)
    assert bar.bar is None
    for _ in range(10):
        bar.update(12.345, 64, epoch=0)
    bar.epoch_done({"loss": 11.5, "proxy": 0.41})
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11
    assert re.fullmatch(
        r"pretrain epoch 1/2 step 1/20 loss 12\.35 [\d,]+ users/s ETA \d+s", lines[0]
    ), lines[0]
    assert re.fullmatch(
        r"pretrain epoch 1/2 step 10/20 loss 12\.35 [\d,]+ users/s valid loss 11\.5000 "
        r"proxy 0\.410 ETA \d+s",
        lines[-1],
    ), lines[-1]
    assert all("…" not in line and "━" not in line for line in lines)


def test_pretrain_progress_in_a_pipe_is_plain_lines(data, tmp_path, capsys):
    pretrain(data, tmp_path / "run", _cfg("train.epochs=2"), progress=True)
    err = capsys.readouterr().err
    epoch_lines = [x for x in err.splitlines() if x.startswith("pretrain epoch")]
    assert len(epoch_lines) >= 2 and "valid loss" in epoch_lines[-1]
    assert "step 10/10" in epoch_lines[-1] and "━" not in err


def test_a_run_stopped_before_its_first_checkpoint_restarts_without_overwrite(
    data, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    monkeypatch.setattr(train_mod, "_after_step", _kill_at(1))
    with pytest.raises(KeyboardInterrupt):
        pretrain(data, run, _cfg("train.epochs=1"), progress=False)
    monkeypatch.setattr(train_mod, "_after_step", lambda step: None)
    result = runner.invoke(app, _args(data, run, "train.epochs=1", "train.lr=0.001"))
    assert result.exit_code == 0, result.output
    assert Run.open(run).config.train.lr == 0.001 and Run.open(run).finished
    result = runner.invoke(app, _args(data, run, "train.epochs=1"))  # now it has checkpoints
    _one_line_error(result, "exists and is not empty")


def test_out_inside_a_file_is_one_line(data, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = runner.invoke(app, _args(data, afile / "run"))
    _one_line_error(result, "cannot write the run folder", "choose another --out")
    assert afile.read_text() == "x"


def test_resume_cleans_the_temp_folder_of_a_killed_checkpoint_write(data, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    import subprocess

    run = tmp_path / "run"
    monkeypatch.setattr(train_mod, "_after_step", _kill_at(7))
    with pytest.raises(KeyboardInterrupt):
        pretrain(data, run, _cfg("train.epochs=2"), progress=False)
    monkeypatch.setattr(train_mod, "_after_step", lambda step: None)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = run / "checkpoints" / f".last.tmp-{dead.pid}-x"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    pretrain(data, run, None, resume=True, progress=False)
    assert not stale.exists() and Run.open(run).finished


def test_no_verify_skips_the_content_hash_check(data, trained, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(data, ds)
    items = np.load(ds / "items.npy")
    items[0] = items[0] % 40 + 1  # another valid item: only the hash can tell
    np.save(ds / "items.npy", items)
    run = tmp_path / "run"
    result = runner.invoke(app, _args(ds, run, "train.epochs=1"))
    _one_line_error(result, "content hash mismatch", "--no-verify")
    result = runner.invoke(app, [*_args(ds, run, "train.epochs=1"), "--no-verify"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "e.parquet"
    args = ["embed", str(run), "--data", str(ds), "--out", str(out)]
    _one_line_error(runner.invoke(app, args), "content hash mismatch")
    assert runner.invoke(app, [*args, "--no-verify"]).exit_code == 0


def test_a_non_finite_validation_score_stops_training(data, tmp_path):
    def nan_proxy(ds, users, seed):  # type: ignore[no-untyped-def]
        return lambda emb: float("nan")

    run = tmp_path / "run"
    with pytest.raises(SeqtwinsError, match="validation score became nan at epoch 0; no check"):
        pretrain(data, run, _cfg(), progress=False, proxy=nan_proxy)
    assert not Run(run).has_checkpoint("best") and not Run(run).has_checkpoint("last")


def test_kill_9_then_resume_is_byte_identical(data, tmp_path):
    """A real SIGKILL mid-run (the lock dies with the process), then --resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    extra = ["train.epochs=12", "train.checkpoint_every=3", "train.threads=1", "train.patience=0"]
    full = tmp_path / "full"
    pretrain(data, full, _cfg(*extra), progress=False, proxy=headline_proxy)
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "seqtwins", *_args(data, killed, *extra)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not Run(killed).has_checkpoint("last") and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not Run(killed).finished, "the run ended before it was killed"
    result = runner.invoke(app, ["pretrain", str(data), "--out", str(killed), "--resume",
                                 "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    for which in ("last", "best"):
        a = load_model_tensors(full / f"checkpoints/{which}/model.safetensors")
        b = load_model_tensors(killed / f"checkpoints/{which}/model.safetensors")
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
    lines = [json.loads(x) for x in Run(killed).metrics_file.read_text().splitlines()]
    ref = [json.loads(x) for x in Run(full).metrics_file.read_text().splitlines()]
    assert [x.get("loss") for x in lines] == [x.get("loss") for x in ref]


def test_create_writes_marker_lineage_and_config(data, tmp_path):
    ds = SequenceDataset.open(data)
    run = Run.create(tmp_path / "r", _cfg(), ds)
    assert marker_kind(run.path) == "run" and run.lineage.train_users == 168
    again = Run.open(run.path)
    assert again.config == run.config and again.lineage == run.lineage
    assert not again.finished and not again.has_checkpoint("last")
    Run.check_new(run.path)  # no checkpoint yet: may start again
    (run.path / "checkpoints/last").mkdir(parents=True)
    (run.path / "checkpoints/last/state.json").write_text("{}")
    with pytest.raises(SeqtwinsError, match="exists and is not empty"):
        Run.check_new(run.path)
    Run.check_new(run.path, overwrite=True)


def test_out_of_range_item_ids_are_one_line_even_without_verify(data, trained, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(data, ds)
    items = np.load(ds / "items.npy")
    items[3] = 999  # no such item
    np.save(ds / "items.npy", items)
    result = runner.invoke(app, [*_args(ds, tmp_path / "run"), "--no-verify"])
    _one_line_error(result, "items.npy holds item index 999, outside 1..40")
    assert not (tmp_path / "run").exists()
    out = tmp_path / "e.parquet"
    result = runner.invoke(app, ["embed", str(trained), "--data", str(ds), "--out", str(out),
                                 "--no-verify"])  # fmt: skip
    _one_line_error(result, "items.npy holds item index 999")


@pytest.mark.parametrize("command", ["run", "tune"])
def test_run_and_tune_out_that_is_a_file(tmp_path, command):
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = runner.invoke(app, [command, "--out", str(afile), "--no-progress"])
    _one_line_error(result, "is a file; give a folder")
    assert afile.read_text() == "x"


def test_pretrain_leaves_the_thread_count_as_it_found_it(data, tmp_path):
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    pretrain(data, tmp_path / "run", _cfg(f"train.threads={wanted}"), progress=False)
    assert torch.get_num_threads() == before


def test_a_lookalike_folder_is_not_a_run(data, tmp_path):
    """config.yaml and dataset.json of another tool do not make a folder a seqtwins run."""
    out = tmp_path / "project"
    out.mkdir()
    (out / "config.yaml").write_text("name: my-project\nlr: 3\n")
    (out / "dataset.json").write_text('{"source": "survey 2019"}\n')
    result = runner.invoke(app, [*_args(data, out), "--overwrite"])
    _one_line_error(result, "seqtwins did not write")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "dataset.json"]


def test_resume_without_last_but_with_best_keeps_the_run(trained, data, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    shutil.rmtree(run / "checkpoints" / "last")
    before = (run / "metrics.jsonl").read_bytes()
    result = runner.invoke(app, ["pretrain", str(data), "--out", str(run), "--resume",
                                 "--no-progress"])  # fmt: skip
    _one_line_error(result, "checkpoints/last is missing")
    assert Run(run).has_checkpoint("best")
    assert (run / "metrics.jsonl").read_bytes() == before
