"""Readers of raw interaction logs: generic tables, MovieLens folders, S3-Rec text files.

Every reader returns a :class:`RawLog`: one row per interaction, in file order, with columns

- ``user``, ``item`` -- ids as in the source (integer when every id is a canonical integer,
  otherwise string),
- ``time`` -- optional, Int64 epoch seconds (UTC),
- ``rating`` -- optional, Float32,

plus optional item and user tables. Ordering, filtering and indexing are
:mod:`seqtwins.data.prepare`'s job; a reader only parses and validates.

Formats (``--format``):

- ``csv`` / ``tsv`` / ``parquet`` / ``jsonl`` -- one interaction per row/line (plain or ``.gz``
  for the text formats). Columns are named by :class:`ReaderOptions`; without a name the first
  of a short list of usual names is used (:data:`COLUMN_CANDIDATES`).
- ``movielens`` -- a folder in an official MovieLens layout: ML-100K (``u.data``, ``u.item``,
  ``u.user``), ML-1M / ML-10M (``ratings.dat[.gz]``, ``movies.dat``, ``users.dat``,
  ``::``-separated, Latin-1 where not UTF-8), ML-20M / 25M / latest (``ratings.csv``,
  ``movies.csv``). Genres become item categories; gender / age / occupation become user
  attributes (ML-1M age and occupation *codes* are kept as category strings). Zip codes are
  not kept: they are quasi-identifiers and no downstream task uses them.
- ``s3rec`` -- ``<Name>.txt`` (one user per line: user id, then items in time order) plus an
  optional ``<Name>_item2attributes.json``; attribute ids become category strings, repeats
  within an item's list are removed (first occurrence kept), an empty list means no category.

Bad rows (empty or unparseable user / item / time / rating) end in one
:class:`~seqtwins.errors.SeqtwinsError` naming the first few with their line numbers, or are
skipped and counted (``on_bad_rows="skip"``). Blank lines in text formats are ignored.
"""

from __future__ import annotations

import difflib
import gzip
import io
import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from seqtwins.errors import SeqtwinsError

FORMATS = ("auto", "csv", "tsv", "parquet", "jsonl", "movielens", "s3rec")
BAD_ROW_POLICIES = ("error", "skip")
ROLES = ("user", "item", "time", "rating")
#: Column names tried, in order, when a column is not named explicitly.
COLUMN_CANDIDATES: dict[str, tuple[str, ...]] = {
    "user": ("user_id", "userId", "user", "uid", "UserID"),
    "item": ("item_id", "itemId", "item", "movieId", "iid", "MovieID"),
    "time": ("timestamp", "time", "ts", "datetime", "Timestamp"),
    "rating": ("rating", "Rating"),
}
CATEGORY_CANDIDATES = ("categories", "category", "genres", "genre", "tags")
TITLE_CANDIDATES = ("title", "name")
#: The 19 ML-100K genres in ``u.item`` flag order (used when ``u.genre`` is absent).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_ROLE_FLAG = {"user": "--user-col", "item": "--item-col", "time": "--time-col",
              "rating": "--rating-col"}  # fmt: skip
_EXPECTED = {
    "user": "a user id",
    "item": "an item id",
    "time": "epoch seconds or an ISO-8601 time",
    "rating": "a number",
}
_MAX_REPORTED = 3
STREAM_BATCH_ROWS: int | None = 1 << 19
"""Rows per streamed batch (``None``: polars' choice, about a row group). Fewer, larger
batches cost less Python and polars overhead per row (measured at 20M rows: 512k-row batches
used ~10% less CPU than polars' ~120k)."""
_LINE_SEP = "\x1f"  # ASCII unit separator: never inside a text line we read as one column


@dataclass(frozen=True)
class ReaderOptions:
    """How to read a raw log (the ``prepare`` flags about input)."""

    format: str = "auto"
    """One of :data:`FORMATS`; ``auto`` decides by file extension / folder contents."""
    user_col: str | None = None
    """User id column of a generic table; ``None``: the first of ``COLUMN_CANDIDATES['user']``."""
    item_col: str | None = None
    """Item id column of a generic table; ``None``: the first of ``COLUMN_CANDIDATES['item']``."""
    time_col: str | None = None
    """Time column (epoch seconds or ISO-8601); ``None``: the first usual name, else no times
    (line order is then the order)."""
    rating_col: str | None = None
    """Rating column; ``None``: ``rating`` if present, else no ratings."""
    items_file: Path | None = None
    """Optional item table (csv/tsv/parquet/jsonl) for generic tables: id + categories."""
    items_id_col: str | None = None
    """Id column of the item table; ``None``: the item column's name if present, else the first."""
    categories_col: str | None = None
    """Categories column of the item table (a list, or ``|``- / ``,``-separated text);
    ``None``: the first of :data:`CATEGORY_CANDIDATES`."""
    users_file: Path | None = None
    """Optional user table for generic tables: an id column and any attribute columns."""
    users_id_col: str | None = None
    """Id column of the user table; ``None``: the user column's name if present, else the first."""
    on_bad_rows: str = "error"
    """``error``: stop at bad rows and name the first few; ``skip``: drop and count them."""

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming the invalid setting by its field name."""
        if self.format not in FORMATS:
            raise ValueError(
                f"format={self.format!r} is unknown; choose one of {', '.join(FORMATS)}"
            )
        if self.on_bad_rows not in BAD_ROW_POLICIES:
            raise ValueError(f"on_bad_rows={self.on_bad_rows!r} must be 'error' or 'skip'")


@dataclass
class RawLog:
    """A parsed log: interactions in file order and optional item / user tables."""

    interactions: pl.DataFrame
    """Columns ``user``, ``item`` [, ``time`` Int64 epoch s] [, ``rating`` Float32]; no nulls."""
    format: str
    """The concrete format that was read (never ``auto``)."""
    source: str
    """The file(s) read, for messages and ``meta.json``."""
    items: pl.DataFrame | None = None
    """``item_id`` (String) [, ``categories`` List(String)] [, ``title``]; unique ids."""
    users: pl.DataFrame | None = None
    """``user_id`` (String) and attribute columns (String); unique ids."""
    rows_read: int = 0
    """Data rows read (blank lines excluded), before skipping bad rows."""
    bad_rows_skipped: int = 0
    """Rows dropped by ``on_bad_rows="skip"``."""
    empty_users: int = 0
    """Users listed with no interaction at all (S3-Rec lines holding only a user id)."""


# --- entry points ------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """The concrete format of ``path`` judged by its name / folder contents."""
    path = Path(path)
    if not path.exists():
        raise SeqtwinsError(f"input {path} does not exist")
    if path.is_dir():
        if _movielens_layout(path) is not None:
            return "movielens"
        if _s3rec_txt(path, must=False) is not None:
            return "s3rec"
        if parquet_files(path):
            return "parquet"
        raise SeqtwinsError(
            f"cannot tell the format of folder {path}: it holds neither a MovieLens layout "
            "(u.data, ratings.dat[.gz], ratings.csv), an S3-Rec <Name>.txt nor .parquet "
            "files; pass --format or point at a file"
        )
    name = path.name.lower()
    base = name[:-3] if name.endswith(".gz") else name
    sibling_ml = path.parent / "movies.csv"
    if base in ("u.data", "ratings.dat") or (base == "ratings.csv" and sibling_ml.is_file()):
        return "movielens"
    suffix = Path(base).suffix
    by_suffix = {
        ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
        ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".txt": "s3rec",
    }  # fmt: skip
    if suffix in by_suffix:
        return by_suffix[suffix]
    raise SeqtwinsError(
        f"cannot tell the format of {path} from its name; pass --format "
        "csv|tsv|parquet|jsonl|movielens|s3rec"
    )


def read_log(path: Path, options: ReaderOptions | None = None) -> RawLog:
    """Read and validate the raw log at ``path`` (a file or a folder)."""
    options = options or ReaderOptions()
    path = Path(path)
    if not path.exists():
        raise SeqtwinsError(f"input {path} does not exist")
    fmt = detect_format(path) if options.format == "auto" else options.format
    if fmt in ("movielens", "s3rec") and (options.items_file or options.users_file):
        raise SeqtwinsError(
            f"--items/--users apply to csv/tsv/parquet/jsonl input; {fmt} input brings its "
            "own item and user tables"
        )
    if fmt == "movielens":
        log = _read_movielens(path, options)
    elif fmt == "s3rec":
        log = _read_s3rec(path, options)
    else:
        log = _read_generic(path, fmt, options)
    if log.items is not None:
        check_overlap(log.items["item_id"], log.interactions["item"], "item", log)
    if log.users is not None:
        check_overlap(log.users["user_id"], log.interactions["user"], "user", log)
    return log


# --- raw bytes and tables ------------------------------------------------------------------


def _load_bytes(path: Path) -> bytes:
    """File contents, gunzipped for ``.gz``; empty, truncated or corrupt files are errors."""
    if not path.is_file():
        raise SeqtwinsError(f"{path} does not exist or is not a file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SeqtwinsError(f"cannot read {path} ({e.strerror})") from e
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise SeqtwinsError(
                f"{path} is a truncated or corrupt gzip file ({e}); download or compress it again"
            ) from e
    if not raw.strip():
        raise SeqtwinsError(f"{path} is empty; point at a file with interactions")
    return raw


def _first_bad_utf8(data: bytes) -> tuple[int, int, int] | None:
    """(line, column, byte) of the first invalid UTF-8 byte, 1-based; ``None`` if valid."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        return line, col, data[e.start]
    return None


