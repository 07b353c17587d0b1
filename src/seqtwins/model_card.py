"""The model card of a run: ``model_card.md`` in the run folder, rendered from what was
recorded, never from hand-written numbers.

Sources, all written by seqtwins: the run's ``config.yaml``, ``dataset.json`` and
``summary.json`` (:class:`seqtwins.run.Run`), the dataset's ``meta.json`` (and its ``times``
array for the time range, when the dataset is still where the run says), and, once the run
was evaluated, an ``eval.json`` (:mod:`seqtwins.evaluate.protocol`). Training writes the
card when it ends; ``evaluate`` writes it again with the headline metrics and their label
budgets, naming the eval.json they come from (``report`` does not write run folders). The
run writes the file (:meth:`seqtwins.run.Run.write_model_card`). Intended use and known
limitations are derived from the same records (a task too small to compare, a category
probe no better than the majority class, a run below a floor, raw user ids, rare items
kept).

The card holds no key (only the key's public id, :func:`seqtwins.data.privacy.key_id`)
and nothing per user: no user id, raw or pseudonymous.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from seqtwins.config import to_dict
from seqtwins.errors import SeqtwinsError
from seqtwins.run import MODEL_CARD, Run

__all__ = ["MODEL_CARD", "render_model_card", "update_model_cards", "write_model_card"]
CATEGORY_TASKS = ("next_category", "favorite_category")
"""Single-label tasks on the *first-listed* category of items."""
FILTER_PARAMS = ("min_rating", "dedup", "min_user_count", "min_item_count", "max_len",
                 "holdout", "min_history", "split", "split_seed")  # fmt: skip


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def time_range(data_dir: Path) -> tuple[int, int] | None:
    """(min, max) of the dataset's interaction times (epoch seconds), ``None`` without."""
    path = Path(data_dir) / "times.npy"
    if not path.is_file():
        return None
    times = np.load(path, mmap_mode="r", allow_pickle=False)
    return (int(times.min()), int(times.max())) if len(times) else None


def _iso(t: int) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


class _Records:
    """What a run folder (and an optional eval.json) recorded."""

    def __init__(self, run_dir: Path, eval_json: Path | None, data_dir: Path | None = None) -> None:
        self.run = Run.open(run_dir)
        self.config = self.run.config
        self.lineage = self.run.lineage
        self.summary: dict[str, Any] | None = None
        if self.run.finished:
            try:
                self.summary = self.run.summary()
            except SeqtwinsError:  # a damaged summary.json: the card says it is missing
                self.summary = None
        # the dataset the caller opened, else the recorded path (older runs recorded it
        # relative to the working directory of pretrain); either way its hash must match
        self.data_dir = Path(self.lineage.path if data_dir is None else data_dir)
        meta = _read_json(self.data_dir / "meta.json")
        same = isinstance(meta, dict) and meta.get("content_hash") == self.lineage.content_hash
        self.meta: dict[str, Any] | None = meta if same else None
        self.times = time_range(self.data_dir) if same else None
        self.eval_json = eval_json
        self.results: dict[str, Any] | None = None
        self.name: str | None = None
        if eval_json is not None:
            from seqtwins.evaluate.protocol import load_results

            self.results = load_results(eval_json)
            me = Path(run_dir).resolve()
            names = [
                n for n, p in (self.results.get("runs") or {}).items() if Path(p).resolve() == me
            ]
            if not names:
                raise SeqtwinsError(f"{eval_json} does not evaluate the run {run_dir}")
            self.name = names[0]


def _data_section(r: _Records) -> list[str]:
    lines = ["## Data", ""]
    lines.append(f"- dataset: `{r.lineage.path}`")
    lines.append(f"- content hash: `{r.lineage.content_hash}`")
    if r.meta is None:
        lines.append(
            "- the dataset is no longer at that path with that hash: the facts below "
            "come from the run's dataset.json only"
        )
        lines.append(
            f"- items: {_fmt(r.lineage.num_items)}; train users: {_fmt(r.lineage.train_users)}"
        )
        return [*lines, ""]
    m = r.meta
    counts = m.get("counts", {})
    lines.append(f"- source: `{m.get('source')}`")
    lines.append(
        f"- {_fmt(counts.get('users'))} users, {_fmt(counts.get('items'))} items, "
        f"{_fmt(counts.get('interactions'))} interactions; splits "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in (counts.get("splits") or {}).items())
    )
    if r.times is not None:
        lines.append(f"- time range: {_iso(r.times[0])} to {_iso(r.times[1])}")
    else:
        lines.append("- time range: not recorded (the dataset has no interaction times)")
    fields = m.get("fields", {})
    have = [k for k in ("times", "ratings", "categories", "titles") if fields.get(k)]
    have += [f"user attribute {a}" for a in fields.get("user_attributes") or []]
    lines.append(f"- fields: {', '.join(have) or 'items only'}")
    lines.append(
        f"- pretraining saw the histories of {_fmt(r.lineage.train_users)} train users; "
        "the held-out future windows and user attributes only label the "
        "evaluation"
    )
    return [*lines, ""]


