"""``seqtwins export --format onnx``: the encoder's ``embed()`` as one ONNX graph.

The graph's one input is ``items``: int64 ``(batch, length)`` item indices, right-padded
with 0, ``length <= encoder.max_len`` (keep each user's most recent items; the index of an
original item id is the ``item_idx`` column of the dataset's ``items.parquet``). Its one
output is ``user_embedding``: float32 ``(batch, dim)``, the pooled embedding (pooling is
inside the graph), the same vector as ``seqtwins embed``. Both axes are dynamic.

Exported with the ``torch.export``-based exporter (``torch.onnx.export(dynamo=True)``) from
the encoder's dense layout (packing is a CPU speed path with data-dependent shapes; it
gives the same result). The file carries its provenance in the model's metadata
(``seqtwins``, ``run``, ``data_hash``, ``dim``, ``max_len``, ...) and is checked before it
replaces anything: ONNX Runtime must agree with the torch encoder within
:data:`PARITY_TOLERANCE` on random sequences of mixed lengths.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seqtwins.data.batching import pad_right
from seqtwins.errors import SeqtwinsError
from seqtwins.files import atomic_file, check_replaceable, clean_stale, file_lock
from seqtwins.models.encoder import SequenceEncoder
from seqtwins.run import Run, check_checkpoint
from seqtwins.serve import import_extra

FORMATS = ("onnx",)
OPSET = 18
PARITY_TOLERANCE = 1e-4
"""Largest absolute difference allowed between ONNX Runtime and torch embeddings."""
MARK = "seqtwins"
"""Metadata key whose value ``encoder`` marks a file written by :func:`export_onnx`."""


class DenseEmbedder(nn.Module):
    """``items (B, T) -> embed(items) (B, D)`` on the encoder's dense layout (a copy)."""

    def __init__(self, encoder: SequenceEncoder) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(encoder).eval()
        self.encoder.cfg = dataclasses.replace(encoder.cfg, pack_threshold=1.0)

    def forward(self, items: Tensor) -> Tensor:
        return self.encoder.embed(items)  # (B, D)


@dataclass
class ExportSummary:
    out: Path
    dim: int
    max_len: int
    opset: int
    max_abs_diff: float
    checked: int


MAX_ONNX_BYTES = 2**31
"""An ONNX file without external data is one protobuf message, at most 2 GiB."""


def is_onnx_export(path: Path) -> bool:
    """True for an ONNX file written by :func:`export_onnx` (marked in its metadata).

    Only a plausible ONNX file is parsed: a regular file under :data:`MAX_ONNX_BYTES` that
    starts like a ``ModelProto`` (field 1, ``ir_version``, a varint: byte 0x08); anything
    else that sits at ``--out`` is not read beyond its first byte."""
    onnx = import_extra("onnx")
    try:
        if not path.is_file() or not 0 < path.stat().st_size <= MAX_ONNX_BYTES:
            return False
        with open(path, "rb") as f:
            if f.read(1) != b"\x08":
                return False
    except OSError:
        return False
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX at all (protobuf raises several error types)
        return False
    return any(p.key == MARK and p.value == "encoder" for p in model.metadata_props)


def parity_sequences(num_items: int, max_len: int, rows: int = 64, seed: int = 0) -> Tensor:
    """Right-padded random item sequences ``(rows, max_len)`` of mixed lengths (1 and
    ``max_len`` included)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, rows)
    lengths[:2] = (1, max_len)
    return pad_right([rng.integers(1, num_items + 1, n) for n in lengths])  # (rows, max_len)


def onnx_embed(session: Any, items: Tensor | np.ndarray) -> np.ndarray:
    """Embeddings ``(B, D)`` from an ONNX Runtime session of an exported encoder."""
    x = items.numpy() if isinstance(items, Tensor) else np.asarray(items, dtype=np.int64)
    return np.asarray(session.run(None, {"items": x})[0])


def write_onnx(encoder: SequenceEncoder, file: Path | str) -> None:
    """Export ``encoder.embed`` to ``file`` (ONNX, dynamic batch and length axes)."""
    module = DenseEmbedder(encoder)
    example = parity_sequences(encoder.vocab_size - 2, encoder.cfg.max_len, rows=2)  # (2, T)
    batch = torch.export.Dim("batch", min=1)
    length = torch.export.Dim("length", min=1, max=module.encoder.cfg.max_len)
    quiet = io.StringIO()  # the exporter prints its progress and logs optional packages
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (example,), str(file), input_names=["items"],
                output_names=["user_embedding"], dynamic_shapes={"items": {0: batch, 1: length}},
                opset_version=OPSET, dynamo=True, external_data=False,
            )  # fmt: skip
    finally:
        exporter_log.setLevel(level)


def _mark(file: Path, meta: dict[str, str]) -> None:
    onnx = import_extra("onnx")
    model = onnx.load(str(file))
    for key, value in {MARK: "encoder", **meta}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(file))


def export_onnx(
    run_dir: Path | str, out: Path | str, which: str = "best", fmt: str = "onnx"
) -> ExportSummary:
    """Write the encoder of run ``run_dir`` (checkpoint ``which``) to ``out`` as ONNX."""
    if fmt not in FORMATS:
        raise SeqtwinsError(f"--format {fmt!r} is not supported; use {', '.join(FORMATS)}")
    check_checkpoint(which)
    import_extra("onnxscript")  # the exporter needs it
    ort = import_extra("onnxruntime")
    out = Path(out)
    if out.is_dir():
        raise SeqtwinsError(f"--out {out} is a folder; give the path of a .onnx file")
    check_replaceable(out, "--out", owned=is_onnx_export)
    run = Run.open(run_dir)
    encoder = run.encoder(which)
    cfg, lineage = encoder.cfg, run.lineage
    test = parity_sequences(lineage.num_items, cfg.max_len)
    meta = {"run": run.path.resolve().name, "checkpoint": which, "data_hash": lineage.content_hash,
            "objective": run.config.objective, "dim": str(cfg.dim), "max_len": str(cfg.max_len),
            "pooling": cfg.pooling, "num_items": str(lineage.num_items)}  # fmt: skip
    with file_lock(out):
        check_replaceable(out, "--out", owned=is_onnx_export)
        clean_stale(out)
        with atomic_file(out) as tmp:
            try:
                write_onnx(encoder, tmp)
                _mark(tmp, meta)
                session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            except Exception as e:  # the exporter and the runtime raise many error types
                why = (str(e).strip().splitlines() or [""])[0][:200]
                raise SeqtwinsError(
                    f"exporting run {run.path} to ONNX failed ({type(e).__name__}: {why}); "
                    f"nothing was written to {out}"
                ) from e
            with torch.inference_mode():
                want = encoder.embed(test).numpy()  # (rows, D), the packed CPU path
            diff = float(np.abs(onnx_embed(session, test) - want).max())
            if not diff <= PARITY_TOLERANCE:
                raise SeqtwinsError(
                    f"the exported graph differs from the torch encoder by {diff:.3g} "
                    f"(> {PARITY_TOLERANCE}); nothing was written to {out}"
                )
    return ExportSummary(out, cfg.dim, cfg.max_len, OPSET, diff, len(test))
