"""seqtwins.files: atomic writes, ownership, stale temporaries, locks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from seqtwins import files
from seqtwins.errors import SeqtwinsError


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_write_is_whole_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "a[1].json"
    files.write_json(out, {"x": 1})
    assert out.read_text() == '{\n  "x": 1\n}\n'
    with pytest.raises(ValueError), files.atomic_file(out) as tmp:
        tmp.write_text("half")
        raise ValueError("killed")
    assert out.read_text() == '{\n  "x": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a[1].json"]
    with pytest.raises(ValueError):
        files.write_json(out, {"x": float("nan")})  # NaN is not JSON


def test_clean_stale_removes_only_dead_local_writers(tmp_path: Path) -> None:
    out = tmp_path / "out[x]"  # glob metacharacters in the name
    dead = _dead_pid()
    stale = [
        tmp_path / f".out[x].tmp-{dead}.{files._HOST}-a",
        tmp_path / f".out[x].work-{dead}-b",  # a name from before host tags
    ]
    kept = [
        tmp_path / f".out[x].tmp-{os.getpid()}.{files._HOST}-c",  # alive
        tmp_path / f".out[x].tmp-{dead}.0000beef-d",  # another host's: not ours to judge
        tmp_path / f".other.tmp-{dead}-e",  # another output's
    ]
    for p in [*stale, *kept]:
        p.mkdir()
    assert sorted(files.clean_stale(out)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def test_temporaries_carry_pid_and_host(tmp_path: Path) -> None:
    scratch = files.temp_dir(tmp_path / "ds", "work")
    assert scratch.name.startswith(f".ds.work-{os.getpid()}.")
    assert files.clean_stale(tmp_path / "ds") == []  # this process is alive


def test_check_replaceable(tmp_path: Path) -> None:
    files.check_replaceable(tmp_path / "absent", "--out")
    empty = tmp_path / "empty"
    empty.mkdir()
    files.check_replaceable(empty, "--out")
    ours = tmp_path / "ours"
    ours.mkdir()
    files.write_marker(ours, "dataset")
    (ours / "x").write_text("1")
    files.check_replaceable(ours, "--out", kinds=("dataset",))
    with pytest.raises(SeqtwinsError, match="seqtwins did not write"):
        files.check_replaceable(ours, "--out", kinds=("run",))
    foreign = tmp_path / "notes.txt"
    foreign.write_text("mine")
    with pytest.raises(SeqtwinsError, match="was not written by seqtwins"):
        files.check_replaceable(foreign, "--out")
    files.check_replaceable(foreign, "--out", owned=lambda p: p.read_text() == "mine")


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    target = tmp_path / "e.parquet"
    with files.file_lock(target):
        with pytest.raises(SeqtwinsError, match="in use by another seqtwins process"):
            files.file_lock(target).acquire()
        code = (
            "import sys; from seqtwins import files; from seqtwins.errors import SeqtwinsError\n"
            "try:\n    files.file_lock(sys.argv[1]).acquire()\n"
            "except SeqtwinsError:\n    sys.exit(3)\n"
        )
        other = subprocess.run([sys.executable, "-c", code, str(target)], check=False)
        assert other.returncode == 3  # another process is refused too
    assert not (tmp_path / ".e.parquet.lock").exists()  # removed on release
    with files.file_lock(target):
        pass


def test_a_lock_removes_the_folders_it_made_when_they_stay_empty(tmp_path: Path) -> None:
    with files.file_lock(tmp_path / "new" / "deeper" / "e.parquet"):
        assert (tmp_path / "new" / "deeper").is_dir()
    assert not (tmp_path / "new").exists()  # the work failed before writing: nothing left
    with files.file_lock(tmp_path / "kept" / "e.parquet"):
        (tmp_path / "kept" / "e.parquet").write_text("written")
    assert (tmp_path / "kept" / "e.parquet").read_text() == "written"
