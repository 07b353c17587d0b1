"""Pretraining objectives on the shared encoder: ``barlow``, ``dual``, ``barlow+next`` and
``barlow+mask``.

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
from seqtwins.objectives.masked_item import (
    BarlowMaskObjective,
    MaskConfig,
    MaskedItemHead,
    full_item_softmax_loss,
    sampled_item_softmax_loss,
)
from seqtwins.objectives.next_item import BarlowNextObjective, NextItemConfig

OBJECTIVES = ("barlow", "dual", "barlow+next", "barlow+mask")
BATCH_KEYS: dict[str, tuple[str, ...]] = {
    "barlow": ("view_a", "view_b"),
    "dual": ("context", "target"),
    "barlow+next": ("view_a", "view_b", "context", "target"),
    "barlow+mask": ("view_a", "view_b", "target_a", "target_b"),
}
"""The batch tensors each objective reads: ``view_a`` / ``view_b`` / ``context`` (B, T)
right-padded item ids, ``target`` (B,) next item ids, ``target_a`` / ``target_b`` (B, T)
the item masked at each position of ``view_a`` / ``view_b`` (0 where nothing is masked)."""


def build_objective(
    name: str,
    encoder: SequenceEncoder,
    barlow: BarlowConfig | None = None,
    dual: DualConfig | None = None,
    next_item: NextItemConfig | None = None,
    item_popularity: np.ndarray | Tensor | None = None,
    mask: MaskConfig | None = None,
) -> nn.Module:
    """The objective called ``name`` on ``encoder`` (configs default to their defaults).

    ``barlow+next`` uses ``barlow`` for its Barlow Twins part, ``dual`` for its next-item
    part and ``next_item.alpha`` to weigh them; ``barlow+mask`` uses ``barlow`` and
    ``mask`` (``mask.alpha`` weighs its masked-item term). ``item_popularity``
    (vocab_size,) item counts over training histories, needed by ``dual`` /
    ``barlow+next`` (logQ correction, popularity sampling) and used by the sampled softmax
    of ``barlow+mask``.
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
    if name == "barlow+mask":
        return BarlowMaskObjective(
            encoder, barlow or BarlowConfig(), mask or MaskConfig(), item_popularity
        )
    raise ValueError(f"objective={name!r} is unknown; choose one of {', '.join(OBJECTIVES)}")


__all__ = [
    "BATCH_KEYS",
    "OBJECTIVES",
    "BarlowConfig",
    "BarlowMaskObjective",
    "BarlowNextObjective",
    "BarlowObjective",
    "BarlowTwinsLoss",
    "DualConfig",
    "DualEncoderObjective",
    "MaskConfig",
    "MaskedItemHead",
    "NextItemConfig",
    "NextItemHead",
    "batch_standardize",
    "build_objective",
    "cross_correlation",
    "full_item_softmax_loss",
    "sampled_item_softmax_loss",
    "sampled_softmax_loss",
]
