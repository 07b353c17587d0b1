"""``barlow+next``: Barlow Twins plus alpha x the next-item softmax loss.

Adding a next-item (sequential recommendation) term to Barlow Twins is the direction the
paper's discussion (arXiv:2505.00953) and BT-SR (arXiv:2510.26407) point to. The next-item
term is exactly the ``dual`` objective's loss (same towers, temperature, negatives and logQ
correction, configured by :class:`~seqtwins.objectives.dual.DualConfig`), on the same
shared encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from seqtwins.models.encoder import SequenceEncoder
from seqtwins.objectives.barlow import BarlowConfig, BarlowObjective
from seqtwins.objectives.dual import DualConfig, NextItemHead


@dataclass
class NextItemConfig:
    """Settings of ``barlow+next`` beyond those of its two parts."""

    alpha: float = 1.0
    """Weight of the next-item softmax loss added to the Barlow Twins loss. With the
    default sizes (K=256, batch 256) the Barlow loss starts near K and falls to a few tens,
    while the softmax loss is about log(batch) ~ 5.5, so alpha=1 lets Barlow Twins lead
    and the next-item term shape the embedding; tune it on valid users."""

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        if not self.alpha >= 0:
            raise ValueError(f"next.alpha={self.alpha!r} must be >= 0")


class BarlowNextObjective(BarlowObjective):
    """Barlow Twins on (``view_a``, ``view_b``) + alpha x next-item loss on (``context``,
    ``target``); one encoder pass embeds the two views and the context together.

    A :class:`BarlowObjective` (same ``encoder``, ``projector``, ``cross_correlation``)
    plus ``head``, the next-item softmax of the dual encoder; each parameter appears once
    in the ``state_dict`` (``encoder.*``, ``projector.*``, ``head.*``).
    """

    def __init__(
        self,
        encoder: SequenceEncoder,
        barlow: BarlowConfig,
        dual: DualConfig,
        next_item: NextItemConfig,
        item_popularity: np.ndarray | Tensor | None = None,
    ) -> None:
        super().__init__(encoder, barlow)
        self.next_cfg = next_item
        self.head = NextItemHead(encoder.dim, encoder.vocab_size, dual, item_popularity)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        e_a, e_b, e_c = self.encoder.embed_many(
            batch["view_a"], batch["view_b"], batch["context"]
        )  # (B, D) each
        # projector per view, so that its BatchNorm sees each view's own batch
        on_diag, off_diag = self.loss.terms(self.projector(e_a), self.projector(e_b))
        bt = on_diag + self.cfg.lambda_ * off_diag
        nxt = self.head.loss(self.encoder, e_c, batch["target"])
        loss = bt + self.next_cfg.alpha * nxt
        logs = {
            "loss": float(loss.detach()),
            "barlow": float(bt.detach()),
            "on_diag": float(on_diag.detach()),
            "off_diag": float(off_diag.detach()),
            "next_item": float(nxt.detach()),
        }
        return loss, logs
