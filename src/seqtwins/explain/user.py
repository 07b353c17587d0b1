"""``seqtwins explain``: why the model places one user where it does.

:func:`explain_user` opens a run and its dataset, embeds every user with the run's
checkpoint, and returns an :class:`Explanation` of one user; an :class:`Explainer` does
the loading once and then explains any number of users (``seqtwins serve``'s
``/users/{id}/explain``). An explanation holds:

- the items the encoder reads (the last ``encoder.max_len`` of the user's history) with
  their attributions to the **embedding** (target: the embedding's length along its own
  direction, :func:`~seqtwins.explain.attribution.self_projection`) by integrated gradients
  and by occlusion (removal), and with ``task`` also to the **probe's score of its
  predicted class** (the probe fitted as ``evaluate`` fits it,
  :mod:`seqtwins.explain.probe`);
- the nearest users by cosine of the embeddings, and the history items each shares with
  the user;
- for runs whose objective has an item tower (``dual``, ``barlow+next``, ``barlow+mask``,
  :mod:`seqtwins.evaluate.native`), the items that tower ranks highest for the user.

See docs/explain.md.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from seqtwins.data.batching import histories
from seqtwins.data.dataset import SequenceDataset
from seqtwins.embed import read_user_embeddings
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.native import NATIVE_OBJECTIVES, ItemTower, has_item_tower
from seqtwins.evaluate.probe import cpu_threads
from seqtwins.evaluate.tasks import build_task
from seqtwins.explain.attribution import (
    integrated_gradients,
    occlusion,
    probe_score,
    self_projection,
)
from seqtwins.explain.probe import TaskProbe, fit_task_probe
from seqtwins.models.encoder import SequenceEncoder, embed_users
from seqtwins.run import Run

SCHEMA = "seqtwins.explain/1"
EMBEDDING_TARGET = "projection of the embedding on its own direction, <e', e/|e|>"


@dataclass
class Explanation:
    """One user's explanation. :meth:`table` is the history with its attributions."""

    run: str
    dataset: str
    checkpoint: str
    user: dict[str, Any]
    history: pl.DataFrame
    """position, item_id, category, ig_embedding, occlusion_embedding (and ig_task,
    occlusion_task with a task), oldest first."""
    targets: dict[str, Any]
    neighbours: pl.DataFrame
    """rank, user_id, cosine, shared (count), shared_items (list of item ids)."""
    items: pl.DataFrame | None
    """rank, item_id, score, in_history; None where the objective has no item vectors."""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def table(self) -> pl.DataFrame:
        """The user's history items with their attributions (one row per item)."""
        return self.history

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "run": self.run,
            "dataset": self.dataset,
            "checkpoint": self.checkpoint,
            "user": self.user,
            "targets": self.targets,
            "history": self.history.to_dicts(),
            "neighbours": self.neighbours.to_dicts(),
            "items": None if self.items is None else self.items.to_dicts(),
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)


def _item_names(ds: SequenceDataset) -> tuple[np.ndarray, np.ndarray]:
    """(vocab,) original item id of each item index ("" for pad, MASK) and (vocab,) its
    first-listed category ("" none)."""
    item_ids = np.full(ds.vocab_size, "", dtype=object)
    idx = ds.items["item_idx"].to_numpy()
    item_ids[idx] = ds.items["item_id"].cast(pl.String).to_numpy()
    item_cats = np.full(ds.vocab_size, "", dtype=object)
    if ds.has_categories:
        codes, names = ds.item_categories()
        named = codes >= 0
        item_cats[named] = np.asarray(names, dtype=object)[codes[named]]
    return item_ids, item_cats


def _no_items_error(run: Run) -> SeqtwinsError:
    return SeqtwinsError(
        f"{run.path} (objective {run.config.objective}) has no item vectors, so it has no "
        f"nearest items; only {', '.join(NATIVE_OBJECTIVES)} runs do (drop --items)"
    )


