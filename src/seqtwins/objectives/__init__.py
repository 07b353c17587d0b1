"""Pretraining objectives on the shared encoder: ``barlow``, ``dual`` and ``barlow+next``.

Each objective is an ``nn.Module`` whose ``forward(batch)`` returns ``(loss, logs)``; the
batch keys each one needs are in :data:`BATCH_KEYS`.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn

from seqtwins.models.encoder import SequenceEncoder
from seqtwins.objectives.barlow import (
    BarlowConfig,
    BarlowObjective,
    BarlowTwinsLoss,
    batch_standardize,
    cross_correlation,
)
from seqtwins.objectives.dual import (
    DualConfig,
    DualEncoderObjective,
    NextItemHead,
    sampled_softmax_loss,
)
from seqtwins.objectives.next_item import BarlowNextObjective, NextItemConfig

OBJECTIVES = ("barlow", "dual", "barlow+next")
BATCH_KEYS: dict[str, tuple[str, ...]] = {
    "barlow": ("view_a", "view_b"),
    "dual": ("context", "target"),
    "barlow+next": ("view_a", "view_b", "context", "target"),
}
"""The batch tensors each objective reads: ``view_a`` / ``view_b`` / ``context`` (B, T)
right-padded item ids, ``target`` (B,) next item ids."""


def build_objective(
    name: str,
    encoder: SequenceEncoder,
    barlow: BarlowConfig | None = None,
    dual: DualConfig | None = None,
    next_item: NextItemConfig | None = None,
    item_popularity: np.ndarray | Tensor | None = None,
) -> nn.Module:
    """The objective called ``name`` on ``encoder`` (configs default to their defaults).

    ``barlow+next`` uses ``barlow`` for its Barlow Twins part, ``dual`` for its next-item
    part and ``next_item.alpha`` to weigh them. ``item_popularity`` (vocab_size,) item counts
    over training histories, needed by ``dual`` / ``barlow+next`` (logQ correction,
    popularity sampling).
    """
    if name == "barlow":
        return BarlowObjective(encoder, barlow or BarlowConfig())
    if name == "dual":
        return DualEncoderObjective(encoder, dual or DualConfig(), item_popularity)
    if name == "barlow+next":
        return BarlowNextObjective(
            encoder,
            barlow or BarlowConfig(),
            dual or DualConfig(),
            next_item or NextItemConfig(),
            item_popularity,
        )
    raise ValueError(f"objective={name!r} is unknown; choose one of {', '.join(OBJECTIVES)}")


__all__ = [
    "BATCH_KEYS",
    "OBJECTIVES",
    "BarlowConfig",
    "BarlowNextObjective",
    "BarlowObjective",
    "BarlowTwinsLoss",
    "DualConfig",
    "DualEncoderObjective",
    "NextItemConfig",
    "NextItemHead",
    "batch_standardize",
    "build_objective",
    "cross_correlation",
    "sampled_softmax_loss",
]
