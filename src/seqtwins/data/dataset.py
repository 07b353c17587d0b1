"""The canonical dataset directory: CSR sequence arrays, item and user tables, meta.json.

Layout (how it is written and guarded: docs/prepare.md, "The output folder")::

    meta.json        schema version, source, counts, fields, parameters, content hash
    items.parquet    item_idx (1..N; 0 = padding, N+1 = MASK), item_id, [categories], [title]
    users.parquet    user_idx (0..U-1), user_id, split, [attribute columns]
    offsets.npy      (U+1,) int64   CSR row pointers into the per-interaction arrays
    items.npy        (I,)   int32   item_idx of each interaction, chronological per user
    times.npy        (I,)   int64   optional, epoch seconds
    ratings.npy      (I,)   float32 optional
    history_end.npy  (U,)   int64   absolute index where a user's history ends and the
                                    held-out future window begins

    .seqtwins.json   the ownership marker (``{"kind": "dataset"}``; not in the content hash)

A directory is written atomically (temporary sibling, then rename) and replaces only a
seqtwins dataset (:func:`is_dataset`). A reader refuses one whose files do not match its
``meta.json``, and by default one whose content hash does not match (a modified dataset).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from seqtwins.errors import SeqtwinsError
from seqtwins.files import (
    MARKER,
    atomic_dir,
    check_replaceable,
    clean_stale,
    file_lock,
    marker_kind,
    write_marker,
)

SCHEMA_VERSION = 1
DATASET = "dataset"
"""The kind of a dataset folder in its ownership marker (:data:`seqtwins.files.MARKER`)."""
SPLITS = ("train", "valid", "test")
PAD = 0
_ARRAYS = ("offsets", "items", "times", "ratings", "history_end")
DATASET_FILES = frozenset(
    {"meta.json", "items.parquet", "users.parquet", MARKER, *(f"{n}.npy" for n in _ARRAYS)}
)
"""The files of a dataset folder (what ``--overwrite`` may delete with it)."""
_DTYPES = {
    "offsets": np.int64,
    "items": np.int32,
    "times": np.int64,
    "ratings": np.float32,
    "history_end": np.int64,
}


@dataclass(frozen=True)
class Sequences:
    """User sequences as CSR arrays; user ``u`` owns ``items[offsets[u]:offsets[u+1]]``.

    ``history_end[u]`` is an absolute index in ``[offsets[u], offsets[u+1]]``: interactions
    before it are the user's history (used for pretraining), those after it the held-out
    future window (used only for downstream labels).
    """

    offsets: np.ndarray
    items: np.ndarray
    history_end: np.ndarray
    times: np.ndarray | None = None
    ratings: np.ndarray | None = None

    def __post_init__(self) -> None:
        n_users = len(self.offsets) - 1
        if n_users < 0 or self.offsets[0] != 0 or self.offsets[-1] != len(self.items):
            raise ValueError("offsets must start at 0 and end at len(items)")
        if np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must be non-decreasing")
        if len(self.history_end) != n_users:
            raise ValueError("history_end must have one entry per user")
        if np.any(self.history_end < self.offsets[:-1]) or np.any(
            self.history_end > self.offsets[1:]
        ):
            raise ValueError("history_end must lie within each user's row")
        for name in ("times", "ratings"):
            arr = getattr(self, name)
            if arr is not None and len(arr) != len(self.items):
                raise ValueError(f"{name} must have one entry per interaction")

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_interactions(self) -> int:
        return len(self.items)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def history_lengths(self) -> np.ndarray:
        return self.history_end - self.offsets[:-1]

    def history(self, u: int) -> np.ndarray:
        return np.asarray(self.items[self.offsets[u] : self.history_end[u]])

    def future(self, u: int) -> np.ndarray:
        return np.asarray(self.items[self.history_end[u] : self.offsets[u + 1]])

    @classmethod
    def from_lists(cls, seqs: list[list[int]], history_lens: list[int] | None = None) -> Sequences:
        """Build from Python lists (tests, small inputs). Default: no future window."""
        lens = np.array([len(s) for s in seqs], dtype=np.int64)
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        items = (
            np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs])
            if seqs
            else np.zeros(0, np.int32)
        )
        hl = lens if history_lens is None else np.asarray(history_lens, dtype=np.int64)
        return cls(offsets=offsets, items=items.astype(np.int32), history_end=offsets[:-1] + hl)


def _hash_content(
    arrays: Iterable[tuple[str, Iterable[np.ndarray]]], items: pl.DataFrame, users: pl.DataFrame
) -> str:
    """The content hash: the present sequence arrays (name, then its bytes, which may come
    in chunks), item ids and splits."""
    h = hashlib.sha256()
    h.update(f"schema={SCHEMA_VERSION};".encode())
    for name, chunks in arrays:
        h.update(name.encode())
        for chunk in chunks:
            h.update(np.ascontiguousarray(chunk).data.cast("B"))
    h.update(b"item_id")
    h.update("\x1f".join(items["item_id"].cast(pl.String).to_list()).encode())
    h.update(b"split")
    h.update("\x1f".join(users["split"].to_list()).encode())
    return h.hexdigest()


def _hash_arrays(seqs: Sequences, items: pl.DataFrame, users: pl.DataFrame) -> str:
    present = [(n, getattr(seqs, n)) for n in _ARRAYS if getattr(seqs, n) is not None]
    return _hash_content(
        ((n, [np.ascontiguousarray(a, dtype=_DTYPES[n])]) for n, a in present), items, users
    )


def _check_tables(items: pl.DataFrame, users: pl.DataFrame) -> None:
    if "item_id" not in items.columns or not {"user_id", "split"} <= set(users.columns):
        raise ValueError("items needs item_id; users needs user_id and split")
    bad_split = set(users["split"].unique().to_list()) - set(SPLITS)
    if bad_split:
        raise ValueError(f"unknown split names {sorted(bad_split)}")


def _indexed_tables(
    items: pl.DataFrame, users: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """The tables as stored: ``item_idx`` / ``user_idx`` added, ids and attributes as
    strings; and the user attribute columns."""
    n_items, n_users = items.height, users.height
    items = items.with_columns(pl.col("item_id").cast(pl.String))
    items = items.select(pl.int_range(1, n_items + 1, dtype=pl.Int32).alias("item_idx"), pl.all())
    users = users.with_columns(pl.col("user_id").cast(pl.String))
    attr_cols = [c for c in users.columns if c not in ("user_id", "split")]
    users = users.with_columns([pl.col(c).cast(pl.String) for c in attr_cols])
    users = users.select(
        pl.int_range(0, n_users, dtype=pl.Int64).alias("user_idx"), "user_id", "split", *attr_cols
    )
    return items, users, attr_cols


def _meta(
    items: pl.DataFrame,
    users: pl.DataFrame,
    attr_cols: list[str],
    counts: Mapping[str, int],
    arrays: Iterable[str],
    source: str,
    params: Mapping[str, Any] | None,
    extra_meta: Mapping[str, Any] | None,
    content_hash: str,
) -> dict[str, Any]:
    """meta.json; ``counts`` holds ``interactions`` and ``history_interactions``,
    ``arrays`` the names of the sequence arrays present."""
    present = set(arrays)
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "counts": {
            "users": users.height,
            "items": items.height,
            "interactions": int(counts["interactions"]),
            "history_interactions": int(counts["history_interactions"]),
            "splits": {s: int((users["split"] == s).sum()) for s in SPLITS},
        },
        "fields": {
            "times": "times" in present,
            "ratings": "ratings" in present,
            "categories": "categories" in items.columns,
            "titles": "title" in items.columns,
            "user_attributes": attr_cols,
        },
        "params": dict(params or {}),
        "content_hash": content_hash,
    }
    if extra_meta:
        meta.update(extra_meta)
    return meta


def _write_tables(tmp: Path, items: pl.DataFrame, users: pl.DataFrame, meta: dict) -> None:
    items.write_parquet(tmp / "items.parquet")
    users.write_parquet(tmp / "users.parquet")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    write_marker(tmp, DATASET)


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


@contextmanager
def write_errors(path: Path, what: str = "--out", under: Path | None = None) -> Iterator[None]:
    """Turn an OS error while writing ``path`` (a read-only or full disk, a file where a
    folder should be) into one line naming ``what``; with ``under``, only errors about a
    file in that folder (others are not about writing)."""
    try:
        yield
    except OSError as e:
        name = e.filename
        full_disk = name is None and e.errno in _WRITE_ERRNOS  # tofile() names no file
        if under is not None and not full_disk and not (name and Path(name).is_relative_to(under)):
            raise
        detail = e.strerror or str(e)
        at = f" ({shown(name)})" if name and str(name) != str(path) else ""
        raise SeqtwinsError(
            f"cannot write {what} {shown(path)}: {detail}{at}; choose a writable location"
        ) from e


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold the lock of the dataset folder ``out`` (a hidden sibling lock file) while it is
    made: a second ``prepare`` / ``synth`` into it is refused in one line. Folders created
    for the lock are removed again when the work fails (nothing is left behind)."""
    out = Path(out).absolute()
    with write_errors(out):
        lock = file_lock(out).acquire()
    try:
        yield
    finally:
        lock.release()