class Explainer:
    """A run, its dataset and its users' embeddings, loaded once to explain many users.

    :meth:`explain` is what :func:`explain_user` returns for one user; the embeddings of
    every user (for the neighbours and the probes) are computed (or read) on the first
    answer and kept, and so is each task's fitted probe. Explanations of one
    :class:`Explainer` run one at a time (a lock): Captum's integrated gradients hook the
    encoder's embedding layer while they run, so give the explainer an encoder no other
    thread uses (:meth:`load` opens its own)."""

    def __init__(
        self,
        run: Run,
        ds: SequenceDataset,
        encoder: SequenceEncoder,
        checkpoint: str,
        tower: ItemTower | None = None,
        embeddings: np.ndarray | None = None,
    ) -> None:
        self.run, self.ds, self.encoder, self.checkpoint = run, ds, encoder, checkpoint
        self.tower = tower
        self.item_ids, self.item_cats = _item_names(ds)
        self._emb = embeddings  # (U, D), or None until the first answer embeds every user
        self._unit: np.ndarray | None = None  # (U, D) the rows of _emb at unit length
        self._probes: dict[str, TaskProbe] = {}
        self._lock = threading.RLock()

    @classmethod
    def load(
        cls,
        run: Path | str | Run,
        data: Path | str | SequenceDataset,
        checkpoint: str = "best",
        items: bool | None = None,
        verify: bool = True,
        embeddings: Path | str | np.ndarray | None = None,
    ) -> Explainer:
        """Open ``run`` (a directory or a :class:`Run`) and its dataset (a directory, or
        an open :class:`SequenceDataset`; the run must have been trained on it: the content
        hashes are compared) and load the checkpoint's encoder, with the item tower where
        the objective has one. ``items``: False skips loading the tower, True requires one
        (SeqtwinsError for a run without). ``embeddings``: a ``seqtwins embed`` export of
        this dataset by this checkpoint (checked by
        :func:`seqtwins.embed.read_user_embeddings`), or the (U, D) array of those rows,
        used instead of embedding every user."""
        r = run if isinstance(run, Run) else Run.open(run)
        if not r.has_checkpoint(checkpoint):
            raise SeqtwinsError(f"{r.path} has no {checkpoint} checkpoint; train it first")
        # in memory, not memory-mapped: embedding every user slices each history, and a slice
        # of a memmap costs ~50 us more (1.3 of 5.2 s of embedding Beauty's 22k users)
        ds = data if isinstance(data, SequenceDataset) else SequenceDataset.open(
            data, mmap=False, verify=verify
        )  # fmt: skip
        r.check_dataset(ds)
        objective = r.config.objective
        if items and objective not in NATIVE_OBJECTIVES:
            raise _no_items_error(r)
        tower = None
        if objective in NATIVE_OBJECTIVES and items is not False:
            model = r.objective(checkpoint, ds)
            encoder = model.encoder if has_item_tower(model) else r.encoder(checkpoint, ds)
            tower = ItemTower(model) if has_item_tower(model) else None
        else:
            encoder = r.encoder(checkpoint, ds)
        assert isinstance(encoder, SequenceEncoder)
        emb = embeddings
        if emb is not None and not isinstance(emb, np.ndarray):
            emb = read_user_embeddings(emb, r, checkpoint, ds)
        elif emb is not None and emb.shape != (ds.num_users, encoder.cfg.dim):
            raise SeqtwinsError(
                f"embeddings of shape {emb.shape} are not the dataset's {ds.num_users} users "
                f"x the encoder's dim {encoder.cfg.dim}"
            )
        return cls(r, ds, encoder, checkpoint, tower, emb)

    def user_index(self, user: str) -> int:
        """The dataset row of user ``user`` (an original ``user_id``); SeqtwinsError if
        the dataset has no such user."""
        row = self.ds.user_row(user)
        if row is None:
            raise SeqtwinsError(
                f"user {user!r} is not in dataset {self.ds.path} ({self.ds.num_users} users); "
                "give a user_id of its users.parquet (seqtwins inspect lists the fields)"
            )
        return row

    def embeddings(self) -> np.ndarray:
        """(U, D) every user's embedding by this checkpoint (computed once)."""
        with self._lock:
            if self._emb is None:
                self._emb = embed_users(self.encoder, self.ds, np.arange(self.ds.num_users))
            return self._emb

    def unit_embeddings(self) -> np.ndarray:
        """(U, D) the embeddings at unit length, for cosines (computed once)."""
        with self._lock:
            if self._unit is None:
                emb = self.embeddings()
                self._unit = emb / np.maximum(np.linalg.norm(emb, axis=1), 1e-12)[:, None]
            return self._unit

    def probe(self, task: str) -> TaskProbe:
        """``task``'s probe fitted as ``evaluate`` fits it (:mod:`seqtwins.explain.probe`),
        fitted once per task."""
        with self._lock:
            tp = self._probes.get(task)
            if tp is None:
                task_obj = build_task(self.ds, task)  # unknown / unsupported task: one line
                tp = self._probes[task] = fit_task_probe(self.ds, task_obj, self.embeddings())
            return tp

    def explain(
        self,
        user: str,
        task: str | None = None,
        k: int = 10,
        items: bool | None = None,
        threads: int | None = 1,
    ) -> Explanation:
        """Explain user ``user``; the arguments as :func:`explain_user`'s. ``threads``
        None leaves the process's torch and BLAS threads as they are."""
        if k < 1:
            raise SeqtwinsError(f"-k {k} must be >= 1")
        if items and self.tower is None:
            raise _no_items_error(self.run)
        limit = nullcontext() if threads is None else cpu_threads(threads)
        with self._lock, limit:
            t0 = time.perf_counter()  # the work, not the wait for another explanation
            ex = self._explain(user, task, k, items)
            ex.seconds = time.perf_counter() - t0
        return ex

    def _explain(self, user: str, task: str | None, k: int, items: bool | None) -> Explanation:
        u = self.user_index(user)
        tp = None if task is None else self.probe(task)  # an unknown task: before embedding
        emb = self.embeddings()
        window = histories(self.ds.sequences, [u], self.encoder.cfg.max_len)[0]
        if not len(window):
            raise SeqtwinsError(f"user {user!r} has no history items; nothing to explain")
        e = torch.from_numpy(np.array(emb[u]))  # a copy: rows read from Parquet are read-only
        target = self_projection(e)
        ig, base, gap = integrated_gradients(self.encoder, window, target)
        columns: dict[str, Any] = {
            "position": np.arange(1, len(window) + 1),
            "item_id": [str(self.item_ids[i]) for i in window],
            "category": [str(self.item_cats[i]) for i in window],
            "ig_embedding": ig,
            "occlusion_embedding": occlusion(self.encoder, window, target),
        }
        targets: dict[str, Any] = {
            "embedding": {
                "target": EMBEDDING_TARGET,
                "value": float(np.linalg.norm(emb[u])),
                "ig_baseline": base,
                "ig_sum": float(ig.sum()),
                "ig_gap": gap,
            },  # fmt: skip
        }
        if tp is not None:
            task_cols, targets["task"] = self._task_columns(tp, window, e, u)
            columns.update(task_cols)
        seqs = self.ds.sequences
        n_history = int(seqs.history_end[u] - seqs.offsets[u])
        info = {
            "id": str(user),
            "index": u,
            "split": str(self.ds.users["split"][u]),
            "history_items": n_history,
            "explained_items": len(window),
        }
        notes = []
        if n_history > len(window):
            notes.append(
                f"the encoder reads the last {len(window)} of {n_history} history "
                "items (encoder.max_len); older items have no influence"
            )
        nearest = None if items is False else self._nearest_items(e, u, k)
        return Explanation(
            run=str(self.run.path), dataset=str(self.ds.path), checkpoint=self.checkpoint,
            user=info, history=pl.DataFrame(columns), targets=targets,
            neighbours=self._neighbours(u, k), items=nearest, notes=notes,
        )  # fmt: skip

    def _neighbours(self, u: int, k: int) -> pl.DataFrame:
        unit = self.unit_embeddings()  # (U, D)
        cos = unit @ unit[u]  # (U,)
        cos[u] = -np.inf
        top = np.argsort(-cos, kind="stable")[: min(k, len(cos) - 1)]  # never u itself
        seqs = self.ds.sequences
        own = set(histories(seqs, [u])[0].tolist())
        shared = [sorted(own & set(h.tolist())) for h in histories(seqs, top)]
        return pl.DataFrame(
            {
                "rank": np.arange(1, len(top) + 1),
                "user_id": [self.ds.user_ids[v] for v in top],
                "cosine": cos[top].astype(np.float64),
                "shared": [len(s) for s in shared],
                "shared_items": [[str(self.item_ids[i]) for i in s] for s in shared],
            },
            schema_overrides={"shared_items": pl.List(pl.String)},
        )

    def _nearest_items(self, e: torch.Tensor, u: int, k: int) -> pl.DataFrame | None:
        if self.tower is None:
            return None
        logits = self.tower.logits(e.reshape(1, -1))[0]  # (N,) column j = item_idx j + 1
        top = torch.topk(logits, min(k, logits.shape[0])).indices.numpy() + 1
        own = set(histories(self.ds.sequences, [u])[0].tolist())
        return pl.DataFrame(
            {
                "rank": np.arange(1, len(top) + 1),
                "item_id": [str(self.item_ids[i]) for i in top],
                "category": [str(self.item_cats[i]) for i in top],
                "score": logits[top - 1].double().numpy(),
                "in_history": [int(i) in own for i in top],
            }
        )

    def _task_columns(
        self, tp: TaskProbe, window: np.ndarray, e: torch.Tensor, u: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        col = int(tp.predicted(e.reshape(1, -1), np.array([u]))[0])
        target = probe_score(tp.probe, col)
        ig, base, gap = integrated_gradients(self.encoder, window, target)
        occ = occlusion(self.encoder, window, target)
        task = tp.task
        truth: Any = None
        if task.targets is not None:
            row = task.targets[u]
            truth = [task.class_names[c] for c in row.indices] if row.nnz else None
        elif task.labels[u] >= 0:
            truth = task.class_names[int(task.labels[u])]
        info = {
            "task": task.name,
            "predicted": tp.class_name(col),
            "score": float(target(e.reshape(1, -1))[0]),
            "confidence": float(tp.confidence(e.reshape(1, -1), np.array([col]))[0]),
            "truth": truth,
            "probe": {
                "solver": tp.solver,
                "n_train": tp.n_train,
                "selection": {
                    k: v for k, v in tp.probe.selection.items() if isinstance(v, int | float | str)
                },
            },  # fmt: skip
            "ig_baseline": base,
            "ig_sum": float(ig.sum()),
            "ig_gap": gap,
        }
        return {"ig_task": ig, "occlusion_task": occ}, info


def explain_user(
    run: Path | str | Run,
    data: Path | str,
    user: str,
    task: str | None = None,
    k: int = 10,
    checkpoint: str = "best",
    items: bool | None = None,
    verify: bool = True,
    threads: int = 1,
    embeddings: Path | str | None = None,
) -> Explanation:
    """Explain user ``user`` (an original ``user_id``) of dataset ``data`` under ``run``:
    ``Explainer.load(run, data, ...).explain(user, ...)``, for one answer (an
    :class:`Explainer` kept answers many without loading again).

    ``task``: also attribute the probe's predicted class (a task of
    :func:`seqtwins.evaluate.tasks.available_tasks`). ``k``: nearest users / items shown.
    ``items``: None lists the nearest items where the objective has item vectors; True
    requires them (SeqtwinsError for a run without); False skips them. ``threads``: torch
    and BLAS threads while it runs (restored after): one thread answered faster than two
    on the shared 2-core machine, 7-10x (many small ops, each a thread barrier).
    ``embeddings``: a ``seqtwins embed`` export of this dataset by this checkpoint (checked
    by :func:`seqtwins.embed.read_user_embeddings`), read instead of embedding every user
    for the neighbours and the probe: most of an answer's time otherwise. ``seconds`` of
    the result includes the loading."""
    t0 = time.perf_counter()
    if k < 1:
        raise SeqtwinsError(f"-k {k} must be >= 1")
    with cpu_threads(threads):
        explainer = Explainer.load(run, data, checkpoint, items, verify, embeddings)
        ex = explainer.explain(user, task, k, items, threads=None)
    ex.seconds = time.perf_counter() - t0
    return ex
