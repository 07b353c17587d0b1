"""``report.md`` and PNG plots from one or more eval.json files.

For every task and label fraction the report lists each method's mean ± std over the
seeds, the relative gain of ``barlow`` over ``dual`` (when both were evaluated) and, in
the same table, the floors (majority class, the user's own history, user-kNN on raw item
lists, random-init encoder, TF-IDF + SVD). Plots:
metric vs label fraction per task (log x-axis, error bars = std over seeds), and — when
the eval.json points to the arrays — the Barlow Twins cross-correlation matrix and a 2-D
map of test-user embeddings coloured by favourite category.

Artifacts (written by ``seqtwins evaluate``, :mod:`seqtwins.evaluate.runs`; read here):
the eval.json key ``"artifacts"`` holds ``.npy`` paths **relative to the eval.json's
directory**::

    "artifacts": {
      "cross_correlation": {"method": "barlow", "path": "<path>.npy"},  # (P, P) matrix C
      "embedding_map": {
        "task": "favorite_category",                 # what colours the points
        "class_names": ["Action", "Comedy", ...],    # class code -> name
        "labels": "<path>.npy",                      # (n,) int64 codes, -1 = none
        "embeddings": {"<method>": "<path>.npy"}     # (n, D) float32, the same n users
      }
    }

``cross_correlation`` may also map several methods to paths (``{"<method>": "<path>"}``).
Both parts are optional; an absent part is not plotted.

The key ``"faithfulness"`` (``seqtwins evaluate --faithfulness``,
:mod:`seqtwins.evaluate.faithfulness`) adds the section "Faithfulness (deletion test)": per
run a table of the confidence drops, AUCs and ratios to random, a sentence per attribution
method (2x random or more, better, or no better than random) and the deletion curves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.protocol import FLOOR_METHODS, load_results
from seqtwins.evaluate.tasks import MIN_TEST_USERS
from seqtwins.files import atomic_file, atomic_write, check_replaceable, write_marker

GAIN_PAIR = ("barlow", "dual")
"""The report's headline comparison: relative gain of the first over the second."""
MAP_MAX_POINTS = 5000
MAP_TOP_CLASSES = 10