def _privacy_section(r: _Records) -> list[str]:
    lines = ["## Filters and privacy", ""]
    if r.meta is None:
        return [*lines, "- not recorded (dataset not found)", ""]
    params = r.meta.get("params") or {}
    prep = r.meta.get("prepare") or {}
    if not prep:
        lines.append(f"- the dataset was not made by `prepare` (source `{r.meta.get('source')}`)")
    shown = [f"{k}={json.dumps(params[k])}" for k in FILTER_PARAMS if k in params]
    if shown:
        lines.append(f"- prepare settings: {', '.join(shown)}")
    dropped = {k: v for k, v in (prep.get("dropped") or {}).items() if v}
    if prep:
        said = ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in dropped.items())
        lines.append("- dropped: " + (said or "nothing"))
    rare = prep.get("rare_items")
    if rare:
        what = "dropped" if rare.get("action") == "drop" else "mapped to one rare-item token"
        lines.append(
            f"- min-item-users {rare.get('min_item_users')}: items seen by fewer distinct users "
            f"are {what} ({_fmt(rare.get('items'))} items, {_fmt(rare.get('interactions'))} "
            "interactions)"
        )
    elif prep:
        lines.append("- min-item-users: not set (rare items kept)")
    if prep.get("pseudonymized"):
        kid = prep.get("pseudonym_key_id")
        lines.append(
            "- user ids: pseudonymised (HMAC-SHA256 under a secret key that no output holds"
            + (f"; key id `{kid}`" if kid else "")
            + ")"
        )
    elif prep:
        lines.append("- user ids: as in the source (not pseudonymised)")
    return [*lines, ""]


def _training_section(r: _Records) -> list[str]:
    cfg = r.config
    lines = ["## Objective and training", ""]
    lines.append(f"- objective: `{cfg.objective}`")
    enc = cfg.encoder
    lines.append(
        f"- encoder: dim {enc.dim}, {enc.layers} layers, {enc.heads} heads, max_len {enc.max_len}"
    )
    lines.append(f"- seqtwins version: {r.lineage.seqtwins_version or 'source tree'}")
    s = r.summary
    if s is None:
        lines.append(
            "- no readable summary.json: training has not finished (or the file is damaged)"
        )
    else:
        lines.append(
            f"- trained {_fmt(s.get('epochs_done'))} epochs ({_fmt(s.get('steps'))} steps, "
            f"{_fmt(s.get('seconds'), 1)} s); best epoch {_fmt(s.get('best_epoch'))} "
            f"(validation score {_fmt(s.get('best_score'))}, selected on valid users)"
            + ("; stopped early" if s.get("stopped_early") else "")
        )
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip()
    lines += [
        "",
        "<details><summary>config.yaml</summary>",
        "",
        "```yaml",
        text,
        "```",
        "",
        "</details>",
        "",
    ]
    return lines


def _cells(results: Mapping[str, Any], task: str, method: str) -> dict[float, Mapping[str, Any]]:
    return {
        float(c["fraction"]): c
        for c in results["cells"]
        if c["task"] == task and c["method"] == method
    }


def _value(cell: Mapping[str, Any] | None, metric: str) -> float | None:
    if cell is None:
        return None
    v = (cell.get("mean") or {}).get(metric)
    return None if v is None else float(v)


