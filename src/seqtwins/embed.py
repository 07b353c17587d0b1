"""``seqtwins embed``: export user embeddings of a trained run to Parquet, streamed in chunks.

Output columns: ``user_id`` (original id or pseudonym; for ``--sequences`` input the row
number or the file's ``id`` field), ``split`` (dataset users only) and ``embedding``
(fixed-size list of float32, the encoder's pooled output before any head).

``--shard i/n`` embeds only the i-th of n contiguous blocks of users (of ``user_idx``, or of
the rows of a ``--sequences`` file), so that n processes split the work; the n files, read
in shard order, hold exactly the rows of the unsharded file in the same order.

The file's schema metadata carries ``seqtwins: embeddings``: ``--out`` replaces only such
a file (or one with this module's columns, written before the marker existed), never any
other file. Two exports to one file: the second fails with one line (a lock per output).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from seqtwins.data.dataset import SequenceDataset
from seqtwins.distributed import shard_range
from seqtwins.errors import SeqtwinsError
from seqtwins.files import atomic_file, check_replaceable, clean_stale, file_lock
from seqtwins.models.encoder import SequenceEncoder, embed_item_lists, embed_users
from seqtwins.run import Run, item_index, map_items

METADATA = {b"seqtwins": b"embeddings"}
"""Parquet schema metadata that marks a file written by :func:`export_embeddings`."""


@dataclass
class EmbedSummary:
    out: Path
    rows: int
    dim: int
    unknown_items: int = 0
    empty_sequences: int = 0


def _writer(
    out: Path, dim: int, with_split: bool, provenance: dict[str, str] | None = None
) -> pq.ParquetWriter:
    meta = {**METADATA, **{k.encode(): v.encode() for k, v in (provenance or {}).items()}}
    fields = [pa.field("user_id", pa.string())]
    if with_split:
        fields.append(pa.field("split", pa.string()))
    fields.append(pa.field("embedding", pa.list_(pa.float32(), dim)))
    return pq.ParquetWriter(out, pa.schema(fields, metadata=meta))


def is_embeddings_file(path: Path) -> bool:
    """True for a Parquet file written by :func:`export_embeddings` (marked in its schema
    metadata, or, before the marker, with exactly the columns it writes: ``user_id``,
    [``split``,] ``embedding`` as a fixed-size list of float32)."""
    try:
        schema = pq.read_schema(path)
    except Exception:  # not Parquet at all (pyarrow raises several error types)
        return False
    if (schema.metadata or {}).get(b"seqtwins") == b"embeddings":
        return True
    if schema.names not in (["user_id", "embedding"], ["user_id", "split", "embedding"]):
        return False
    kind = schema.field("embedding").type
    return pa.types.is_fixed_size_list(kind) and kind.value_type == pa.float32()


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise SeqtwinsError(f"--out {out} is a folder; give the path of a .parquet file")
    check_replaceable(out, "--out", owned=is_embeddings_file)


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
    verify: bool = True,
) -> EmbedSummary:
    """Embed every user of the dataset (or the sequences of ``sequences_file``) to Parquet.

    ``shard=(i, n)`` embeds only the i-th of n contiguous blocks of users (or file rows):
    see :func:`seqtwins.distributed.shard_range`. The file is written to a temporary
    sibling and renamed at the end: an interrupted export leaves no half-written file. An
    existing ``out`` is replaced only when it is an earlier export.
    """
    index, count = shard
    if not 0 <= index < count:
        raise SeqtwinsError(f"shard {index}/{count} must satisfy 0 <= i < n")
    out = Path(out)
    _check_out(out)
    ds = SequenceDataset.open(data_dir, verify=verify)
    run = Run.open(run_dir)
    encoder = run.encoder(which, ds)
    # what made the rows: read back by the server (read_user_embeddings)
    provenance = {"data_hash": ds.content_hash, "checkpoint": which,
                  "model_sha256": run.model_digest(which)}  # fmt: skip
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder.to(device)
    with file_lock(out):
        _check_out(out)  # again, now that no other seqtwins process writes it
        clean_stale(out)
        with atomic_file(out) as tmp:
            if sequences_file is None:
                summary = _export_dataset(encoder, ds, tmp, chunk_users, shard, provenance)
            else:
                summary = _export_new(encoder, ds, Path(sequences_file), tmp, chunk_users, shard)
    summary.out = out
    return summary


def _export_dataset(
    encoder: SequenceEncoder,
    ds: SequenceDataset,
    tmp: Path,
    chunk: int,
    shard: tuple[int, int] = (0, 1),
    provenance: dict[str, str] | None = None,
) -> EmbedSummary:
    ids = ds.users["user_id"].to_list()
    splits = ds.users["split"].to_list()
    dim = encoder.cfg.dim
    first, stop = shard_range(ds.num_users, *shard)
    with _writer(tmp, dim, with_split=True, provenance=provenance) as w:
        for start in range(first, stop, chunk):
            users = np.arange(start, min(start + chunk, stop))
            emb = embed_users(encoder, ds, users)
            w.write_table(_table(ids[start : users[-1] + 1], emb, splits[start : users[-1] + 1]))
    return EmbedSummary(tmp, stop - first, dim)


PROVENANCE = ("data_hash", "checkpoint", "model_sha256")
"""Schema metadata of a dataset export: the dataset's content hash, the checkpoint and the
SHA-256 of its weights (:meth:`seqtwins.run.Run.model_digest`)."""


def read_user_embeddings(
    path: Path | str, run: Run, which: str, ds: SequenceDataset, setting: str = "--embeddings"
) -> np.ndarray:
    """The ``(U, D)`` float32 embeddings of every user of ``ds`` (row i = user_idx i) from a
    ``seqtwins embed`` export of that dataset by checkpoint ``which`` of ``run``; one line
    naming ``setting`` when the file was made otherwise (another run, checkpoint or
    dataset content, a shard, ``--sequences``)."""
    path = Path(path)
    redo = f"make it with `seqtwins embed {run.path} --data {ds.path} --which {which}`"
    if not path.is_file() or not is_embeddings_file(path):
        raise SeqtwinsError(f"{setting} {path} is not a file written by `seqtwins embed`; {redo}")
    meta = pq.read_schema(path).metadata or {}
    got = {k: meta.get(k.encode(), b"").decode() for k in PROVENANCE}
    want = {"data_hash": ds.content_hash, "checkpoint": which,
            "model_sha256": run.model_digest(which)}  # fmt: skip
    bad = [k for k in PROVENANCE if got[k] != want[k]]
    if bad:
        raise SeqtwinsError(
            f"{setting} {path} was not made by this run's {which} checkpoint from this "
            f"dataset ({', '.join(bad)} differ); {redo}"
        )
    # ParquetFile, not pq.read_table: that goes through pyarrow.dataset, which imports pandas
    table = pq.ParquetFile(path).read(columns=["user_id", "embedding"])
    ids = ds.user_ids
    if table.num_rows != len(ids) or table.column("user_id").to_pylist() != ids:
        raise SeqtwinsError(
            f"{setting} {path} holds {table.num_rows} rows, not the dataset's {len(ids)} "
            f"users in order (a shard?); {redo} and no --shard"
        )
    flat = table.column("embedding").combine_chunks().flatten()  # (U * D,)
    if flat.null_count:
        raise SeqtwinsError(f"{setting} {path} has {flat.null_count} missing values; {redo}")
    if flat.type != pa.float32():  # written by hand or by another tool: read as float32
        flat = flat.cast(pa.float32())
    # the buffer itself (read-only): Array.to_numpy imports pandas, ~1 s of a start
    values = np.frombuffer(flat.buffers()[1], np.float32, flat.offset + len(flat))
    vectors = values[flat.offset :].reshape(table.num_rows, -1)  # (U, D)
    check_finite(vectors, ids, f"{setting} {path}")
    return vectors


def check_finite(vectors: np.ndarray, user_ids: Sequence[str], source: str) -> None:
    """One line when a user's embedding (a row of ``vectors``) holds NaN or infinity: a
    broken checkpoint or file must not be served or searched as if it were fine."""
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad):
        raise SeqtwinsError(
            f"{source}: the embeddings of {len(bad)} users are not finite (first: user "
            f"{user_ids[bad[0]]!r}); the checkpoint or the file is broken"
        )


def read_sequences_file(path: Path) -> tuple[list[str], list[list[str]]]:
    """Read new sequences: CSV (``id``, ``items`` as a space/|/,-separated list of original
    item ids) or JSON lines (``{"id": ..., "items": [...]}`` or a bare list per line)."""
    if not path.is_file():
        raise SeqtwinsError(f"--sequences file {path} does not exist")
    ids: list[str] = []
    seqs: list[list[str]] = []
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise SeqtwinsError(
                f"--sequences {path} is not UTF-8 text (byte {e.start}); save it as UTF-8"
            ) from None
        for n, line in enumerate(text.splitlines(), 1):
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
        except Exception as e:  # polars raises several error types for unreadable CSV
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "utf-8" in reason.lower():
                raise SeqtwinsError(
                    f"--sequences {path} is not UTF-8 text ({reason}); save it as UTF-8"
                ) from None
            raise SeqtwinsError(f"{path}: cannot read as CSV ({reason})") from None
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
    if not raw:
        raise SeqtwinsError(f"--sequences {path} holds no sequences; nothing to embed")
    first, stop = shard_range(len(raw), *shard)
    ids, raw = ids[first:stop], raw[first:stop]
    if not raw:  # more shards than rows: this one is empty
        with _writer(tmp, encoder.cfg.dim, with_split=False):
            pass
        return EmbedSummary(tmp, 0, encoder.cfg.dim)
    mapped, dropped = map_items(item_index(ds), raw)
    unknown = sum(len(d) for d in dropped)
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
    with _writer(tmp, encoder.cfg.dim, with_split=False) as w:
        for start in range(0, len(keep), chunk):
            rows = keep[start : start + chunk]
            emb = embed_item_lists(encoder, [mapped[i] for i in rows], len(rows))  # (B, D)
            w.write_table(_table([ids[i] for i in rows], emb, None))
    return EmbedSummary(tmp, len(keep), encoder.cfg.dim, unknown, empty)
