"""The whole pipeline with ``--pseudonymize``: no raw user id in any file it writes.

``seqtwins run`` (prepare -> pretrain -> evaluate -> report) then ``seqtwins embed``, on a
small log whose raw user ids are distinctive (``rawuser-0042-xyz``), so that a hit in any
output byte is real; every file under the output folders is searched, binary ones
included, and Parquet files also as decoded tables.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.data.privacy import KEY_ENV

runner = CliRunner()
KEY = "pipeline-test-key-7c1e9a0b3d"


def raw_id(u: int) -> str:
    return f"rawuser-{u:04d}-xyz"


def write_log(folder: Path, users: int = 300, items: int = 60, seed: int = 0) -> Path:
    """A CSV log (users with a favourite category, epoch-second times) and an item table
    with categories; returns the log's path."""
    rng = np.random.default_rng(seed)
    cats = np.arange(items) % 4
    rows = []
    for u in range(users):
        taste = rng.integers(0, 4)
        n = int(rng.integers(8, 20))
        own = np.flatnonzero(cats == taste)
        pick = np.where(rng.random(n) < 0.8, rng.choice(own, n), rng.integers(0, items, n))
        t0 = 1_600_000_000 + int(rng.integers(0, 10**6))
        rows += [(raw_id(u), f"it{i}", t0 + 3600 * k) for k, i in enumerate(pick)]
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "log.csv"
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_csv(log)
    pl.DataFrame(
        {"item_id": [f"it{i}" for i in range(items)], "categories": [f"cat{c}" for c in cats]}
    ).write_csv(folder / "items.csv")
    return log


def output_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` as bytes, and each Parquet file also decoded (values,
    schema metadata, file metadata): ids inside compressed pages are found too."""
    found = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            found[str(p)] = p.read_bytes()
            if p.suffix == ".parquet":
                table = pq.read_table(p)
                found[f"{p}:decoded"] = (
                    str(table.to_pylist()).encode()
                    + str(table.schema.metadata).encode()
                    + str(pq.read_metadata(p).to_dict()).encode()
                )
    return found


TINY_PRETRAIN = {
    "encoder": {"dim": 16, "ff_dim": 32, "max_len": 20},
    "barlow": {"projector": [32, 32]},
    "train": {"epochs": 1, "batch_size": 64},
}


@pytest.mark.parametrize("key_from", ["env", "key_file"])
def test_no_raw_user_id_in_any_output(tmp_path, monkeypatch, key_from):
    log = write_log(tmp_path / "in")
    key_file = tmp_path / "secret-keyfile-9f3a.key"
    extra = {}
    if key_from == "key_file":
        key_file.write_text(KEY + "\n")
        extra = {"key_file": str(key_file)}
    else:
        monkeypatch.setenv(KEY_ENV, KEY)
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        yaml.safe_dump(
            {
                "name": "private",
                "data": {
                    "prepare": {
                        "input": str(log),
                        "items_file": str(tmp_path / "in" / "items.csv"),
                        "pseudonymize": True,
                        "min_item_users": 3,
                        **extra,
                    }
                },
                "pretrain": TINY_PRETRAIN,
                "objectives": {"barlow": {}},
                "evaluate": {
                    "fractions": [1.0],
                    "seeds": 1,
                    "baselines": ["majority"],
                    "tasks": ["future_categories", "future_items"],
                },
            }
        )
    )
    monkeypatch.setitem(sys.modules, "umap", None)  # the report's map by PCA: no JIT wait
    out = tmp_path / "out"
    r = runner.invoke(app, ["run", str(exp), "--out", str(out)])
    assert r.exit_code == 0, r.output
    root = out / "private"
    emb = tmp_path / "emb" / "users.parquet"
    r2 = runner.invoke(
        app,
        ["embed", str(root / "runs" / "barlow"), "--data", str(root / "data"), "--out", str(emb)],
    )
    assert r2.exit_code == 0, r2.output
    assert (root / "runs" / "barlow" / "model_card.md").is_file()
    assert (root / "report" / "report.md").is_file() and (root / "eval.json").is_file()

    raws = [raw_id(u).encode() for u in range(300)]
    scanned = {**output_bytes(out), **output_bytes(emb.parent)}
    assert len(scanned) > 20  # dataset, run (checkpoints, metrics), eval, artifacts, report
    logs = (r.output + r2.output).encode()
    for name, data in [*scanned.items(), ("terminal output", logs)]:
        assert b"rawuser-" not in data, name  # the common prefix: no raw id, whole or cut
        assert KEY.encode() not in data, name
        assert key_file.name.encode() not in data, name  # nor where the key is
    assert not any(raw in data for raw in raws for data in scanned.values())
    # the negative control: the same search finds the ids in the raw log
    assert raw_id(42).encode() in log.read_bytes()
    ids = pl.read_parquet(emb)["user_id"].to_list()
    assert len(ids) == 300 and all(len(x) == 64 for x in ids)