def _safe(name: str) -> str:
    """A file-name-safe version of a method / task name (``barlow+next`` -> ``barlow_next``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "x"


# --- artifacts -----------------------------------------------------------------------------


def _load_array(base: Path, rel: str, what: str) -> np.ndarray:
    path = base / rel
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SeqtwinsError(f"{what}: cannot read {path} ({e}); rerun `seqtwins evaluate`") from e


# --- plots ---------------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def plot_cross_correlation(c: np.ndarray, path: Path | str, title: str | None = None) -> Path:
    """Heat-map of a Barlow Twins cross-correlation matrix C (P, P), colour range [-1, 1].

    A well-trained projector gives a bright diagonal (C_ii -> 1) on a neutral background
    (C_ij -> 0); the title reports mean diagonal and mean |off-diagonal|.
    """
    c = np.asarray(c, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
        raise SeqtwinsError(f"cross-correlation matrix has shape {c.shape}; need (P, P)")
    p = c.shape[0]
    diag = float(np.mean(np.diag(c)))
    off = float(np.abs(c[~np.eye(p, dtype=bool)]).mean()) if p > 1 else 0.0
    fig = Figure(figsize=(5.6, 4.8))
    ax = fig.add_subplot()
    im = ax.imshow(c, cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    head = title or "Barlow Twins cross-correlation"
    ax.set_title(f"{head}\nmean diag {diag:.3f}, mean |off-diag| {off:.3f} (P={p})", fontsize=10)
    ax.set_xlabel("projector dim (view B)")
    ax.set_ylabel("projector dim (view A)")
    path = Path(path)
    _save(fig, path)
    return path


def _project_2d(emb: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    try:  # UMAP when installed (an optional extra), PCA otherwise
        import umap

        xy = umap.UMAP(n_components=2, random_state=seed).fit_transform(emb)
        return np.asarray(xy), "UMAP"
    except ImportError:
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(emb), "PCA"


def plot_embedding_map(
    emb: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    path: Path | str,
    title: str | None = None,
    max_points: int = MAP_MAX_POINTS,
    top_classes: int = MAP_TOP_CLASSES,
    seed: int = 0,
) -> Path:
    """2-D map (UMAP if installed, else PCA) of embeddings (n, D), coloured by label.

    The ``top_classes`` most frequent labels get their own colour; the rest are drawn
    grey as "other", users without a label (-1) light grey. At most ``max_points`` users
    (a fixed random sample) are drawn.
    """
    emb = np.asarray(emb, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if emb.ndim != 2 or len(emb) != len(labels) or len(emb) < 3:
        raise SeqtwinsError(
            f"embedding map needs (n>=3, D) embeddings and n labels; got {emb.shape} "
            f"and {labels.shape}"
        )
    rng = np.random.default_rng(seed)
    if len(emb) > max_points:
        keep = np.sort(rng.choice(len(emb), max_points, replace=False))
        emb, labels = emb[keep], labels[keep]
    xy, how = _project_2d(emb, seed)
    size = float(np.clip(20000 / len(emb), 4, 30))  # bigger points when there are few
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.add_subplot()
    known = labels[labels >= 0]
    counts = np.bincount(known, minlength=len(names)) if len(known) else np.zeros(0, int)
    top = [int(c) for c in np.argsort(-counts, kind="stable")[:top_classes] if counts[c] > 0]
    none = labels < 0
    other = ~none & ~np.isin(labels, top)
    if none.any():
        ax.scatter(xy[none, 0], xy[none, 1], s=size, c="#dddddd", label="no label", linewidths=0)
    if other.any():
        ax.scatter(xy[other, 0], xy[other, 1], s=size, c="#999999", label="other", linewidths=0)
    cmap = list(colormaps["tab10"].colors)  # type: ignore[attr-defined]
    for i, cls in enumerate(top):
        sel = labels == cls
        name = names[cls] if cls < len(names) else str(cls)
        ax.scatter(
            xy[sel, 0],
            xy[sel, 1],
            s=size * 1.5,
            color=cmap[i % len(cmap)],
            label=str(name)[:24],
            linewidths=0,
        )
    _draw_centroids(ax, xy, labels, top, cmap)
    ax.set_title(
        f"{title or 'test-user embeddings'} ({how}, n={len(emb)}; X = category centroid)",
        fontsize=10,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(
        fontsize=7, markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False
    )
    path = Path(path)
    _save(fig, path)
    return path


def _draw_centroids(
    ax: Any, xy: np.ndarray, labels: np.ndarray, top: list[int], cmap: list[Any]
) -> None:
    """Mark each coloured category's centroid on the 2-D map (seqtwins.explain.global_views)."""
    from seqtwins.explain.global_views import class_centroids

    for i, (x, y) in enumerate(class_centroids(xy, labels, top)):
        ax.scatter([x], [y], marker="X", s=150, color=cmap[i % len(cmap)], edgecolors="black",
                   linewidths=1.2, zorder=5)  # fmt: skip


def _global_view_lines(
    res: Mapping[str, Any], labels: np.ndarray, embs: Mapping[str, np.ndarray], names: Sequence[str]
) -> list[str]:
    """Principal directions of each map's embeddings and the categories and items at their
    ends (seqtwins.explain.global_views; items when the evaluated dataset can be read)."""
    from seqtwins.explain.global_views import global_views, map_holders, markdown

    dset = res.get("dataset", {})
    found = map_holders(str(dset.get("path")), str(dset.get("content_hash")), len(labels))
    holders, items = (None, None) if isinstance(found, str) else found
    note = found if isinstance(found, str) else None
    lines: list[str] = []
    for m, e in embs.items():
        lines += markdown(global_views(e, labels, names, holders, items), m, note)
    return lines


