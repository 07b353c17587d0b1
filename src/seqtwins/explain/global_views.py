"""Global views of an embedding for the report: principal directions and what moves them.

For the map users of an evaluation (the labelled test users of ``favorite_category``, whose
embeddings ``seqtwins evaluate`` saves for the 2-D map):

- the top **principal directions** of their embeddings (centred, by SVD) and the share of
  variance each carries;
- per direction, the **categories** whose users sit furthest along it (+) and against it
  (-): the mean coordinate of the users of each favourite category, in units of the
  direction's standard deviation, over categories with at least ``min_users`` users;
- per direction, the **items** likewise: the mean coordinate of the users who have the item
  in their history (the dataset is read for this; without it the item view is left out),
  over items held by at least ``min_users`` map users. This is an association (where the
  holders of an item sit), not a per-user removal effect; ``seqtwins explain`` measures
  removal for one user;
- per-category **centroids** of the 2-D map (:func:`class_centroids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from seqtwins.data.dataset import SequenceDataset

DIRECTIONS = 3
TOP = 5
MIN_USERS = 5


def principal_directions(
    emb: np.ndarray, n: int = DIRECTIONS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Components (n, D) (unit rows, sign fixed so the largest-|loading| entry is
    positive), explained-variance shares (n,) and the users' coordinates (N, n)."""
    x = np.asarray(emb, dtype=np.float64)
    x = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    n = min(n, len(s))
    comp = vt[:n]
    sign = np.sign(comp[np.arange(n), np.abs(comp).argmax(axis=1)])
    comp = comp * sign[:, None]
    var = s**2
    share = var[:n] / var.sum() if var.sum() > 0 else np.zeros(n)
    return comp, share, x @ comp.T


def _extremes(
    means: np.ndarray, counts: np.ndarray, names: Sequence[str], top: int, min_users: int
) -> dict[str, list[dict[str, Any]]]:
    ok = np.flatnonzero(counts >= min_users)
    order = ok[np.argsort(-means[ok], kind="stable")]
    row = lambda i: {"name": str(names[i]), "z": float(means[i]), "users": int(counts[i])}  # noqa: E731
    return {"plus": [row(i) for i in order[:top]],
            "minus": [row(i) for i in order[::-1][:top]]}  # fmt: skip


def group_means(z: np.ndarray, members: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``z`` (N, n) over each group's members (``members`` (N, G) 0/1) -> (G, n),
    and the group sizes (G,)."""
    counts = np.asarray(members.sum(axis=0)).ravel()
    sums = np.asarray(members.T @ z)  # (G, n)
    return sums / np.maximum(counts, 1)[:, None], counts


def global_views(
    emb: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    holders: sp.csr_matrix | None = None,
    item_names: Sequence[str] | None = None,
    n: int = DIRECTIONS,
    top: int = TOP,
    min_users: int = MIN_USERS,
) -> list[dict[str, Any]]:
    """One entry per principal direction: its variance share and the categories (and, with
    ``holders`` (N, I) 0/1 and ``item_names``, the items) at either end (module docstring)."""
    _, share, coords = principal_directions(emb, n)
    z = coords / np.maximum(coords.std(axis=0), 1e-12)  # (N, n) in std units
    labels = np.asarray(labels, dtype=np.int64)
    known = np.flatnonzero(labels >= 0)
    cats = sp.csr_matrix(
        (np.ones(len(known)), (known, labels[known])), shape=(len(labels), len(class_names))
    )
    cat_means, cat_counts = group_means(z, cats)
    item_means = item_counts = None
    if holders is not None and item_names is not None:
        item_means, item_counts = group_means(z, sp.csr_matrix(holders))
    out = []
    for j in range(len(share)):
        entry: dict[str, Any] = {"direction": j + 1, "variance_share": float(share[j]),
                                 "categories": _extremes(cat_means[:, j], cat_counts,
                                                         class_names, top, min_users)}  # fmt: skip
        if item_means is not None and item_counts is not None and item_names is not None:
            entry["items"] = _extremes(item_means[:, j], item_counts, item_names, top, min_users)
        out.append(entry)
    return out


def class_centroids(xy: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """(len(classes), 2) mean map position of each class's points (NaN where none)."""
    out = np.full((len(classes), 2), np.nan)
    for i, c in enumerate(classes):
        sel = labels == c
        if sel.any():
            out[i] = xy[sel].mean(axis=0)
    return out


def map_holders(
    path: str, content_hash: str, n_users: int
) -> tuple[sp.csr_matrix, list[str]] | str:
    """The map users' history items (N, num_items) 0/1 and the item ids, from the dataset
    an evaluation recorded; or why not (a one-line reason). The map users are the labelled
    test users of ``favorite_category``, in user order (as ``seqtwins evaluate`` saves
    them, :func:`seqtwins.evaluate.runs._artifacts`)."""
    from seqtwins.evaluate.tasks import binary_pattern, build_task, user_item_counts

    try:
        ds = SequenceDataset.open(path, verify=False)
    except Exception as e:  # noqa: BLE001 (moved, deleted, unreadable: the view is optional)
        return f"dataset {path} could not be opened ({type(e).__name__})"
    if ds.content_hash != content_hash:
        return f"dataset {path} has changed since the evaluation (content hash differs)"
    users = build_task(ds, "favorite_category").labelled(ds.split_users("test"))
    if len(users) != n_users:
        return f"dataset {path} gives {len(users)} map users, the evaluation saved {n_users}"
    holders = binary_pattern(user_item_counts(ds, future=False)[users])
    return holders, ds.items["item_id"].cast(str).to_list()


def markdown(views: list[dict[str, Any]], method: str, note: str | None = None) -> list[str]:
    """The report's lines for one method's global views."""
    lines = [
        f"### Principal directions `{method}`: what sits at either end",
        "",
        "Top principal directions of the map users' embeddings (centred). For each, the "
        "favourite categories and the history items whose users sit furthest along it (+) "
        "and against it (-): mean coordinate in standard deviations (users in brackets; at "
        f"least {MIN_USERS}). Items are an association (where their holders sit), not a "
        "removal effect; `seqtwins explain` measures removal per user (docs/explain.md).",
        "",
        "| direction | variance | end | categories | items |",
        "|---|---:|---|---|---|",
    ]
    fmt = lambda rows: ", ".join(f"{r['name']} {r['z']:+.2f} ({r['users']})" for r in rows)  # noqa: E731
    for v in views:
        for end in ("plus", "minus"):
            items = fmt(v["items"][end]) if "items" in v else "—"
            lines.append(
                f"| {v['direction']} | {v['variance_share']:.1%} | {'+' if end == 'plus' else '-'}"
                f" | {fmt(v['categories'][end]) or '—'} | {items or '—'} |"
            )
    lines.append("")
    if note:
        lines += [f"Items left out: {note}.", ""]
    return lines
