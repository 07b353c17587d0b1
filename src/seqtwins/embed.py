"""``seqtwins embed``: export user embeddings of a trained run to Parquet, streamed in chunks.

Output columns: ``user_id`` (original id or pseudonym; for ``--sequences`` input the row
number or the file's ``id`` field), ``split`` (dataset users only) and ``embedding``
(fixed-size list of float32, the encoder's pooled output before any head).

``--shard i/n`` embeds only the i-th of n contiguous blocks of users (of ``user_idx``, or of
the rows of a ``--sequences`` file), so that n processes split the work; the n files, read
in shard order, hold exactly the rows of the unsharded file in the same order.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from seqtwins.data.batching import pad_right
from seqtwins.data.dataset import SequenceDataset
from seqtwins.distributed import shard_range
from seqtwins.errors import SeqtwinsError
from seqtwins.models.encoder import SequenceEncoder
from seqtwins.train import embed_users, load_encoder


@dataclass
class EmbedSummary:
    out: Path
    rows: int
    dim: int
    unknown_items: int = 0
    empty_sequences: int = 0


def _writer(out: Path, dim: int, with_split: bool) -> pq.ParquetWriter:
    fields = [pa.field("user_id", pa.string())]
    if with_split:
        fields.append(pa.field("split", pa.string()))
    fields.append(pa.field("embedding", pa.list_(pa.float32(), dim)))
    return pq.ParquetWriter(out, pa.schema(fields))


def _table(ids: list[str], emb: np.ndarray, split: list[str] | None) -> pa.Table:
    dim = emb.shape[1]
    flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1))
    cols = {"user_id": pa.array(ids, pa.string())}
    if split is not None:
        cols["split"] = pa.array(split, pa.string())
    cols["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dim)
    return pa.table(cols)


def export_embeddings(
    run_dir: Path | str,
    data_dir: Path | str,
    out: Path | str,
    sequences_file: Path | str | None = None,
    chunk_users: int = 8192,
    which: str = "best",
    shard: tuple[int, int] = (0, 1),
) -> EmbedSummary:
    """Embed every user of the dataset (or the sequences of ``sequences_file``) to Parquet.

    ``shard=(i, n)`` embeds only the i-th of n contiguous blocks of users (or file rows):
    see :func:`seqtwins.distributed.shard_range`. The file is written to a temporary
    sibling and renamed at the end: an interrupted export leaves no half-written file.
    """
    index, count = shard
    if not 0 <= index < count:
        raise SeqtwinsError(f"shard {index}/{count} must satisfy 0 <= i < n")
    out = Path(out)
    ds = SequenceDataset.open(data_dir)
    encoder, _ = load_encoder(run_dir, ds, which=which)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder.to(device)
    tmp = out.with_name(f".{out.name}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if sequences_file is None:
            summary = _export_dataset(encoder, ds, tmp, chunk_users, shard)
        else:
            summary = _export_new(encoder, ds, Path(sequences_file), tmp, chunk_users, shard)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    summary.out = out
    return summary


def _export_dataset(
    encoder: SequenceEncoder,
    ds: SequenceDataset,
    tmp: Path,
    chunk: int,
    shard: tuple[int, int] = (0, 1),
) -> EmbedSummary:
    ids = ds.users["user_id"].to_list()
    splits = ds.users["split"].to_list()
    dim = encoder.cfg.dim
    first, stop = shard_range(ds.num_users, *shard)
    with _writer(tmp, dim, with_split=True) as w:
        for start in range(first, stop, chunk):
            users = np.arange(start, min(start + chunk, stop))
            emb = embed_users(encoder, ds, users)
            w.write_table(_table(ids[start : users[-1] + 1], emb, splits[start : users[-1] + 1]))
    return EmbedSummary(tmp, stop - first, dim)


def read_sequences_file(path: Path) -> tuple[list[str], list[list[str]]]:
    """Read new sequences: CSV (``id``, ``items`` as a space/|/,-separated list of original
    item ids) or JSON lines (``{"id": ..., "items": [...]}`` or a bare list per line)."""
    if not path.is_file():
        raise SeqtwinsError(f"--sequences file {path} does not exist")
    ids: list[str] = []
    seqs: list[list[str]] = []
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SeqtwinsError(f"{path} line {n}: not valid JSON ({e.msg})") from e
            if isinstance(rec, dict):
                items, uid = rec.get("items"), rec.get("id", len(ids))
            else:
                items, uid = rec, len(ids)
            if not isinstance(items, list):
                raise SeqtwinsError(f"{path} line {n}: expected a list of item ids")
            ids.append(str(uid))
            seqs.append([str(x) for x in items])
    else:
        try:
            df = pl.read_csv(path, infer_schema=False)
        except Exception as e:
            raise SeqtwinsError(f"{path}: cannot read as CSV ({e})") from e
        if "items" not in df.columns:
            raise SeqtwinsError(f"{path} has no 'items' column (columns: {df.columns})")
        ids = df["id"].to_list() if "id" in df.columns else [str(i) for i in range(df.height)]
        seqs = [
            [t for t in s.replace("|", " ").replace(",", " ").split() if t]
            for s in df["items"].fill_null("").to_list()
        ]
    return ids, seqs


def _export_new(
    encoder: SequenceEncoder,
    ds: SequenceDataset,
    path: Path,
    tmp: Path,
    chunk: int,
    shard: tuple[int, int] = (0, 1),
) -> EmbedSummary:
    ids, raw = read_sequences_file(path)
    first, stop = shard_range(len(raw), *shard)
    ids, raw = ids[first:stop], raw[first:stop]
    if not raw:  # more shards than rows: this one is empty
        with _writer(tmp, encoder.cfg.dim, with_split=False):
            pass
        return EmbedSummary(tmp, 0, encoder.cfg.dim)
    lookup = dict(zip(ds.items["item_id"].to_list(), ds.items["item_idx"].to_list(), strict=True))
    max_len = encoder.cfg.max_len
    mapped = [np.array([lookup[x] for x in s if x in lookup], dtype=np.int64) for s in raw]
    unknown = sum(len(s) for s in raw) - sum(len(m) for m in mapped)
    keep = [i for i, m in enumerate(mapped) if len(m)]
    empty = len(mapped) - len(keep)
    where = str(path) if shard[1] == 1 else f"{path} rows {first}-{stop - 1}"
    if not keep:
        raise SeqtwinsError(
            f"{where}: no sequence has an item known to the model ({unknown} unknown item ids)"
        )
    if unknown or empty:
        warnings.warn(
            f"{where}: dropped {unknown} unknown item ids; {empty} sequences became empty "
            "and were skipped",
            stacklevel=2,
        )
    device = next(encoder.parameters()).device
    with _writer(tmp, encoder.cfg.dim, with_split=False) as w, torch.no_grad():
        for start in range(0, len(keep), chunk):
            rows = keep[start : start + chunk]
            items = pad_right([mapped[i][-max_len:] for i in rows]).to(device)
            emb = encoder.embed(items).float().cpu().numpy()  # (B, D)
            w.write_table(_table([ids[i] for i in rows], emb, None))
    return EmbedSummary(tmp, len(keep), encoder.cfg.dim, unknown, empty)
