"""Native scoring: rank items through an objective's own item vectors, with no labels.

Objectives that score items while they train are used in production that way, with no
probe: the user embedding through the objective's item head, against its item table.
:func:`native_scorer` scores a task's test users that way, so ``seqtwins evaluate`` can
report such a run both through a probe and natively (method ``<run>:native``,
``"protocol": "native"``). Two heads do (:class:`ItemTower`):

* the next-item softmax of ``dual`` and ``barlow+next``
  (:class:`~seqtwins.objectives.dual.NextItemHead`): the user's context vector
  ``context_tower(user embedding)`` against ``label_vectors(all items)``. The score of item
  ``j`` is the training logit ``<context(u), label(j)> / temperature`` (cosine over the
  temperature). Training also subtracts the log sampling probability of each candidate
  (logQ, Yi et al. 2019), but that is a correction of the *sampled* softmax towards the
  full one; the full softmax the model estimates ranks by the plain logit, which is what
  is scored here.
* the masked-item head of ``barlow+mask``
  (:class:`~seqtwins.objectives.masked_item.MaskedItemHead`): the user embedding through
  the head's BERT4Rec transform, dot products with the encoder's own item table, the
  logits its softmax is trained on. Training applies the head to the token state at a
  masked position; here it is applied to the pooled user embedding, the vector the product
  hands out. On valid users this ranked future items a little better than BERT4Rec's own
  inference (a MASK token after the history, one more encoder pass): recall@10 0.037 vs
  0.034 on Beauty, 0.035 vs 0.033 on Yelp (``benchmarks/results/spike_mask_native.md``).

Class codes are ``item_idx - 1`` (the ``next_item`` / ``future_items`` convention): the
prediction lists every item, ``classes = arange(num_items)``. Excluding a user's history
items from the ranking is the protocol's job, identical for every method.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.probe import Prediction
from seqtwins.evaluate.protocol import Scorer
from seqtwins.evaluate.tasks import Task
from seqtwins.models.encoder import SequenceEncoder
from seqtwins.objectives.dual import NextItemHead
from seqtwins.objectives.masked_item import MaskedItemHead

NATIVE_KINDS = ("ranking", "retrieval")
"""Task kinds a native scorer answers: ``next_item`` and ``future_items``."""
NATIVE_SUFFIX = ":native"
"""Method name of a run's native scores: ``<run name>:native``."""
NATIVE_OBJECTIVES = ("dual", "barlow+next", "barlow+mask")
"""Objectives with an item tower (:func:`has_item_tower`), known from a run's config
without loading its weights."""


def has_item_tower(model: nn.Module) -> bool:
    """True when ``model`` (a trained objective) scores items with an item head: the
    next-item softmax or the masked-item head (module docstring)."""
    return isinstance(getattr(model, "head", None), NextItemHead | MaskedItemHead) and isinstance(
        getattr(model, "encoder", None), SequenceEncoder
    )


class ItemTower:
    """The item head of a trained objective, frozen: user embeddings in, item logits out.

    Holds the item vectors of every item ``(num_items, D)`` (computed once) and the
    head's user side (the next-item head's context tower, or the masked-item head's
    transform); :meth:`logits` scores any ``(B, D)`` user embeddings.
    """

    def __init__(self, model: nn.Module) -> None:
        if not has_item_tower(model):
            raise SeqtwinsError(
                f"{type(model).__name__} has no item tower; native scoring needs an objective "
                f"with an item head ({', '.join(NATIVE_OBJECTIVES)})"
            )
        head, encoder = model.head, model.encoder
        assert isinstance(head, NextItemHead | MaskedItemHead)
        assert isinstance(encoder, SequenceEncoder)
        self.head = head
        self.num_items = head.num_items
        was_training = model.training
        model.eval()
        with torch.no_grad():
            ids = torch.arange(1, self.num_items + 1, device=next(encoder.parameters()).device)
            if isinstance(head, NextItemHead):
                self.user_side: Callable[[torch.Tensor], torch.Tensor] = head.context_tower
                self.scale = 1.0 / float(head.cfg.temperature)
                self.items = head.label_vectors(encoder, ids).float()  # (N, D) unit rows
            else:
                self.user_side = head.transform
                self.scale = 1.0
                self.items = encoder.item_vectors(ids).float()  # (N, D) the input table
        model.train(was_training)

    @torch.no_grad()
    def logits(self, user_emb: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` user embeddings -> ``(B, num_items)`` logits; column ``j`` is
        ``item_idx = j + 1``."""
        was_training = self.head.training
        self.head.eval()
        context = self.user_side(user_emb.to(self.items)).float()  # (B, D)
        self.head.train(was_training)
        return context @ self.items.T * self.scale  # (B, N)

    def scores(self, user_emb: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """``(n, D)`` float user embeddings -> ``(n, num_items)`` float32 logits, ``chunk``
        users at a time (the item table is shared, only the output grows with n)."""
        if chunk < 1:
            raise ValueError(f"chunk={chunk} must be >= 1")
        out = np.empty((len(user_emb), self.num_items), dtype=np.float32)
        for start in range(0, len(user_emb), chunk):
            part = torch.from_numpy(np.ascontiguousarray(user_emb[start : start + chunk]))
            out[start : start + len(part)] = self.logits(part).cpu().numpy()
        return out


def native_scorer(model: nn.Module, embeddings: np.ndarray, chunk: int = 1024) -> Scorer:
    """A label-free :data:`Scorer` from a trained objective with an item tower.

    ``embeddings`` (U, D) are the users' embeddings by the same checkpoint's encoder (row =
    ``user_idx``; ``seqtwins evaluate`` has them already). The scorer answers tasks of kind
    ``ranking`` / ``retrieval`` with the logits of every item (classes ``0..num_items-1``)
    for the given test users, and None for any other task. For ``retrieval`` tasks the
    prediction is lazy (:meth:`Prediction.lazy`): the set metrics compute it a chunk of
    users at a time, so the (test users x items) matrix is never held at once; for
    ``ranking`` (single-label ``next_item``) it is computed in full. That the run was trained on
    the task's dataset (same item vocabulary) is checked when it is opened
    (:meth:`seqtwins.run.Run.objective` with the dataset).
    """
    tower = ItemTower(model)
    if embeddings.ndim != 2 or embeddings.shape[1] != tower.items.shape[1]:
        raise SeqtwinsError(
            f"embeddings of shape {embeddings.shape} do not match the item tower's width "
            f"{tower.items.shape[1]}"
        )
    classes = np.arange(tower.num_items, dtype=np.int64)

    def score(task: Task, users: np.ndarray) -> Prediction | None:
        if task.kind not in NATIVE_KINDS:
            return None
        rows = embeddings[np.asarray(users, dtype=np.int64)]  # (n, D)
        if task.kind == "retrieval":
            return Prediction.lazy(len(rows), classes, lambda a, b: tower.scores(rows[a:b], chunk))
        return Prediction(tower.scores(rows, chunk), classes)

    return score
