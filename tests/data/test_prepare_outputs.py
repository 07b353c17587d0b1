"""What ``prepare`` and ``synth`` may write, replace and leave behind.

Datasets are owned (a marker file): ``--overwrite`` replaces a seqtwins dataset only, never
a foreign folder or the input; a killed run's temporary folders are removed by the next
run; an unwritable ``--out`` is one line; settings come from ``--config`` / ``--set``; and
``prepare()`` leaves the process as it found it.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.data import memory
from seqtwins.data import prepare as prep
from seqtwins.data.dataset import SequenceDataset
from seqtwins.data.options import PrepareOptions
from seqtwins.data.prepare import prepare
from seqtwins.data.synth import SynthConfig, synthesize
from seqtwins.errors import SeqtwinsError
from seqtwins.files import MARKER, file_lock, marker_kind
from tests.data.test_prepare_cli import GOOD

runner = CliRunner()
SMALL_SYNTH = SynthConfig(users=40, items=30, categories=4, clusters=4)


def _log(tmp_path: Path) -> Path:
    f = tmp_path / "log.csv"
    f.write_text(GOOD)
    return f


def _one_line_exit_2(r) -> str:  # type: ignore[no-untyped-def]
    text = r.output.strip()
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(text.splitlines()) == 1, text
    return text


# --- the process is left as it was found -----------------------------------------------------


def test_prepare_leaves_gc_enabled(tmp_path, monkeypatch):
    def not_here() -> None:
        raise AssertionError("the library tuned malloc for the whole process")

    assert gc.isenabled()
    with monkeypatch.context() as m:
        m.setattr(memory, "_tune_malloc", not_here)
        prepare(_log(tmp_path), tmp_path / "ds")
    assert gc.isenabled()
    with memory.tuned_process():  # the entry points' helper: off inside, restored after
        assert not gc.isenabled()
    assert gc.isenabled()
    r = runner.invoke(app, ["prepare", str(_log(tmp_path)), "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    assert gc.isenabled()


# --- ownership ---------------------------------------------------------------------------------


def test_dataset_has_a_marker_outside_the_hash(tmp_path):
    prepare(_log(tmp_path), tmp_path / "a")
    assert marker_kind(tmp_path / "a") == "dataset"
    synthesize(tmp_path / "s", SMALL_SYNTH)
    assert marker_kind(tmp_path / "s") == "dataset"
    (tmp_path / "a" / MARKER).unlink()
    SequenceDataset.open(tmp_path / "a")  # the hash does not cover the marker


def test_overwrite_never_deletes_the_input(tmp_path):
    src = _log(tmp_path)
    r = runner.invoke(app, ["prepare", str(src), "--out", str(src), "--overwrite"])
    assert "would overwrite the input" in _one_line_exit_2(r)
    assert src.read_text() == GOOD
    folder = tmp_path / "ml"  # a folder input, --out the folder holding it
    folder.mkdir()
    (folder / "log.csv").write_text(GOOD)
    for out in (folder, tmp_path):
        r = runner.invoke(app, ["prepare", str(folder / "log.csv"), "--out", str(out),
                                "--overwrite"])  # fmt: skip
        assert "would overwrite the input" in _one_line_exit_2(r)
    assert (folder / "log.csv").read_text() == GOOD


def test_overwrite_never_deletes_a_side_table_or_the_input_inside_out(tmp_path):
    src = _log(tmp_path)
    prepare(src, tmp_path / "ds")
    items = tmp_path / "ds" / "items.csv"
    items.write_text("item_id,categories\ni1,a\n")
    inner = tmp_path / "ds" / "log.csv"
    inner.write_text(GOOD)
    for args in (["--items", str(items)], ["--users", str(items)]):
        r = runner.invoke(app, ["prepare", str(src), *args, "--out", str(tmp_path / "ds"),
                                "--overwrite"])  # fmt: skip
        assert "would overwrite the --" in _one_line_exit_2(r) and "items.csv" in r.output
    r = runner.invoke(app, ["prepare", str(inner), "--out", str(tmp_path / "ds"), "--overwrite"])
    assert "would overwrite the input" in _one_line_exit_2(r)
    assert items.is_file() and inner.read_text() == GOOD


def test_a_control_character_in_a_path_keeps_the_message_on_one_line(tmp_path):
    out = tmp_path / "a\nb"
    out.mkdir()
    (out / "x").write_text("foreign")
    for extra in ([], ["--overwrite"]):
        r = runner.invoke(app, ["prepare", str(_log(tmp_path)), "--out", str(out), *extra])
        assert "a\\nb" in _one_line_exit_2(r)
    r = runner.invoke(app, ["inspect", str(out)])
    assert "a\\nb" in _one_line_exit_2(r)


def test_overwrite_never_replaces_a_foreign_folder_or_file(tmp_path):
    src = _log(tmp_path)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_text("meow")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    for out in (foreign, a_file):
        r = runner.invoke(app, ["prepare", str(src), "--out", str(out), "--overwrite"])
        assert "left untouched" in _one_line_exit_2(r)
        r = runner.invoke(app, ["synth", "--out", str(out), "--overwrite", "--users", "40"])
        assert "left untouched" in _one_line_exit_2(r)
    assert (foreign / "cat.jpg").read_text() == "meow" and a_file.read_text() == "keep"
    # a dataset (even one written before markers) is ours to replace
    prepare(src, tmp_path / "ds")
    (tmp_path / "ds" / MARKER).unlink()
    r = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "ds"), "--overwrite",
                            "--holdout", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ds" / "meta.json").read_text())["params"]["holdout"] == 2
    synthesize(tmp_path / "ds", SMALL_SYNTH, overwrite=True)
    assert marker_kind(tmp_path / "ds") == "dataset"


def test_out_is_never_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    src = _log(tmp_path / "in")
    ds = tmp_path / "work" / "ds"
    prepare(src, ds)
    monkeypatch.chdir(ds)  # even a dataset: replacing the folder one stands in fails
    for args in (["prepare", str(src)], ["synth", "--users", "40"]):
        for out in (".", "..", str(ds)):
            r = runner.invoke(app, [*args, "--out", out, "--overwrite"])
            assert "is the current folder or holds it" in _one_line_exit_2(r)
    SequenceDataset.open(ds)


# --- stale temporary folders -------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


@pytest.mark.parametrize("tag", ["tmp", "work", "old"])
def test_a_killed_runs_temp_folders_are_cleaned(tmp_path, tag):
    pid = _dead_pid()
    stale = tmp_path / f".ds.{tag}-{pid}-abc123"
    (stale / "records").mkdir(parents=True)
    (stale / "records" / "bucket-00000.rec").write_bytes(b"\0" * 4096)
    alive = tmp_path / f".ds.{tag}-{os.getpid()}-live"  # a running writer: kept
    alive.mkdir()
    work = tmp_path / "work"
    (work / f".ds.work-{pid}-xyz").mkdir(parents=True)
    prepare(_log(tmp_path), tmp_path / "ds", PrepareOptions(work_dir=work))
    assert not stale.exists() and alive.exists()
    assert list(work.iterdir()) == []
    stale.mkdir()
    synthesize(tmp_path / "ds", SMALL_SYNTH, overwrite=True)
    assert not stale.exists()


# --- unwritable outputs ------------------------------------------------------------------------


def test_out_under_a_file_is_one_line(tmp_path, monkeypatch):
    src = _log(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    r = runner.invoke(app, ["prepare", str(src), "--out", str(blocker / "ds")])
    assert "is a file, not a folder" in _one_line_exit_2(r)
    r = runner.invoke(app, ["synth", "--out", str(blocker / "ds"), "--users", "40"])
    assert "is a file, not a folder" in _one_line_exit_2(r)
    monkeypatch.setattr(prep, "BYTES_PER_ROW", 10**9)  # out of core: the work folder
    with pytest.raises(SeqtwinsError, match="cannot write --work-dir"):
        prepare(src, tmp_path / "ds", PrepareOptions(memory_budget=10**9, work_dir=blocker))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_one_line(tmp_path):
    src = _log(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = runner.invoke(app, ["prepare", str(src), "--out", str(ro / "ds")])
        assert "is not writable" in _one_line_exit_2(r)
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


def test_write_failure_leaves_nothing(tmp_path, monkeypatch):
    """An OS error in the middle of writing (a full disk): one line, no half-written out."""
    import seqtwins.data.dataset as dataset

    def full(*a, **k):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device", "items.parquet")

    monkeypatch.setattr(dataset, "_write_tables", full)
    with pytest.raises(SeqtwinsError, match="cannot write --out .*No space left on device"):
        prepare(_log(tmp_path), tmp_path / "ds")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


# --- settings: --config and --set like pretrain ------------------------------------------------


def test_config_and_set(tmp_path):
    src = _log(tmp_path)
    cfg = tmp_path / "prep.yaml"
    cfg.write_text("holdout: 2\nmin_history: 2\nsplit: [0.5, 0.25, 0.25]\ntime_col: timestamp\n")
    r = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "ds"), "--config",
                            str(cfg), "--set", "min_history=1", "--set", "dedup=true"])  # fmt: skip
    assert r.exit_code == 0, r.output
    params = json.loads((tmp_path / "ds" / "meta.json").read_text())["params"]
    assert params["holdout"] == 2 and params["min_history"] == 1 and params["dedup"] is True
    assert params["split"] == [0.5, 0.25, 0.25] and params["reader"]["time_col"] == "timestamp"
    # a flag beats the config file, --set beats both
    r = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "ds2"), "--config",
                            str(cfg), "--holdout", "3", "--set", "min_history=1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ds2" / "meta.json").read_text())["params"]["holdout"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "min_user_count=0"], "min_user_count=0 must be >= 1"),
        (["--min-user-count", "0"], "--min-user-count=0 must be >= 1"),  # as typed
        (["--min-user-count", "0", "--set", "min_user_count=0"], "error: min_user_count=0"),
        (["--split", "0.5,0.5,0.5"], "--split=0.5,0.5,0.5 must be three fractions"),
        (["--split", "nan,0.5,0.5"], "--split[0]=nan must be a finite number"),
        (["--split-seed", "-1"], "--split-seed=-1 must be >= 0"),
        (["--set", "min_users=3"], "unknown setting 'min_users'"),
        (["--set", "holdout=many"], "holdout='many' must be an integer"),
        (["--set", "memory_budget=lots"], "memory_budget='lots' is not a size"),
        (["--set", "format=excel"], "format='excel' is unknown"),
    ],
)
def test_bad_settings_name_the_key(tmp_path, args, message):
    r = runner.invoke(app, ["prepare", str(_log(tmp_path)), "--out", str(tmp_path / "ds"), *args])
    assert message in _one_line_exit_2(r)
    assert not (tmp_path / "ds").exists()


def test_full_disk_out_of_core_leaves_nothing(tmp_path, monkeypatch):
    """The bucket files fill the disk (``ndarray.tofile`` names no file): one line, and
    neither the work folder nor a partial dataset is left."""
    from seqtwins.data import outofcore

    def full(self, bucket, records):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prep, "BYTES_PER_ROW", 10**9)  # out of core
    monkeypatch.setattr(outofcore._Buckets, "append", full)
    work = tmp_path / "work"
    opts = PrepareOptions(memory_budget=10**9, work_dir=work)
    with pytest.raises(SeqtwinsError, match="cannot write --work-dir .*No space left on device"):
        prepare(_log(tmp_path), tmp_path / "ds", opts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv", "work"]
    assert list(work.iterdir()) == []


def test_a_second_writer_into_the_same_out_is_refused(tmp_path):
    src = _log(tmp_path)
    with file_lock(tmp_path / "ds"):  # as a running prepare / synth holds it
        r = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "ds")])
        assert "is in use by another seqtwins process" in _one_line_exit_2(r)
        r = runner.invoke(app, ["synth", "--out", str(tmp_path / "ds"), "--users", "40"])
        assert "is in use by another seqtwins process" in _one_line_exit_2(r)
    assert not (tmp_path / "ds").exists()
    prepare(src, tmp_path / "ds")  # released: it works, and no lock file stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "log.csv"]


def test_a_failed_run_leaves_no_folder_it_made(tmp_path):
    (tmp_path / "in").mkdir()
    bad = tmp_path / "in" / "log.csv"
    bad.write_text("user_id,item_id\nu1,\n")
    r = runner.invoke(app, ["prepare", str(bad), "--out", str(tmp_path / "a" / "b" / "ds")])
    assert "column 'item_id' is empty" in _one_line_exit_2(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
