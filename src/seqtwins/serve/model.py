"""A run loaded once for serving: encoder, id maps and the dataset users' embeddings.

Everything is opened through the owners (:class:`seqtwins.run.Run` for the encoder,
:class:`seqtwins.data.dataset.SequenceDataset` for the item and user ids); dataset users
are embedded with :func:`seqtwins.models.encoder.embed_users`, the function ``seqtwins
embed`` uses, so ``/users/{id}/embedding`` returns the row ``seqtwins embed`` writes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from seqtwins.data.dataset import SequenceDataset
from seqtwins.embed import check_finite, read_user_embeddings
from seqtwins.errors import SeqtwinsError
from seqtwins.models.encoder import SequenceEncoder, embed_item_lists, embed_users
from seqtwins.run import Run, check_checkpoint, item_index, map_items
from seqtwins.serve import import_extra
from seqtwins.serve.neighbors import IndexConfig, NeighborIndex, neighbors_of_row

if TYPE_CHECKING:
    from seqtwins.explain.user import Explainer

ItemId = str | int
"""An original item id as a client sends it (JSON string or integer)."""


@dataclass
class Mapped:
    """Sequences of original item ids mapped to item indices.

    ``sequences[i]`` holds row i's known items (the most recent ``encoder.max_len``),
    ``unknown[i]`` the ids of row i the dataset does not know (skipped), and ``empty`` the
    rows without any known item (they get no embedding)."""

    sequences: list[np.ndarray]
    unknown: list[list[ItemId]]
    empty: list[int] = field(default_factory=list)


class LoadedModel:
    """One run's encoder with its dataset's id maps, ready to embed and search."""

    def __init__(
        self,
        run: Run,
        ds: SequenceDataset,
        encoder: SequenceEncoder,
        which: str,
        index_cfg: IndexConfig | None = None,
        user_vectors: np.ndarray | None = None,
    ) -> None:
        self.run, self.ds, self.encoder, self.which = run, ds, encoder, which
        self.items = item_index(ds)
        self.user_ids = ds.user_ids
        self.splits: list[str] = ds.users["split"].to_list()
        self.max_len = encoder.cfg.max_len
        # the rows `seqtwins embed` writes: read from its file, else the same function
        if user_vectors is None:  # every user through the encoder: the slow part of a start
            user_vectors = embed_users(encoder, ds, np.arange(ds.num_users))
            check_finite(user_vectors, self.user_ids, f"{run.path} ({which} checkpoint)")
        self.user_vectors = user_vectors  # (U, D)
        self.index = NeighborIndex.build(self.user_vectors, index_cfg or IndexConfig())
        self._explainer: Explainer | None = None
        self._explainer_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        run_dir: Path | str,
        data_dir: Path | str,
        which: str = "best",
        verify: bool = True,
        index_cfg: IndexConfig | None = None,
        embeddings: Path | str | None = None,
    ) -> LoadedModel:
        """Open the run and its dataset (the run must have been trained on it). The dataset
        users' embeddings are read from ``embeddings`` (a ``seqtwins embed`` file of this
        run, checkpoint and dataset) when given, else computed now."""
        check_checkpoint(which)
        run = Run.open(run_dir)
        ds = SequenceDataset.open(data_dir, verify=verify)
        encoder = run.encoder(which, ds)
        vectors = None if embeddings is None else read_user_embeddings(embeddings, run, which, ds)
        return cls(run, ds, encoder, which, index_cfg, vectors)

    @property
    def dim(self) -> int:
        return self.encoder.cfg.dim

    def map_sequences(self, sequences: Sequence[Sequence[ItemId]]) -> Mapped:
        """Original item ids -> index arrays; unknown ids reported per row, not fatal."""
        mapped, unknown = map_items(self.items, sequences)
        empty = [row for row, m in enumerate(mapped) if not len(m)]
        return Mapped([m[-self.max_len :] for m in mapped], unknown, empty)

    def embed(self, sequences: list[np.ndarray]) -> np.ndarray:
        """Embeddings ``(len(sequences), D)`` float32 of non-empty item-index sequences."""
        with torch.inference_mode():
            return embed_item_lists(self.encoder, sequences, max(1, len(sequences)))

    def user_row(self, user: str) -> int | None:
        return self.ds.user_row(user)

    def explainer(self) -> Explainer:
        """The :class:`~seqtwins.explain.user.Explainer` of ``/users/{id}/explain``, built on
        first use from this run, dataset and users' embeddings (no second pass over the
        users). It opens its own encoder, and the item tower where the objective has one:
        Captum hooks the encoder it explains, which must not be the one ``/embed`` runs."""
        with self._explainer_lock:
            if self._explainer is None:
                from seqtwins.explain.user import Explainer

                self._explainer = Explainer.load(
                    self.run, self.ds, self.which, embeddings=self.user_vectors
                )
            return self._explainer

    def info(self) -> dict[str, Any]:
        """What ``GET /info`` reports about the run, its dataset and the index."""
        cfg = self.run.config
        return {
            "run": self.run.path.resolve().name,  # a name, never a path of the server
            "checkpoint": self.which,
            "data_hash": self.ds.content_hash,
            "objective": cfg.objective,
            "dim": self.dim,
            "max_len": self.max_len,
            "pooling": cfg.encoder.pooling,
            "items": self.ds.num_items,
            "users": self.ds.num_users,
            "index": self.index.describe(),
        }


@dataclass
class Neighbors:
    """What ``seqtwins neighbors`` found for one user."""

    user: str
    neighbors: list[tuple[str, float]]
    index: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"user", "neighbors": [{"user", "score"}, ...], "index"}``."""
        rows = [{"user": u, "score": s} for u, s in self.neighbors]
        return {"user": self.user, "neighbors": rows, "index": self.index}


def nearest_users(
    run_dir: Path | str,
    data_dir: Path | str,
    user: str,
    k: int = 20,
    which: str = "best",
    verify: bool = True,
    cfg: IndexConfig | None = None,
    embeddings: Path | str | None = None,
) -> Neighbors:
    """The ``k`` dataset users nearest to ``user`` (cosine of their embeddings)."""
    if k < 1:
        raise SeqtwinsError(f"-k {k} must be at least 1")
    import_extra("faiss")  # the missing extra is one line before any work
    model = LoadedModel.load(run_dir, data_dir, which, verify, cfg, embeddings)
    row = model.user_row(user)
    if row is None:
        raise SeqtwinsError(
            f"user {user!r} is not in dataset {model.ds.path} ({model.ds.num_users} users); "
            "give a user_id of its users.parquet"
        )
    found = neighbors_of_row(model.index, model.user_vectors, row, k)
    return Neighbors(user, [(model.user_ids[r], s) for r, s in found], model.index.describe())