def _metrics_section(r: _Records) -> list[str]:
    if r.results is None or r.name is None:
        return [
            "## Metrics",
            "",
            "Not evaluated yet: `seqtwins evaluate` (or `report`) adds the headline metrics here.",
            "",
        ]
    res, name = r.results, r.name
    lines = [
        "## Headline metrics",
        "",
        f"From `{r.eval_json}` (method `{name}`, {res.get('protocol')} probe, checkpoint "
        f"{res.get('checkpoint', 'best')}; mean ± std over seeds {res.get('seeds')}). "
        "Label budget: the share of labelled train users the probe was fitted on, and "
        "how many users that is.",
        "",
    ]
    floors = [m for m in res.get("floors", []) if m in res.get("methods", [])]
    lines.append("| task | metric | label budget | labelled users | " + name + " | best floor |")
    lines.append("|---|---|---:|---:|---:|---|")
    tasks = res["tasks"]
    headline = [t for t, info in tasks.items() if info.get("headline")]
    for task in headline:
        metric = tasks[task]["primary_metric"]
        for frac, cell in sorted(_cells(res, task, name).items()):
            runs = [x for x in cell.get("runs", []) if x.get("status") == "ok"]
            n_train = runs[0]["n_train"] if runs else None
            v, sd = _value(cell, metric), (cell.get("std") or {}).get(metric)
            best = _best_floor(res, task, frac, floors, metric)
            lines.append(
                f"| {task} | {metric} | {frac:.0%} | {_fmt(n_train)} | "
                f"{_fmt(v)} ± {_fmt(sd)} | {best} |"
            )
    others = [t for t in tasks if t not in headline]
    if others:
        lines += [
            "",
            "Other tasks (largest label budget):",
            "",
            "| task | metric | " + name + " | majority |",
            "|---|---|---:|---:|",
        ]
        for task in others:
            metric = tasks[task]["primary_metric"]
            mine = _cells(res, task, name)
            if not mine:
                continue
            top = max(mine)
            maj = _cells(res, task, "majority").get(top)
            lines.append(
                f"| {task} | {metric} | {_fmt(_value(mine[top], metric))} | "
                f"{_fmt(_value(maj, metric))} |"
            )
    return [*lines, ""]


def _best_floor(
    res: Mapping[str, Any], task: str, frac: float, floors: list[str], metric: str
) -> str:
    scored = _floor_values(res, task, frac, floors, metric)
    if not scored:
        return "n/a"
    v, f = max(scored)
    return f"{f} {_fmt(v)}"


def _floor_values(
    res: Mapping[str, Any], task: str, frac: float, floors: list[str], metric: str
) -> list[tuple[float, str]]:
    """(value, floor) of every floor scored on ``task`` at ``frac``."""
    out = []
    for f in floors:
        v = _value(_cells(res, task, f).get(frac), metric)
        if v is not None:
            out.append((v, f))
    return out


def limitations(r: _Records) -> list[str]:
    """Known limitations, each derived from a recorded fact."""
    out: list[str] = []
    prep = (r.meta or {}).get("prepare") or {}
    if r.meta is not None and prep and not prep.get("pseudonymized"):
        out.append(
            "User ids are the source's raw ids: the embeddings file carries them. "
            "Prepare with `--pseudonymize` before sharing outputs."
        )
    if r.meta is not None and prep and not prep.get("rare_items"):
        out.append(
            "Rare items were kept: an item seen by very few users can single out a "
            "person in a user's history (`prepare --min-item-users K`)."
        )
    if r.times is not None:
        out.append(
            f"Behaviour after {_iso(r.times[1])} is not represented; the embeddings "
            "describe users as of their last recorded interaction."
        )
    if r.summary is None:
        out.append(
            "No readable summary.json: training may not have finished, so the checkpoints "
            "may not be final."
        )
    if r.results is not None and r.name is not None:
        out += result_limitations(r.results, r.name)
    return out


