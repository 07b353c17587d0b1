"""ONNX export: parity with the torch encoder on mixed-length sequences, dynamic axes,
provenance metadata, and the CLI's bad inputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.data.batching import iter_history_batches, pad_right
from seqtwins.models.encoder import EncoderConfig, SequenceEncoder, embed_users
from seqtwins.serve.export import PARITY_TOLERANCE, onnx_embed, write_onnx

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The tiny run exported by the CLI (the one export of the run in this module)."""
    _, run = tiny_run
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    result = runner.invoke(app, ["export", str(run), "--format", "onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "ONNX Runtime matches torch within" in result.output
    return out


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_parity_on_dataset_histories(exported, loaded):
    """Every user's history (3 to 12 items after truncation) in one batch and one by one."""
    s = session(exported)
    users = np.arange(loaded.ds.num_users)
    [(_, items)] = list(iter_history_batches(loaded.ds.sequences, users, 12, 10_000))
    lengths = (items != 0).sum(1)
    assert lengths.min() < lengths.max()  # mixed lengths, padded in one batch
    want = embed_users(loaded.encoder, loaded.ds, users)  # what `seqtwins embed` writes
    assert np.abs(onnx_embed(s, items) - want).max() <= PARITY_TOLERANCE
    for u in (0, 1, 100):  # batch 1, its own length
        one = items[u : u + 1, : int(lengths[u])]
        assert np.abs(onnx_embed(s, one) - want[u]).max() <= PARITY_TOLERANCE


def test_axes_are_dynamic_and_provenance_is_recorded(exported, loaded):
    model = onnx.load(str(exported))
    [inp], [res] = model.graph.input, model.graph.output
    assert inp.name == "items" and res.name == "user_embedding"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert all(isinstance(d, str) for d in dims)  # batch and length are symbolic
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["seqtwins"] == "encoder" and meta["data_hash"] == loaded.ds.content_hash
    assert (meta["dim"], meta["max_len"], meta["pooling"]) == ("16", "12", "mean")
    assert meta["checkpoint"] == "best" and meta["objective"] == "barlow"
    assert meta["run"] == "run" and not any("/" in v for v in meta.values())  # no server path
    s = session(exported)
    assert onnx_embed(s, np.ones((1, 1), np.int64)).shape == (1, 16)
    assert onnx_embed(s, np.ones((300, 12), np.int64)).shape == (300, 16)


@pytest.mark.parametrize("pooling", ["last", "cls"])
def test_other_poolings_export_exactly(tmp_path, pooling):
    torch.manual_seed(0)
    cfg = EncoderConfig(dim=16, heads=2, ff_dim=32, max_len=10, pooling=pooling)
    encoder = SequenceEncoder(cfg, vocab_size=52).eval()
    write_onnx(encoder, tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    items = pad_right([rng.integers(1, 51, n) for n in [1, 10, 4, 7, 2, 9]])  # (6, 10)
    with torch.inference_mode():
        want = encoder.embed(items).numpy()
    assert np.abs(onnx_embed(session(tmp_path / "m.onnx"), items) - want).max() <= 1e-4


def test_export_cli_bad_inputs_are_one_line(exported, tiny_run, tmp_path):
    _, run = tiny_run
    mtime = exported.stat().st_mtime_ns
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"not mine")
    for bad, text in [
        (["--out", str(foreign)], "was not written by seqtwins"),
        (["--out", str(tmp_path)], "is a folder"),
        (["--out", str(exported), "--format", "tflite"], "--format 'tflite' is not supported"),
        (["--out", str(exported), "--checkpoint", "worst"], "must be one of best, last"),
    ]:
        result = runner.invoke(app, ["export", str(run), *bad])
        assert result.exit_code == 2 and text in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert foreign.read_bytes() == b"not mine" and exported.stat().st_mtime_ns == mtime
    result = runner.invoke(app, ["export", str(tmp_path / "none"), "--out", str(exported)])
    assert result.exit_code == 2 and "is not a seqtwins run" in result.output


def test_a_file_that_cannot_be_onnx_is_not_parsed(exported, tmp_path, monkeypatch):
    from seqtwins.serve.export import is_onnx_export

    big = tmp_path / "video.onnx"
    big.write_bytes(b"\x00" * 4096)  # does not start like a ModelProto
    calls = []
    real = onnx.load
    monkeypatch.setattr(onnx, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert not is_onnx_export(big) and not is_onnx_export(tmp_path / "absent") and not calls
    assert is_onnx_export(exported) and len(calls) == 1


def test_exporter_and_runtime_failures_are_one_line(tiny_run, tmp_path, monkeypatch):
    import seqtwins.serve.export as export

    _, run = tiny_run
    out = tmp_path / "m.onnx"

    def boom(*args, **kwargs):
        raise RuntimeError("the exporter broke\nsecond line of its traceback")

    for target in ("write_onnx", "_mark"):
        with monkeypatch.context() as m:
            m.setattr(export, target, boom)
            result = runner.invoke(app, ["export", str(run), "--out", str(out)])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
        assert f"exporting run {run} to ONNX failed (RuntimeError: the exporter broke)" in (
            result.output.replace("\n", "")
        )
        assert not out.exists()
