"""The CLI's one place for bad input: one line, exit code 2, no traceback."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from seqtwins.cli import app, user_error
from seqtwins.errors import SeqtwinsError

runner = CliRunner()


def test_user_errors_become_one_line():
    assert user_error(SeqtwinsError("bad setting")) == "bad setting"
    line = user_error(PermissionError(13, "Permission denied", "/out/x"))
    assert line == "/out/x: Permission denied; check the path and its permissions"
    bad_text = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    assert "not valid UTF-8" in str(user_error(bad_text))
    with pytest.raises(pl.exceptions.PolarsError) as caught:
        pl.DataFrame({"a": ["x"]}).select(pl.col("a").cast(pl.Int64, strict=True))
    assert str(user_error(caught.value)).startswith("cannot read the data: ")
    assert str(user_error(MemoryError())).startswith("out of memory")
    torch_oom = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to ...")
    assert str(user_error(torch_oom)).startswith("out of memory")
    assert user_error(RuntimeError("shape mismatch")) is None
    # a bug keeps its traceback
    assert user_error(KeyError("x")) is None
    assert user_error(TypeError("x")) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_is_one_line(tmp_path: Path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        result = runner.invoke(app, ["synth", "--out", str(folder / "d"), "--users", "50"])
    finally:
        folder.chmod(0o700)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_out_below_a_file_is_one_line(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me\n")
    result = runner.invoke(
        app, ["synth", "--out", str(blocker / "d"), "--users", "50", "--items", "40"]
    )
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "error:" in result.output and "Traceback" not in result.output
    assert blocker.read_text() == "keep me\n"


def test_markup_in_a_message_is_printed_verbatim(tmp_path: Path):
    result = runner.invoke(
        app,
        ["pretrain", str(tmp_path), "--out", str(tmp_path / "r"), "--set", "augment.mode=[bold]x"],
    )
    assert result.exit_code == 2
    assert "augment.mode='[bold]x'" in result.output
