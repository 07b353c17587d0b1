"""Pseudonymisation keys: from a key file, the older salt file or SEQTWINS_PSEUDONYM_KEY;
the same key gives the same pseudonyms; the key never reaches an output."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.data.dataset import SequenceDataset
from seqtwins.data.prepare import PrepareOptions, prepare
from seqtwins.data.privacy import KEY_ENV, dataset_key, key_id, pseudonym, pseudonym_key
from seqtwins.errors import SeqtwinsError
from tests.data.test_prepare import output_bytes

runner = CliRunner()
KEY = "9f1c0ffee5ecre7-k3y-for-tests-only-5b7e"
RAW = ["rawuser-0001-xyz", "rawuser-0002-xyz", "rawuser-0003-xyz"]


def _log(tmp: Path) -> Path:
    rows = [(u, f"item{k}", k) for u in RAW for k in range(5)]
    path = tmp / "log.csv"
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_csv(path)
    return path


def _ids(out: Path) -> list[str]:
    return SequenceDataset.open(out).users["user_id"].to_list()


def test_env_key_file_and_salt_file_give_the_same_pseudonyms(tmp_path, monkeypatch):
    src = _log(tmp_path)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "key").write_text(KEY + "\n")  # surrounding whitespace is not part of the key
    (keys / "salt").write_text(KEY)
    prepare(src, tmp_path / "file", PrepareOptions(pseudonymize=True, key_file=keys / "key"))
    prepare(src, tmp_path / "salt", PrepareOptions(pseudonymize=True, salt_file=keys / "salt"))
    monkeypatch.setenv(KEY_ENV, KEY)
    prepare(src, tmp_path / "env", PrepareOptions(pseudonymize=True))
    prepare(src, tmp_path / "env2", PrepareOptions(pseudonymize=True))  # a second run
    want = sorted(hmac.new(KEY.encode(), r.encode(), hashlib.sha256).hexdigest() for r in RAW)
    for name in ("file", "salt", "env", "env2"):
        assert _ids(tmp_path / name) == want, name
    metas = [json.loads((tmp_path / n / "meta.json").read_text()) for n in ("file", "env")]
    assert metas[0] == metas[1]  # where the key came from is not recorded either
    assert metas[0]["prepare"]["pseudonym_key_id"] == key_id(KEY.encode())
    # a different key: other pseudonyms, another key id
    monkeypatch.setenv(KEY_ENV, KEY + "-rotated")
    prepare(src, tmp_path / "rot", PrepareOptions(pseudonymize=True))
    assert not set(_ids(tmp_path / "rot")) & set(want)


def test_the_key_never_reaches_an_output(tmp_path, monkeypatch):
    src = _log(tmp_path)
    monkeypatch.setenv(KEY_ENV, KEY)
    r = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "out"), "--pseudonymize"])
    assert r.exit_code == 0, r.output
    assert KEY not in r.output and not any(raw in r.output for raw in RAW)
    for name, data in output_bytes(tmp_path / "out").items():
        assert KEY.encode() not in data, name
        assert KEY.encode().hex().encode() not in data, name
        for raw in RAW:
            assert raw.encode() not in data, (name, raw)


def test_missing_key_is_one_line_exit_2(tmp_path):
    src = _log(tmp_path)
    for extra, word in (([], KEY_ENV), (["--key-file", str(tmp_path / "nope")], "nope")):
        r = runner.invoke(
            app, ["prepare", str(src), "--out", str(tmp_path / "o"), "--pseudonymize", *extra]
        )
        assert r.exit_code == 2, r.output
        assert word in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not (tmp_path / "o").exists() and not (tmp_path / "nope").exists()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SeqtwinsError, match="is empty"):
        prepare(src, tmp_path / "o", PrepareOptions(pseudonymize=True, key_file=tmp_path / "empty"))
    with pytest.raises(ValueError, match="key_file and salt_file are both set"):
        PrepareOptions(pseudonymize=True, key_file=tmp_path / "a", salt_file=tmp_path / "b")
    with pytest.raises(SeqtwinsError, match="inside --out"):
        prepare(
            src, tmp_path / "o", PrepareOptions(pseudonymize=True, key_file=tmp_path / "o" / "key")
        )


def test_salt_file_is_still_created_when_absent(tmp_path):
    salt = tmp_path / "keys" / "salt"
    prepare(_log(tmp_path), tmp_path / "out", PrepareOptions(pseudonymize=True, salt_file=salt))
    key = salt.read_bytes().strip()
    assert len(key) == 64 and _ids(tmp_path / "out") == sorted(pseudonym(r, key) for r in RAW)


def test_dataset_key_for_a_later_step(tmp_path, monkeypatch):
    src = _log(tmp_path)
    monkeypatch.setenv(KEY_ENV, KEY)
    prepare(src, tmp_path / "p", PrepareOptions(pseudonymize=True))
    prepare(src, tmp_path / "plain", PrepareOptions())
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert dataset_key(meta, "p") == KEY.encode()
    (tmp_path / "wrong").write_text("another key, long enough")
    with pytest.raises(SeqtwinsError, match="not the one p was pseudonymised with"):
        dataset_key(meta, "p", key_file=tmp_path / "wrong")
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(SeqtwinsError, match=f"the pseudonymised dataset p needs .*{KEY_ENV}"):
        dataset_key(meta, "p")
    plain = json.loads((tmp_path / "plain" / "meta.json").read_text())
    with pytest.raises(SeqtwinsError, match="is not pseudonymised"):
        dataset_key(plain, "plain")
    assert pseudonym_key(None, None, {KEY_ENV: f"  {KEY} "}) == KEY.encode()


def test_short_keys_are_refused_in_one_line(tmp_path, monkeypatch):
    """meta.json's key id lets anyone test guessed keys offline: no short keys."""
    src = _log(tmp_path)
    (tmp_path / "short").write_text("hunter2\n")
    with pytest.raises(SeqtwinsError, match=r"key in --key-file .*short is 7 bytes.*token_hex"):
        prepare(src, tmp_path / "a", PrepareOptions(pseudonymize=True, key_file=tmp_path / "short"))
    with pytest.raises(SeqtwinsError, match="key in --salt-file .*short is 7 bytes"):
        prepare(
            src, tmp_path / "b", PrepareOptions(pseudonymize=True, salt_file=tmp_path / "short")
        )
    monkeypatch.setenv(KEY_ENV, "x" * 15)
    with pytest.raises(SeqtwinsError, match=f"key in {KEY_ENV} is 15 bytes"):
        prepare(src, tmp_path / "c", PrepareOptions(pseudonymize=True))
    monkeypatch.setenv(KEY_ENV, "x" * 16)  # the minimum is accepted
    prepare(src, tmp_path / "d", PrepareOptions(pseudonymize=True))
    args = ["--out", str(tmp_path / "e"), "--pseudonymize", "--key-file", str(tmp_path / "short")]
    r = CliRunner().invoke(app, ["prepare", str(src), *args])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
