"""Rich tables of an :class:`~seqtwins.explain.user.Explanation` for the terminal."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from seqtwins.explain.user import Explanation


def _num(v: Any) -> str:
    return f"{v:+.4f}" if isinstance(v, float) else escape(str(v))


def _frame_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for c in columns:
        numeric = (
            rows
            and isinstance(rows[0].get(c), int | float)
            and not isinstance(rows[0].get(c), bool)
        )
        table.add_column(c.replace("_", " "), justify="right" if numeric else "left")
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            if isinstance(v, list):
                v = ", ".join(map(str, v[:8])) + (" …" if len(v) > 8 else "")
            cells.append(escape(str(v)) if c in ("position", "rank", "shared") else _num(v))
        table.add_row(*cells)
    return table


def render_explanation(ex: Explanation, console: Console) -> None:
    """Print the explanation: a header, the history with its attributions, the nearest
    users and (where the run has item vectors) the nearest items."""
    u = ex.user
    emb = ex.targets["embedding"]
    console.print(
        f"[bold]user {escape(u['id'])}[/] ({u['split']}, {u['history_items']} history items, "
        f"{u['explained_items']} read by the encoder) · run {escape(ex.run)} ({ex.checkpoint}) "
        f"· |embedding| {emb['value']:.3f}",
        highlight=False,
        soft_wrap=True,
    )
    task = ex.targets.get("task")
    if task:
        console.print(
            f"task [bold]{escape(task['task'])}[/]: predicted {escape(str(task['predicted']))} "
            f"(confidence {task['confidence']:.3f}, {task['probe']['solver']} probe on "
            f"{task['probe']['n_train']} labelled train users); truth "
            f"{escape(str(task['truth']))}",
            highlight=False,
            soft_wrap=True,
        )
    rows = ex.history.to_dicts()
    title = (
        "history (oldest first): attribution to the embedding's own direction"
        + (" and to the predicted class's score" if task else "")
        + " — integrated gradients (ig) and removal (occlusion)"
    )
    console.print(_frame_table(title, rows, list(ex.history.columns)))
    console.print(
        _frame_table(
            "nearest users (cosine) and the history items they share",
            ex.neighbours.to_dicts(),
            list(ex.neighbours.columns),
        )
    )
    if ex.items is not None:
        console.print(
            _frame_table(
                "nearest items (the run's item tower; score = training logit)",
                ex.items.to_dicts(),
                list(ex.items.columns),
            )
        )
    for note in ex.notes:
        console.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    console.print(f"{ex.seconds:.2f} s", highlight=False)