def result_limitations(res: Mapping[str, Any], name: str) -> list[str]:
    out: list[str] = []
    floors = [m for m in res.get("floors", []) if m in res.get("methods", [])]
    for task, info in res["tasks"].items():
        metric = info["primary_metric"]
        mine = _cells(res, task, name)
        if info.get("too_small"):
            out.append(
                f"`{task}` has {info['labelled_users']['test']:,} labelled test users: "
                "too small to compare."
            )
        if not mine:
            continue
        top = max(mine)
        v = _value(mine[top], metric)
        if task in CATEGORY_TASKS:
            maj = _value(_cells(res, task, "majority").get(top), metric)
            spread = (mine[top].get("std") or {}).get(metric) or 0.0
            if v is not None and maj is not None and v <= maj + spread:
                out.append(
                    f"`{task}` (the first-listed category): the probe's {metric} {_fmt(v)} "
                    f"does not beat the majority class's {_fmt(maj)} at {top:.0%} labels: this "
                    "task carries no signal on this dataset."
                )
        if info.get("headline"):
            for frac, cell in sorted(mine.items()):
                mv = _value(cell, metric)
                best = _floor_values(res, task, frac, floors, metric)
                if mv is not None and best and max(best)[0] > mv:
                    fv, f = max(best)
                    out.append(
                        f"On headline task `{task}` at {frac:.0%} labels, the `{f}` "
                        f"floor ({_fmt(fv)}) beats this run ({_fmt(mv)})."
                    )
        bad = [c for c in mine.values() if c.get("status") == "n/a"]
        if bad:
            out.append(
                f"`{task}`: {len(bad)} label budget(s) could not be evaluated "
                f"({'; '.join(bad[0].get('reasons', []))})."
            )
    return out


def _use_section(r: _Records) -> list[str]:
    dim = r.config.encoder.dim
    source = (r.meta or {}).get("source") or r.lineage.path
    tasks = ", ".join(f"`{t}`" for t in (r.results or {}).get("tasks", {})) or "none yet"
    lines = [
        "## Intended use",
        "",
        f"{dim}-dimensional user embeddings (the encoder's pooled output, before any head) "
        f"for users of `{source}` and users like them, as features for downstream probes "
        f"such as the tasks evaluated here ({tasks}). They are not validated for other "
        "populations, other item catalogues or decisions about individuals without "
        "a human in the loop.",
        "",
        "## Known limitations",
        "",
    ]
    found = limitations(r)
    lines += [f"- {x}" for x in found] or ["- none derived from the records"]
    return [*lines, ""]


def render_model_card(
    run_dir: Path | str, eval_json: Path | str | None = None, data_dir: Path | str | None = None
) -> str:
    """The model card of the run in ``run_dir`` (Markdown), with the metrics of
    ``eval_json`` when given (it must evaluate this run). The dataset's facts come from
    ``data_dir`` when given (the dataset the caller opened), else from the path the run
    recorded; only when its content hash is the run's."""
    r = _Records(
        Path(run_dir),
        None if eval_json is None else Path(eval_json),
        None if data_dir is None else Path(data_dir),
    )
    head = [
        f"# Model card: {Path(run_dir).name} ({r.config.objective})",
        "",
        "Generated by seqtwins from what this run recorded (config.yaml, dataset.json, "
        "summary.json, the dataset's meta.json"
        + (f", the metrics of `{eval_json}`" if r.results is not None else "")
        + "); it is rewritten by `pretrain` and `evaluate`, so do not edit it.",
        "",
    ]
    body = (
        _data_section(r)
        + _privacy_section(r)
        + _training_section(r)
        + _metrics_section(r)
        + _use_section(r)
    )
    return "\n".join(head + body).rstrip() + "\n"


def write_model_card(
    run_dir: Path | str, eval_json: Path | str | None = None, data_dir: Path | str | None = None
) -> Path:
    """Render the card and have the run write it (:meth:`seqtwins.run.Run.write_model_card`:
    atomic, only into a seqtwins run) to ``run_dir/model_card.md``."""
    return Run.open(run_dir).write_model_card(render_model_card(run_dir, eval_json, data_dir))


def update_model_cards(eval_json: Path | str, data_dir: Path | str | None = None) -> list[Path]:
    """Rewrite the card of every run that ``eval_json`` evaluated (those still on disk) on
    the dataset ``data_dir`` (default: the one each run recorded). A card that cannot be
    written is one warning line: the results stand without it."""
    from seqtwins.evaluate.protocol import load_results

    results = load_results(eval_json)
    written = []
    for path in (results.get("runs") or {}).values():
        if not (Path(path) / "config.yaml").is_file():
            continue
        try:
            written.append(write_model_card(path, eval_json, data_dir))
        except (OSError, SeqtwinsError, KeyError, TypeError, ValueError, AttributeError) as e:
            why = str(e) if isinstance(e, SeqtwinsError) else f"{type(e).__name__}: {e}"
            if isinstance(e, OSError):
                why = str(e.strerror)
            warnings.warn(
                f"could not update {Path(path) / MODEL_CARD} from {eval_json} ({why})",
                stacklevel=2,
            )
    return written