def _utf8_error(label: str, data: bytes) -> SeqtwinsError | None:
    bad = _first_bad_utf8(data)
    if bad is None:
        return None
    line, col, byte = bad
    return SeqtwinsError(
        f"{label} line {line}, column {col}: byte 0x{byte:02X} is not valid UTF-8; save the "
        f"file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
    )


def _decode_legacy(data: bytes) -> bytes:
    """UTF-8 bytes of an old MovieLens text file: UTF-8 if it is, else Latin-1."""
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode("latin-1").encode("utf-8")


@dataclass
class _Table:
    """Raw columns as read (typed or all-String) and how rows map to lines."""

    df: pl.DataFrame
    label: str
    first_line: int  # line number of data row 0
    unit: str = "line"  # "line" for text, "row" for Parquet
    text: bool = True  # blank lines are possible (text formats only)
    line_numbers: pl.Series | None = None  # per row, when rows are not consecutive lines
    blank: pl.Series | None = None  # per row: a blank line (default: every column null)

    def line_of(self, row: int) -> int:
        if self.line_numbers is not None:
            return int(self.line_numbers[row])
        return row + self.first_line

    def blank_mask(self) -> pl.Series | None:
        if not self.text:
            return None
        if self.blank is not None:
            return self.blank
        return self.df.select(pl.all_horizontal(pl.all().is_null())).to_series()


