"""Hostile inputs and faults, tried on the real CLI the way a new user would (issue 10).

The promise (docs/reliability.md): a bad input or an OS error ends in exit code 2 and ONE
line on stderr that names the file or setting, never a traceback; nothing is lost (inputs
and files seqtwins did not write are byte-identical afterwards); no half-written output
and no hidden temporary file is left behind; and what must succeed gives a sane result.

Every case runs ``seqtwins`` in-process (``typer.testing.CliRunner``) on one tiny
synthetic dataset and one tiny trained run, built once for the module (a few cases call the
public Python API instead). A failure message starts with ``weak:`` when the promise held
but the line was not good enough (it does not name the file/setting, is not one line, or
comes only after the work was done); anything else is a defect. Cases are grouped by what
they attack: --set/--config, prepare, synth/inspect, dataset tampering, NaN, embed,
pretrain/resume/locks, evaluate/report/run/tune, faults (disk full, Ctrl-C), the API, and
OS errors on every output path. ``benchmarks/hostile_table.py`` runs this file and writes
the table of docs/reliability.md from its outcome.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner, Result

import seqtwins
from seqtwins import files
from seqtwins.cli import app

runner = CliRunner()
TINY = [
    "encoder.dim=16", "encoder.heads=2", "encoder.ff_dim=32", "encoder.max_len=12",
    "augment.max_len=12", "barlow.projector=[32,32]", "train.batch_size=32",
    "train.epochs=1", "train.valid_users=20",
]  # fmt: skip
SETS = [a for s in TINY for a in ("--set", s)]
EVAL_FAST = ["--tasks", "favorite_category", "--fractions", "1.0", "--seeds", "1",
             "--baselines", "majority", "--no-progress"]  # fmt: skip
GOOD_LOG = "user_id,item_id,timestamp\n" + "".join(
    f"u{u},i{(u * 7 + k) % 15},{1_600_000_000 + 100 * u + k}\n" for u in range(30) for k in range(8)
)
TEMP_TAGS = (".tmp-", ".old-", ".work-", ".tmp", ".lock")
NONFINITE = ("NaN", "finite", "inf")  # a NaN refusal names one of these

# --- recording (for benchmarks/hostile_table.py) --------------------------------------------

_record: list[Callable[[str, object], None]] = []
_base: list[Path] = []


@pytest.fixture(autouse=True)
def _recorder(record_property: Callable[[str, object], None]) -> Iterator[None]:
    _record[:] = [record_property]
    yield
    _record.clear()


def _note(key: str, value: str) -> None:
    if _record:
        _record[0](key, value)


def _shown(arg: object) -> str:
    """``arg`` with the test's temporary folder written as ``$TMP``."""
    text = str(arg)
    for base in _base:
        text = re.sub(re.escape(str(base)) + r"/[^/\s]+", "$TMP", text)
    return text


# --- running the CLI and checking the promise -----------------------------------------------


def cli(*args: object) -> Result:
    """``seqtwins ARGS`` in-process."""
    _note("command", "seqtwins " + " ".join(_shown(a) for a in args))
    return runner.invoke(app, [str(a) for a in args])


def _tail(result: Result) -> str:
    lines = [x for x in result.output.splitlines() if x.strip()]
    return " / ".join(lines[-2:])[:300] if lines else "(no output)"


def _no_traceback(result: Result) -> None:
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        pytest.fail(f"traceback: {type(exc).__name__}: {first}", pytrace=False)
    if "Traceback (most recent call last)" in result.output:
        pytest.fail(f"traceback printed: {_tail(result)}", pytrace=False)


def refused(result: Result, *names: object, code: int = 2) -> str:
    """Exit ``code``, no traceback, exactly one ``error:`` line on stderr naming each of
    ``names`` (case-insensitive; a tuple names alternatives)."""
    shown = [" or ".join(map(_shown, n)) if isinstance(n, tuple) else _shown(n) for n in names]
    _note("expected", f"exit {code}, one line naming {', '.join(shown) or '-'}")
    _no_traceback(result)
    if result.exit_code != code:
        pytest.fail(f"exit {result.exit_code} (expected {code}): {_tail(result)}", pytrace=False)
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    if len(lines) != 1 or not lines[0].startswith("error:"):
        text = " / ".join(lines)[:300]
        pytest.fail(
            f"weak: {len(lines)} stderr lines, not one 'error:' line: {text}", pytrace=False
        )
    for name in names:  # a tuple: any one of its words will do
        words = name if isinstance(name, tuple) else (name,)
        if not any(str(w).lower() in lines[0].lower() for w in words):
            pytest.fail(
                f"weak: the line does not name {_shown(name)!r}: {lines[0][:300]}", pytrace=False
            )
    return lines[0]


def usage_error(result: Result, option: str) -> None:
    """A malformed option value: click's usage error (exit 2, the option named)."""
    _note("expected", f"exit 2, usage error naming {option}")
    _no_traceback(result)
    if result.exit_code != 2 or option not in result.output:
        pytest.fail(f"exit {result.exit_code}: {_tail(result)}", pytrace=False)


def succeeded(result: Result) -> None:
    _note("expected", "exit 0, sane output")
    _no_traceback(result)
    if result.exit_code != 0:
        pytest.fail(f"exit {result.exit_code} (expected 0): {_tail(result)}", pytrace=False)


