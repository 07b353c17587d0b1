"""`seqtwins serve` and `seqtwins neighbors` from the command line: the real server in a
subprocess, bad input as one line with exit code 2, the serve extra imported lazily."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import faiss
import httpx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.serve.limits import Limits
from seqtwins.serve.model import nearest_users
from seqtwins.serve.server import ENV, app_from_env, set_threads, worker_settings
from tests.serve.conftest import live_server

runner = CliRunner()
SRC = Path(__file__).resolve().parents[2] / "src"
EXTRA_MODULES = ("fastapi", "uvicorn", "faiss", "onnx", "onnxruntime", "onnxscript")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_line_error(args: list[str], text: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert text in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_serve_cli_runs_the_real_server(tiny_run):
    data, run = tiny_run
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "seqtwins", "serve", str(run), "--data", str(data),
           "--port", str(port), "--no-access-log"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the server did not answer in 90 s"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        info = httpx.get(f"{url}/info").json()
        assert (info["users"], info["dim"], info["checkpoint"]) == (240, 16, "best")
        body = httpx.post(f"{url}/embed", json={"sequences": [["it1", "it2"]]}).json()
        assert len(body["embeddings"][0]) == 16
        one_line_error(["serve", str(run), "--data", str(data), "--port", str(port)],
                       f"cannot listen on 127.0.0.1:{port}")  # fmt: skip
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def test_worker_processes_load_the_run_from_the_environment(tiny_run, monkeypatch):
    """What each process of `serve --workers N` runs (uvicorn's factory)."""
    data, run = tiny_run
    monkeypatch.setenv(ENV, worker_settings(run, data, "last", Limits(max_batch=3), 1))
    before = (torch.get_num_threads(), faiss.omp_get_max_threads())
    try:
        app = app_from_env()
        assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
    finally:  # both are process-wide: the tests after this one get them back
        set_threads(*before)
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == before
    with live_server(app) as url:
        info = httpx.get(f"{url}/info").json()
        assert (info["checkpoint"], info["limits"]["max_batch"]) == ("last", 3)
        r = httpx.post(f"{url}/embed", json={"sequences": [["it1"]] * 4})
        assert r.status_code == 422 and r.json()["limit"] == "max_batch"


def test_serve_cli_bad_inputs(tiny_run, tmp_path):
    data, run = tiny_run
    base = ["serve", str(run), "--data", str(data), "--port", str(free_port())]
    one_line_error(["serve", str(tmp_path / "none"), "--data", str(data)], "is not a seqtwins run")
    one_line_error([*base, "--workers", "0"], "--workers 0 must be at least 1")
    one_line_error([*base, "--threads", "0"], "--threads 0 must be at least 1")
    one_line_error([*base, "--checkpoint", "worst"], "must be one of best, last")
    one_line_error([*base, "--max-batch", "0"], "--max-batch=0 must be a positive integer")
    one_line_error([*base, "--port", "70000"], "--port 70000 must be in 0..65535")
    one_line_error(["serve", str(run), "--data", str(tmp_path)], "meta.json")


def test_neighbors_cli(tiny_run, loaded):
    data, run = tiny_run
    result = runner.invoke(app, ["neighbors", str(run), "--data", str(data), "--user", "user3",
                                 "-k", "5", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    x = loaded.user_vectors / np.linalg.norm(loaded.user_vectors, axis=1, keepdims=True)
    scores = np.delete(x @ x[3], 3)
    np.testing.assert_allclose([n["score"] for n in body["neighbors"]],
                               np.sort(scores)[::-1][:5], atol=1e-5)  # fmt: skip
    assert body["index"] == {"kind": "flat", "users": 240}
    found = nearest_users(run, data, "user3", k=5)
    assert [n["user"] for n in body["neighbors"]] == [u for u, _ in found.neighbors]
    table = runner.invoke(app, ["neighbors", str(run), "--data", str(data), "--user", "user3"])
    lines = table.output.strip().splitlines()
    assert lines[0] == "rank\tuser_id\tcosine" and len(lines) == 21


def test_neighbors_cli_bad_inputs(tiny_run, tmp_path):
    data, run = tiny_run
    base = ["neighbors", str(run), "--data", str(data)]
    one_line_error([*base, "--user", "nobody"], "user 'nobody' is not in dataset")
    one_line_error([*base, "--user", "user1", "-k", "0"], "-k 0 must be at least 1")
    one_line_error(["neighbors", str(tmp_path / "none"), "--data", str(data), "--user", "user1"],
                   "is not a seqtwins run")  # fmt: skip


@pytest.mark.parametrize(
    ("args", "module"),
    [
        (["neighbors", "RUN", "--data", "DATA", "--user", "user1"], "faiss"),
        (["serve", "RUN", "--data", "DATA"], "fastapi"),
        (["export", "RUN", "--out", "OUT"], "onnxruntime"),
    ],
)
def test_a_missing_extra_is_one_line(tiny_run, tmp_path, monkeypatch, args, module):
    data, run = tiny_run
    monkeypatch.setitem(sys.modules, module, None)  # import fails as when not installed
    swap = {"RUN": str(run), "DATA": str(data), "OUT": str(tmp_path / "m.onnx")}
    one_line_error([swap.get(a, a) for a in args], 'pip install "seqtwins[serve]"')


def test_seqtwins_does_not_import_the_serve_extra():
    code = (
        "import sys, seqtwins, seqtwins.cli, seqtwins.serve, seqtwins.serve.model; "
        f"print(sorted(set({EXTRA_MODULES!r}) & set(sys.modules)))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_limits_own_the_coalescing_size():
    assert Limits().batch_rows == 512 and Limits(max_batch=1000).batch_rows == 1000
    assert Limits(max_batch=8, batch_rows=64).batch_rows == 64
    with pytest.raises(ValueError, match="batch_rows=4 must be >= max_batch=8"):
        Limits(max_batch=8, batch_rows=4)


def test_embeddings_file_instead_of_re_embedding(tiny_run, loaded, tmp_path):
    """--embeddings reads `seqtwins embed`'s file: the same vectors, the same neighbours;
    a file made otherwise is one line."""
    from seqtwins.embed import export_embeddings
    from seqtwins.serve.model import LoadedModel

    data, run = tiny_run
    emb = tmp_path / "users.parquet"
    export_embeddings(run, data, emb, chunk_users=100)
    fast = LoadedModel.load(run, data, embeddings=emb)
    np.testing.assert_allclose(fast.user_vectors, loaded.user_vectors, atol=1e-6)
    for user in ("user100", "user3"):
        a = nearest_users(run, data, user, k=10, embeddings=emb)
        b = nearest_users(run, data, user, k=10)
        assert [u for u, _ in a.neighbors] == [u for u, _ in b.neighbors]
        np.testing.assert_allclose([s for _, s in a.neighbors], [s for _, s in b.neighbors])
    result = runner.invoke(app, ["neighbors", str(run), "--data", str(data), "--user", "user3",
                                 "-k", "10", "--json", "--embeddings", str(emb)])  # fmt: skip
    assert result.exit_code == 0 and json.loads(result.output)["user"] == "user3"
    assert [n["user"] for n in json.loads(result.output)["neighbors"]] == [
        u for u, _ in b.neighbors
    ]
    export_embeddings(run, data, tmp_path / "last.parquet", which="last")
    export_embeddings(run, data, tmp_path / "shard.parquet", shard=(0, 2))
    seqs = tmp_path / "seqs.jsonl"
    seqs.write_text('["it1", "it2"]\n')
    export_embeddings(run, data, tmp_path / "new.parquet", sequences_file=seqs)
    base = ["neighbors", str(run), "--data", str(data), "--user", "user3", "--embeddings"]
    one_line_error([*base, str(tmp_path / "last.parquet")], "checkpoint")
    one_line_error(
        [*base, str(tmp_path / "shard.parquet")], "holds 120 rows, not the dataset's 240"
    )
    one_line_error(
        [*base, str(tmp_path / "new.parquet")], "data_hash, checkpoint, model_sha256 differ"
    )
    one_line_error([*base, str(seqs)], "is not a file written by `seqtwins embed`")