def _polars_msg(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _csv_columns(src: Path | bytes, sep: str, label: str) -> list[str]:
    try:
        if isinstance(src, Path):
            names = pl.scan_csv(src, separator=sep, infer_schema=False).collect_schema().names()
        else:
            names = pl.read_csv(
                io.BytesIO(src), separator=sep, n_rows=1, infer_schema=False
            ).columns
    except pl.exceptions.NoDataError as e:
        raise SeqtwinsError(f"{label} is empty; point at a file with interactions") from e
    except pl.exceptions.PolarsError as e:
        raise _text_error(label, src, e) from e
    for name in names:  # polars renames a repeated header name to NAME_duplicated_K
        base, dup, k = name.rpartition("_duplicated_")
        if dup and k.isdigit() and base in names:
            raise SeqtwinsError(
                f"{label}: the header names column {base!r} more than once; give each "
                "column its own name"
            )
    return names


def _text_error(label: str, src: Path | bytes, e: Exception) -> SeqtwinsError:
    """Turn a polars parse error on a text file into a one-line error for people."""
    msg = _polars_msg(e)
    if "utf-8" in msg.lower() or "utf8" in msg.lower():
        data = src.read_bytes() if isinstance(src, Path) else src
        err = _utf8_error(label, data)
        if err is not None:
            return err
    if "more fields" in msg:
        return SeqtwinsError(
            f"{label}: a row has more fields than the header; fix it or pass "
            "--on-bad-rows skip to ignore the extra fields"
        )
    return SeqtwinsError(f"{label} cannot be parsed ({msg}); check --format and the file")


def _read_delimited(
    src: Path | bytes,
    label: str,
    sep: str,
    columns: Sequence[str],
    *,
    names: Sequence[str] | None = None,
    quote: bool = True,
    skip_ragged: bool = False,
    text_cols: Sequence[str] = (),
) -> _Table:
    """Read ``columns`` of a CSV-like text; typed first, all-String when that fails.

    ``names`` gives column names to a header-less file; ``text_cols`` are always read as
    text (ids: type inference would turn ``007`` into 7). The all-String fallback lets
    :func:`_normalize` point at the exact bad rows instead of polars' first parse failure.
    """
    kw: dict[str, object] = {
        "separator": sep,
        "quote_char": '"' if quote else None,
        "has_header": names is None,
        "truncate_ragged_lines": skip_ragged,
        "schema_overrides": dict.fromkeys(text_cols, pl.String),
    }
    if names is not None:
        kw["new_columns"] = list(names)
    first_line = 1 if names is not None else 2

    def read(**extra: object) -> pl.DataFrame:
        opts = {**kw, **extra}
        if "infer_schema" in extra:
            opts.pop("schema_overrides")
        if isinstance(src, Path):
            return pl.scan_csv(src, **opts).select(list(columns)).collect()  # type: ignore[arg-type]
        return pl.read_csv(io.BytesIO(src), **opts).select(list(columns))  # type: ignore[arg-type]

    try:
        df = read(infer_schema_length=10_000)
    except pl.exceptions.NoDataError as e:
        raise SeqtwinsError(f"{label} is empty; point at a file with interactions") from e
    except pl.exceptions.ColumnNotFoundError as e:
        raise SeqtwinsError(f"{label}: {_polars_msg(e)}") from e
    except pl.exceptions.PolarsError:
        try:
            df = read(infer_schema=False)
        except pl.exceptions.PolarsError as e:
            raise _text_error(label, src, e) from e
    return _Table(df, label, first_line)


def _read_lines(src: bytes, label: str) -> pl.DataFrame:
    """Each line of a UTF-8 text as one String row (``line``); blank lines become null."""
    try:
        df = pl.read_csv(
            io.BytesIO(src),
            separator=_LINE_SEP,
            quote_char=None,
            has_header=False,
            schema={"line": pl.String},
        )
    except pl.exceptions.PolarsError as e:
        raise _text_error(label, src, e) from e
    return df.with_columns(pl.col("line").str.strip_chars_end("\r"))


def _read_any_table(path: Path, what: str) -> _Table:
    """A whole item/user table (all columns), format by extension."""
    fmt = detect_format(path)
    label = str(path)
    if fmt == "parquet":
        cols = _parquet_columns(path)
        df = _read_parquet(path, cols).df
        return _Table(df, label, 1, unit="row", text=False)
    if fmt in ("csv", "tsv"):
        data = _load_bytes(path)
        sep = "," if fmt == "csv" else "\t"
        cols = _csv_columns(data, sep, label)
        return _read_delimited(data, label, sep, cols, text_cols=cols)  # all text
    if fmt == "jsonl":
        data = _load_bytes(path)
        cols = _jsonl_columns(data, label)
        return _read_jsonl(data, label, cols)
    raise SeqtwinsError(f"{what} table {path} must be csv, tsv, parquet or jsonl")


def parquet_files(folder: Path) -> list[Path]:
    """The ``.parquet`` / ``.pq`` files under ``folder`` (any depth, e.g. hive-style
    ``key=value/`` subfolders), in path order: the row order of a partitioned log.

    Hidden and underscore files (``_SUCCESS``, ``.part-0.crc``) are skipped, as Spark and
    Hive writers expect.
    """
    return sorted(
        f
        for ext in ("*.parquet", "*.pq")
        for f in folder.rglob(ext)
        if f.is_file()
        and not any(part.startswith((".", "_")) for part in f.relative_to(folder).parts)
    )


def _scan_parquet(path: Path) -> pl.LazyFrame:
    """A lazy scan of a Parquet file or of every Parquet file in a (partitioned) folder."""
    if not path.is_dir():
        return pl.scan_parquet(path)
    files = parquet_files(path)
    if not files:
        raise SeqtwinsError(f"folder {path} holds no .parquet files; check the path")
    hive = any("=" in part for f in files for part in f.relative_to(path).parts[:-1])
    return pl.scan_parquet(files, hive_partitioning=hive)


def _parquet_columns(path: Path) -> list[str]:
    if not path.exists():
        raise SeqtwinsError(f"{path} does not exist or is not a file")
    try:
        return _scan_parquet(path).collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as e:
        raise SeqtwinsError(
            f"{path} is not a readable Parquet file ({_polars_msg(e)}); check --format"
        ) from e


def _read_parquet(path: Path, columns: Sequence[str]) -> _Table:
    try:
        df = _scan_parquet(path).select(list(columns)).collect()
    except (pl.exceptions.PolarsError, OSError) as e:
        raise SeqtwinsError(f"{path} cannot be read as Parquet ({_polars_msg(e)})") from e
    return _Table(df, str(path), 1, unit="row", text=False)


def _jsonl_columns(data: bytes, label: str) -> list[str]:
    """Keys seen in the first 1,000 JSON lines, in first-seen order."""
    keys: dict[str, None] = {}
    for raw in data[: 1 << 20].splitlines()[:1000]:
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            keys.update(dict.fromkeys(obj))
    if not keys:
        err = _utf8_error(label, data)
        raise err or SeqtwinsError(
            f"{label} holds no JSON objects in its first lines; expected one JSON object per line"
        )
    return list(keys)


def _read_jsonl(data: bytes, label: str, columns: Sequence[str]) -> _Table:
    """JSON lines; polars' reader when rows map 1:1 to lines and parse, else line by line."""
    if b"\n\n" not in data and b"\n\r\n" not in data and not data[:1].isspace():
        try:
            df = pl.read_ndjson(io.BytesIO(data), infer_schema_length=10_000)
            df = df.select([pl.col(c) if c in df.columns else pl.lit(None).alias(c)
                            for c in columns])  # fmt: skip
            if not bool(df.select(pl.any_horizontal(pl.all().is_null())).to_series().any()):
                return _Table(df, label, 1)
        except pl.exceptions.PolarsError:
            pass
    # Slow but exact path: each line on its own, so bad lines keep their line numbers.
    if (err := _utf8_error(label, data)) is not None:
        raise err
    lines = _read_lines(data, label)
    df = lines.select(
        [pl.col("line").str.json_path_match("$[" + json.dumps(c) + "]").alias(c) for c in columns]
    )
    blank = lines["line"].is_null() | (lines["line"].str.strip_chars() == "")
    return _Table(df, label, 1, blank=blank)


# --- column roles and normalisation ---------------------------------------------------------


def column_list(names: Sequence[str], most: int = 12, width: int = 30) -> str:
    """Column names for a one-line message: at most ``most``, each cut to ``width``
    characters, unprintable characters shown as ``?`` (a binary file read as CSV has a
    header of junk)."""
    shown = [n if len(n) <= width else n[: width - 3] + "..." for n in list(names)[:most]]
    shown = ["".join(c if c.isprintable() and c != "\ufffd" else "?" for c in n) for n in shown]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(shown) + more


def _resolve(
    available: Sequence[str], role: str, given: str | None, label: str, required: bool
) -> str | None:
    """The column playing ``role``: the one named, else the first usual name present."""
    if given is not None:
        if given in available:
            return given
        close = difflib.get_close_matches(given, available, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SeqtwinsError(
            f"{label} has no column {given!r} for {_ROLE_FLAG[role]}{hint}; its columns are: "
            f"{column_list(available)}"
        )
    for cand in COLUMN_CANDIDATES[role]:
        if cand in available:
            return cand
    if required:
        raise SeqtwinsError(
            f"{label} has no {role} column (tried {', '.join(COLUMN_CANDIDATES[role])}); name it "
            f"with {_ROLE_FLAG[role]}; its columns are: {column_list(available)}"
        )
    return None


_NOT_CANONICAL_INT = r"^(?:\+|-?0[0-9]|-0$)"


def _id_series(s: pl.Series, as_int: bool | None = None) -> pl.Series:
    """Ids: integers stay integers; canonical integer text becomes Int64; else String.

    Text ids are read as text, never inferred: ``007`` and ``7`` are two different ids and
    an integer column would merge them, so text becomes Int64 only when every value is a
    canonical integer (no sign, no leading zero). ``as_int`` imposes that decision (made
    over the whole log by :func:`_ids_as_int` when it is read batch by batch).
    """
    if s.dtype.is_integer():
        return s
    if s.dtype.is_float():
        if as_int is None:
            finite = s.drop_nulls().drop_nans()
            as_int = finite.len() == 0 or bool((finite == finite.floor()).all())
        return s.fill_nan(None).cast(pl.Int64, strict=False) if as_int else s.cast(pl.String)
    if s.dtype == pl.String:
        as_int_s = s.cast(pl.Int64, strict=False)
        if as_int is None:
            as_int = as_int_s.null_count() == s.null_count() and not bool(
                s.str.contains(_NOT_CANONICAL_INT).any()
            )
        if as_int:
            return as_int_s
        stripped = s.str.strip_chars()
        return pl.select(pl.when(stripped == "").then(None).otherwise(stripped)).to_series()
    return s.cast(pl.String)


def _as_int_expr(dtype: pl.DataType, name: str) -> pl.Expr | None:
    """Whether :func:`_id_series` makes the whole column Int64 (an aggregate), ``None`` if
    the dtype decides alone."""
    col = pl.col(name)
    if dtype.is_float():
        return (col.is_null() | col.is_nan() | (col == col.floor())).all()
    if dtype == pl.String:
        return (col.cast(pl.Int64, strict=False).null_count() == col.null_count()) & ~(
            col.str.contains(_NOT_CANONICAL_INT).any()
        )
    return None


def _time_expr(dtype: pl.DataType, name: str, label: str) -> pl.Expr:
    """Epoch seconds (Int64, UTC) from integers, floats, datetimes, dates or text.

    A value beyond Int64 (``99999999999999999999`` reads as Int128 or a float) becomes null:
    a bad row, named with its line like any unparseable time."""
    col = pl.col(name)
    if dtype.is_integer():
        return col.cast(pl.Int64, strict=False)
    if dtype.is_float():
        return _float_seconds(col)
    if isinstance(dtype, pl.Datetime):
        return col.dt.epoch("s")
    if dtype == pl.Date:
        return col.cast(pl.Datetime("ms")).dt.epoch("s")
    if dtype == pl.String:
        return _parse_time_text(col)
    raise SeqtwinsError(
        f"{label}: time column {name!r} has type {dtype}; expected epoch seconds or ISO-8601"
    )


_INT64_SECONDS = float(2**63 - 1024)
"""The largest float below 2**63: larger seconds do not fit Int64."""


def _float_seconds(x: pl.Expr) -> pl.Expr:
    """Whole seconds of float ``x``; null where not finite or beyond Int64."""
    ok = x.is_finite() & (x.abs() < _INT64_SECONDS)
    return pl.when(ok).then(x.floor()).otherwise(None).cast(pl.Int64, strict=False)


def _parse_time_text(col: pl.Expr) -> pl.Expr:
    """Epoch seconds from text: integer / decimal seconds, or ISO-8601 date[time][offset]."""
    s = col.str.strip_chars()
    as_int = s.cast(pl.Int64, strict=False)
    as_float = s.cast(pl.Float64, strict=False)
    iso = s.str.replace(r"^(\d{4}-\d{2}-\d{2})[ T]", "${1}T").str.replace(r"[Zz]$", "+00:00")
    with_offset = iso.str.to_datetime(
        "%Y-%m-%dT%H:%M:%S%.f%z", strict=False, time_unit="us", time_zone="UTC"
    )
    naive = [
        iso.str.to_datetime(fmt, strict=False, time_unit="us")
        for fmt in ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M")
    ]
    date = iso.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us"))
    return pl.coalesce(
        as_int,
        _float_seconds(as_float),
        with_offset.dt.epoch("s"),
        *[d.dt.epoch("s") for d in naive],
        date.dt.epoch("s"),
    )


def _rating_expr(dtype: pl.DataType, name: str, label: str) -> pl.Expr:
    col = pl.col(name)
    if dtype.is_numeric():
        num = col.cast(pl.Float64)
    elif dtype == pl.String:
        num = col.str.strip_chars().cast(pl.Float64, strict=False)
    else:
        raise SeqtwinsError(f"{label}: rating column {name!r} has type {dtype}; expected numbers")
    fits = num.is_finite() & (num.abs() <= float(np.finfo(np.float32).max))  # else inf
    return pl.when(fits).then(num).otherwise(None).cast(pl.Float32)


def _typed(
    table: _Table, roles: dict[str, str], ids_as_int: dict[str, bool] | None = None
) -> tuple[pl.DataFrame, pl.Series | None, pl.Series | None]:
    """Typed ``user``/``item``/[``time``]/[``rating``] columns, the bad-row mask (``None``:
    no bad row) and the blank-line mask (``None``: no blank lines possible)."""
    df = table.df
    cols: list[pl.Expr | pl.Series] = []
    for role, name in roles.items():
        dtype = df.schema[name]
        if role in ("user", "item") and (dtype.is_nested() or dtype == pl.Object):
            raise SeqtwinsError(
                f"{table.label}: column {name!r} holds {dtype} values, but {role} ids must be "
                f"integers or text; point {_ROLE_FLAG[role]} at the {role} id column"
            )
        if role in ("user", "item"):
            cols.append(_id_series(df[name], (ids_as_int or {}).get(role)).alias(role))
        elif role == "time":
            cols.append(_time_expr(dtype, name, table.label).alias(role))
        else:
            cols.append(_rating_expr(dtype, name, table.label).alias(role))
    out = df.select(cols)
    if not any(out[c].null_count() for c in out.columns):  # null counts are metadata: O(1)
        return out, None, None
    bad = out.select(pl.any_horizontal(pl.all().is_null())).to_series()
    blank = table.blank_mask()
    if blank is not None:
        bad = bad & ~blank
    return out, bad, blank


_BadPart = tuple["_Table", pl.DataFrame, pl.Series]
"""A table (or a batch of one), its typed columns and its bad-row mask."""


def _bad_rows_error(parts: list[_BadPart], roles: dict[str, str], n_bad: int) -> SeqtwinsError:
    """One line naming the first few bad rows of ``parts`` (``n_bad`` in the whole log)."""
    found = [(t, o, r) for t, o, bad in parts for r in bad.arg_true().to_list()]
    details = []
    for table, out, r in found[:_MAX_REPORTED]:
        df = table.df
        raws = {name: df[name][r] for name in roles.values()}
        if all(v is None for v in raws.values()):
            why = f"none of the columns {', '.join(map(repr, raws))} has a value"
        else:
            why = ""
            for role, name in roles.items():
                if out[role][r] is None:
                    raw = raws[name]
                    why = (
                        f"column {name!r} is empty"
                        if raw is None or (isinstance(raw, str) and not raw.strip())
                        else f"column {name!r} value {str(raw)[:40]!r} is not {_EXPECTED[role]}"
                    )
                    break
        details.append(f"{table.unit} {table.line_of(r)}: {why}")
    more = f" (and {n_bad - len(details)} more)" if n_bad > len(details) else ""
    return SeqtwinsError(
        f"{table.label}: {n_bad} bad row{'s' if n_bad > 1 else ''}: {'; '.join(details)}"
        f"{more}; fix them or pass --on-bad-rows skip to drop them"
    )


def _normalize(table: _Table, roles: dict[str, str], on_bad_rows: str) -> tuple[pl.DataFrame, int]:
    """Typed ``user``/``item``/[``time``]/[``rating``] columns; bad rows raise or are dropped.

    Returns the clean frame (file order) and the number of rows skipped.
    """
    out, bad, blank = _typed(table, roles)
    if bad is None:
        if out.height == 0:
            raise SeqtwinsError(f"{table.label}: no interactions to prepare (it has no rows)")
        return out, 0
    n_bad = int(bad.sum())
    if n_bad and on_bad_rows == "error":
        raise _bad_rows_error([(table, out, bad)], roles, n_bad)
    keep = ~bad if blank is None else ~(bad | blank)
    if n_bad or (blank is not None and bool(blank.any())):
        out = out.filter(keep)
    if out.height == 0:
        what = "all rows are bad" if n_bad else "it has no rows"
        raise SeqtwinsError(f"{table.label}: no interactions to prepare ({what})")
    return out, n_bad


def _n_blank(table: _Table) -> int:
    blank = table.blank_mask()
    return 0 if blank is None else int(blank.sum())


# --- generic tables ----------------------------------------------------------------------


def _read_generic(path: Path, fmt: str, options: ReaderOptions) -> RawLog:
    if path.is_dir() and fmt != "parquet":
        raise SeqtwinsError(f"--format {fmt} needs a file, but {path} is a folder")
    label = str(path)
    src: Path | bytes
    if fmt == "parquet":
        available = _parquet_columns(path)
    elif fmt == "jsonl":
        src = _load_bytes(path)
        available = _jsonl_columns(src, label)
    else:
        sep = "," if fmt == "csv" else "\t"
        src = _load_bytes(path) if path.name.lower().endswith(".gz") else path
        if isinstance(src, Path) and src.stat().st_size == 0:
            raise SeqtwinsError(f"{label} is empty; point at a file with interactions")
        available = _csv_columns(src, sep, label)
    roles = _roles(available, options, label)
    cols = list(dict.fromkeys(roles.values()))
    if fmt == "parquet":
        table = _read_parquet(path, cols)
    elif fmt == "jsonl":
        table = _read_jsonl(src, label, cols)  # type: ignore[arg-type]
    else:
        table = _read_delimited(
            src,
            label,
            sep,
            cols,
            skip_ragged=options.on_bad_rows == "skip",
            text_cols=[roles["user"], roles["item"]],
        )
    rows = table.df.height - _n_blank(table)
    inter, skipped = _normalize(table, roles, options.on_bad_rows)
    items = users = None
    if options.items_file is not None:
        items = _item_table(Path(options.items_file), options, roles["item"])
    if options.users_file is not None:
        users = _user_table(Path(options.users_file), options, roles["user"])
    return RawLog(inter, fmt, label, items, users, rows_read=rows, bad_rows_skipped=skipped)


def _roles(available: Sequence[str], options: ReaderOptions, label: str) -> dict[str, str]:
    roles: dict[str, str] = {}
    given = {"user": options.user_col, "item": options.item_col, "time": options.time_col,
             "rating": options.rating_col}  # fmt: skip
    for role in ROLES:
        col = _resolve(available, role, given[role], label, required=role in ("user", "item"))
        if col is not None:
            roles[role] = col
    if roles["user"] == roles["item"]:
        raise SeqtwinsError(f"{label}: user and item columns are both {roles['user']!r}")
    return roles


def _unique_ids(df: pl.DataFrame, col: str, label: str, what: str) -> pl.DataFrame:
    """Cast the id column to String; null or repeated ids are errors."""
    df = df.with_columns(pl.col(col).cast(pl.String).str.strip_chars().alias(col))
    nulls = df[col].is_null() | (df[col] == "")
    if bool(nulls.any()):
        r = int(nulls.arg_true()[0])
        raise SeqtwinsError(f"{label}: row {r + 1} has no {what} id in column {col!r}; fill it in")
    dup = df[col].is_duplicated()
    if bool(dup.any()):
        first = df[col].filter(dup)[0]
        raise SeqtwinsError(
            f"{label}: {what} id {first!r} appears more than once in column {col!r}; "
            "keep one row per id"
        )
    return df


def _categories_expr(dtype: pl.DataType, name: str, values: pl.Series) -> pl.Expr:
    """List(String) categories from a list column or ``|``- / ``,``-separated text."""
    col = pl.col(name)
    if isinstance(dtype, pl.List | pl.Array):
        lst = col.cast(pl.List(pl.String))
    else:
        text = col.cast(pl.String)
        sep = "|" if bool(values.cast(pl.String).str.contains("|", literal=True).any()) else ","
        lst = text.str.split(sep)
    lst = lst.list.eval(pl.element().str.strip_chars()).list.eval(
        pl.element().filter(pl.element().is_not_null() & (pl.element() != ""))
    )
    return pl.when(col.is_null()).then(pl.lit([], dtype=pl.List(pl.String))).otherwise(lst)


def _item_table(path: Path, options: ReaderOptions, item_col: str) -> pl.DataFrame:
    table = _read_any_table(path, "item")
    df, label = table.df, table.label
    id_col = options.items_id_col or (item_col if item_col in df.columns else df.columns[0])
    if id_col not in df.columns:
        raise SeqtwinsError(
            f"{label} has no column {id_col!r} for --items-id-col; its columns are: "
            f"{column_list(df.columns)}"
        )
    cat_col = options.categories_col
    if cat_col is None:
        cat_col = next((c for c in CATEGORY_CANDIDATES if c in df.columns), None)
    elif cat_col not in df.columns:
        raise SeqtwinsError(
            f"{label} has no column {cat_col!r} for --categories-col; its columns are: "
            f"{column_list(df.columns)}"
        )
    title_col = next((c for c in TITLE_CANDIDATES if c in df.columns and c != id_col), None)
    if cat_col is None and title_col is None:
        raise SeqtwinsError(
            f"{label} has no categories column (tried {', '.join(CATEGORY_CANDIDATES)}); "
            "name it with --categories-col"
        )
    if df.height == 0:
        raise SeqtwinsError(f"{label} is empty; give an item table with rows or drop --items")
    df = _unique_ids(df, id_col, label, "item")
    exprs = [pl.col(id_col).alias("item_id")]
    if cat_col is not None:
        exprs.append(_categories_expr(df.schema[cat_col], cat_col, df[cat_col]).alias("categories"))
    if title_col is not None:
        exprs.append(pl.col(title_col).cast(pl.String).alias("title"))
    return df.select(exprs)


def _user_table(path: Path, options: ReaderOptions, user_col: str) -> pl.DataFrame:
    table = _read_any_table(path, "user")
    df, label = table.df, table.label
    id_col = options.users_id_col or (user_col if user_col in df.columns else df.columns[0])
    if id_col not in df.columns:
        raise SeqtwinsError(
            f"{label} has no column {id_col!r} for --users-id-col; its columns are: "
            f"{column_list(df.columns)}"
        )
    if df.height == 0:
        raise SeqtwinsError(f"{label} is empty; give a user table with rows or drop --users")
    df = _unique_ids(df, id_col, label, "user")
    attrs = [c for c in df.columns if c != id_col]
    reserved = {"user_idx", "user_id", "split"} & set(attrs)
    if reserved:
        raise SeqtwinsError(
            f"{label}: attribute column(s) {sorted(reserved)} clash with dataset columns; "
            "rename them"
        )
    return df.select(pl.col(id_col).alias("user_id"), *[pl.col(c).cast(pl.String) for c in attrs])


def check_overlap(table_ids: pl.Series, log_ids: pl.Series, what: str, log: RawLog) -> None:
    """An item/user table that matches no id of the log is a mistake (wrong file or column).

    Raises :class:`SeqtwinsError`; ``log`` names the source in the message."""
    table_s = table_ids.cast(pl.String)
    log_s = log_ids.unique().cast(pl.String)
    if not bool(table_s.is_in(log_s.implode()).any()):
        ex_t = ", ".join(repr(x) for x in table_s.head(3).to_list())
        ex_l = ", ".join(repr(x) for x in log_s.sort().head(3).to_list())
        raise SeqtwinsError(
            f"the {what} table of {log.source} references no {what} of the interactions "
            f"(table ids like {ex_t}; log ids like {ex_l}); check the file and its id column"
        )


# --- MovieLens ---------------------------------------------------------------------------


def _movielens_layout(folder: Path) -> str | None:
    if (folder / "u.data").is_file():
        return "100k"
    if (folder / "ratings.dat").is_file() or (folder / "ratings.dat.gz").is_file():
        return "1m"
    if (folder / "ratings.csv").is_file():
        return "20m"
    return None


def _read_movielens(path: Path, options: ReaderOptions) -> RawLog:
    folder = path if path.is_dir() else path.parent
    layout = _movielens_layout(folder)
    if layout is None:
        raise SeqtwinsError(
            f"{folder} is not a MovieLens folder: expected u.data (ML-100K), "
            "ratings.dat[.gz] (ML-1M/10M) or ratings.csv (ML-20M/25M/latest)"
        )
    bad = options.on_bad_rows
    names = ["user", "item", "rating", "time"]
    ids = names[:2]
    roles = {r: r for r in ROLES}
    items = users = None
    if layout == "100k":
        f = folder / "u.data"
        table = _read_delimited(
            _load_bytes(f), str(f), "\t", names, names=names, quote=False, text_cols=ids
        )
        if (folder / "u.item").is_file():
            items = _ml100k_items(folder)
        if (folder / "u.user").is_file():
            users = _dat_table(
                folder / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip"]
            )
    elif layout == "1m":
        f = folder / "ratings.dat"
        if not f.is_file():
            f = folder / "ratings.dat.gz"
        data = _load_bytes(f).replace(b"::", _LINE_SEP.encode())
        table = _read_delimited(
            data, str(f), _LINE_SEP, names, names=names, quote=False, text_cols=ids
        )
        if (folder / "movies.dat").is_file():
            movies = _dat_table(folder / "movies.dat", "::", ["item_id", "title", "genres"])
            items = movies.select(
                "item_id",
                _genres(pl.col("genres")).alias("categories"),
                "title",
            )
        if (folder / "users.dat").is_file():
            users = _dat_table(
                folder / "users.dat", "::", ["user_id", "gender", "age", "occupation", "zip"]
            )
    else:
        f = folder / "ratings.csv"
        data = _load_bytes(f)
        cols = _csv_columns(data, ",", str(f))
        ml_names = ["userId", "movieId", "rating", "timestamp"]
        missing = [c for c in ml_names if c not in cols]
        if missing:
            raise SeqtwinsError(
                f"{f} lacks MovieLens column(s) {', '.join(missing)}; its columns are: "
                f"{', '.join(cols)}; use --format csv with --user-col/--item-col instead"
            )
        table = _read_delimited(data, str(f), ",", ml_names, text_cols=ml_names[:2])
        table.df = table.df.rename(dict(zip(ml_names, names, strict=True)))
        mf = folder / "movies.csv"
        if mf.is_file():
            mdata = _load_bytes(mf)
            mcols = ["movieId", "title", "genres"]
            mt = _read_delimited(mdata, str(mf), ",", mcols, text_cols=mcols)
            mdf = _unique_ids(mt.df, "movieId", str(mf), "movie")
            items = mdf.select(
                pl.col("movieId").alias("item_id"),
                _genres(pl.col("genres").cast(pl.String)).alias("categories"),
                pl.col("title").cast(pl.String),
            )
    if users is not None:
        users = users.drop("zip")
    rows = table.df.height - _n_blank(table)
    inter, skipped = _normalize(table, roles, bad)
    return RawLog(inter, "movielens", str(folder), items, users, rows_read=rows,
                  bad_rows_skipped=skipped)  # fmt: skip


def _genres(col: pl.Expr) -> pl.Expr:
    """Pipe-separated genres as a list; ``(no genres listed)`` / empty means none."""
    parts = col.str.split("|").list.eval(
        pl.element().filter(
            (pl.element().str.strip_chars() != "") & (pl.element() != "(no genres listed)")
        )
    )
    return pl.when(col.is_null()).then(pl.lit([], dtype=pl.List(pl.String))).otherwise(parts)


def _dat_table(path: Path, sep: str, names: list[str]) -> pl.DataFrame:
    """A small MovieLens side table (UTF-8 or Latin-1) as String columns with unique ids."""
    data = _decode_legacy(_load_bytes(path)).replace(sep.encode(), _LINE_SEP.encode())
    label = str(path)
    try:
        df = pl.read_csv(
            io.BytesIO(data),
            separator=_LINE_SEP,
            quote_char=None,
            has_header=False,
            new_columns=names,
            infer_schema=False,
        )
    except pl.exceptions.PolarsError as e:
        raise SeqtwinsError(
            f"{label} cannot be parsed as {sep!r}-separated {', '.join(names)} ({_polars_msg(e)})"
        ) from e
    if df.width != len(names):
        raise SeqtwinsError(
            f"{label} has {df.width} fields per line, expected {len(names)} ({', '.join(names)})"
        )
    df = df.filter(~pl.all_horizontal(pl.all().is_null()))
    return _unique_ids(df, names[0], label, names[0].removesuffix("_id"))


def _ml100k_items(folder: Path) -> pl.DataFrame:
    genres = list(ML100K_GENRES)
    gfile = folder / "u.genre"
    if gfile.is_file():
        g = _decode_legacy(_load_bytes(gfile)).decode("utf-8")
        pairs = [ln.split("|") for ln in g.splitlines() if ln.strip()]
        try:
            genres = [name for name, _ in sorted(pairs, key=lambda p: int(p[1]))]
        except (ValueError, IndexError) as e:
            raise SeqtwinsError(f"{gfile}: expected lines 'name|id' ({e})") from e
    flags = [f"g{k}" for k in range(len(genres))]
    names = ["item_id", "title", "release", "video_release", "url", *flags]
    df = _dat_table(folder / "u.item", "|", names)
    cats = pl.concat_list(
        [pl.when(pl.col(f) == "1").then(pl.lit(g)) for f, g in zip(flags, genres, strict=True)]
    ).list.drop_nulls()
    return df.select("item_id", cats.alias("categories"), "title")


# --- S3-Rec ------------------------------------------------------------------------------


def _s3rec_txt(path: Path, must: bool = True) -> Path | None:
    if path.is_file():
        return path
    txts = sorted(p for p in path.glob("*.txt") if not p.name.lower().startswith("readme"))
    with_attr = [p for p in txts if (p.parent / f"{p.stem}_item2attributes.json").is_file()]
    for cands in (with_attr, txts):
        if len(cands) == 1:
            return cands[0]
    if must:
        raise SeqtwinsError(
            f"{path} must hold exactly one S3-Rec <Name>.txt (found "
            f"{', '.join(p.name for p in txts) or 'none'}); point at the .txt file"
        )
    return None


def _read_s3rec(path: Path, options: ReaderOptions) -> RawLog:
    txt = _s3rec_txt(path)
    assert txt is not None
    label = str(txt)
    data = _load_bytes(txt)
    lines = _read_lines(data, label).with_row_index("row")
    if (err := _utf8_error(label, data)) is not None:  # polars may not check every byte
        raise err
    tokens = lines.select("row", pl.col("line").str.extract_all(r"\S+").alias("tok")).filter(
        pl.col("tok").list.len() > 0
    )
    n_rows = tokens.height
    empty_users = int((tokens["tok"].list.len() == 1).sum())
    long = (
        tokens.select(
            "row",
            pl.col("tok").list.first().alias("user"),
            pl.col("tok").list.slice(1).alias("item"),
        )
        .explode("item")
        .drop_nulls("item")
    )
    table = _Table(long.select("user", "item"), label, 1, line_numbers=long["row"] + 1)
    inter, _ = _normalize(table, {"user": "user", "item": "item"}, options.on_bad_rows)
    items = None
    attr = txt.parent / f"{txt.stem}_item2attributes.json"
    if attr.is_file():
        items = _s3rec_attributes(attr)
    return RawLog(inter, "s3rec", label, items, None, rows_read=n_rows, empty_users=empty_users)


def _s3rec_attributes(path: Path) -> pl.DataFrame:
    label = str(path)
    data = _load_bytes(path)
    if (err := _utf8_error(label, data)) is not None:
        raise err
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as e:
        raise SeqtwinsError(
            f"{label} line {e.lineno}, column {e.colno}: invalid JSON ({e.msg}); expected "
            '{"item_id": [attribute_id, ...], ...}'
        ) from e
    if not isinstance(obj, dict) or not all(isinstance(v, list) for v in obj.values()):
        raise SeqtwinsError(
            f'{label}: expected one JSON object {{"item_id": [attribute_id, ...], ...}}'
        )
    if not obj:
        raise SeqtwinsError(f"{label} is empty (no items); remove it or fill it in")
    values = list(obj.values())
    # one flat array + offsets: building a list column from Python lists is slow
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum([len(v) for v in values], out=offsets[1:])
    try:
        flat = pa.array([x for v in values for x in v]).cast(pa.string())
    except (pa.ArrowException, TypeError) as e:
        raise SeqtwinsError(
            f"{label}: attribute lists must hold only ids (numbers or strings) ({e})"
        ) from e
    cats = pl.from_arrow(pa.ListArray.from_arrays(pa.array(offsets), flat))
    df = pl.DataFrame(
        {"item_id": pl.Series(list(obj.keys()), dtype=pl.String), "categories": cats}
    ).with_columns(pl.col("categories").list.unique(maintain_order=True))
    return _unique_ids(df, "item_id", label, "item")


# --- batch by batch (logs larger than memory) -----------------------------------------------

STREAM_FORMATS = ("csv", "tsv", "parquet")
"""Formats :func:`scan_log` reads batch by batch (uncompressed CSV / TSV, Parquet files and
folders); the others are read whole by :func:`read_log`."""


@dataclass
class LogScan:
    """A generic table log read lazily, batch by batch, with :func:`read_log`'s checks.

    :meth:`batches` yields what ``read_log(...).interactions`` holds, in the same (file) order
    and with the same types, in pieces; ``rows_read`` / ``bad_rows_skipped`` are complete
    once the batches are exhausted. Item / user tables are small and read whole.
    """

    format: str
    source: str
    lazy: pl.LazyFrame
    """The role columns as stored (text for CSV, with the casts the whole log allows)."""
    roles: dict[str, str]
    ids_as_int: dict[str, bool]
    """Per id role: Int64 or String, decided over the whole log (as :func:`read_log` does)."""
    text: bool
    first_line: int
    on_bad_rows: str
    items: pl.DataFrame | None = None
    users: pl.DataFrame | None = None
    num_rows: int | None = None
    """Rows in the input when the file metadata tells (Parquet), else ``None``."""
    rows_read: int = 0
    bad_rows_skipped: int = 0

    def batches(self, chunk_size: int | None = None) -> Iterator[pl.DataFrame]:
        """Clean interaction batches (``user``, ``item`` [, ``time``] [, ``rating``]).

        Bad rows raise (``on_bad_rows="error"``, after the whole log was scanned so that the
        message counts them all) or are skipped and counted.
        """
        self.rows_read = self.bad_rows_skipped = 0
        offset, n_good, n_bad = 0, 0, 0
        first_bad: list[_BadPart] = []  # batches holding the first few bad rows
        stop = self.on_bad_rows == "error"
        try:
            for raw in self.lazy.collect_batches(chunk_size=chunk_size):
                unit = "line" if self.text else "row"
                table = _Table(raw, self.source, self.first_line + offset, unit, self.text)
                offset += raw.height
                self.rows_read += raw.height - _n_blank(table)
                out, bad, blank = _typed(table, self.roles, self.ids_as_int)
                if bad is not None:
                    nb = int(bad.sum())
                    if nb and n_bad < _MAX_REPORTED:
                        first_bad.append((table, out, bad))
                    n_bad += nb
                    out = out.filter(~bad if blank is None else ~(bad | blank))
                if stop and first_bad:
                    continue  # only count the remaining bad rows
                self.bad_rows_skipped = n_bad
                n_good += out.height
                if out.height:
                    yield out
        except pl.exceptions.PolarsError as e:
            raise SeqtwinsError(
                f"{self.source} cannot be read ({_polars_msg(e)}); check --format and the file"
            ) from e
        if stop and first_bad:
            raise _bad_rows_error(first_bad, self.roles, n_bad)
        if n_good == 0:
            what = "all rows are bad" if n_bad else "it has no rows"
            raise SeqtwinsError(f"{self.source}: no interactions to prepare ({what})")


def estimate_rows(path: Path, fmt: str) -> int:
    """Rows of a CSV / TSV / Parquet log without parsing it: exact from Parquet metadata,
    else the file size over the mean line length of its first MiB."""
    if fmt == "parquet":
        try:
            return int(_scan_parquet(path).select(pl.len()).collect().item())
        except (pl.exceptions.PolarsError, OSError) as e:
            raise SeqtwinsError(f"{path} is not a readable Parquet file ({_polars_msg(e)})") from e
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError as e:  # missing, a folder given as --format csv, unreadable
        raise SeqtwinsError(f"cannot read {path} as a {fmt} file ({e.strerror or e})") from e
    if not head:
        return 0
    return int(size / (len(head) / max(head.count(b"\n"), 1)))


def scan_log(
    path: Path, options: ReaderOptions | None = None, *, id_pass: bool = True
) -> LogScan | None:
    """A lazy, batch-by-batch reader of ``path``; ``None`` when its format is read whole
    (JSON lines, MovieLens, S3-Rec, gzipped text: use :func:`read_log`).

    Text ids (CSV, or String Parquet columns) need one pass over the id columns first: they
    become integers only when every value in the whole log is a canonical integer. With
    ``id_pass=False`` such a log gives ``None`` instead of that pass.
    """
    options = options or ReaderOptions()
    path = Path(path)
    if not path.exists():
        raise SeqtwinsError(f"input {path} does not exist")
    fmt = detect_format(path) if options.format == "auto" else options.format
    if fmt not in STREAM_FORMATS or path.name.lower().endswith(".gz"):
        return None
    if path.is_dir() and fmt != "parquet":
        raise SeqtwinsError(f"--format {fmt} needs a file, but {path} is a folder")
    label = str(path)
    num_rows = None
    if fmt == "parquet":
        available = _parquet_columns(path)
        roles = _roles(available, options, label)
        cols = list(dict.fromkeys(roles.values()))
        lazy = _scan_parquet(path).select(cols)
        num_rows = estimate_rows(path, fmt)
        text, first_line = False, 1
    else:
        sep = "," if fmt == "csv" else "\t"
        if path.stat().st_size == 0:
            raise SeqtwinsError(f"{label} is empty; point at a file with interactions")
        available = _csv_columns(path, sep, label)
        roles = _roles(available, options, label)
        cols = list(dict.fromkeys(roles.values()))
        lazy = pl.scan_csv(
            path,
            separator=sep,
            infer_schema=False,
            truncate_ragged_lines=options.on_bad_rows == "skip",
        ).select(cols)
        text, first_line = True, 2
    schema = lazy.collect_schema()
    checks: dict[str, pl.Expr] = {}
    for role in ("user", "item"):
        expr = _as_int_expr(schema[roles[role]], roles[role])
        if expr is not None:
            checks[role] = expr
    if text:  # numbers stored as text: typed as a typed read of the whole file would type them
        for role in ("time", "rating"):
            if role in roles:
                col = pl.col(roles[role])
                filled = col.is_not_null() & (col.str.strip_chars() != "")
                checks[f"{role}:int"] = (
                    col.cast(pl.Int64, strict=False).is_not_null() | ~filled
                ).all()
                checks[f"{role}:float"] = (
                    col.cast(pl.Float64, strict=False).is_not_null() | ~filled
                ).all()
    found: dict[str, bool] = {}
    if checks and not id_pass:
        return None
    if checks:
        try:
            row = lazy.select(**checks).collect(engine="streaming").row(0, named=True)
        except pl.exceptions.PolarsError as e:
            raise (
                _text_error(label, path, e)
                if text
                else SeqtwinsError(f"{label} cannot be read ({_polars_msg(e)})")
            ) from e
        found = {k: bool(v) for k, v in row.items()}
    ids_as_int: dict[str, bool] = {r: found[r] for r in ("user", "item") if r in found}
    if text:
        casts = []
        for role in ("time", "rating"):
            if role in roles:
                name = roles[role]
                if role == "time" and found[f"{role}:int"]:
                    casts.append(pl.col(name).str.strip_chars().cast(pl.Int64))
                elif found[f"{role}:float"]:
                    casts.append(pl.col(name).str.strip_chars().cast(pl.Float64))
        if casts:
            lazy = lazy.with_columns(casts)
    items = users = None
    if options.items_file is not None:
        items = _item_table(Path(options.items_file), options, roles["item"])
    if options.users_file is not None:
        users = _user_table(Path(options.users_file), options, roles["user"])
    return LogScan(
        fmt, label, lazy, roles, ids_as_int, text, first_line, options.on_bad_rows,
        items, users, num_rows,
    )  # fmt: skip
