"""``seqtwins inspect``: what a dataset directory holds, as a dict and as rich tables."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

from seqtwins.data.dataset import SPLITS, SequenceDataset

PERCENTILES = (5, 25, 50, 75, 95)
"""Percentiles of the sequence-length distributions (plus min, max and mean)."""
TOP_CATEGORIES = 10
"""Categories listed by name (the rest are counted)."""
TOP_VALUES = 8
"""Values listed per user attribute."""


def _length_stats(lengths: np.ndarray) -> dict[str, float | int]:
    """min / p5..p95 / max / mean of a length array (all 0 when empty)."""
    if len(lengths) == 0:
        return {"min": 0, **{f"p{p}": 0.0 for p in PERCENTILES}, "max": 0, "mean": 0.0}
    pct = np.percentile(lengths, PERCENTILES)
    return {
        "min": int(lengths.min()),
        **{f"p{p}": round(float(v), 2) for p, v in zip(PERCENTILES, pct, strict=True)},
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 2),
    }


def _categories(items: pl.DataFrame, item_counts: np.ndarray) -> dict[str, Any]:
    """Items and interactions per category (an item counts under each listed category)."""
    cats = items.select(
        "item_idx",
        pl.col("categories").list.unique(maintain_order=True).alias("category"),
        pl.col("categories").list.first().alias("primary"),
    )
    counts = pl.Series("interactions", item_counts[cats["item_idx"].to_numpy()])
    cats = cats.with_columns(counts)
    per = (
        cats.explode("category")
        .drop_nulls("category")
        .group_by("category")
        .agg(
            pl.len().alias("items"),
            (pl.col("primary") == pl.col("category")).sum().alias("primary_items"),
            pl.col("interactions").sum(),
        )
        .sort(["items", "category"], descending=[True, False])
    )
    per_item = items["categories"].list.len().fill_null(0).to_numpy()
    return {
        "count": per.height,
        "primary_count": int(cats["primary"].drop_nulls().n_unique()),
        "items_without_category": int((per_item == 0).sum()),
        "categories_per_item_mean": round(float(per_item.mean()), 3) if len(per_item) else 0.0,
        "top": per.head(TOP_CATEGORIES).to_dicts(),
    }


def _attributes(users: pl.DataFrame, columns: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col in columns:
        vc = (
            users.select(pl.col(col).cast(pl.String).fill_null("(missing)").alias("value"))
            .group_by("value")
            .agg(pl.len().alias("users"))
            .sort(["users", "value"], descending=[True, False])
        )
        out[col] = {"distinct": vc.height, "top": vc.head(TOP_VALUES).to_dicts()}
    return out


def inspect_dataset(directory: Path | str, verify: bool = True) -> dict[str, Any]:
    """Summary of a dataset directory as plain (JSON-ready) data.

    Keys: ``path``, ``source``, ``schema_version``, ``content_hash``, ``params``, ``counts``
    (users, items, interactions, history_interactions, future_interactions), ``splits``,
    ``fields``, ``lengths`` (``sequence`` / ``history`` / ``future``: min, p5..p95, max,
    mean), ``categories`` (or ``None``), ``user_attributes`` (values per column),
    ``times`` (first/last ISO-8601 UTC, or ``None``), ``ratings`` (distribution or ``None``).
    Raises :class:`~seqtwins.errors.SeqtwinsError` when the directory is not a dataset (or,
    with ``verify``, was modified after it was written: its content hash is checked).
    """
    ds = SequenceDataset.open(directory, verify=verify)
    seqs, meta = ds.sequences, ds.meta
    lengths = seqs.lengths()
    history = seqs.history_lengths()
    future = lengths - history
    item_counts = np.bincount(np.asarray(seqs.items), minlength=ds.num_items + 1)
    split_col = ds.users["split"]
    summary: dict[str, Any] = {
        "path": str(ds.path),
        "source": meta.get("source"),
        "schema_version": meta.get("schema_version"),
        "content_hash": ds.content_hash,
        "params": meta.get("params", {}),
        "counts": {
            "users": ds.num_users,
            "items": ds.num_items,
            "interactions": seqs.num_interactions,
            "history_interactions": int(history.sum()),
            "future_interactions": int(future.sum()),
            "items_never_seen": int((item_counts[1:] == 0).sum()),
            "users_without_future": int((future == 0).sum()),
        },
        "splits": {s: int((split_col == s).sum()) for s in SPLITS},
        "fields": dict(meta.get("fields", {})),
        "lengths": {
            "sequence": _length_stats(lengths),
            "history": _length_stats(history),
            "future": _length_stats(future),
        },
        "categories": (
            _categories(ds.items, item_counts)
            if ds.has_categories and "categories" in ds.items.columns
            else None
        ),
        "user_attributes": _attributes(ds.users, ds.user_attributes),
        "times": None,
        "ratings": None,
    }
    if seqs.times is not None and seqs.num_interactions:
        t = np.asarray(seqs.times)
        summary["times"] = {
            "first": dt.datetime.fromtimestamp(int(t.min()), dt.UTC).isoformat(),
            "last": dt.datetime.fromtimestamp(int(t.max()), dt.UTC).isoformat(),
        }
    if seqs.ratings is not None and seqs.num_interactions:
        r = np.asarray(seqs.ratings)
        values, counts = np.unique(r[np.isfinite(r)], return_counts=True)
        summary["ratings"] = {
            "mean": round(float(np.nanmean(r)), 4),
            "min": float(np.nanmin(r)),
            "max": float(np.nanmax(r)),
            "missing": int((~np.isfinite(r)).sum()),
            # the full distribution when ratings are discrete stars; else just the range
            "counts": (
                {f"{v:g}": int(c) for v, c in zip(values, counts, strict=True)}
                if len(values) <= 20
                else None
            ),
        }
    return summary


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:g}"
    return str(v)


def render_summary(summary: dict[str, Any], console: Console) -> None:
    """Print :func:`inspect_dataset`'s summary as readable tables."""
    counts = summary["counts"]
    overview = Table(title=f"dataset {summary['path']}", show_header=False, title_justify="left")
    overview.add_column(style="bold")
    overview.add_column(overflow="fold")
    overview.add_row("source", str(summary["source"]))
    overview.add_row("content hash", summary["content_hash"])
    for key in ("users", "items", "interactions", "history_interactions",
                "future_interactions"):  # fmt: skip
        overview.add_row(key.replace("_", " "), _fmt(counts[key]))
    overview.add_row("splits", " / ".join(f"{_fmt(summary['splits'][s])} {s}" for s in SPLITS))
    fields = summary["fields"]
    have = [f for f in ("times", "ratings", "categories", "titles") if fields.get(f)]
    overview.add_row("fields", ", ".join(have) or "none")
    if summary["categories"]:
        c = summary["categories"]
        overview.add_row(
            "categories",
            f"{c['count']:,}; {c['categories_per_item_mean']:g} per item; "
            f"{c['items_without_category']:,} items without one",
        )
    overview.add_row("user attributes", ", ".join(fields.get("user_attributes", [])) or "none")
    if summary["times"]:
        overview.add_row("time range", f"{summary['times']['first']} .. {summary['times']['last']}")
    if summary["ratings"]:
        r = summary["ratings"]
        dist = r["counts"]
        text = f"mean {r['mean']:.2f}, range {r['min']:g}..{r['max']:g}"
        if dist:
            total = sum(dist.values()) or 1
            text += " (" + ", ".join(f"{k}: {100 * v / total:.0f}%" for k, v in dist.items()) + ")"
        overview.add_row("ratings", text)
    console.print(overview)

    lengths = Table(title="sequence lengths", title_justify="left")
    lengths.add_column("")
    stats = ["min", *[f"p{p}" for p in PERCENTILES], "max", "mean"]
    for s in stats:
        lengths.add_column(s, justify="right")
    for name in ("sequence", "history", "future"):
        row = summary["lengths"][name]
        lengths.add_row(name, *(_fmt(row[s]) for s in stats))
    console.print(lengths)

    cats = summary["categories"]
    if cats:
        shown = len(cats["top"])
        table = Table(
            title=f"categories: {cats['count']:,} ({cats['primary_count']:,} as primary); "
            f"top {shown}",
            title_justify="left",
        )
        for col, just in (("category", "left"), ("items", "right"),
                          ("as primary", "right"), ("interactions", "right")):  # fmt: skip
            table.add_column(col, justify=just)  # type: ignore[arg-type]
        for row in cats["top"]:
            table.add_row(
                str(row["category"]), _fmt(row["items"]), _fmt(row["primary_items"]),
                _fmt(row["interactions"]),
            )  # fmt: skip
        console.print(table)

    attrs = summary["user_attributes"]
    if attrs:
        table = Table(title="user attributes", title_justify="left")
        table.add_column("attribute")
        table.add_column("values", justify="right")
        table.add_column(f"most common (users; top {TOP_VALUES})")
        for col, info in attrs.items():
            top = ", ".join(f"{row['value']} {_fmt(row['users'])}" for row in info["top"])
            table.add_row(col, _fmt(info["distinct"]), top)
        console.print(table)

    params = summary["params"]
    if params:
        text = ", ".join(f"{k}={v}" for k, v in params.items())
        console.print(f"[bold]params[/]: {text}", highlight=False)