def is_dataset(path: Path) -> bool:
    """Whether ``path`` is a dataset folder seqtwins wrote: its marker says so, or (written
    before markers) its ``meta.json`` has a schema version and a content hash."""
    path = Path(path)
    if marker_kind(path) == DATASET:
        return True
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "schema_version" in meta and "content_hash" in meta


def shown(path: Path | str) -> str:
    """``path`` for a one-line message: as is, or quoted when it holds a control character
    (a newline in a folder name must not break the line)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def check_out(out: Path, overwrite: bool, what: str = "--out") -> None:
    """The gate before writing the dataset folder ``out`` (call it before any long work):
    ``out`` is absent, or a seqtwins dataset and ``overwrite`` is set; its nearest existing
    ancestor is a writable folder. Then the temporary folders a killed writer left beside
    ``out`` are removed (:func:`seqtwins.files.clean_stale`)."""
    out = Path(out)
    name = shown(out)
    try:
        here = Path.cwd().resolve()
    except OSError:  # the current folder was deleted: out cannot be it
        here = Path("/nonexistent-seqtwins-cwd")
    if out.resolve() in (here, *here.parents):
        raise SeqtwinsError(
            f"{what} {name} is the current folder or holds it; name a folder to write, "
            f"e.g. {shown(out / 'dataset')}"
        )
    if out.exists() and not overwrite:
        raise SeqtwinsError(f"{name} already exists; choose another {what} or pass --overwrite")
    try:
        check_replaceable(out, what, owned=is_dataset, kinds=(DATASET,))
    except SeqtwinsError as e:
        raise SeqtwinsError(str(e).replace(str(out), name)) from None
    if out.is_dir() and not out.is_symlink():
        extra = sorted(p.name for p in out.iterdir() if p.name not in DATASET_FILES)
        if extra:  # a user's note inside the dataset: replacing the folder would delete it
            raise SeqtwinsError(
                f"{what} {name} holds files seqtwins did not write ({', '.join(extra[:3])}"
                f"{', ...' if len(extra) > 3 else ''}); --overwrite would delete them: move "
                "them out first or choose another folder"
            )
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise SeqtwinsError(f"cannot write {what} {name}: {shown(parent)} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SeqtwinsError(
            f"cannot write {what} {name}: folder {shown(parent)} is not writable; choose another"
        )
    clean_stale(out)


def write_dataset(
    out: Path | str,
    *,
    sequences: Sequences,
    items: pl.DataFrame,
    users: pl.DataFrame,
    source: str,
    params: Mapping[str, Any] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a canonical dataset directory atomically and return its path.

    ``items`` has one row per item in ``item_idx`` order 1..N with column ``item_id``
    (original id) and optional ``categories`` (list of strings) and ``title``.
    ``users`` has one row per sequence row with ``user_id`` and ``split`` and any
    attribute columns (stored as strings). ``item_idx`` / ``user_idx`` are added here.
    """
    out = Path(out)
    check_out(out, overwrite)
    if sequences.num_users != users.height:
        raise ValueError(f"{users.height} user rows for {sequences.num_users} sequences")
    _check_tables(items, users)
    if sequences.num_interactions and (
        int(sequences.items.min()) < 1 or int(sequences.items.max()) > items.height
    ):
        raise ValueError("sequence item indices must lie in 1..num_items")

    items, users, attr_cols = _indexed_tables(items, users)
    arrays = {
        n: np.ascontiguousarray(getattr(sequences, n), dtype=_DTYPES[n])
        for n in _ARRAYS
        if getattr(sequences, n) is not None
    }
    counts = {
        "interactions": sequences.num_interactions,
        "history_interactions": int(sequences.history_lengths().sum()),
    }
    with (
        write_errors(out),
        atomic_dir(out, overwrite=overwrite) as tmp,
        ThreadPoolExecutor(2) as pool,
    ):
        # the array files and their content hash side by side (np.save and hashlib release
        # the GIL): on a 20M-interaction log they took 0.67 s + 0.19 s one after the other
        saved = [pool.submit(np.save, tmp / f"{n}.npy", a) for n, a in arrays.items()]
        digest = _hash_content(((n, [a]) for n, a in arrays.items()), items, users)
        meta = _meta(items, users, attr_cols, counts, arrays, source, params, extra_meta, digest)
        for f in saved:
            f.result()
        _write_tables(tmp, items, users, meta)
    return out


