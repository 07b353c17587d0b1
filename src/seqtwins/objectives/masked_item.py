"""``barlow+mask``: Barlow Twins plus alpha x masked-item prediction over the item table.

Item-level signal for the user embedding: positions masked in each Barlow Twins view are
predicted from the encoder's token states at those positions, scored against the
encoder's own (tied) item table, as BERT4Rec does (Sun et al., CIKM 2019,
arXiv:1904.06690: a GELU + LayerNorm transform of the hidden state, dot products with the
input item embeddings, softmax over all items). The quality of the item vectors drives
what the pooled user embedding can express; the masked-item term trains them directly,
while Barlow Twins shapes the pooled embedding.

The softmax runs over every item (``full``) or over the target and ``mask.negatives``
shared negatives drawn by popularity, with the sampling-bias (logQ) correction
(``sampled``; Jean et al. 2015, Yi et al. 2019). ``mask.softmax=auto`` picks ``full`` up to
``mask.full_max_items`` = 16,384 items, measured on this project's 2-core CPU, one thread,
batch 256, mask.rate 0.2:

* Beauty (12,101 items, ~700 masked positions per step), 2 epochs, default precision
  (bf16 autocast on this CPU): ``barlow`` 3,572 step users/s; ``barlow+mask`` full
  2,106, sampled 2,240 (the full softmax costs 6 % per step and is exact).
* Synthetic histories in fp32 (``benchmarks/bench_mask_softmax.py``, ~1,000 masked
  positions), ms per step: 12k items full 383 vs sampled 207 (``barlow`` 160); 50k items
  full 1,013 vs sampled 217. The full softmax's cost grows with (masked positions x
  items) and dominates the step past a few tens of thousands of items; the sampled one
  barely grows.

So the exact loss wherever it is cheap in the default precision (every shared dataset),
the sampled one for large catalogues.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqtwins.models.encoder import PAD, SequenceEncoder
from seqtwins.objectives.barlow import BarlowConfig, BarlowObjective

SOFTMAXES = ("auto", "full", "sampled")


def full_item_softmax_loss(states: Tensor, targets: Tensor, table: Tensor) -> Tensor:
    """Mean cross-entropy of each state against its target over every row of ``table``.

    ``states`` (M, D), ``targets`` (M,) row indices into ``table`` (V, D); logits are the
    dot products ``states @ table^T`` (M, V), computed in fp32. ``M = 0`` gives a zero
    that still depends on the inputs (autograd sees every parameter).
    """
    if states.shape[0] == 0:
        return states.sum() * 0.0 + table.sum() * 0.0
    logits = (states @ table.T).float()  # (M, V)
    return F.cross_entropy(logits, targets)


def sampled_item_softmax_loss(
    states: Tensor,
    positives: Tensor,
    negatives: Tensor,
    positive_ids: Tensor,
    negative_ids: Tensor,
    log_q_pos: Tensor | None = None,
    log_q_neg: Tensor | None = None,
) -> Tensor:
    """Mean sampled-softmax cross-entropy: each state against its own positive and the
    ``N`` shared negatives.

    ``states`` (M, D), ``positives`` (M, D) the target vectors, ``negatives`` (N, D). A
    negative with the same id as a row's target (``positive_ids`` (M,), ``negative_ids``
    (N,)) is an accidental hit and is left out of that row. ``log_q_pos`` (M,) /
    ``log_q_neg`` (N,), when given, are the log expected counts of each candidate among
    the sampled negatives; they are subtracted from its logits (the positive's too, as in
    TensorFlow's ``sampled_softmax_loss``), so that the loss estimates the full softmax.
    """
    if states.shape[0] == 0:
        return states.sum() * 0.0 + positives.sum() * 0.0 + negatives.sum() * 0.0
    pos = (states * positives).sum(-1).float()  # (M,)
    neg = (states @ negatives.T).float()  # (M, N)
    if log_q_pos is not None and log_q_neg is not None:
        pos = pos - log_q_pos.float()
        neg = neg - log_q_neg.float()  # broadcast over rows
    neg = neg.masked_fill(positive_ids[:, None] == negative_ids[None, :], float("-inf"))
    logits = torch.cat([pos[:, None], neg], dim=1)  # (M, 1 + N): the positive is class 0
    return F.cross_entropy(logits, torch.zeros_like(positive_ids))


@dataclass
class MaskConfig:
    """Settings of ``barlow+mask`` beyond those of Barlow Twins (the ``mask.*`` keys)."""

    alpha: float = 1.0
    """Weight of the masked-item loss added to the Barlow Twins loss (as ``next.alpha`` of
    ``barlow+next``). The Barlow loss starts near K (256) and falls to a few tens; the
    masked-item loss starts near log(num_items) (~9.4 on Beauty): alpha=1 lets Barlow
    Twins lead. Tune it on valid users."""
    rate: float = 0.2
    """Fraction of each view's real items masked and predicted (stochastically rounded,
    one item always stays visible). BERT4Rec's best rho was 0.2 on the long ML-1M
    sequences; here the views are already augmented, so 0.2 everywhere. In (0, 1]."""
    softmax: str = "auto"
    """``full`` (every item), ``sampled`` (``negatives`` shared negatives with logQ
    correction), or ``auto``: full up to ``full_max_items`` items, else sampled."""
    full_max_items: int = 16_384
    """Largest item set that ``auto`` scores with the full softmax: about where it starts
    to cost more than the sampled one (module docstring: measured step times). >= 1."""
    negatives: int = 2048
    """Shared negatives per batch of the sampled softmax, drawn in proportion to item
    popularity in training histories. >= 1."""

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"mask.alpha={self.alpha!r} must be a finite number >= 0")
        if isinstance(self.rate, bool) or not 0.0 < self.rate <= 1.0:
            raise ValueError(f"mask.rate={self.rate!r} must be in (0, 1]")
        if self.softmax not in SOFTMAXES:
            raise ValueError(f"mask.softmax={self.softmax!r} must be one of {', '.join(SOFTMAXES)}")
        for name in ("full_max_items", "negatives"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"mask.{name}={value!r} must be an integer >= 1")

    def uses_full_softmax(self, num_items: int) -> bool:
        """Whether the loss over ``num_items`` items is the full softmax."""
        if self.softmax == "auto":
            return num_items <= self.full_max_items
        return self.softmax == "full"


class MaskedItemHead(nn.Module):
    """Predicts masked items from token states against the encoder's item table.

    Holds the BERT4Rec output transform (Linear -> GELU -> LayerNorm) and the negative
    sampler; the encoder is passed to each call so that it appears once in the
    ``state_dict``. ``item_popularity`` (vocab_size,) item counts over training histories
    (sampled softmax only; uniform without them). No setting changes the parameters, so
    a checkpoint loads whatever ``mask.*`` it was trained with.
    """

    sample_prob: Tensor  # (num_items,) float32 probability of each item as a negative

    def __init__(
        self,
        dim: int,
        vocab_size: int,
        cfg: MaskConfig,
        item_popularity: np.ndarray | Tensor | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_items = vocab_size - 2  # ids 1..num_items; 0 = padding, vocab-1 = MASK
        self.full = cfg.uses_full_softmax(self.num_items)
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        if item_popularity is None:
            prob = torch.ones(self.num_items, dtype=torch.float64)
        else:
            pop = torch.as_tensor(np.asarray(item_popularity), dtype=torch.float64)
            if pop.shape != (vocab_size,):
                raise ValueError(
                    f"item_popularity has shape {tuple(pop.shape)}, expected ({vocab_size},)"
                )
            prob = pop[1:-1].clamp_min(1.0)  # unseen items stay possible negatives
        self.register_buffer("sample_prob", (prob / prob.sum()).float(), persistent=False)

    def loss(self, encoder: SequenceEncoder, states: Tensor, items: Tensor) -> Tensor:
        """Mean loss of the token states ``(M, D)`` at masked positions against their
        items ``(M,)`` (ids ``1..num_items``)."""
        h = self.transform(states)  # (M, D)
        rows = items - 1  # (M,) item id -> row of the item table
        if self.full:
            ids = torch.arange(1, self.num_items + 1, device=items.device)
            return full_item_softmax_loss(h, rows, encoder.item_vectors(ids))  # (V, D) table
        n = self.cfg.negatives
        neg = torch.multinomial(self.sample_prob, n, replacement=True)  # (N,) rows
        vectors = encoder.item_vectors(torch.cat([rows, neg]) + 1)  # (M + N, D)
        log_q = torch.log(n * self.sample_prob)  # (V,) expected count among the N draws
        return sampled_item_softmax_loss(
            h, vectors[: len(rows)], vectors[len(rows) :], rows, neg, log_q[rows], log_q[neg]
        )


class BarlowMaskObjective(BarlowObjective):
    """Barlow Twins on (``view_a``, ``view_b``) + alpha x masked-item prediction of the
    items masked in them (``target_a``, ``target_b``: the masked item at each masked
    position, 0 elsewhere); one encoder pass embeds both views and yields the states.

    A :class:`BarlowObjective` (``encoder``, ``projector``, ``cross_correlation``) plus
    ``head``; each parameter appears once in the ``state_dict``.
    """

    def __init__(
        self,
        encoder: SequenceEncoder,
        barlow: BarlowConfig,
        mask: MaskConfig,
        item_popularity: np.ndarray | Tensor | None = None,
    ) -> None:
        super().__init__(encoder, barlow)
        self.mask_cfg = mask
        self.head = MaskedItemHead(encoder.dim, encoder.vocab_size, mask, item_popularity)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        a, b = batch["view_a"], batch["view_b"]  # (B, Ta), (B, Tb)
        t = max(a.shape[1], b.shape[1])
        items = torch.cat([F.pad(a, (0, t - a.shape[1]), value=PAD),
                           F.pad(b, (0, t - b.shape[1]), value=PAD)])  # (2B, T)  # fmt: skip
        targets = torch.cat([F.pad(batch["target_a"], (0, t - a.shape[1])),
                             F.pad(batch["target_b"], (0, t - b.shape[1]))])  # (2B, T)  # fmt: skip
        where = targets > 0  # (2B, T) masked positions
        emb, states = self.encoder.embed_with_states(items, where)  # (2B, D), (M, D)
        e_a, e_b = emb.split(a.shape[0])
        # projector per view, so that its BatchNorm sees each view's own batch
        on_diag, off_diag = self.loss.terms(self.projector(e_a), self.projector(e_b))
        bt = on_diag + self.cfg.lambda_ * off_diag
        masked = self.head.loss(self.encoder, states, targets[where])
        loss = bt + self.mask_cfg.alpha * masked
        logs = {
            "loss": float(loss.detach()),
            "barlow": float(bt.detach()),
            "on_diag": float(on_diag.detach()),
            "off_diag": float(off_diag.detach()),
            "masked_item": float(masked.detach()),
            "masked": float(where.sum()),
        }
        return loss, logs