def snapshot(*roots: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under ``roots``, hidden ones included."""
    out: dict[str, bytes | None] = {}
    for root in roots:
        if root.is_file():
            out[str(root)] = root.read_bytes()
        elif root.is_dir():
            out[str(root)] = None
            for p in sorted(root.rglob("*")):
                out[str(p)] = p.read_bytes() if p.is_file() else None
    return out


def unchanged(before: dict[str, bytes | None], *roots: Path) -> None:
    after = snapshot(*roots)
    if after != before:
        gone = sorted(set(before) - set(after))
        new = sorted(set(after) - set(before))
        changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
        what = (
            f"deleted {_shown(gone[0])}" if gone
            else f"changed {_shown(changed[0])}" if changed
            else f"added {_shown(new[0])}"
        )  # fmt: skip
        pytest.fail(f"not left untouched: {what} ({len(gone)} gone, {len(changed)} changed, "
                    f"{len(new)} new)", pytrace=False)  # fmt: skip


def no_temp(*folders: Path) -> None:
    """No hidden temporary sibling (``.NAME.tmp-PID-x``, ``.old-``, ``.work-``, lock) left."""
    for folder in folders:
        if not folder.is_dir():
            continue
        left = [
            p.name
            for p in folder.iterdir()
            if p.name.startswith(".")
            and p.name != files.MARKER
            and any(t in p.name for t in TEMP_TAGS)
        ]
        if left:
            pytest.fail(f"temporary left behind in {_shown(folder)}: {left}", pytrace=False)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --- module fixtures: one tiny dataset, one tiny run, one eval.json ------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    _base[:] = [tmp_path_factory.getbasetemp()]
    return root


@pytest.fixture(scope="module")
def ds(base: Path) -> Path:
    out = base / "ds"
    r = runner.invoke(app, ["synth", "--out", str(out), "--users", "200", "--items", "60"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def run(base: Path, ds: Path) -> Path:
    out = base / "run"
    r = runner.invoke(app, ["pretrain", str(ds), "--out", str(out), "--no-progress", *SETS])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def evaljson(base: Path, ds: Path, run: Path) -> Path:
    out = base / "ev" / "eval.json"
    r = runner.invoke(app, ["evaluate", str(run), "--data", str(ds), "--out", str(out),
                            *EVAL_FAST])  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def log(base: Path) -> Path:
    p = base / "log.csv"
    p.write_text(GOOD_LOG)
    return p


@pytest.fixture
def ds_copy(ds: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ds, tmp_path / "ds"))


@pytest.fixture
def run_copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _writable(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return False
    probe.unlink()
    return True


@contextmanager
def frozen(d: Path) -> Iterator[Path]:
    """``d`` made read-only (chmod; ``chattr +i`` when running as root) for the block."""
    mode = d.stat().st_mode & 0o777
    d.chmod(0o555)
    immutable = False
    if _writable(d) and shutil.which("chattr"):
        immutable = subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0
    try:
        if _writable(d):
            pytest.skip("cannot make a read-only folder here (root without chattr)")
        yield d
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(d)], check=False)
        d.chmod(mode)


@pytest.fixture
def readonly(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may write into, holding a file of the user's."""
    d = tmp_path / "ro"
    d.mkdir()
    (d / "keep.txt").write_text("mine\n")
    with frozen(d):
        yield d


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _foreign_folder(path: Path) -> Path:
    _write(path / "thesis.tex", "\\section{years of work}\n")
    _write(path / "sub" / "data.csv", "a,b\n1,2\n")
    return path


def _finite_embeddings(out: Path, rows: int | None = None) -> None:
    df = pl.read_parquet(out)
    emb = np.asarray(df["embedding"].to_list(), dtype=np.float64)
    if rows is not None and df.height != rows:
        pytest.fail(f"{df.height} rows, expected {rows}", pytrace=False)
    if not np.isfinite(emb).all():
        pytest.fail(f"embeddings hold {int((~np.isfinite(emb)).sum())} NaN/Inf values",
                    pytrace=False)  # fmt: skip


# ============================================================================================
# cli/config: --set, --config, options
# ============================================================================================

BAD_SETS = {
    # id: (override, text the line must contain)
    "lr nan": ("train.lr=.nan", "train.lr"),
    "lr negative": ("train.lr=-1", "train.lr"),
    "lr zero": ("train.lr=0", "train.lr"),
    "lr a word": ("train.lr=fast", "train.lr"),
    "epochs 0": ("train.epochs=0", "train.epochs"),
    "epochs float": ("train.epochs=1.5", "train.epochs"),
    "epochs bool": ("train.epochs=true", "train.epochs"),
    "patience negative": ("train.patience=-1", "train.patience"),
    "batch_size 0": ("train.batch_size=0", "train.batch_size"),
    "batch_size list": ("train.batch_size=[1,2]", "train.batch_size"),
    "warmup_frac 1": ("train.warmup_frac=1", "train.warmup_frac"),
    "weight_decay nan": ("train.weight_decay=.nan", "train.weight_decay"),
    "weight_decay inf": ("train.weight_decay=.inf", "train.weight_decay"),
    "grad_clip nan": ("train.grad_clip=.nan", "train.grad_clip"),
    "min_lr_ratio nan": ("train.min_lr_ratio=.nan", "train.min_lr_ratio"),
    "precision fp8": ("train.precision=fp8", "train.precision"),
    "device tpu": ("train.device=tpu", "train.device"),
    "backend mpi": ("train.backend=mpi", "train.backend"),
    "unknown key": ("train.learning_rate=0.1", "train.learning_rate"),
    "unknown section": ("optimizer.lr=0.1", "optimizer"),
    "set a section": ("train=5", "train"),
    "no equals": ("train.epochs", "train.epochs"),
    "empty key": ("=3", "unknown setting"),
    "encoder.dim negative": ("encoder.dim=-4", "encoder.dim"),
    "encoder.dim not divisible by heads": ("encoder.dim=15", "encoder"),
    "encoder.dropout nan": ("encoder.dropout=.nan", "encoder.dropout"),
    "encoder.dropout 2": ("encoder.dropout=2", "encoder.dropout"),
    "encoder.pooling unknown": ("encoder.pooling=max-ish", "encoder.pooling"),
    "barlow.lambda_ nan": ("barlow.lambda_=.nan", "barlow.lambda_"),
    "barlow.projector empty": ("barlow.projector=[]", "barlow.projector"),
    "objective unknown": ("objective=simclr", "simclr"),
    "encoder.heads 0": ("encoder.heads=0", "encoder.heads"),
    "next.alpha negative": ("next.alpha=-1", "next.alpha"),
    "next.alpha inf": ("next.alpha=.inf", "next.alpha"),
    "dual.temperature inf": ("dual.temperature=.inf", "dual.temperature"),
    "augment.mask_rate nan": ("augment.mask_rate=.nan", "augment.mask_rate"),
    "augment.ops unknown": ("augment.ops=[shuffle]", "shuffle"),
}


@pytest.mark.parametrize("override,name", BAD_SETS.values(), ids=list(BAD_SETS))
def test_bad_set_on_pretrain(ds: Path, tmp_path: Path, override: str, name: str) -> None:
    out = tmp_path / "run"
    refused(cli("pretrain", ds, "--out", out, "--no-progress", *SETS, "--set", override), name)
    assert not out.exists() or not any(out.iterdir()), "a refused config left a run folder"


def test_objective_option_unknown(ds: Path, tmp_path: Path) -> None:
    refused(cli("pretrain", ds, "--out", tmp_path / "r", "--objective", "simclr", *SETS), "simclr")


def test_backend_option_unknown(ds: Path, tmp_path: Path) -> None:
    refused(cli("pretrain", ds, "--out", tmp_path / "r", "--backend", "mpi", *SETS), "mpi")


def test_device_cuda_without_cuda(ds: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    refused(cli("pretrain", ds, "--out", tmp_path / "r", *SETS, "--set", "train.device=cuda"),
            "train.device")  # fmt: skip


BAD_CONFIGS = {
    "missing file": (None, "missing.yaml"),
    "bad yaml": ("train: {epochs: [1, 2\n", "bad.yaml"),
    "yaml is a list": ("- train\n- epochs\n", "bad.yaml"),
    "yaml is a scalar": ("42\n", "bad.yaml"),
    "unknown key": ("train:\n  epochz: 3\n", "train.epochz"),
    "wrong type": ("train:\n  patience: three\n", "train.patience"),
    "section not a mapping": ("dual: 3\n", "dual"),
    "non-utf8": ("train:\n  device: caf\xe9\n".encode("latin-1"), "bad.yaml"),
    "tab indented": ("train:\n\tepochs: 3\n", "bad.yaml"),
    "duplicate keys": ("train:\n  patience: 1\n  patience: 2\n", "patience"),
}


@pytest.mark.parametrize("content,name", BAD_CONFIGS.values(), ids=list(BAD_CONFIGS))
def test_bad_config_file(ds: Path, tmp_path: Path, content: str | bytes | None, name: str) -> None:
    cfg = tmp_path / ("missing.yaml" if content is None else "bad.yaml")
    if content is not None:
        _write(cfg, content)
    refused(cli("pretrain", ds, "--out", tmp_path / "r", "--config", cfg, *SETS), name)


def test_config_is_a_folder(ds: Path, tmp_path: Path) -> None:
    refused(cli("pretrain", ds, "--out", tmp_path / "r", "--config", tmp_path), tmp_path)


def test_max_len_alone_is_derived(ds: Path, tmp_path: Path) -> None:
    """issue 10: ``--set encoder.max_len=N`` alone must work (augment.max_len derived)."""
    sets = [a for s in TINY if not s.startswith("augment.max_len") for a in ("--set", s)]
    out = tmp_path / "r"
    succeeded(cli("pretrain", ds, "--out", out, "--no-progress", *sets,
                  "--set", "encoder.max_len=20"))  # fmt: skip


def test_resume_with_backend(run_copy: Path, ds: Path) -> None:
    refused(cli("pretrain", ds, "--out", run_copy, "--resume", "--backend", "gloo"), "--backend")


def test_resume_with_other_settings(run_copy: Path, ds: Path) -> None:
    before = snapshot(run_copy)
    refused(cli("pretrain", ds, "--out", run_copy, "--resume", "--set", "train.lr=0.5"), "--resume")
    unchanged(before, run_copy)


def test_usage_error_bad_int(tmp_path: Path) -> None:
    usage_error(cli("synth", "--out", tmp_path / "s", "--users", "many"), "--users")


def test_usage_error_unknown_option(ds: Path, tmp_path: Path) -> None:
    usage_error(cli("pretrain", ds, "--out", tmp_path / "r", "--epochs", "3"), "--epochs")


def test_unknown_command() -> None:
    usage_error(cli("train"), "train")


# ============================================================================================
# data: prepare
# ============================================================================================


def _prepare_refused(tmp_path: Path, input: Path, extra: list[str], *names: object) -> None:
    out = tmp_path / "out"
    before = snapshot(input)
    refused(cli("prepare", input, "--out", out, *extra), *names)
    unchanged(before, input)
    assert not out.exists(), "a refused prepare left --out"
    no_temp(tmp_path)


BAD_LOGS = {
    # id: (file name, content, extra args, text the line must contain)
    "empty file": ("log.csv", "", [], "log.csv"),
    "header only": ("log.csv", "user_id,item_id\n", [], "log.csv"),
    "one column": ("log.csv", "user_id\nu1\nu2\n", [], "log.csv"),
    "wrong columns": ("log.csv", "who,what\na,b\n", [], "log.csv"),
    "missing --user-col": ("log.csv", GOOD_LOG, ["--user-col", "customer"], "customer"),
    "same column twice": ("log.csv", GOOD_LOG, ["--item-col", "user_id"], "user_id"),
    "non-utf8": ("log.csv", GOOD_LOG.encode() + "u1,caf\xe9,3\n".encode("latin-1"), [], "UTF-8"),
    "timestamp beyond int64": (
        "log.csv",
        GOOD_LOG + "u1,i1,99999999999999999999999\n",
        [],
        "timestamp",
    ),
    "timestamp words": ("log.csv", GOOD_LOG + "u1,i1,next tuesday\n", [], "timestamp"),
    "empty item": ("log.csv", GOOD_LOG + "u1,,5\n", [], "item_id"),
    "ragged row": ("log.csv", GOOD_LOG + "u1,i2,5,extra,more\n", [], "log.csv"),
    "unclosed quote": ("log.csv", GOOD_LOG + 'u1,"i2,5\n', [], "log.csv"),
    "binary garbage": ("log.csv", bytes(range(256)) * 8, [], "log.csv"),
    "csv named parquet": ("log.parquet", GOOD_LOG, [], "log.parquet"),
    "truncated gzip": ("log.csv.gz", b"\x1f\x8b\x08\x00" + b"\x00" * 20, [], "log.csv.gz"),
    "jsonl junk line": (
        "log.jsonl",
        '{"user_id": "a", "item_id": "b"}\nnot json\n',
        [],
        "log.jsonl",
    ),
    "jsonl wrong types": ("log.jsonl", '{"user_id": {"x": 1}, "item_id": [1]}\n', [], "log.jsonl"),
    "unknown --format": ("log.csv", GOOD_LOG, ["--format", "excel"], "excel"),
    "rating not numeric": (
        "log.csv",
        "user_id,item_id,rating\nu1,i1,good\n",
        ["--min-rating", "3"],
        "rating",
    ),
    "--min-rating without ratings": ("log.csv", GOOD_LOG, ["--min-rating", "3"], "rating"),
    "everything filtered": ("log.csv", GOOD_LOG, ["--min-user-count", "1000"], "log.csv"),
    "duplicate header": (
        "log.csv",
        "user_id,item_id,timestamp,user_id\n"
        + "".join(r + ",x\n" for r in GOOD_LOG.splitlines()[1:]),
        [],
        "user_id",
    ),
    "semicolons": ("log.csv", GOOD_LOG.replace(",", ";"), [], "log.csv"),
    "time column is text": ("log.csv", GOOD_LOG, ["--time-col", "item_id"], "item_id"),
}


@pytest.mark.parametrize("name,content,extra,word", BAD_LOGS.values(), ids=list(BAD_LOGS))
def test_prepare_bad_log(tmp_path: Path, name: str, content: str | bytes, extra: list[str],
                         word: str) -> None:  # fmt: skip
    _prepare_refused(tmp_path, _write(tmp_path / "in" / name, content), extra, word)


BAD_PREPARE_OPTIONS = {
    "split two numbers": (["--split", "0.8,0.2"], ("--split", "split")),
    "split words": (["--split", "a,b,c"], ("--split", "split")),
    "split sums above 1": (["--split", "0.5,0.5,0.5"], ("--split", "split")),
    "split negative": (["--split", "-0.1,0.6,0.5"], ("--split", "split")),
    "split nan": (["--split", "nan,0.5,0.5"], ("--split", "split")),
    "split inf": (["--split", "inf,0.1,0.1"], ("--split", "split")),
    "holdout negative": (["--holdout", "-1"], ("--holdout", "holdout")),
    "min-history 0": (["--min-history", "0"], ("--min-history", "min_history")),
    "min-user-count 0": (["--min-user-count", "0"], ("--min-user-count", "min_user_count")),
    "max-len 0": (["--max-len", "0"], ("--max-len", "max_len")),
    "memory-budget words": (["--memory-budget", "lots"], "lots"),
    "memory-budget 0": (["--memory-budget", "0"], ("--memory-budget", "memory_budget")),
    "on-bad-rows unknown": (["--on-bad-rows", "ignore"], "ignore"),
    "pseudonymize without salt": (["--pseudonymize"], ("--salt-file", "salt_file")),
    "items file missing": (["--items", "/nonexistent/items.csv"], "items.csv"),
    "users file missing": (["--users", "/nonexistent/users.csv"], "users.csv"),
    "split-seed negative": (["--split-seed", "-1"], ("--split-seed", "split_seed")),
}


@pytest.mark.parametrize("extra,word", BAD_PREPARE_OPTIONS.values(), ids=list(BAD_PREPARE_OPTIONS))
def test_prepare_bad_option(tmp_path: Path, extra: list[str], word: str) -> None:
    _prepare_refused(tmp_path, _write(tmp_path / "in" / "log.csv", GOOD_LOG), extra, word)


def test_prepare_items_table_wrong_columns(tmp_path: Path) -> None:
    items = _write(tmp_path / "in" / "items.csv", "name,colour\nx,red\n")
    _prepare_refused(tmp_path, _write(tmp_path / "in" / "log.csv", GOOD_LOG),
                     ["--items", str(items)], "items.csv")  # fmt: skip


def test_prepare_users_table_duplicate_ids(tmp_path: Path) -> None:
    users = _write(tmp_path / "in" / "users.csv", "user_id,age\nu1,3\nu1,4\n")
    _prepare_refused(tmp_path, _write(tmp_path / "in" / "log.csv", GOOD_LOG),
                     ["--users", str(users)], "users.csv")  # fmt: skip


def test_prepare_salt_file_is_a_folder(tmp_path: Path) -> None:
    salt = tmp_path / "saltdir"
    salt.mkdir()
    _prepare_refused(tmp_path, _write(tmp_path / "in" / "log.csv", GOOD_LOG),
                     ["--pseudonymize", "--salt-file", str(salt)], "saltdir")  # fmt: skip


def test_prepare_movielens_folder_without_ratings_file(tmp_path: Path) -> None:
    folder = _write(tmp_path / "ml" / "README", "MovieLens\n").parent
    _prepare_refused(tmp_path, folder, ["--format", "movielens"], "ml")


def test_prepare_s3rec_with_words(tmp_path: Path) -> None:
    f = _write(tmp_path / "in" / "Toy.txt", "alice likes bob\ncarol 2 3\n")
    _prepare_refused(tmp_path, f, ["--format", "s3rec"], "Toy.txt")


def test_prepare_holdout_longer_than_every_sequence(tmp_path: Path, log: Path) -> None:
    """--holdout 1000000: history is kept (--min-history), or one line; never a crash."""
    out = tmp_path / "out"
    r = cli("prepare", log, "--out", out, "--holdout", "1000000")
    if r.exit_code == 0:
        succeeded(r)
        succeeded(cli("inspect", out))
    else:
        refused(r, "holdout")


def test_prepare_input_missing(tmp_path: Path) -> None:
    refused(cli("prepare", tmp_path / "nope.csv", "--out", tmp_path / "o"), "nope.csv")


def test_prepare_input_is_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    refused(cli("prepare", tmp_path / "in", "--out", tmp_path / "o"), "in")


def test_prepare_input_folder_of_junk(tmp_path: Path) -> None:
    _foreign_folder(tmp_path / "in")
    _prepare_refused(tmp_path, tmp_path / "in", [], "in")


def test_prepare_out_exists_without_overwrite(tmp_path: Path, log: Path) -> None:
    out = _foreign_folder(tmp_path / "out")
    before = snapshot(out)
    refused(cli("prepare", log, "--out", out), out)
    unchanged(before, out)


def test_prepare_overwrite_foreign_folder(tmp_path: Path, log: Path) -> None:
    """issue 10: --overwrite deletes a folder that is not a seqtwins dataset."""
    out = _foreign_folder(tmp_path / "out")
    before = snapshot(out)
    refused(cli("prepare", log, "--out", out, "--overwrite"), out)
    unchanged(before, out)
    no_temp(tmp_path)


def test_prepare_overwrite_the_input_file(tmp_path: Path) -> None:
    """issue 10: --overwrite with --out = the input deletes the input."""
    f = _write(tmp_path / "log.csv", GOOD_LOG)
    before = snapshot(f)
    refused(cli("prepare", f, "--out", f, "--overwrite"), f)
    unchanged(before, f)


def test_prepare_overwrite_the_input_folder(tmp_path: Path) -> None:
    """A MovieLens-style input folder given as its own --out."""
    folder = tmp_path / "ml"
    _write(folder / "u.data", "".join(f"{u}\t{i}\t4\t{100 + i}\n" for u in range(1, 9)
                                      for i in range(1, 9)))  # fmt: skip
    before = snapshot(folder)
    refused(cli("prepare", folder, "--out", folder, "--format", "movielens", "--overwrite"),
            folder)  # fmt: skip
    unchanged(before, folder)


def test_prepare_overwrite_a_file(tmp_path: Path, log: Path) -> None:
    out = _write(tmp_path / "notes.txt", "my notes\n")
    before = snapshot(out)
    refused(cli("prepare", log, "--out", out, "--overwrite"), out)
    unchanged(before, out)


def test_prepare_overwrite_own_dataset(tmp_path: Path, log: Path) -> None:
    """Replacing a dataset seqtwins wrote must work, and give the same content hash."""
    out = tmp_path / "out"
    succeeded(cli("prepare", log, "--out", out))
    first = json.loads((out / "meta.json").read_text())["content_hash"]
    succeeded(cli("prepare", log, "--out", out, "--overwrite"))
    assert json.loads((out / "meta.json").read_text())["content_hash"] == first
    no_temp(tmp_path)


def test_prepare_overwrite_dataset_without_marker(tmp_path: Path, log: Path) -> None:
    """A dataset written before the marker existed is still recognised (by its meta.json)."""
    out = tmp_path / "out"
    succeeded(cli("prepare", log, "--out", out))
    (out / files.MARKER).unlink(missing_ok=True)
    succeeded(cli("prepare", log, "--out", out, "--overwrite"))


def test_prepare_out_with_brackets_named_verbatim(tmp_path: Path, log: Path) -> None:
    """A path with [brackets] (rich markup) must be printed as it is."""
    out = _foreign_folder(tmp_path / "a[red]b")
    refused(cli("prepare", log, "--out", out), "a[red]b")


def test_prepare_out_with_a_newline_in_its_name(tmp_path: Path, log: Path) -> None:
    """A control character in a path must not break the one line."""
    out = _foreign_folder(tmp_path / "a\nb")
    refused(cli("prepare", log, "--out", out), "a")


@pytest.mark.parametrize("kind", ["prepare", "synth"])
def test_two_writers_one_dataset(kind: str, tmp_path: Path, log: Path) -> None:
    """A second prepare/synth into an --out being written (its lock held) is refused."""
    out = tmp_path / "out"
    args = ["prepare", log] if kind == "prepare" else ["synth", "--users", "50", "--items", "30"]
    with files.file_lock(out):
        refused(cli(*args, "--out", out), "in use")
    assert not out.exists()


def test_prepare_cleans_stale_temp(tmp_path: Path, log: Path) -> None:
    """issue 10: a killed prepare's hidden temp folder is removed by the next prepare."""
    out = tmp_path / "out"
    stale = tmp_path / f".out.tmp-{dead_pid()}-x1y2"
    _write(stale / "items.npy", b"\0" * 4096)
    succeeded(cli("prepare", log, "--out", out))
    assert not stale.exists(), "the stale temp folder of a dead prepare is still there"


def test_prepare_keeps_live_temp(tmp_path: Path, log: Path) -> None:
    """...but never one of a process that still runs (this one)."""
    live = _write(tmp_path / f".out.tmp-{os.getpid()}-x1y2" / "items.npy", b"\0")
    succeeded(cli("prepare", log, "--out", tmp_path / "out"))
    assert live.exists()


def test_prepare_empty_parquet(tmp_path: Path) -> None:
    f = tmp_path / "in" / "log.parquet"
    f.parent.mkdir()
    pl.DataFrame(
        {"user_id": [], "item_id": []}, schema={"user_id": pl.String, "item_id": pl.String}
    ).write_parquet(f)
    _prepare_refused(tmp_path, f, [], "log.parquet")


def test_prepare_crlf_and_bom(tmp_path: Path) -> None:
    """A spreadsheet export (UTF-8 BOM, CRLF line ends) must be read."""
    f = _write(tmp_path / "log.csv", b"\xef\xbb\xbf" + GOOD_LOG.replace("\n", "\r\n").encode())
    out = tmp_path / "out"
    succeeded(cli("prepare", f, "--out", out))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["counts"]["users"] == 30 and meta["fields"]["times"]


def test_prepare_times_before_1970(tmp_path: Path) -> None:
    """Negative epoch seconds are times too (a log of old events)."""
    text = GOOD_LOG.replace(",1600", ",-1600")
    out = tmp_path / "out"
    succeeded(cli("prepare", _write(tmp_path / "log.csv", text), "--out", out))
    assert json.loads((out / "meta.json").read_text())["counts"]["users"] == 30


def test_prepare_unicode_ids(tmp_path: Path) -> None:
    text = GOOD_LOG.replace("u", "ü😀").replace("ü😀ser_id", "user_id")
    out = tmp_path / "out"
    succeeded(cli("prepare", _write(tmp_path / "log.csv", text), "--out", out))
    assert pl.read_parquet(out / "users.parquet")["user_id"][0].startswith("ü😀")


# ============================================================================================
# data: synth and inspect
# ============================================================================================


@pytest.mark.parametrize("users,items", [(1, 30), (3, 3), (10, 1)])
def test_synth_tiny(tmp_path: Path, users: int, items: int) -> None:
    """The smallest sizes: a dataset, or one line naming the setting."""
    out = tmp_path / "s"
    r = cli("synth", "--out", out, "--users", users, "--items", items)
    if r.exit_code == 0:
        succeeded(r)
        succeeded(cli("inspect", out))
    else:
        refused(r, ("users", "items", "categories"))
        assert not out.exists()


BAD_SYNTH = {
    "seed negative": (["--seed", "-1"], "seed"),
    "users 0": (["--users", "0"], "users"),
    "users negative": (["--users", "-5"], "users"),
    "items 0": (["--items", "0"], "items"),
    "fewer items than categories": (["--items", "3"], "items"),
}


@pytest.mark.parametrize("extra,word", BAD_SYNTH.values(), ids=list(BAD_SYNTH))
def test_synth_bad_option(tmp_path: Path, extra: list[str], word: str) -> None:
    out = tmp_path / "s"
    refused(cli("synth", "--out", out, *extra), word)
    assert not out.exists()
    no_temp(tmp_path)


def test_synth_overwrite_foreign_folder(tmp_path: Path) -> None:
    out = _foreign_folder(tmp_path / "s")
    before = snapshot(out)
    refused(cli("synth", "--out", out, "--users", "50", "--items", "30", "--overwrite"), out)
    unchanged(before, out)
    no_temp(tmp_path)


def test_synth_overwrite_a_run(tmp_path: Path, run_copy: Path) -> None:
    """A run folder is seqtwins' but not a dataset: not replaced by a dataset."""
    before = snapshot(run_copy)
    refused(cli("synth", "--out", run_copy, "--users", "50", "--items", "30", "--overwrite"),
            run_copy)  # fmt: skip
    unchanged(before, run_copy)


def test_synth_overwrite_own(tmp_path: Path) -> None:
    out = tmp_path / "s"
    succeeded(cli("synth", "--out", out, "--users", "50", "--items", "30"))
    succeeded(cli("synth", "--out", out, "--users", "60", "--items", "30", "--overwrite"))
    assert json.loads((out / "meta.json").read_text())["counts"]["users"] == 60
    no_temp(tmp_path)


def test_synth_cleans_stale_temp(tmp_path: Path) -> None:
    stale = _write(tmp_path / f".s.tmp-{dead_pid()}-abcd" / "offsets.npy", b"\0" * 100).parent
    succeeded(cli("synth", "--out", tmp_path / "s", "--users", "50", "--items", "30"))
    assert not stale.exists(), "the stale temp folder of a dead synth is still there"


def _empty(folder: Path) -> None:
    for f in list(folder.iterdir()):
        f.unlink()


def _edit_meta(ds: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    meta = json.loads((ds / "meta.json").read_text())
    edit(meta)
    (ds / "meta.json").write_text(json.dumps(meta))


DATASET_DAMAGE: dict[str, tuple[Callable[[Path], object], str]] = {
    "empty folder": (lambda d: _empty(d), "ds"),
    "meta.json missing": (lambda d: (d / "meta.json").unlink(), "meta.json"),
    "meta.json junk": (lambda d: (d / "meta.json").write_text("{not json"), "meta.json"),
    "meta.json empty": (lambda d: (d / "meta.json").write_text(""), "meta.json"),
    "meta.json a list": (lambda d: (d / "meta.json").write_text("[1, 2]"), "meta.json"),
    "meta.json without fields": (lambda d: _edit_meta(d, lambda m: m.pop("fields")), "fields"),
    "meta.json without counts": (lambda d: _edit_meta(d, lambda m: m.pop("counts")), "counts"),
    "meta.json without content_hash": (lambda d: _edit_meta(d, lambda m: m.pop("content_hash")),
                                       "content_hash"),
    "meta.json counts are text": (
        lambda d: _edit_meta(d, lambda m: m["counts"].update(users="many")), "meta.json"),
    "meta.json schema 99": (lambda d: _edit_meta(d, lambda m: m.update(schema_version=99)), "99"),
    "items.npy missing": (lambda d: (d / "items.npy").unlink(), "items.npy"),
    "items.npy truncated": (lambda d: (d / "items.npy").write_bytes(
        (d / "items.npy").read_bytes()[:200]), "items.npy"),
    "offsets.npy float": (lambda d: np.save(d / "offsets.npy", np.load(d / "offsets.npy")
                                            .astype(np.float64)), "offsets.npy"),
    "users.parquet missing": (lambda d: (d / "users.parquet").unlink(), "users.parquet"),
    "items.parquet is text": (lambda d: (d / "items.parquet").write_text("item_id\n1\n"),
                              "items.parquet"),
    "users.parquet without split": (
        lambda d: pl.read_parquet(d / "users.parquet").drop("split")
        .write_parquet(d / "users.parquet"), "users.parquet"),
}  # fmt: skip


@pytest.mark.parametrize("damage,word", DATASET_DAMAGE.values(), ids=list(DATASET_DAMAGE))
def test_inspect_damaged_dataset(ds_copy: Path, damage: Callable[[Path], object],
                                 word: str) -> None:  # fmt: skip
    damage(ds_copy)
    before = snapshot(ds_copy)
    refused(cli("inspect", ds_copy), word)
    unchanged(before, ds_copy)


def test_inspect_not_a_folder(tmp_path: Path) -> None:
    refused(cli("inspect", _write(tmp_path / "x.csv", "a\n")), "x.csv")


def test_inspect_json_is_valid(ds: Path) -> None:
    r = cli("inspect", ds, "--json")
    succeeded(r)
    assert json.loads(r.stdout)["counts"]["users"] == 200


# ============================================================================================
# data: tampered datasets (content hash) and the --no-verify escape hatch
# ============================================================================================


def _leak_test_users(ds: Path) -> None:
    """Move every test user into train (test leakage)."""
    users = pl.read_parquet(ds / "users.parquet")
    users.with_columns(pl.lit("train").alias("split")).write_parquet(ds / "users.parquet")


def _change_item(ds: Path) -> None:
    arr = np.load(ds / "items.npy")
    arr[5] = arr[5] % 50 + 1 if arr[5] != arr[5] % 50 + 1 else arr[5] + 1
    np.save(ds / "items.npy", arr)


def _item_out_of_range(ds: Path) -> None:
    arr = np.load(ds / "items.npy")
    arr[3] = 10_000
    np.save(ds / "items.npy", arr)


def test_tampered_split_pretrain(ds_copy: Path, tmp_path: Path) -> None:
    _leak_test_users(ds_copy)
    refused(cli("pretrain", ds_copy, "--out", tmp_path / "r", *SETS), ds_copy)


def test_tampered_split_evaluate(ds_copy: Path, run: Path, tmp_path: Path) -> None:
    _leak_test_users(ds_copy)
    out = tmp_path / "eval.json"
    refused(cli("evaluate", run, "--data", ds_copy, "--out", out, *EVAL_FAST), ds_copy)
    assert not out.exists()


def test_tampered_split_embed(ds_copy: Path, run: Path, tmp_path: Path) -> None:
    _leak_test_users(ds_copy)
    out = tmp_path / "e.parquet"
    refused(cli("embed", run, "--data", ds_copy, "--out", out), ds_copy)
    assert not out.exists()


def test_tampered_item_value_pretrain(ds_copy: Path, tmp_path: Path) -> None:
    _change_item(ds_copy)
    refused(cli("pretrain", ds_copy, "--out", tmp_path / "r", *SETS), ds_copy)


def test_tampered_item_value_inspect(ds_copy: Path) -> None:
    _change_item(ds_copy)
    refused(cli("inspect", ds_copy), ds_copy)


def test_out_of_range_item_id(ds_copy: Path, tmp_path: Path) -> None:
    _item_out_of_range(ds_copy)
    refused(cli("pretrain", ds_copy, "--out", tmp_path / "r", *SETS), ds_copy)


def test_out_of_range_item_id_no_verify(ds_copy: Path, tmp_path: Path) -> None:
    """Even unverified, an item id outside the vocabulary is one line, not a crash."""
    _item_out_of_range(ds_copy)
    refused(cli("pretrain", ds_copy, "--out", tmp_path / "r", "--no-verify", *SETS),
            ("items.npy", "item id", "item index"))  # fmt: skip


def test_no_verify_escape_hatch_pretrain(ds_copy: Path, tmp_path: Path) -> None:
    _change_item(ds_copy)
    out = tmp_path / "r"
    succeeded(cli("pretrain", ds_copy, "--out", out, "--no-verify", "--no-progress", *SETS))
    assert (out / "config.yaml").is_file()


def test_no_verify_escape_hatch_inspect(ds_copy: Path) -> None:
    _change_item(ds_copy)
    succeeded(cli("inspect", ds_copy, "--no-verify"))


def test_run_on_other_dataset_embed(run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    succeeded(cli("synth", "--out", other, "--users", "200", "--items", "60", "--seed", "7"))
    out = tmp_path / "e.parquet"
    refused(cli("embed", run, "--data", other, "--out", out), "other")
    assert not out.exists()


# ============================================================================================
# run: NaN weights
# ============================================================================================


def _all_checkpoints_finite(run_dir: Path) -> None:
    from safetensors.numpy import load_file

    for f in run_dir.glob("checkpoints/*/model.safetensors"):
        for name, t in load_file(f).items():
            if t.dtype.kind == "f" and not np.isfinite(t).all():
                pytest.fail(f"{_shown(f)} holds NaN/Inf in {name}", pytrace=False)


def _names_an_existing_checkpoint(line: str, run_dir: Path) -> None:
    """The stop message names the last finite checkpoint, which must exist, or says
    truthfully that there is none."""
    m = re.search(r"(\S*checkpoints/\w+)", line)
    if m is not None:
        if not Path(m[1]).is_dir():
            pytest.fail(f"weak: the line names {_shown(m[1])}, which does not exist",
                        pytrace=False)  # fmt: skip
        return
    if list(run_dir.glob("checkpoints/*/state.json")) or "no checkpoint" not in line:
        pytest.fail(f"weak: the line names no checkpoint to go back to: {line[:200]}",
                    pytrace=False)  # fmt: skip


def test_lr_inf_never_saves_nan(ds: Path, tmp_path: Path) -> None:
    """issue 10: lr=.inf trained NaN weights, saved them as "best" and exited 0."""
    out = tmp_path / "r"
    r = cli("pretrain", ds, "--out", out, "--no-progress", *SETS, "--set", "train.lr=.inf")
    refused(r, "train.lr") if "train.lr" in r.stderr else refused(r, NONFINITE)
    _all_checkpoints_finite(out)


def test_nan_weights_stop_training(ds: Path, tmp_path: Path) -> None:
    """A huge learning rate makes weights diverge mid-run: stop with one line, no NaN best."""
    out = tmp_path / "r"
    sets = [*SETS, "--set", "train.lr=1.0e+30", "--set", "train.grad_clip=0",
            "--set", "train.warmup_frac=0", "--set", "train.epochs=3"]  # fmt: skip
    r = cli("pretrain", ds, "--out", out, "--no-progress", *sets)
    _all_checkpoints_finite(out)
    if r.exit_code != 0:
        _names_an_existing_checkpoint(refused(r, NONFINITE), out)
    else:  # it survived: then every metric it wrote is finite
        succeeded(r)
        summary = json.loads((out / "summary.json").read_text())
        assert summary.get("best_score") is None or np.isfinite(summary["best_score"])


def test_nan_after_a_checkpoint(ds: Path, tmp_path: Path) -> None:
    """Diverging after a checkpoint: stop, name that (finite) checkpoint."""
    out = tmp_path / "r"
    sets = [*SETS, "--set", "train.lr=1.0e+30", "--set", "train.grad_clip=0",
            "--set", "train.warmup_frac=0.9", "--set", "train.epochs=3",
            "--set", "train.checkpoint_every=1"]  # fmt: skip
    r = cli("pretrain", ds, "--out", out, "--no-progress", *sets)
    _all_checkpoints_finite(out)
    _names_an_existing_checkpoint(refused(r, NONFINITE), out)


def _poison(run_dir: Path) -> None:
    from safetensors.numpy import load_file, save_file

    for f in run_dir.glob("checkpoints/*/model.safetensors"):
        tensors = load_file(f)
        name = next(k for k, v in tensors.items() if k.startswith("encoder.") and v.ndim == 2)
        tensors[name] = np.full_like(tensors[name], np.nan)
        save_file(tensors, f)


def test_embed_refuses_nan_weights(run_copy: Path, ds: Path, tmp_path: Path) -> None:
    """issue 10: embed wrote all-NaN rows with exit 0."""
    _poison(run_copy)
    out = tmp_path / "e.parquet"
    refused(cli("embed", run_copy, "--data", ds, "--out", out), NONFINITE)
    assert not out.exists(), "embed wrote a file from NaN weights"
    no_temp(tmp_path)


def test_evaluate_refuses_nan_weights(run_copy: Path, ds: Path, tmp_path: Path) -> None:
    _poison(run_copy)
    out = tmp_path / "eval.json"
    refused(cli("evaluate", run_copy, "--data", ds, "--out", out, *EVAL_FAST), NONFINITE)
    assert not out.exists()


# ============================================================================================
# run: embed
# ============================================================================================


def test_embed_every_user_is_finite(run: Path, ds: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.parquet"
    succeeded(cli("embed", run, "--data", ds, "--out", out))
    _finite_embeddings(out, rows=200)
    no_temp(tmp_path)


def test_embed_onto_dataset_meta_json(run: Path, ds_copy: Path) -> None:
    """issue 10: embed --out overwrote a dataset's meta.json."""
    before = snapshot(ds_copy)
    refused(cli("embed", run, "--data", ds_copy, "--out", ds_copy / "meta.json"), "meta.json")
    unchanged(before, ds_copy)


def test_embed_onto_foreign_file(run: Path, ds: Path, tmp_path: Path) -> None:
    out = _write(tmp_path / "report.parquet", b"PAR1 not really, but mine")
    before = snapshot(out)
    refused(cli("embed", run, "--data", ds, "--out", out), out)
    unchanged(before, out)


def test_embed_onto_foreign_parquet(run: Path, ds: Path, tmp_path: Path) -> None:
    out = tmp_path / "sales.parquet"
    pl.DataFrame({"x": [1, 2]}).write_parquet(out)
    before = snapshot(out)
    refused(cli("embed", run, "--data", ds, "--out", out), out)
    unchanged(before, out)


def test_embed_replaces_own_output(run: Path, ds: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.parquet"
    succeeded(cli("embed", run, "--data", ds, "--out", out))
    succeeded(cli("embed", run, "--data", ds, "--out", out, "--which", "last"))
    _finite_embeddings(out, rows=200)
    # --checkpoint, as serve / export / neighbors / explain spell it, is the same option
    succeeded(cli("embed", run, "--data", ds, "--out", out, "--checkpoint", "last"))
    _finite_embeddings(out, rows=200)


def test_embed_locked_output(run: Path, ds: Path, tmp_path: Path) -> None:
    """issue 10: two embeds to one file shared a temp name; the second must wait its turn."""
    out = tmp_path / "e.parquet"
    with files.file_lock(out):
        refused(cli("embed", run, "--data", ds, "--out", out), "in use")
    assert not out.exists()


def test_embed_stale_lock_file_does_not_block(run: Path, ds: Path, tmp_path: Path) -> None:
    """A lock file left by a killed embed (no flock held) must not block the next one."""
    out = tmp_path / "e.parquet"
    _write(tmp_path / ".e.parquet.lock", "")
    succeeded(cli("embed", run, "--data", ds, "--out", out))


def test_embed_cleans_stale_temp(run: Path, ds: Path, tmp_path: Path) -> None:
    stale = _write(tmp_path / f".e.parquet.tmp-{dead_pid()}-zz", b"half a file")
    succeeded(cli("embed", run, "--data", ds, "--out", tmp_path / "e.parquet"))
    assert not stale.exists(), "the stale temp file of a dead embed is still there"


BAD_EMBED_OPTIONS = {
    "which middle": (["--which", "middle"], "--which"),
    "shard 3/2": (["--shard", "3/2"], "--shard"),
    "shard a/b": (["--shard", "a/b"], "--shard"),
    "shard 1/0": (["--shard", "1/0"], "--shard"),
    "shard -1/2": (["--shard", "-1/2"], "--shard"),
    "shard empty": (["--shard", ""], "--shard"),
}


@pytest.mark.parametrize("extra,word", BAD_EMBED_OPTIONS.values(), ids=list(BAD_EMBED_OPTIONS))
def test_embed_bad_option(run: Path, ds: Path, tmp_path: Path, extra: list[str],
                          word: str) -> None:  # fmt: skip
    out = tmp_path / "e.parquet"
    refused(cli("embed", run, "--data", ds, "--out", out, *extra), word)
    assert not out.exists()


def test_embed_shards_tile(run: Path, ds: Path, tmp_path: Path) -> None:
    parts = []
    for i in range(3):
        out = tmp_path / f"e{i}.parquet"
        succeeded(cli("embed", run, "--data", ds, "--out", out, "--shard", f"{i}/3"))
        parts.append(pl.read_parquet(out))
    assert sum(p.height for p in parts) == 200


BAD_SEQUENCES = {
    "missing file": ("seqs.csv", None, "seqs.csv"),
    "empty csv": ("seqs.csv", "", "seqs.csv"),
    "empty json lines": ("seqs.jsonl", "", "seqs.jsonl"),
    "non-utf8 json lines": ("seqs.jsonl", '{"id": "a", "items": ["caf\xe9"]}\n'.encode("latin-1"),
                            "seqs.jsonl"),
    "non-utf8 csv": ("seqs.csv", "id,items\na,caf\xe9\n".encode("latin-1"), "seqs.csv"),
    "json junk line": ("seqs.jsonl", '{"id": "a", "items": ["1"]}\n{oops\n', "line 2"),
    "json not a list": ("seqs.jsonl", '{"id": "a", "items": 5}\n', "line 1"),
    "json a number per line": ("seqs.jsonl", "1\n2\n", "line 1"),
    "csv without items column": ("seqs.csv", "id,things\na,1 2\n", "items"),
    "no known item": ("seqs.jsonl", '{"id": "a", "items": ["nope"]}\n', "no sequence"),
    "binary": ("seqs.csv", bytes(range(256)), "seqs.csv"),
}  # fmt: skip


@pytest.mark.parametrize("fname,content,word", BAD_SEQUENCES.values(), ids=list(BAD_SEQUENCES))
def test_embed_bad_sequences(run: Path, ds: Path, tmp_path: Path, fname: str,
                             content: str | bytes | None, word: str) -> None:  # fmt: skip
    seqs = tmp_path / fname
    if content is not None:
        _write(seqs, content)
    out = tmp_path / "e.parquet"
    refused(cli("embed", run, "--data", ds, "--out", out, "--sequences", seqs), word)
    assert not out.exists()
    no_temp(tmp_path)


def test_embed_sequences_is_a_folder(run: Path, ds: Path, tmp_path: Path) -> None:
    refused(cli("embed", run, "--data", ds, "--out", tmp_path / "e.parquet",
                "--sequences", tmp_path), tmp_path)  # fmt: skip


def test_embed_new_sequences_sane(run: Path, ds: Path, tmp_path: Path) -> None:
    ids = pl.read_parquet(ds / "items.parquet")["item_id"].to_list()
    seqs = _write(
        tmp_path / "s.jsonl",
        "".join(json.dumps({"id": f"n{k}", "items": ids[k : k + 6]}) + "\n" for k in range(5)),
    )
    out = tmp_path / "e.parquet"
    succeeded(cli("embed", run, "--data", ds, "--out", out, "--sequences", seqs))
    _finite_embeddings(out, rows=5)


RUN_DAMAGE: dict[str, tuple[Callable[[Path], object], str]] = {
    "config.yaml missing": (lambda r: (r / "config.yaml").unlink(), "config.yaml"),
    "config.yaml junk": (lambda r: (r / "config.yaml").write_text("{{{: ["), "config.yaml"),
    "config.yaml unknown key": (lambda r: (r / "config.yaml").write_text("nope: 1\n"), "nope"),
    "config.yaml other encoder": (
        lambda r: (r / "config.yaml").write_text((r / "config.yaml").read_text()
                                                  .replace("dim: 16", "dim: 32")), "model"),
    "dataset.json missing": (lambda r: (r / "dataset.json").unlink(), "dataset.json"),
    "dataset.json junk": (lambda r: (r / "dataset.json").write_text("nope"), "dataset.json"),
    "dataset.json without hash": (lambda r: (r / "dataset.json").write_text("{}"),
                                  "dataset.json"),
    "best checkpoint missing": (lambda r: shutil.rmtree(r / "checkpoints" / "best"), "best"),
    "model.safetensors corrupt": (
        lambda r: (r / "checkpoints/best/model.safetensors").write_bytes(b"\0" * 64),
        "model.safetensors"),
    "model.safetensors empty": (
        lambda r: (r / "checkpoints/best/model.safetensors").write_bytes(b""),
        "model.safetensors"),
}  # fmt: skip


@pytest.mark.parametrize("damage,word", RUN_DAMAGE.values(), ids=list(RUN_DAMAGE))
def test_embed_damaged_run(run_copy: Path, ds: Path, tmp_path: Path,
                           damage: Callable[[Path], object], word: str) -> None:  # fmt: skip
    damage(run_copy)
    before = snapshot(run_copy)
    out = tmp_path / "e.parquet"
    refused(cli("embed", run_copy, "--data", ds, "--out", out), word)
    unchanged(before, run_copy)
    assert not out.exists()


def test_embed_run_is_a_dataset(ds: Path, tmp_path: Path) -> None:
    refused(cli("embed", ds, "--data", ds, "--out", tmp_path / "e.parquet"), ds)


# ============================================================================================
# run: pretrain --out, resume, killed runs
# ============================================================================================


def test_pretrain_overwrite_foreign_folder(ds: Path, tmp_path: Path) -> None:
    out = _foreign_folder(tmp_path / "r")
    before = snapshot(out)
    refused(cli("pretrain", ds, "--out", out, "--overwrite", *SETS), out)
    unchanged(before, out)


def test_pretrain_overwrite_the_dataset(ds_copy: Path) -> None:
    before = snapshot(ds_copy)
    refused(cli("pretrain", ds_copy, "--out", ds_copy, "--overwrite", *SETS), ds_copy)
    unchanged(before, ds_copy)


def test_pretrain_overwrite_own_run(run_copy: Path, ds: Path) -> None:
    succeeded(cli("pretrain", ds, "--out", run_copy, "--overwrite", "--no-progress", *SETS))
    _all_checkpoints_finite(run_copy)


def test_pretrain_data_is_a_file(tmp_path: Path) -> None:
    f = _write(tmp_path / "log.csv", GOOD_LOG)
    refused(cli("pretrain", f, "--out", tmp_path / "r", *SETS), "log.csv")


def test_pretrain_data_is_the_raw_log_folder(tmp_path: Path) -> None:
    _write(tmp_path / "raw" / "log.csv", GOOD_LOG)
    refused(cli("pretrain", tmp_path / "raw", "--out", tmp_path / "r", *SETS), "raw")


def test_resume_nothing(ds: Path, tmp_path: Path) -> None:
    refused(cli("pretrain", ds, "--out", tmp_path / "r", "--resume"), "r")


def test_resume_junk_state(run_copy: Path, ds: Path) -> None:
    (run_copy / "checkpoints/last/state.json").write_text("{ truncated")
    refused(cli("pretrain", ds, "--out", run_copy, "--resume", "--no-progress"), "state.json")


def test_resume_state_wrong_shape(run_copy: Path, ds: Path) -> None:
    (run_copy / "checkpoints/last/state.json").write_text('{"epoch": "seven"}')
    refused(cli("pretrain", ds, "--out", run_copy, "--resume", "--no-progress"), "state.json")


def test_resume_missing_dataset_json(run_copy: Path, ds: Path) -> None:
    (run_copy / "dataset.json").unlink()
    refused(cli("pretrain", ds, "--out", run_copy, "--resume", "--no-progress"), "dataset.json")


def test_resume_junk_config(run_copy: Path, ds: Path) -> None:
    (run_copy / "config.yaml").write_text("train: [unclosed\n")
    refused(cli("pretrain", ds, "--out", run_copy, "--resume", "--no-progress"), "config.yaml")


def test_resume_on_other_dataset(run_copy: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    succeeded(cli("synth", "--out", other, "--users", "200", "--items", "60", "--seed", "3"))
    before = snapshot(run_copy)
    refused(cli("pretrain", other, "--out", run_copy, "--resume", "--no-progress"), "other")
    unchanged(before, run_copy)


def test_resume_a_finished_run(run_copy: Path, ds: Path) -> None:
    """--resume on a run that is done: nothing to do, the best checkpoint kept as it is."""
    best = run_copy / "checkpoints" / "best"
    before = snapshot(best)
    succeeded(cli("pretrain", ds, "--out", run_copy, "--resume", "--no-progress"))
    unchanged(before, best)


def test_shortest_sequences(ds: Path, tmp_path: Path) -> None:
    """encoder.max_len=1 (and augment.max_len=1): degenerate but valid."""
    sets = [a for s in TINY if "max_len" not in s for a in ("--set", s)]
    out = tmp_path / "r"
    succeeded(cli("pretrain", ds, "--out", out, "--no-progress", *sets,
                  "--set", "encoder.max_len=1", "--set", "augment.max_len=1"))  # fmt: skip
    _all_checkpoints_finite(out)


def test_resume_corrupt_model(run_copy: Path, ds: Path) -> None:
    (run_copy / "checkpoints/last/model.safetensors").write_bytes(b"\0" * 100)
    refused(cli("pretrain", ds, "--out", run_copy, "--resume", "--no-progress"),
            "model.safetensors")  # fmt: skip


def test_resume_missing_rng(run_copy: Path, ds: Path) -> None:
    (run_copy / "checkpoints/last/rng.safetensors").unlink()
    refused(cli("pretrain", ds, "--out", run_copy, "--resume", "--no-progress"), "rng")


def test_resume_state_epoch_beyond_the_end(run_copy: Path, ds: Path) -> None:
    """A state.json that claims epoch 999 of 1: nothing to do, or one line; no traceback."""
    state = run_copy / "checkpoints/last/state.json"
    data = json.loads(state.read_text())
    data["epoch"] = 999
    state.write_text(json.dumps(data))
    r = cli("pretrain", ds, "--out", run_copy, "--resume", "--no-progress")
    if r.exit_code == 0:
        succeeded(r)
    else:
        refused(r, "state.json")


@pytest.mark.parametrize(
    "setting",
    ["train.batch_size=1", "train.valid_users=2", "barlow.projector=[1]", "augment.ops=[]",
     "augment.crop_keep=0.000001", "augment.mask_rate=1"],
)  # fmt: skip
def test_degenerate_but_legal_settings(ds: Path, tmp_path: Path, setting: str) -> None:
    """Legal values at the edge: trained with finite weights, or refused in one line."""
    out = tmp_path / "r"
    r = cli("pretrain", ds, "--out", out, "--no-progress", *SETS, "--set", setting)
    _all_checkpoints_finite(out)
    if r.exit_code == 0:
        succeeded(r)
    else:
        refused(r, setting.split("=")[0])


def test_resume_after_a_half_written_metrics_line(run_copy: Path, ds: Path) -> None:
    """kill -9 in the middle of a metrics line: resume, and every line parses afterwards."""
    metrics = run_copy / "metrics.jsonl"
    with metrics.open("a") as fh:
        fh.write('{"step": 99, "lo')
    r = cli("pretrain", ds, "--out", run_copy, "--resume", "--no-progress")
    succeeded(r)
    for n, line in enumerate(metrics.read_text().splitlines(), 1):
        try:
            json.loads(line)
        except ValueError:
            pytest.fail(f"metrics.jsonl line {n} does not parse: {line[:80]!r}", pytrace=False)


def test_evaluate_run_with_junk_summary(run_copy: Path, ds: Path, tmp_path: Path) -> None:
    """summary.json is a report, not needed to evaluate: junk there is not fatal."""
    (run_copy / "summary.json").write_text("{oops")
    r = cli("evaluate", run_copy, "--data", ds, "--out", tmp_path / "ev.json", *EVAL_FAST)
    if r.exit_code == 0:
        succeeded(r)
    else:
        refused(r, "summary.json")


def _killed_before_first_checkpoint(run_copy: Path) -> Path:
    shutil.rmtree(run_copy / "checkpoints")
    for f in ("summary.json", "metrics.jsonl"):
        (run_copy / f).unlink(missing_ok=True)
    return run_copy


def test_killed_before_checkpoint_resume(run_copy: Path, ds: Path) -> None:
    """issue 10: a run killed before its first checkpoint could not resume."""
    r = _killed_before_first_checkpoint(run_copy)
    succeeded(cli("pretrain", ds, "--out", r, "--resume", "--no-progress"))
    assert (r / "checkpoints/last/state.json").is_file()


def test_killed_before_checkpoint_restart(run_copy: Path, ds: Path) -> None:
    """...nor restart without --overwrite."""
    r = _killed_before_first_checkpoint(run_copy)
    succeeded(cli("pretrain", ds, "--out", r, "--no-progress", *SETS))
    assert (r / "checkpoints/last/state.json").is_file()


def _env() -> dict[str, str]:
    src = str(Path(seqtwins.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def test_two_pretrains_one_out(ds: Path, tmp_path: Path) -> None:
    """issue 10: two pretrain into one --out interleaved their metrics; the second is refused
    while the first runs, and after a kill -9 the folder is free again."""
    out = tmp_path / "r"
    sets = [a for s in TINY if not s.startswith("train.epochs") for a in ("--set", s)]
    cmd = [sys.executable, "-m", "seqtwins", "pretrain", str(ds), "--out", str(out),
           "--no-progress", *sets, "--set", "train.epochs=500"]  # fmt: skip
    err = tmp_path / "first.err"
    with err.open("wb") as fh:
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=fh)
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.jsonl").is_file():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the first pretrain did not start: {err.read_text()[-300:]!r}")
            time.sleep(0.1)
        r = cli("pretrain", ds, "--out", out, "--overwrite", "--no-progress", *SETS)
        if proc.poll() is not None:
            pytest.fail("the second pretrain broke the first one", pytrace=False)
        refused(r, "in use")
        refused(cli("pretrain", ds, "--out", out, "--resume", "--no-progress"), "in use")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    succeeded(cli("pretrain", ds, "--out", out, "--overwrite", "--no-progress", *SETS))


# ============================================================================================
# run: evaluate, report, run, tune, download
# ============================================================================================

BAD_EVALUATE = {
    "task unknown": (["--tasks", "gender"], "gender"),
    "fraction 0": (["--fractions", "0"], "0"),
    "fraction 1.5": (["--fractions", "1.5"], "1.5"),
    "fraction nan": (["--fractions", "nan"], "nan"),
    "seeds 0": (["--seeds", "0"], "seeds"),
    "protocol knn": (["--protocol", "knn"], "knn"),
    "baseline unknown": (["--baselines", "magic"], "magic"),
}


@pytest.mark.parametrize("extra,word", BAD_EVALUATE.values(), ids=list(BAD_EVALUATE))
def test_evaluate_bad_option(run: Path, ds: Path, tmp_path: Path, extra: list[str],
                             word: str) -> None:  # fmt: skip
    out = tmp_path / "eval.json"
    refused(cli("evaluate", run, "--data", ds, "--out", out, "--no-progress", *extra), word)
    assert not out.exists()


def test_evaluate_fraction_with_no_labelled_user(run: Path, ds: Path, tmp_path: Path) -> None:
    """A label budget so small that no user is labelled: skipped or one line."""
    out = tmp_path / "eval.json"
    args = ["--tasks", "favorite_category", "--fractions", "0.0001", "--seeds", "1",
            "--baselines", "majority", "--no-progress"]  # fmt: skip
    r = cli("evaluate", run, "--data", ds, "--out", out, *args)
    if r.exit_code == 0:
        succeeded(r)
        json.loads(out.read_text())
    else:
        refused(r, "0.0001")


def test_evaluate_run_trained_with_categories(ds: Path, tmp_path: Path) -> None:
    """issue 10: evaluate crashed on a run trained with encoder.use_categories=true."""
    r = tmp_path / "r"
    succeeded(cli("pretrain", ds, "--out", r, "--no-progress", *SETS,
                  "--set", "encoder.use_categories=true"))  # fmt: skip
    out = tmp_path / "eval.json"
    succeeded(cli("evaluate", r, "--data", ds, "--out", out, *EVAL_FAST))
    assert json.loads(out.read_text())["methods"]


def test_evaluate_onto_foreign_file(run: Path, ds: Path, tmp_path: Path) -> None:
    out = _write(tmp_path / "results.json", '{"mine": true}\n')
    before = snapshot(out)
    refused(cli("evaluate", run, "--data", ds, "--out", out, *EVAL_FAST), out)
    unchanged(before, out)


def test_evaluate_locked_output(run: Path, ds: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    with files.file_lock(out):
        refused(cli("evaluate", run, "--data", ds, "--out", out, *EVAL_FAST), "in use")
    assert not out.exists()


def test_evaluate_same_run_twice(run: Path, ds: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    refused(cli("evaluate", run, run, "--data", ds, "--out", out, *EVAL_FAST), "run")
    assert not out.exists()


def test_config_is_a_dataset_meta_json(ds: Path, tmp_path: Path) -> None:
    refused(cli("pretrain", ds, "--out", tmp_path / "r", "--config", ds / "meta.json", *SETS),
            "unknown setting")  # fmt: skip


def test_evaluate_run_is_a_file(ds: Path, tmp_path: Path) -> None:
    f = _write(tmp_path / "run.txt", "x")
    refused(cli("evaluate", f, "--data", ds, "--out", tmp_path / "e.json", *EVAL_FAST), "run.txt")


BAD_EVAL_JSON = {
    "missing": (None, "eval.json"),
    "junk": ("{not json", "eval.json"),
    "empty object": ("{}", "eval.json"),
    "a list": ("[1, 2, 3]", "eval.json"),
    "non-utf8": (b"\xff\xfe{}", "eval.json"),
}


@pytest.mark.parametrize("content,word", BAD_EVAL_JSON.values(), ids=list(BAD_EVAL_JSON))
def test_report_bad_eval_json(tmp_path: Path, content: str | bytes | None, word: str) -> None:
    f = tmp_path / "eval.json"
    if content is not None:
        _write(f, content)
    out = tmp_path / "rep"
    refused(cli("report", f, "--out", out), word)
    assert not out.exists() or not any(out.iterdir())


def test_report_eval_json_missing_artifacts(evaljson: Path, tmp_path: Path) -> None:
    ev = Path(shutil.copytree(evaljson.parent, tmp_path / "ev")) / "eval.json"
    shutil.rmtree(ev.parent / "eval_artifacts")
    refused(cli("report", ev, "--out", tmp_path / "rep"), "eval_artifacts")


def test_report_same_eval_twice(evaljson: Path, tmp_path: Path) -> None:
    r = cli("report", evaljson, evaljson, "--out", tmp_path / "rep")
    if r.exit_code == 0:
        succeeded(r)
    else:
        refused(r, "eval.json")


def test_report_onto_foreign_report(evaljson: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    _write(out / "report.md", "# my own report\n")
    before = snapshot(out)
    refused(cli("report", evaljson, "--out", out), out)
    unchanged(before, out)


def _experiment(tmp_path: Path, body: str) -> Path:
    return _write(tmp_path / "exp.yaml", body)


GOOD_EXP = """name: tiny
data: {synth: {users: 200, items: 60}}
pretrain:
  encoder: {dim: 16, heads: 2, ff_dim: 32, max_len: 12}
  augment: {max_len: 12}
  barlow: {projector: [32, 32]}
  train: {epochs: 1, batch_size: 32, valid_users: 20}
objectives: {barlow: {}}
evaluate: {tasks: [favorite_category], fractions: [1.0], seeds: 1, baselines: [majority]}
"""
BAD_EXPERIMENTS = {
    "bad yaml": ("name: [x\n", "exp.yaml"),
    "unknown key": (GOOD_EXP + "extra: 1\n", "extra"),
    "no data": ("name: x\n", "data"),
    "synth and prepare": (GOOD_EXP.replace("data: {synth: {users: 200, items: 60}}",
                                           "data: {synth: {}, prepare: {input: x}}"), "data"),
    "unknown objective": (GOOD_EXP.replace("{barlow: {}}", "{simclr: {}}"), "simclr"),
    "no objectives": (GOOD_EXP.replace("{barlow: {}}", "{}"), "objectives"),
    "bad synth setting": (GOOD_EXP.replace("users: 200", "users: -1"), "users"),
    "unknown synth setting": (GOOD_EXP.replace("users: 200", "people: 200"), "people"),
    "prepare input missing": (GOOD_EXP.replace("{synth: {users: 200, items: 60}}",
                                               "{prepare: {input: /nonexistent/log.csv}}"),
                              "log.csv"),
    "unset variable": (GOOD_EXP.replace("{synth: {users: 200, items: 60}}",
                                        "{prepare: {input: '${NOPE_UNSET}/x.csv'}}"),
                       "NOPE_UNSET"),
    "prepare min_user_count 0 names the key": (
        GOOD_EXP.replace("{synth: {users: 200, items: 60}}",
                         "{prepare: {input: LOG, min_user_count: 0}}"),
        "data.prepare.min_user_count"),
    "pretrain setting wrong type": (GOOD_EXP.replace("epochs: 1", "epochs: one"), "epochs"),
    "evaluate fraction 2": (GOOD_EXP.replace("fractions: [1.0]", "fractions: [2.0]"), "2"),
    "evaluate task unknown": (GOOD_EXP.replace("[favorite_category]", "[gender]"), "gender"),
}  # fmt: skip


@pytest.mark.parametrize("body,word", BAD_EXPERIMENTS.values(), ids=list(BAD_EXPERIMENTS))
def test_run_bad_experiment(tmp_path: Path, log: Path, body: str, word: str) -> None:
    exp = _experiment(tmp_path, body.replace("LOG", str(log)))
    out = tmp_path / "out"
    refused(cli("run", exp, "--out", out, "--no-progress"), word)
    if list(out.glob("*/runs/*/checkpoints")):
        pytest.fail("weak: refused only after training (not checked up front)", pytrace=False)


def test_run_set_unknown(tmp_path: Path) -> None:
    exp = _experiment(tmp_path, GOOD_EXP)
    refused(cli("run", exp, "--out", tmp_path / "o", "--set", "pretrain.trian.epochs=2"), "trian")


def test_run_experiment_missing(tmp_path: Path) -> None:
    refused(cli("run", tmp_path / "nope.yaml", "--out", tmp_path / "o"), "nope.yaml")


def test_run_data_folder_taken_by_foreign_files(tmp_path: Path) -> None:
    """`run` replaces <out>/<name>/data when its spec changes; never a folder it did not write."""
    exp = _experiment(tmp_path, GOOD_EXP)
    data = _foreign_folder(tmp_path / "o" / "tiny" / "data")
    before = snapshot(data)
    refused(cli("run", exp, "--out", tmp_path / "o", "--no-progress"), "data")
    unchanged(before, data)


BAD_TUNE = {
    "objective unknown": (["--objectives", "simclr"], "simclr"),
    "trials 0": (["--trials", "0"], "--trials"),
    "timeout negative": (["--timeout", "-5"], "--timeout"),
    "set unknown": (["--set", "tune.budget=3"], "tune.budget"),
}


@pytest.mark.parametrize("extra,word", BAD_TUNE.values(), ids=list(BAD_TUNE))
def test_tune_bad_option(tmp_path: Path, extra: list[str], word: str) -> None:
    exp = _experiment(tmp_path, GOOD_EXP)
    out = tmp_path / "o"
    refused(cli("tune", exp, "--out", out, "--no-progress", *extra), word)
    assert not list(out.glob("*/tune/*.yaml"))


def test_tune_write_preset_onto_foreign_file(tmp_path: Path) -> None:
    few_categories = "{synth: {users: 200, items: 60, categories: 4, cluster_core: 2}}"
    exp = _experiment(tmp_path, GOOD_EXP.replace("{synth: {users: 200, items: 60}}",
                                                 few_categories))  # fmt: skip
    preset = _write(tmp_path / "my.yaml", "# my own notes\n")
    before = snapshot(preset)
    refused(cli("tune", exp, "--out", tmp_path / "o", "--trials", "1", "--no-progress",
                "--write-preset", preset), "my.yaml")  # fmt: skip
    unchanged(before, preset)


def test_download_unknown_name(tmp_path: Path) -> None:
    refused(cli("download", "ml-5b", "--dir", tmp_path), "ml-5b")


def test_download_dir_is_a_file(tmp_path: Path) -> None:
    f = _write(tmp_path / "cache", "x")
    before = snapshot(f)
    refused(cli("download", "ml-100k", "--dir", f, "--base-url", "http://127.0.0.1:9"), "cache")
    unchanged(before, f)


# ============================================================================================
# more of what a hostile new user tries
# ============================================================================================


def test_scientific_notation_learning_rate(ds: Path, tmp_path: Path) -> None:
    """``--set train.lr=3e-3`` (how everybody writes a learning rate) must be a number."""
    sets = [a for s in TINY for a in ("--set", s)]
    succeeded(cli("pretrain", ds, "--out", tmp_path / "r", "--no-progress", *sets,
                  "--set", "train.lr=3e-3"))  # fmt: skip


def test_inspect_a_run_folder(run: Path) -> None:
    refused(cli("inspect", run), run)


def test_embed_data_missing(run: Path, tmp_path: Path) -> None:
    refused(cli("embed", run, "--data", tmp_path / "nods", "--out", tmp_path / "e.parquet"),
            "nods")  # fmt: skip


def test_embed_out_is_the_sequences_file(run: Path, ds: Path, tmp_path: Path) -> None:
    ids = pl.read_parquet(ds / "items.parquet")["item_id"].to_list()
    seqs = _write(tmp_path / "s.csv", f"id,items\na,{ids[0]} {ids[1]}\n")
    before = snapshot(seqs)
    refused(cli("embed", run, "--data", ds, "--out", seqs, "--sequences", seqs), "s.csv")
    unchanged(before, seqs)


def test_evaluate_out_is_the_run_config(run_copy: Path, ds: Path) -> None:
    before = snapshot(run_copy)
    refused(cli("evaluate", run_copy, "--data", ds, "--out", run_copy / "config.yaml",
                *EVAL_FAST), "config.yaml")  # fmt: skip
    unchanged(before, run_copy)


def test_prepare_out_symlink_to_foreign_folder(tmp_path: Path, log: Path) -> None:
    target = _foreign_folder(tmp_path / "precious")
    (tmp_path / "out").symlink_to(target)
    before = snapshot(target)
    refused(cli("prepare", log, "--out", tmp_path / "out", "--overwrite"), "out")
    unchanged(before, target)


def test_embed_out_symlink_to_foreign_file(run: Path, ds: Path, tmp_path: Path) -> None:
    target = _write(tmp_path / "precious.txt", "mine\n")
    (tmp_path / "e.parquet").symlink_to(target)
    before = snapshot(target)
    refused(cli("embed", run, "--data", ds, "--out", tmp_path / "e.parquet"), "e.parquet")
    unchanged(before, target)


@pytest.mark.parametrize("kind", ["prepare", "synth"])
def test_out_is_the_current_folder(kind: str, tmp_path: Path, log: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """``--out .`` with --overwrite, run in a folder of one's own files."""
    here = _foreign_folder(tmp_path / "home")
    monkeypatch.chdir(here)
    before = snapshot(here)
    args = ["prepare", log] if kind == "prepare" else ["synth", "--users", "50", "--items", "30"]
    refused(cli(*args, "--out", ".", "--overwrite"), ".")
    unchanged(before, here)


def _fail_numpy_save(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def save(*_a: object, **_k: object) -> None:
        raise exc

    monkeypatch.setattr(np, "save", save)


@pytest.mark.parametrize("kind", ["prepare", "synth"])
def test_disk_full_while_writing_dataset(kind: str, tmp_path: Path, log: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    _fail_numpy_save(monkeypatch, OSError(28, "No space left on device"))
    out = tmp_path / "out"
    args = ["prepare", log] if kind == "prepare" else ["synth", "--users", "50", "--items", "30"]
    refused(cli(*args, "--out", out), "No space left")
    assert not out.exists(), "a half-written dataset was left"
    no_temp(tmp_path)


def test_ctrl_c_while_writing_dataset(tmp_path: Path, log: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    _fail_numpy_save(monkeypatch, KeyboardInterrupt())
    out = tmp_path / "out"
    r = cli("prepare", log, "--out", out)
    _note("expected", "exit 130, 'interrupted', nothing half-written")
    _no_traceback(r)
    if r.exit_code != 130:
        pytest.fail(f"exit {r.exit_code} (expected 130): {_tail(r)}", pytrace=False)
    assert not out.exists(), "a half-written dataset was left"
    no_temp(tmp_path)


def _fail_parquet_write(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    import pyarrow.parquet as pq

    def write_table(*_a: object, **_k: object) -> None:
        raise exc

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)


def test_disk_full_while_embedding(run: Path, ds: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    _fail_parquet_write(monkeypatch, OSError(28, "No space left on device"))
    out = tmp_path / "e.parquet"
    refused(cli("embed", run, "--data", ds, "--out", out), "No space left")
    assert not out.exists(), "a half-written embeddings file was left"
    no_temp(tmp_path)


def test_disk_full_keeps_the_previous_embeddings(
    run: Path, ds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "e.parquet"
    succeeded(cli("embed", run, "--data", ds, "--out", out))
    before = snapshot(out)
    _fail_parquet_write(monkeypatch, OSError(28, "No space left on device"))
    refused(cli("embed", run, "--data", ds, "--out", out), "No space left")
    unchanged(before, out)
    no_temp(tmp_path)


def test_prepare_set_bad_value(tmp_path: Path, log: Path) -> None:
    """issue 10: prepare takes --config/--set like pretrain."""
    _prepare_refused(tmp_path, log, ["--set", "holdout=-1"], "holdout")


def test_prepare_set_unknown_key(tmp_path: Path, log: Path) -> None:
    _prepare_refused(tmp_path, log, ["--set", "hold_out=3"], "hold_out")


def test_prepare_config_bad_yaml(tmp_path: Path, log: Path) -> None:
    cfg = _write(tmp_path / "prep.yaml", "holdout: [1\n")
    _prepare_refused(tmp_path, log, ["--config", str(cfg)], "prep.yaml")


def test_resume_cleans_stale_checkpoint_temp(run_copy: Path, ds: Path) -> None:
    """A pretrain killed while writing a checkpoint leaves a hidden temp folder beside it."""
    stale = _write(run_copy / "checkpoints" / f".last.tmp-{dead_pid()}-ab" / "model.safetensors",
                   b"\0" * 1000).parent  # fmt: skip
    succeeded(cli("pretrain", ds, "--out", run_copy, "--resume", "--no-progress"))
    assert not stale.exists(), "the stale checkpoint temp of a dead pretrain is still there"


def test_evaluate_cleans_stale_temp(run: Path, ds: Path, tmp_path: Path) -> None:
    stale = _write(tmp_path / f".eval.json.tmp-{dead_pid()}-qq", "{half")
    succeeded(cli("evaluate", run, "--data", ds, "--out", tmp_path / "eval.json", *EVAL_FAST))
    assert not stale.exists(), "the stale temp file of a dead evaluate is still there"


def test_outputs_in_new_nested_folders(run: Path, ds: Path, tmp_path: Path, log: Path) -> None:
    """Missing parent folders of --out are created."""
    succeeded(cli("prepare", log, "--out", tmp_path / "a" / "b" / "ds"))
    out = tmp_path / "c" / "d" / "e.parquet"
    succeeded(cli("embed", run, "--data", ds, "--out", out))
    _finite_embeddings(out, rows=200)


@pytest.mark.parametrize("kind", ["prepare", "synth", "pretrain", "embed", "evaluate"])
def test_out_name_too_long(kind: str, tmp_path: Path, ctx: dict[str, Path]) -> None:
    """A file name over the file system's limit (255 bytes): an OS error like any other."""
    name = "x" * 300 + (".parquet" if kind == "embed" else ".json" if kind == "evaluate" else "")
    refused(cli(*_command(kind, tmp_path / name, ctx)), "xxxxxxxx")
    no_temp(tmp_path)


@pytest.mark.parametrize("kind", ["prepare", "embed"])
def test_out_name_at_the_limit(kind: str, tmp_path: Path, ctx: dict[str, Path]) -> None:
    """A legal 250-byte name, whose hidden temporary sibling name would be too long:
    written, or one line (never a traceback)."""
    name = "y" * (250 - len(".parquet")) + ".parquet" if kind == "embed" else "y" * 250
    out = tmp_path / name
    r = cli(*_command(kind, out, ctx))
    if r.exit_code == 0:
        succeeded(r)
        assert out.exists()
    else:
        refused(r, "yyyyyyyy")
    no_temp(tmp_path)


# ============================================================================================
# ownership between seqtwins' own outputs: replace only an output of the same kind
# ============================================================================================


def test_prepare_overwrite_a_run(tmp_path: Path, log: Path, run_copy: Path) -> None:
    before = snapshot(run_copy)
    refused(cli("prepare", log, "--out", run_copy, "--overwrite"), run_copy)
    unchanged(before, run_copy)


def test_pretrain_overwrite_a_report(ds: Path, evaljson: Path, tmp_path: Path) -> None:
    rep = tmp_path / "rep"
    succeeded(cli("report", evaljson, "--out", rep))
    before = snapshot(rep)
    refused(cli("pretrain", ds, "--out", rep, "--overwrite", *SETS), rep)
    unchanged(before, rep)


def test_report_into_a_dataset(ds_copy: Path, evaljson: Path) -> None:
    before = snapshot(ds_copy)
    refused(cli("report", evaljson, "--out", ds_copy), ds_copy)
    unchanged(before, ds_copy)


def test_report_into_a_folder_of_foreign_plots(evaljson: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    _write(out / "next_item.png", b"\x89PNG my own plot")
    before = snapshot(out)
    refused(cli("report", evaljson, "--out", out), out)
    unchanged(before, out)


def test_report_replaces_own_report(evaljson: Path, tmp_path: Path) -> None:
    rep = tmp_path / "rep"
    succeeded(cli("report", evaljson, "--out", rep))
    succeeded(cli("report", evaljson, "--out", rep))
    assert (rep / "report.md").read_text().startswith("#")


def test_embed_onto_eval_json(run: Path, ds: Path, evaljson: Path, tmp_path: Path) -> None:
    ev = Path(shutil.copytree(evaljson.parent, tmp_path / "ev")) / "eval.json"
    before = snapshot(ev)
    refused(cli("embed", run, "--data", ds, "--out", ev), "eval.json")
    unchanged(before, ev)


def test_embed_onto_run_config(run_copy: Path, ds: Path) -> None:
    before = snapshot(run_copy)
    refused(cli("embed", run_copy, "--data", ds, "--out", run_copy / "config.yaml"), "config.yaml")
    unchanged(before, run_copy)


def test_evaluate_onto_embeddings(run: Path, ds: Path, tmp_path: Path) -> None:
    emb = tmp_path / "e.parquet"
    succeeded(cli("embed", run, "--data", ds, "--out", emb))
    before = snapshot(emb)
    refused(cli("evaluate", run, "--data", ds, "--out", emb, *EVAL_FAST), "e.parquet")
    unchanged(before, emb)


def test_evaluate_replaces_own_eval_json(run: Path, ds: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    succeeded(cli("evaluate", run, "--data", ds, "--out", out, *EVAL_FAST))
    succeeded(cli("evaluate", run, "--data", ds, "--out", out, *EVAL_FAST))
    assert json.loads(out.read_text())["methods"]
    no_temp(tmp_path)


def test_prepare_input_inside_the_dataset_it_replaces(ds_copy: Path) -> None:
    """A log kept inside the dataset folder it would replace: --overwrite must not take it."""
    f = _write(ds_copy / "log.csv", GOOD_LOG)
    before = snapshot(ds_copy)
    refused(cli("prepare", f, "--out", ds_copy, "--overwrite"), "log.csv")
    unchanged(before, ds_copy)


def test_pretrain_overwrite_legacy_run(run_copy: Path, ds: Path) -> None:
    """A run written before the marker existed is still recognised (config.yaml +
    dataset.json) and may be replaced."""
    (run_copy / files.MARKER).unlink(missing_ok=True)
    succeeded(cli("pretrain", ds, "--out", run_copy, "--overwrite", "--no-progress", *SETS))


@pytest.mark.parametrize("flag", ["--overwrite", "--no-overwrite"])
def test_pretrain_into_lookalike_folder(ds: Path, tmp_path: Path, flag: str) -> None:
    """Another tool's project that also has a config.yaml and a dataset.json is not a run:
    its files are not replaced, with or without --overwrite."""
    out = _foreign_folder(tmp_path / "project")
    _write(out / "config.yaml", "name: my-project\nlr: 3\n")
    _write(out / "dataset.json", '{"source": "survey 2019"}\n')
    before = snapshot(out)
    refused(cli("pretrain", ds, "--out", out, flag, "--no-progress", *SETS), out)
    unchanged(before, out)


def test_prepare_overwrite_lookalike_folder(tmp_path: Path, log: Path) -> None:
    """A folder with somebody else's meta.json is not a dataset."""
    out = _foreign_folder(tmp_path / "project")
    _write(out / "meta.json", '{"author": "me", "version": 1}\n')
    before = snapshot(out)
    refused(cli("prepare", log, "--out", out, "--overwrite"), out)
    unchanged(before, out)


def test_synth_overwrite_folder_with_junk_marker(tmp_path: Path) -> None:
    out = _foreign_folder(tmp_path / "s")
    _write(out / files.MARKER, "not json\n")
    before = snapshot(out)
    refused(cli("synth", "--out", out, "--users", "50", "--items", "30", "--overwrite"), out)
    unchanged(before, out)


def test_prepare_input_symlink_into_the_dataset_it_replaces(ds_copy: Path, tmp_path: Path) -> None:
    f = _write(ds_copy / "log.csv", GOOD_LOG)
    link = tmp_path / "link.csv"
    link.symlink_to(f)
    before = snapshot(ds_copy)
    refused(cli("prepare", link, "--out", ds_copy, "--overwrite"), ("log.csv", "link.csv"))
    unchanged(before, ds_copy)


def test_prepare_items_table_inside_the_dataset_it_replaces(ds_copy: Path, log: Path) -> None:
    items = _write(ds_copy / "items.csv", "item_id,categories\ni1,a\ni2,b\n")
    before = snapshot(ds_copy)
    refused(cli("prepare", log, "--items", items, "--out", ds_copy, "--overwrite"), "items.csv")
    unchanged(before, ds_copy)


def test_evaluate_beside_a_foreign_artifacts_folder(run: Path, ds: Path, tmp_path: Path) -> None:
    """evaluate also writes <stem>_artifacts/; a folder of that name that is not its own
    stays as it is."""
    arts = _foreign_folder(tmp_path / "eval_artifacts")
    before = snapshot(arts)
    r = cli("evaluate", run, "--data", ds, "--out", tmp_path / "eval.json", *EVAL_FAST)
    unchanged(before, arts)
    refused(r, "eval_artifacts")


def test_run_into_a_foreign_experiment_folder(tmp_path: Path) -> None:
    """`run` writes <out>/<name>/experiment.yaml; somebody's own folder there is not its."""
    exp = _experiment(tmp_path / "cfg", GOOD_EXP)
    root = _foreign_folder(tmp_path / "o" / "tiny")
    _write(root / "experiment.yaml", "# my lab notebook\n")
    before = snapshot(root)
    r = cli("run", exp, "--out", tmp_path / "o", "--no-progress")
    unchanged(before, root)
    refused(r, "tiny")


def test_read_only_inputs_are_usable(ds_copy: Path, run_copy: Path, tmp_path: Path) -> None:
    """A dataset and a run on a read-only share can be inspected, embedded and evaluated:
    reading takes no lock file and cleans nothing inside them."""
    with frozen(ds_copy), frozen(run_copy):
        succeeded(cli("inspect", ds_copy))
        out = tmp_path / "e.parquet"
        succeeded(cli("embed", run_copy, "--data", ds_copy, "--out", out))
        _finite_embeddings(out, rows=200)
        succeeded(cli("evaluate", run_copy, "--data", ds_copy, "--out", tmp_path / "ev.json",
                      *EVAL_FAST))  # fmt: skip


def test_pretrain_from_a_read_only_dataset(ds_copy: Path, tmp_path: Path) -> None:
    with frozen(ds_copy):
        succeeded(cli("pretrain", ds_copy, "--out", tmp_path / "r", "--no-progress", *SETS))


def test_prepare_overwrite_keeps_a_note_in_the_dataset(tmp_path: Path, log: Path) -> None:
    """--overwrite replaces seqtwins' dataset; a note the user put in its folder is not
    seqtwins' to delete: kept, or the replacement refused in one line."""
    out = tmp_path / "out"
    succeeded(cli("prepare", log, "--out", out))
    note = _write(out / "NOTES.md", "where this data came from\n")
    before = snapshot(note)
    r = cli("prepare", log, "--out", out, "--overwrite")
    unchanged(before, note)
    if r.exit_code == 0:
        succeeded(r)
    else:
        refused(r, "NOTES.md")


def test_pretrain_overwrite_keeps_a_note_in_the_run(run_copy: Path, ds: Path) -> None:
    note = _write(run_copy / "NOTES.md", "why this run\n")
    before = snapshot(note)
    r = cli("pretrain", ds, "--out", run_copy, "--overwrite", "--no-progress", *SETS)
    unchanged(before, note)
    if r.exit_code == 0:
        succeeded(r)
    else:
        refused(r, "NOTES.md")


def test_inspect_dataset_with_extra_files(ds_copy: Path) -> None:
    """A README dropped into a dataset folder does not make it unreadable."""
    _write(ds_copy / "README.txt", "notes\n")
    succeeded(cli("inspect", ds_copy))


# ============================================================================================
# the public Python API (issue 10: seqtwins.Run.open(path).embed([[item ids], ...]))
# ============================================================================================


def _api(code: str, **names: object) -> Any:
    """Evaluate ``code`` with ``seqtwins`` and ``names`` in scope; a missing API or an error
    that is not a one-line SeqtwinsError is reported like a traceback on the CLI."""
    try:
        return eval(code, {"seqtwins": seqtwins, **names})  # noqa: S307 - our own literals
    except seqtwins.SeqtwinsError:
        raise
    except Exception as e:  # noqa: BLE001
        first = str(e).splitlines()[0][:200] if str(e) else ""
        pytest.fail(f"traceback: {type(e).__name__}: {first}", pytrace=False)


def api_refused(code: str, word: str, **names: object) -> None:
    _note("command", "python: " + code)
    _note("expected", f"SeqtwinsError, one line naming {_shown(word)}")
    try:
        _api(code, **names)
    except seqtwins.SeqtwinsError as e:
        text = str(e)
        if "\n" in text or word.lower() not in text.lower():
            pytest.fail(f"weak: {_shown(text)[:200]}", pytrace=False)
        return
    pytest.fail("no error raised", pytrace=False)


def test_api_open_missing_run(tmp_path: Path) -> None:
    api_refused("seqtwins.Run.open(p)", "nope", p=tmp_path / "nope")


def test_api_open_a_dataset_as_run(ds: Path) -> None:
    api_refused("seqtwins.Run.open(p)", "config.yaml", p=ds)


def test_api_embed_a_string(run: Path) -> None:
    api_refused("seqtwins.Run.open(p).embed('it1 it2')", "list", p=run)


def test_api_embed_unknown_items(run: Path) -> None:
    api_refused("seqtwins.Run.open(p).embed([['nope', 'never']])", "known", p=run)


def test_api_prepare_missing_input(tmp_path: Path) -> None:
    api_refused("seqtwins.prepare(p, o)", "nope.csv", p=tmp_path / "nope.csv", o=tmp_path / "o")


def test_api_pretrain_nan_setting(ds: Path, tmp_path: Path) -> None:
    api_refused("seqtwins.pretrain(d, o, overrides=['train.lr=.nan'])", "train.lr", d=ds,
                o=tmp_path / "r")  # fmt: skip


def test_api_synth_zero_users(tmp_path: Path) -> None:
    api_refused("seqtwins.synth(o, users=0)", "users", o=tmp_path / "s")


def test_api_evaluate_bad_fraction(run: Path, ds: Path, tmp_path: Path) -> None:
    api_refused("seqtwins.evaluate([r], d, o, fractions=[2.0])", "fraction", r=run, d=ds,
                o=tmp_path / "e.json")  # fmt: skip


def test_api_embed_an_empty_sequence(run: Path) -> None:
    api_refused("seqtwins.Run.open(p).embed([[]])", "sequence", p=run)


def test_api_embed_when_the_dataset_moved(run_copy: Path, tmp_path: Path) -> None:
    """Run.embed opens the recorded dataset; gone from there, it says where it looked."""
    info = json.loads((run_copy / "dataset.json").read_text())
    info["path"] = str(tmp_path / "moved-away")
    (run_copy / "dataset.json").write_text(json.dumps(info))
    api_refused("seqtwins.Run.open(p).embed([['x']])", "moved-away", p=run_copy)


def test_api_embed_sane(run: Path, ds: Path) -> None:
    ids = pl.read_parquet(ds / "items.parquet")["item_id"].to_list()
    _note("command", "python: seqtwins.Run.open(p).embed(seqs)")
    _note("expected", "a finite (2, 16) float array")
    emb = _api("seqtwins.Run.open(p).embed(seqs)", p=run, seqs=[ids[:5], ids[5:8]])
    emb = np.asarray(emb)
    if emb.shape != (2, 16) or not np.isfinite(emb).all():
        pytest.fail(f"embeddings of shape {emb.shape}, finite: {np.isfinite(emb).all()}",
                    pytrace=False)  # fmt: skip


# ============================================================================================
# OS errors on output paths, for every command that writes
# ============================================================================================


def _command(kind: str, out: Path, ctx: dict[str, Path]) -> list[object]:
    return {
        "prepare": lambda: ["prepare", ctx["log"], "--out", out],
        "synth": lambda: ["synth", "--out", out, "--users", "50", "--items", "30"],
        "pretrain": lambda: ["pretrain", ctx["ds"], "--out", out, "--no-progress", *SETS],
        "embed": lambda: ["embed", ctx["run"], "--data", ctx["ds"], "--out", out],
        "evaluate": lambda: ["evaluate", ctx["run"], "--data", ctx["ds"], "--out", out,
                             *EVAL_FAST],
        "report": lambda: ["report", ctx["eval"], "--out", out],
        "run": lambda: ["run", ctx["exp"], "--out", out, "--no-progress"],
        "tune": lambda: ["tune", ctx["exp"], "--out", out, "--trials", "1", "--no-progress"],
    }[kind]()  # fmt: skip


FILE_OUTPUTS = ("embed", "evaluate")
COMMANDS = ("prepare", "synth", "pretrain", "embed", "evaluate", "report", "run", "tune")


@pytest.fixture
def ctx(tmp_path: Path, log: Path, ds: Path, run: Path, evaljson: Path) -> dict[str, Path]:
    return {"log": log, "ds": ds, "run": run, "eval": evaljson,
            "exp": _experiment(tmp_path / "cfg", GOOD_EXP)}  # fmt: skip


def _name(kind: str) -> str:
    return {"embed": "e.parquet", "evaluate": "eval.json"}.get(kind, "out")


@pytest.mark.parametrize("kind", COMMANDS)
def test_os_error_readonly_folder(kind: str, readonly: Path, ctx: dict[str, Path]) -> None:
    out = readonly / _name(kind)
    before = snapshot(readonly)
    refused(cli(*_command(kind, out, ctx)), readonly)
    unchanged(before, readonly)


@pytest.mark.parametrize("kind", COMMANDS)
def test_os_error_out_parent_is_a_file(kind: str, tmp_path: Path, ctx: dict[str, Path]) -> None:
    parent = _write(tmp_path / "afile", "mine\n")
    before = snapshot(parent)
    refused(cli(*_command(kind, parent / _name(kind), ctx)), "afile")
    unchanged(before, parent)


@pytest.mark.parametrize("kind", COMMANDS)
def test_os_error_out_is_the_wrong_kind(kind: str, tmp_path: Path, ctx: dict[str, Path]) -> None:
    """A folder where a file is expected (embed, evaluate) or a file where a folder is."""
    if kind in FILE_OUTPUTS:
        out = tmp_path / _name(kind)
        _write(out / "inside.txt", "mine\n")
    else:
        out = _write(tmp_path / "out", "mine\n")
    before = snapshot(out)
    refused(cli(*_command(kind, out, ctx)), out)
    unchanged(before, out)