FLOOR_COLOURS = {
    "majority": "#444444",
    "history": "#bcbd22",
    "items-knn": "#5f9ea0",  # not in tab10, the methods' palette
    "random-init": "#9a9a9a",
    "tfidf-svd": "#8c564b",
    "tfidf-svd-window": "#c49c94",
}


def _method_styles(methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Solid coloured lines for methods, dashed muted ones for the floors; stable colours."""
    palette = [c for i, c in enumerate(colormaps["tab10"].colors) if i not in (5, 7)]  # type: ignore[attr-defined]
    styles: dict[str, dict[str, Any]] = {}
    main = [m for m in methods if m not in FLOOR_METHODS]
    for i, m in enumerate(main):
        styles[m] = {"linestyle": "-", "marker": "o", "color": palette[i % len(palette)]}
    for m in methods:
        if m in FLOOR_METHODS:
            styles[m] = {"linestyle": "--", "marker": "x", "color": FLOOR_COLOURS.get(m, "#777")}
    return styles


def plot_task_curves(results: Mapping[str, Any], task: str, path: Path | str) -> Path | None:
    """Metric vs label fraction for one task: one panel per metric, one line per method.
    ``None`` (and no file) when no cell has a value, e.g. a task with one class."""
    info = results["tasks"][task]
    metrics = info["metrics"]
    cells = [c for c in results["cells"] if c["task"] == task]
    path = Path(path)
    if not any(v is not None for c in cells for v in c["mean"].values()):
        path.unlink(missing_ok=True)  # a stale plot from an earlier report would mislead
        return None
    fig = Figure(figsize=(4.6 * len(metrics), 3.8))
    order = [m for m in results["methods"] if m not in FLOOR_METHODS] + [
        m for m in results["methods"] if m in FLOOR_METHODS
    ]
    styles = _method_styles(order)
    for j, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), j + 1)
        for method in order:
            rows = sorted(
                (c for c in cells if c["method"] == method and c["mean"].get(metric) is not None),
                key=lambda c: c["fraction"],
            )
            if not rows:
                continue
            x = [c["fraction"] for c in rows]
            y = [c["mean"][metric] for c in rows]
            e = [c["std"][metric] or 0.0 for c in rows]
            ax.errorbar(x, y, yerr=e, label=method, capsize=3, markersize=4, **styles[method])
        ax.set_xscale("log")
        ax.set_xticks(results["fractions"])
        ax.set_xticklabels([_pct(f) for f in results["fractions"]])
        ax.minorticks_off()
        ax.set_xlabel("label fraction of train users")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.set_title(f"{task}: {metric}", fontsize=10)
        if j == len(metrics) - 1:
            ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return path


# --- markdown ------------------------------------------------------------------------------


def _pct(f: float) -> str:
    return f"{f * 100:g}%"


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _gain(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{(a - b) / abs(b) * 100:+.1f}%"


def _task_header(task: str, info: Mapping[str, Any], plot: str | None) -> list[str]:
    """Title (headline / too-small marks) and the task's facts above its tables."""
    lab = info.get("labelled_users", {})
    mark = " ★ headline" if info.get("headline") else ""
    lines = [f"### `{task}`{mark} — {info.get('description', '')}", ""]
    if info.get("too_small"):
        lines += [
            f"**Too small to compare:** {lab.get('test', '?')} labelled test users (fewer "
            f"than {MIN_TEST_USERS}); shown for completeness, left out of the targets.",
            "",
        ]
    facts = (
        f"{info['num_classes']} classes ({info.get('train_classes_present', '?')} among "
        f"labelled train users) · labelled users train {lab.get('train', '?')} / valid "
        f"{lab.get('valid', '?')} / test {lab.get('test', '?')}"
    )
    if info.get("kind") in ("multilabel", "retrieval"):
        per_user = info.get("mean_targets_per_test_user")
        facts += (
            f" · {_fmt(per_user, 1)} targets per test user · most popular class "
            f"`{info.get('majority_class')}` (the `majority` floor ranks by popularity)"
        )
        excluded = info.get("excluded_classes") or []
        facts += (
            " · root categories left out: " + ", ".join(f"`{c}`" for c in excluded)
            if excluded
            else (" · no root category left out" if info.get("kind") == "multilabel" else "")
        )
    else:
        facts += (
            f" · majority-class accuracy {_fmt(info.get('majority_accuracy'))} (class "
            f"`{info.get('majority_class')}`, from train labels)"
        )
    facts += f" · probe solver `{info.get('probe_solver', '?')}`"
    return [*lines, facts, "", *([f"![{task}]({plot})", ""] if plot else [])]


def _task_section(results: Mapping[str, Any], task: str, plot: str | None) -> list[str]:
    info = results["tasks"][task]
    cells = {(c["method"], c["fraction"]): c for c in results["cells"] if c["task"] == task}
    fracs = results["fractions"]
    present = {m for m, _ in cells}  # a label-free method that does not apply has no cells
    methods = [m for m in results["methods"] if m not in FLOOR_METHODS and m in present]
    floors = [m for m in results["methods"] if m in FLOOR_METHODS and m in present]
    lines = _task_header(task, info, plot)
    n_by_frac = {}
    for f in fracs:
        for m in results["methods"]:
            c = cells.get((m, f))
            if c and c["runs"] and not c["runs"][0].get("label_free"):
                n_by_frac[f] = c["runs"][0]["n_train"]
                break
    notes: dict[str, int] = {}

    def entry(c: Mapping[str, Any] | None, metric: str) -> str:
        if c is None:
            return "—"
        mean, std = c["mean"].get(metric), c["std"].get(metric)
        if c["status"] == "n/a" or mean is None:
            reasons = c.get("reasons") or ["metric undefined for these test labels"]
            refs = []
            for r in reasons:
                notes.setdefault(r, len(notes) + 1)
                refs.append(f"[{notes[r]}]")
            return "n/a " + "".join(refs)
        text = f"{mean:.3f} ± {_fmt(std)}"
        if c["status"] == "partial":
            refs = []
            for r in c.get("reasons", []):
                notes.setdefault(r, len(notes) + 1)
                refs.append(f"[{notes[r]}]")
            text += f" ({c['n_ok']}/{c['n_seeds']} seeds) " + "".join(refs)
        return text

    head = (
        "| method | " + " | ".join(f"{_pct(f)} (n={n_by_frac.get(f, '?')})" for f in fracs) + " |"
    )
    sep = "|---|" + "---|" * len(fracs)
    for metric in info["metrics"]:
        lines += [f"**{metric}** (mean ± std over seeds {results.get('seeds')})", "", head, sep]
        for m in methods:
            lines.append(
                f"| {m} | " + " | ".join(entry(cells.get((m, f)), metric) for f in fracs) + " |"
            )
        a, b = GAIN_PAIR
        if a in methods and b in methods:
            gains = []
            for f in fracs:
                ca, cb = cells.get((a, f)), cells.get((b, f))
                gains.append(
                    _gain(
                        ca["mean"].get(metric) if ca else None,
                        cb["mean"].get(metric) if cb else None,
                    )
                )
            lines.append(f"| **{a} vs {b}** | " + " | ".join(gains) + " |")
        for m in floors:
            lines.append(
                f"| *{m} (floor)* | "
                + " | ".join(entry(cells.get((m, f)), metric) for f in fracs)
                + " |"
            )
        lines.append("")
    if notes:
        lines += [f"[{i}] {r}" + "  " for r, i in sorted(notes.items(), key=lambda t: t[1])]
        lines.append("")
    return lines


# --- faithfulness (the deletion test) ------------------------------------------------------

METHOD_NAMES = {"ig": "integrated gradients", "occlusion": "occlusion"}
"""How the report names the attribution methods of the deletion test."""


def plot_deletion_curves(section: Mapping[str, Any], path: Path | str) -> Path:
    """Mean confidence drop against k, one panel per run: each attribution method and
    random removal (dashed), from eval.json's ``faithfulness`` section."""
    runs = {n: r for n, r in section["runs"].items() if r["users"] > 0}
    fig = Figure(figsize=(4.2 * max(1, len(runs)), 3.4))
    x = [0, *section["ks"]]
    for j, (name, run) in enumerate(runs.items()):
        ax = fig.add_subplot(1, max(1, len(runs)), j + 1)
        ax.plot(x, [0.0, *run["random"]["drop"]], "--x", color="#777777", label="random")
        for m, s in run["methods"].items():
            ax.plot(x, [0.0, *s["drop"]], "-o", markersize=4, label=METHOD_NAMES.get(m, m))
        ax.set_xlabel("items removed (k)")
        ax.set_ylabel("confidence drop")
        ax.set_title(f"{name}: {section['task']} (n={run['users']})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(path)
    _save(fig, path)
    return path


def _verdict(s: Mapping[str, Any], random: Mapping[str, Any], k: int) -> str:
    """One sentence on an attribution method against random removal: no better (a drop or
    area not above random's, i.e. a ratio <= 1), 2x or more at k, or better but short of
    2x; ratios are undefined where random removal did not lower the confidence."""
    a_k, b_k, a_auc, b_auc = s["drop"][-1], random["drop"][-1], s["auc"], random["auc"]
    r_k, r_auc = s.get("drop_ratio_at_k"), s.get("auc_ratio")
    ratios = f"drop@{k} ratio {_fmt(r_k, 2)}, AUC ratio {_fmt(r_auc, 2)}"
    if a_k <= b_k or a_auc <= b_auc:
        return f"**no better than random** ({ratios})"
    if r_k is None or r_auc is None:
        return (
            f"lowered the confidence where random removal did not (drop@{k} {a_k:.4f} vs "
            f"random {b_k:.4f}, AUC {a_auc:.4f} vs {b_auc:.4f}; no ratio to a drop <= 0)"
        )
    if r_k >= 2:
        return f"beat random by 2x or more at k={k} ({ratios})"
    return f"better than random, but by less than 2x at k={k} ({ratios})"


def _users_note(section: Mapping[str, Any], run: Mapping[str, Any]) -> str:
    asked = section["users_requested"]
    text = (
        f"{run['users']} test users (a seeded sample of {run.get('eligible_test_users', '?')} "
        f"eligible of {run.get('labelled_test_users', '?')} labelled)"
    )
    if run["users"] < asked:
        text += (
            f"; **fewer than the {asked} asked for**: the dataset has only "
            f"{run.get('eligible_test_users', '?')} labelled test users of `{section['task']}` "
            f"with more than {max(section['ks'])} items in the window, so the numbers are "
            "noisier"
        )
    return text


def _faithfulness_run_lines(section: Mapping[str, Any], name: str) -> list[str]:
    run = section["runs"][name]
    ks = section["ks"]
    if run["users"] == 0:
        return [f"**`{name}`**: not measured: {run.get('reason', 'no test users')}.", ""]
    secs = sum(v for v in (run.get("seconds") or {}).values() if isinstance(v, int | float))
    lines = [
        f"**`{name}`**: {_users_note(section, run)}; probe solver "
        f"`{run.get('probe_solver', '?')}`; mean confidence before removal "
        f"{_fmt(run.get('confidence'))}; {secs:.1f} s.",
        "",
        "| removal | " + " | ".join(f"drop@{k}" for k in ks) + " | AUC | AUC ratio | "
        f"drop@{ks[-1]} ratio |",
        "|---|" + "---:|" * (len(ks) + 3),
    ]
    rows = [("random", run["random"])] + [
        (f"top-k {METHOD_NAMES.get(m, m)}", s) for m, s in run["methods"].items()
    ]
    for label, s in rows:
        lines.append(
            f"| {label} | " + " | ".join(_fmt(v, 4) for v in s["drop"]) + f" | {_fmt(s['auc'], 4)}"
            f" | {_fmt(s.get('auc_ratio'), 2)} | {_fmt(s.get('drop_ratio_at_k'), 2)} |"
        )
    lines.append("")
    for m, s in run["methods"].items():
        lines.append(f"- {METHOD_NAMES.get(m, m)}: {_verdict(s, run['random'], ks[-1])}.")
    return [*lines, ""]


def _faithfulness_lines(res: Mapping[str, Any], out: Path, prefix: str) -> list[str]:
    """The "Faithfulness (deletion test)" section from eval.json's ``faithfulness`` key
    (``seqtwins evaluate --faithfulness``; nothing when the key is absent)."""
    from seqtwins.evaluate.faithfulness import FAITHFULNESS

    section = res.get(FAITHFULNESS)
    if not section:
        return []
    ks, task = section["ks"], section["task"]
    eligible = section.get("eligible_by_task") or {}
    if eligible.get(task, 0) >= section["users_requested"]:
        why = (f"the first headline task with at least {section['users_requested']} eligible "
               "test users")  # fmt: skip
    else:
        why = (f"no headline task has {section['users_requested']} eligible test users, so "
               "the one with the most")  # fmt: skip
    counts = ", ".join(f"`{t}` {n}" for t, n in eligible.items())
    lines = [
        "### Faithfulness (deletion test)",
        "",
        f"Does an attribution point at the items a prediction rests on? For each run, the "
        f"probe of `{task}` (fitted as in the tables, at label budget 100 %, seed 0) predicts a "
        "class "
        "for every test user from the full window; the drop is its confidence in that class "
        f"before minus after removing the user's k most attributed items, k = {ks[0]}..{ks[-1]} "
        "(integrated gradients, occlusion), or k random items (the mean of "
        f"{section.get('random_draws', '?')} random orders per user). AUC = area under the "
        f"mean-drop curve from (0, 0) to ({ks[-1]}, drop@{ks[-1]}); ratio = attribution / "
        f"random. The target: top-{ks[-1]} attributed removal lowers the confidence at least "
        f"twice as much as {ks[-1]} random removals (drop@{ks[-1]} ratio >= 2). docs/explain.md "
        "describes the test.",
        "",
        f"Task `{task}`: {why} (eligible = labelled, more than {ks[-1]} items in the window: "
        f"{counts}).",
        "",
    ]
    if any(r["users"] > 0 for r in section["runs"].values()):
        name = f"{prefix}deletion_curves.png"
        plot_deletion_curves(section, out / name)
        lines += [f"![deletion curves]({name})", ""]
    for run_name in section["runs"]:
        lines += _faithfulness_run_lines(section, run_name)
    return lines


REPORT_KIND = "report"
REPORT_TITLE = "# seqtwins evaluation report"


def _legacy_report(folder: Path) -> bool:
    """A report folder written before reports carried the ownership marker."""
    try:
        with (folder / "report.md").open(encoding="utf-8") as fh:
            return fh.readline().rstrip("\n") == REPORT_TITLE
    except (OSError, UnicodeDecodeError):
        return False


def write_report(eval_paths: Sequence[Path | str], out: Path | str) -> Path:
    """Write ``report.md`` and the PNG plots for the given eval.json files into ``out``.

    Every input (and every artifact array it points to) is read and checked before
    anything is written. Returns the path of ``report.md``.
    """
    if not eval_paths:
        raise SeqtwinsError("no eval.json given; pass one or more files from `seqtwins evaluate`")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SeqtwinsError(f"--out {out} exists and is not a directory; choose a directory")
    check_replaceable(out, "--out", owned=_legacy_report, kinds=(REPORT_KIND,))
    loaded: list[tuple[Path, dict[str, Any], dict[str, Any]]] = []
    for p in eval_paths:
        p = Path(p)
        res = load_results(p)
        arrays: dict[str, Any] = {}
        art = res.get("artifacts") or {}
        xcorr = art.get("cross_correlation") or {}
        if "path" in xcorr:  # one matrix: {"method": ..., "path": ...}
            xcorr = {xcorr.get("method", "barlow"): xcorr["path"]}
        for m, rel in xcorr.items():
            arrays.setdefault("cross_correlation", {})[m] = _load_array(
                p.parent, rel, f"{p} cross-correlation of {m!r}"
            )
        emap = art.get("embedding_map")
        if emap and emap.get("embeddings"):
            labels = _load_array(p.parent, emap["labels"], f"{p} map labels")
            embs = {
                m: _load_array(p.parent, rel, f"{p} embeddings of {m!r}")
                for m, rel in emap["embeddings"].items()
            }
            names = emap.get("class_names", emap.get("label_names", []))
            arrays["embedding_map"] = (labels, embs, names, emap.get("task"))
        loaded.append((p, res, arrays))

    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, REPORT_KIND)
    lines = [REPORT_TITLE, ""]
    multi = len(loaded) > 1
    for i, (p, res, arrays) in enumerate(loaded, start=1):
        prefix = f"{i}-" if multi else ""
        dset = res.get("dataset", {})
        lines += [
            f"## {p}" if multi else f"## Evaluation `{p.name}`",
            "",
            f"Dataset `{dset.get('path')}` (content hash `{str(dset.get('content_hash'))[:12]}`, "
            f"{dset.get('num_users')} users, {dset.get('num_items')} items, splits "
            f"{dset.get('splits')}). Protocol `{res.get('protocol')}`; label fractions "
            f"{res['fractions']} of the labelled train users, seeds {res.get('seeds')}; the "
            "same labelled subset for every method. Selection on valid users, test users "
            "scored once. Floors (majority class or popularity, the user's own history, "
            "user-kNN on raw item lists, random-init encoder, TF-IDF + SVD) are shown in "
            "italics in every table; `barlow vs dual` is the relative gain of the mean. "
            "Column headers give the label fraction and n, the number of labelled train "
            "users in the subset; ± is the sample std over seeds (at 100 % every seed has "
            "the same subset, so a deterministic probe shows ± 0.000). Label-free rows "
            "(`history`, `items-knn`, `<run>:native`: a run's own item tower) use no labels "
            "and repeat across fractions.",
            "",
            "★ marks the headline tasks (multi-label categories and new items of the future "
            "window); the single-label tasks follow for continuity. A task with fewer than "
            f"{MIN_TEST_USERS} labelled test users is marked too small to compare.",
            "",
        ]
        tasks = res["tasks"]
        for task in sorted(tasks, key=lambda t: not tasks[t].get("headline", False)):
            plot = f"{prefix}{_safe(task)}.png"
            drawn = plot_task_curves(res, task, out / plot)
            lines += _task_section(res, task, plot if drawn else None)
        for m, c in (arrays.get("cross_correlation") or {}).items():
            name = f"{prefix}cross_correlation_{_safe(m)}.png"
            plot_cross_correlation(c, out / name, title=f"{m}: cross-correlation (valid users)")
            lines += [f"### Cross-correlation matrix `{m}`", "", f"![{m}]({name})", ""]
        if "embedding_map" in arrays:
            labels, embs, names, task = arrays["embedding_map"]
            for m, e in embs.items():
                name = f"{prefix}embedding_map_{_safe(m)}.png"
                plot_embedding_map(
                    e, labels, names, out / name, title=f"{m}: test users by {task or 'label'}"
                )
                lines += [f"### Test-user embedding map `{m}`", "", f"![{m}]({name})", ""]
            lines += _global_view_lines(res, labels, embs, names)
        lines += _faithfulness_lines(res, out, prefix)
        secs = res.get("seconds")
        if secs:
            lines += ["Seconds per method: " + ", ".join(f"{k} {v:g}" for k, v in secs.items()), ""]
    report = out / "report.md"
    atomic_write(report, "\n".join(lines) + "\n")
    return report
