"""``seqtwins prepare`` on the command line: a good run, and every kind of bad input.

Each bad input must end in exit code 2 and ONE line that names the problem, with no
traceback and no output directory (nor a temporary sibling of it) left behind.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.data.dataset import SequenceDataset
from seqtwins.data.prepare import prepare
from tests.data.test_prepare import output_bytes

runner = CliRunner()
GOOD = "user_id,item_id,timestamp\n" + "".join(
    f"u{u},i{i},{10 * u + i}\n" for u in range(3) for i in range(6)
)


def _run(*args: str | Path):
    return runner.invoke(app, ["prepare", *map(str, args)])


def test_good_run_prints_summary(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text(GOOD)
    r = _run(f, "--out", tmp_path / "out", "--holdout", "2", "--split", "0.34,0.33,0.33")
    assert r.exit_code == 0, r.output
    assert "3 users, 6 items, 18 interactions" in r.stdout
    assert "dropped: nothing" in r.stdout
    ds = SequenceDataset.open(tmp_path / "out")
    assert ds.sequences.history_lengths().tolist() == [4, 4, 4]
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["params"]["holdout"] == 2


def test_cli_defaults_are_the_library_defaults(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text(GOOD)
    assert _run(f, "--out", tmp_path / "cli").exit_code == 0
    prepare(f, tmp_path / "lib")
    a, b = (json.loads((tmp_path / d / "meta.json").read_text()) for d in ("cli", "lib"))
    assert a["content_hash"] == b["content_hash"] and a["params"] == b["params"]


def test_skip_reports_the_count(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text(GOOD + "u1,,99\nu2,i1,never\n")
    r = _run(f, "--out", tmp_path / "out", "--on-bad-rows", "skip")
    assert r.exit_code == 0, r.output
    assert "bad rows skipped 2" in r.stdout


def test_pseudonymize_on_the_command_line(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text(GOOD.replace(",u", ",person").replace("\nu", "\nperson"))
    out, salt = tmp_path / "out", tmp_path / "salt.key"
    r = _run(f, "--out", out, "--pseudonymize", "--salt-file", salt)
    assert r.exit_code == 0, r.output
    assert salt.is_file()
    for name, data in output_bytes(out).items():
        assert b"person" not in data, name


def _write(name: str, content: bytes | str) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        p = d / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return p

    return make


def _items_table(d: Path) -> Path:
    (d / "items.csv").write_text("item_id,categories\nz1,a|b\nz2,c\n")
    return _write("log.csv", GOOD)(d)


def _truncated_gz(d: Path) -> Path:
    data = gzip.compress(GOOD.encode() * 50)
    return _write("log.csv.gz", data[: len(data) // 2])(d)


def _not_parquet(d: Path) -> Path:
    return _write("log.parquet", GOOD)(d)


def _s3rec_latin1(d: Path) -> Path:
    return _write("Toy.txt", "1 2 3 4 5\n2 caf\xe9 1 2 3\n".encode("latin-1"))(d)


def _parquet_nulls(d: Path) -> Path:
    p = d / "log.parquet"
    pl.DataFrame({"user_id": ["a", None], "item_id": ["x", "y"]}).write_parquet(p)
    return p


BAD = {
    # name: (make input, extra args, text the message must contain)
    "missing column": (_write("log.csv", GOOD), ["--user-col", "customer"],
                       "no column 'customer' for --user-col"),
    "misnamed columns": (_write("log.csv", "who,what\na,b\n"), [], "has no user column"),
    "empty file": (_write("log.csv", ""), [], "is empty"),
    "header only": (_write("log.csv", "user_id,item_id\n"), [], "no interactions"),
    "unparseable timestamp": (
        _write("log.csv", GOOD + "u1,i1,next tuesday\n"), [],
        "line 20: column 'timestamp' value 'next tuesday' is not epoch seconds",
    ),
    "null item": (_write("log.csv", GOOD + "u1,,5\n"), [], "line 20: column 'item_id' is empty"),
    "null in parquet": (_parquet_nulls, [], "row 2: column 'user_id' is empty"),
    "non-utf8 csv": (
        _write("log.csv", GOOD.encode() + "u1,caf\xe9,3\n".encode("latin-1")), [],
        "line 20, column 7: byte 0xE9 is not valid UTF-8",
    ),
    "non-utf8 s3rec": (_s3rec_latin1, [], "line 2, column 6: byte 0xE9 is not valid UTF-8"),
    "truncated gz": (_truncated_gz, [], "truncated or corrupt gzip"),
    "not parquet": (_not_parquet, [], "not a readable Parquet file"),
    "unknown format": (_write("log.csv", GOOD), ["--format", "excel"], "format='excel' is unknown"),
    "undetectable format": (_write("log.xlsx", GOOD), [], "cannot tell the format"),
    "missing input": (lambda d: d / "nope.csv", [], "does not exist"),
    "item table matches nothing": (_items_table, ["--items", "{d}/items.csv"],
                                   "references no item of the interactions"),
    "zero users after filtering": (_write("log.csv", GOOD), ["--min-user-count", "7"],
                                   "no users left after filtering"),
    "all users too short": (_write("log.csv", GOOD), ["--min-history", "6"],
                            "no users left after filtering"),
    "bad split": (_write("log.csv", GOOD), ["--split", "0.9,0.9"], "--split"),
    "pseudonymize without salt": (_write("log.csv", GOOD), ["--pseudonymize"], "--salt-file"),
    "duplicate header": (_write("log.csv", "user_id,item_id,user_id\nu1,i1,x\n"), [],
                         "the header names column 'user_id' more than once"),
    "bad row policy": (_write("log.csv", GOOD), ["--on-bad-rows", "ignore"],
                       "--on-bad-rows='ignore' must be 'error' or 'skip'"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, case):
    make, extra, expected = BAD[case]
    src = tmp_path / "in"
    src.mkdir()
    path = make(src)
    outs = tmp_path / "outs"
    outs.mkdir()
    args = [a.replace("{d}", str(src)) for a in extra]
    r = _run(path, "--out", outs / "ds", *args)
    assert r.exit_code == 2, r.output
    text = r.output.strip()
    assert "Traceback" not in r.output
    assert len(text.splitlines()) == 1, text
    assert text.startswith("error: ")
    assert expected in text, text
    assert list(outs.iterdir()) == []  # no output dir, no temporary sibling