_META_COUNTS = ("users", "items", "interactions")
_HOW = "create one with `seqtwins prepare` or `seqtwins synth`"


def _read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` of the dataset ``path``, checked for what :meth:`SequenceDataset.open`
    and its users read (sections, their types)."""
    if path.exists() and not path.is_dir():
        raise SeqtwinsError(f"{path} is a file, not a dataset directory; {_HOW}")
    if not path.is_dir():
        raise SeqtwinsError(f"dataset directory {path} does not exist; {_HOW}")
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise SeqtwinsError(f"{path} is not a seqtwins dataset (no meta.json); {_HOW}")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError included
        raise SeqtwinsError(f"{meta_file} is corrupt ({e}); recreate the dataset") from e
    if not isinstance(meta, dict):
        raise SeqtwinsError(f"{meta_file} is malformed: not a JSON object; recreate the dataset")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SeqtwinsError(
            f"{path} has dataset schema version {version}, this seqtwins reads "
            f"{SCHEMA_VERSION}; recreate it with this version's `seqtwins prepare`"
        )

    def bad(what: str) -> SeqtwinsError:
        return SeqtwinsError(f"{meta_file} is malformed: {what}; recreate the dataset")

    counts, fields = meta.get("counts"), meta.get("fields")
    if not isinstance(counts, dict):
        raise bad("no 'counts' section")
    for key in _META_COUNTS:
        value = counts.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad(f"counts.{key}={value!r} is not a count")
    if not isinstance(fields, dict):
        raise bad("no 'fields' section")
    for key in ("times", "ratings", "categories"):
        if not isinstance(fields.get(key, False), bool):
            raise bad(f"fields.{key}={fields.get(key)!r} is not true or false")
    attrs = fields.get("user_attributes", [])
    if not isinstance(attrs, list) or not all(isinstance(a, str) for a in attrs):
        raise bad(f"fields.user_attributes={attrs!r} is not a list of column names")
    if not isinstance(meta.get("content_hash"), str):
        raise bad("no content_hash")
    return meta


def _load_array(f: Path, mmap: bool) -> np.ndarray:
    if not f.is_file():
        raise SeqtwinsError(f"{f} is missing; the dataset is incomplete, recreate it")
    try:
        return np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise SeqtwinsError(f"{f} is corrupt ({e}); recreate the dataset") from e


def _read_tables(path: Path, meta: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``items.parquet`` and ``users.parquet``, checked against ``meta.json``."""
    tables = []
    for name in ("items", "users"):
        f = path / f"{name}.parquet"
        if not f.is_file():
            raise SeqtwinsError(f"{f} is missing; the dataset is incomplete, recreate it")
        try:
            tables.append(pl.read_parquet(f))
        except Exception as e:  # polars raises several types for corrupt files
            raise SeqtwinsError(f"{f} is corrupt ({type(e).__name__}); recreate it") from e
    items, users = tables
    counts, fields = meta["counts"], meta["fields"]
    need = {
        "items": (items, ["item_id"] + (["categories"] if fields.get("categories") else [])),
        "users": (users, ["user_id", "split", *fields.get("user_attributes", [])]),
    }
    for name, (table, cols) in need.items():
        missing = [c for c in cols if c not in table.columns]
        if missing:
            raise SeqtwinsError(
                f"{path / (name + '.parquet')} has no column {missing[0]!r}; recreate the dataset"
            )
    if items.height != counts["items"] or users.height != counts["users"]:
        raise SeqtwinsError(f"{path}: item/user tables do not match meta.json counts")
    if users["split"].dtype != pl.String or not users["split"].is_in(list(SPLITS)).all():
        raise SeqtwinsError(
            f"{path / 'users.parquet'}: column 'split' holds values other than "
            f"{', '.join(SPLITS)}; recreate the dataset"
        )
    return items, users


def _check_item_range(path: Path, items: np.ndarray, n_items: int) -> None:
    """Every item index in ``1..n_items`` (one vectorised pass; 0 and N+1 are padding and
    MASK, an out-of-range one would index past the embedding table)."""
    if len(items) == 0:
        return
    lo, hi = int(items.min()), int(items.max())
    if lo < 1 or hi > n_items:
        bad = lo if lo < 1 else hi
        raise SeqtwinsError(
            f"{path / 'items.npy'} holds item index {bad}, outside 1..{n_items} (meta.json "
            "counts.items); the dataset is corrupt, recreate it"
        )


class SequenceDataset:
    """A canonical dataset directory opened read-only; arrays are memory-mapped.

    Item indices: ``0`` is padding, ``1..num_items`` are items and ``mask_token =
    num_items + 1`` is the MASK token used by augmentations, so embedding tables need
    ``vocab_size = num_items + 2`` rows.
    """

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        sequences: Sequences,
        items: pl.DataFrame,
        users: pl.DataFrame,
    ) -> None:
        self.path = path
        self.meta = meta
        self.sequences = sequences
        self.items = items
        self.users = users

    @classmethod
    def open(cls, path: Path | str, mmap: bool = True, verify: bool = True) -> SequenceDataset:
        """Open a dataset directory; with ``verify`` (the default) its content hash is
        recomputed and a modified directory is refused (``--no-verify`` on the CLI skips
        this one pass over the arrays, for very large data).

        Whatever is wrong with the directory (a missing or malformed file, ``meta.json``
        without its sections, an item index out of range) is one
        :class:`~seqtwins.errors.SeqtwinsError` naming the file."""
        path = Path(path)
        try:
            return cls._open(path, mmap, verify)
        except SeqtwinsError as e:
            if str(path).isprintable():
                raise
            raise SeqtwinsError(str(e).replace(str(path), shown(path))) from None

    @classmethod
    def _open(cls, path: Path, mmap: bool, verify: bool) -> SequenceDataset:
        meta = _read_meta(path)
        fields, counts = meta["fields"], meta["counts"]
        arrays: dict[str, np.ndarray | None] = {}
        for name in _ARRAYS:
            required = name not in ("times", "ratings") or bool(fields.get(name))
            arrays[name] = _load_array(path / f"{name}.npy", mmap) if required else None
        expected = {
            "offsets": counts["users"] + 1,
            "history_end": counts["users"],
            "items": counts["interactions"],
            "times": counts["interactions"],
            "ratings": counts["interactions"],
        }
        for name, arr in arrays.items():
            if arr is not None and (arr.shape != (expected[name],) or arr.dtype != _DTYPES[name]):
                raise SeqtwinsError(
                    f"{path / (name + '.npy')} has shape {arr.shape} {arr.dtype}, meta.json "
                    f"says ({expected[name]},) {np.dtype(_DTYPES[name])}; recreate the dataset"
                )
        items, users = _read_tables(path, meta)
        try:
            seqs = Sequences(
                offsets=arrays["offsets"],  # type: ignore[arg-type]
                items=arrays["items"],  # type: ignore[arg-type]
                history_end=arrays["history_end"],  # type: ignore[arg-type]
                times=arrays["times"],
                ratings=arrays["ratings"],
            )
        except ValueError as e:
            raise SeqtwinsError(f"{path}: inconsistent sequence arrays ({e})") from e
        _check_item_range(path, seqs.items, counts["items"])
        ds = cls(path, meta, seqs, items, users)
        if verify:
            ds.verify()
        return ds

    # --- sizes and vocabulary -------------------------------------------------------
    @property
    def num_users(self) -> int:
        return self.sequences.num_users

    @property
    def num_items(self) -> int:
        return int(self.meta["counts"]["items"])

    @property
    def mask_token(self) -> int:
        return self.num_items + 1

    @property
    def vocab_size(self) -> int:
        return self.num_items + 2

    @property
    def content_hash(self) -> str:
        return str(self.meta["content_hash"])

    @property
    def has_categories(self) -> bool:
        return bool(self.meta["fields"]["categories"])

    @property
    def user_attributes(self) -> list[str]:
        return list(self.meta["fields"]["user_attributes"])

    def verify(self) -> None:
        """Recompute the content hash and raise if the directory was modified."""
        got = _hash_arrays(self.sequences, self.items, self.users)
        if got != self.content_hash:
            raise SeqtwinsError(
                f"{self.path}: content hash mismatch, the dataset was modified after it was "
                "written; recreate it (or pass --no-verify to use it anyway)"
            )

    # --- users ----------------------------------------------------------------------
    @functools.cached_property
    def user_ids(self) -> list[str]:
        """Every user's original id as text; entry i is user_idx i."""
        return self.users["user_id"].cast(pl.String).to_list()

    @functools.cached_property
    def _user_rows(self) -> dict[str, int]:
        rows: dict[str, int] = {}
        for i, uid in enumerate(self.user_ids):
            rows.setdefault(uid, i)
        return rows

    def user_row(self, user: str) -> int | None:
        """The ``user_idx`` of original id ``user`` (its text form), None if absent."""
        return self._user_rows.get(str(user))

    def split_users(self, split: str) -> np.ndarray:
        """``user_idx`` of the users in ``split`` (train / valid / test), ascending."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return np.flatnonzero((self.users["split"] == split).to_numpy())

    def item_categories(self) -> tuple[np.ndarray, list[str]]:
        """Primary category code of each item index (``-1`` for padding / none) and names.

        The primary category is the first-listed one: the data source's own main genre /
        category for MovieLens and the S3-Rec files (docs/evaluation.md).
        """
        if not self.has_categories:
            raise SeqtwinsError(f"{self.path} has no item categories")
        first = self.items["categories"].list.first()
        names = sorted(x for x in first.unique().to_list() if x is not None)
        lookup = {n: i for i, n in enumerate(names)}
        codes = np.full(self.num_items + 2, -1, dtype=np.int64)
        codes[1 : self.num_items + 1] = [
            lookup[c] if c is not None else -1 for c in first.to_list()
        ]
        return codes, names


# --- datasets larger than memory (additive: used by the out-of-core ``prepare``) ------------

_CHUNK_BYTES = 16 << 20


def iter_npy_chunks(path: Path, chunk_bytes: int = _CHUNK_BYTES) -> Iterator[np.ndarray]:
    """The 1-D array in the ``.npy`` file ``path`` as consecutive chunks, read with plain file
    reads into one reused buffer: unlike a memory map, nothing stays resident (RSS)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if len(shape) != 1 or fortran:
            raise ValueError(f"{path}: expected a 1-D array, got shape {shape}")
        n, step = shape[0], max(1, chunk_bytes // dtype.itemsize)
        buf = np.empty(min(n, step), dtype=dtype)
        done = 0
        while done < n:
            k = min(step, n - done)
            view = buf[:k]
            got = f.readinto(view.data.cast("B"))
            if got != k * dtype.itemsize:
                raise ValueError(f"{path} is truncated")
            yield view
            done += k


def _npy_info(path: Path) -> tuple[tuple[int, ...], np.dtype[Any]]:
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    return arr.shape, arr.dtype


def write_dataset_files(
    out: Path | str,
    *,
    arrays: Mapping[str, Path],
    items: pl.DataFrame,
    users: pl.DataFrame,
    source: str,
    params: Mapping[str, Any] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """:func:`write_dataset` for sequence arrays already written as ``.npy`` files.

    For datasets larger than memory: ``arrays`` maps ``offsets``, ``items``,
    ``history_end`` [, ``times``] [, ``ratings``] to ``.npy`` files of the dtypes of the
    module docstring. They are checked and hashed chunk by chunk (memory stays small) and
    *moved* into the directory (a rename when they lie on ``out``'s filesystem). The
    directory, its ``meta.json`` and its content hash are exactly what :func:`write_dataset`
    writes for the same content.
    """
    out = Path(out)
    check_out(out, overwrite)
    n_items, n_users = items.height, users.height
    missing = {"offsets", "items", "history_end"} - set(arrays)
    if missing or set(arrays) - set(_ARRAYS):
        raise ValueError(
            f"arrays must name offsets, items, history_end [, times, ratings]: {sorted(arrays)}"
        )
    info = {name: _npy_info(Path(p)) for name, p in arrays.items()}
    for name, (shape, dtype) in info.items():
        if len(shape) != 1 or dtype != _DTYPES[name]:
            raise ValueError(f"{name}: expected 1-D {np.dtype(_DTYPES[name])}, got {shape} {dtype}")
    offsets = np.load(arrays["offsets"], allow_pickle=False)  # (U+1,): per user, small
    history_end = np.load(arrays["history_end"], allow_pickle=False)
    n_inter = info["items"][0][0]
    # the checks of Sequences, without loading the per-interaction arrays
    Sequences(offsets=offsets, items=np.empty(n_inter, dtype=np.int8), history_end=history_end)
    if len(offsets) - 1 != n_users:
        raise ValueError(f"{n_users} user rows for {len(offsets) - 1} sequences")
    for name in ("times", "ratings"):
        if name in info and info[name][0][0] != n_inter:
            raise ValueError(f"{name} must have one entry per interaction")
    _check_tables(items, users)
    lo, hi = n_items + 1, 0
    for chunk in iter_npy_chunks(arrays["items"]):
        lo, hi = min(lo, int(chunk.min())), max(hi, int(chunk.max()))
    if n_inter and (lo < 1 or hi > n_items):
        raise ValueError("sequence item indices must lie in 1..num_items")

    items, users, attr_cols = _indexed_tables(items, users)
    present = [n for n in _ARRAYS if n in arrays]  # the byte stream of write_dataset's hash
    content_hash = _hash_content(((n, iter_npy_chunks(arrays[n])) for n in present), items, users)
    counts = {
        "interactions": n_inter,
        "history_interactions": int((history_end - offsets[:-1]).sum()),
    }
    meta = _meta(items, users, attr_cols, counts, present, source, params, extra_meta,
                 content_hash)  # fmt: skip

    with write_errors(out), atomic_dir(out, overwrite=overwrite) as tmp:
        for name, path in arrays.items():
            shutil.move(str(path), tmp / f"{name}.npy")  # a rename on one filesystem
        _write_tables(tmp, items, users, meta)
    return out
