"""The dual-encoder baseline: in-batch (plus sampled) softmax between a history and its next item.

Context tower = the shared encoder over a history prefix (its user embedding), label tower =
the encoder's item table at the next item. Both are L2-normalised and scored by a scaled dot
product; the loss is a softmax over the batch's labels (the google-research federated
``dual_encoder`` lineage the paper compares against, arXiv:2505.00953), optionally with
extra sampled negatives, with the sampling-bias (logQ) correction of Yi et al., RecSys 2019,
"Sampling-bias-corrected neural modeling for large corpus item recommendations".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from seqtwins.models.encoder import SequenceEncoder

ArrayLike = np.ndarray | Tensor
"""Item counts: a numpy array or a tensor."""

NEGATIVE_SAMPLING = ("uniform", "popularity")


def sampled_softmax_loss(
    context: Tensor,
    labels: Tensor,
    label_ids: Tensor,
    temperature: float,
    log_q: Tensor | None = None,
) -> Tensor:
    """Mean softmax cross-entropy of each context against its own label.

    ``context`` (B, D) holds the context vectors and ``labels`` (M, D), M >= B, the
    candidate vectors (L2-normalise both for the cosine form): ``labels[i]`` is the
    positive of row ``i`` for ``i < B``; the other rows' labels and any extra rows (sampled
    negatives, other ranks' labels) are the negatives. Scores are
    ``context @ labels^T / temperature``.

    * A candidate with the same item id (``label_ids`` (M,)) as row ``i``'s positive, other
      than the positive itself, is a false negative and is masked out.
    * ``log_q`` (M,), when given, is the log sampling probability (expected count in the
      candidate set) of each candidate; it is subtracted from every score in its column,
      the positive included (Yi et al. 2019, eq. 3), so that the sampled softmax estimates
      the full softmax without popularity bias.
    """
    b = context.shape[0]
    if labels.shape[0] < b or label_ids.shape != labels.shape[:1]:
        raise ValueError(
            f"need labels (M, D) with M >= B={b} and label_ids (M,); got "
            f"{tuple(labels.shape)} and {tuple(label_ids.shape)}"
        )
    logits = (context @ labels.T).float() / temperature  # (B, M)
    if log_q is not None:
        logits = logits - log_q.float()  # broadcast over rows
    rows = torch.arange(b, device=logits.device)
    same = label_ids[:b, None] == label_ids[None, :]  # (B, M)
    same[rows, rows] = False  # the positive itself stays
    logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, rows)


@dataclass
class DualConfig:
    """Settings of the ``dual`` objective (and of the next-item term of ``barlow+next``)."""

    temperature: float = 0.05
    """Softmax temperature on cosine similarities. 0.05 is the usual choice for
    L2-normalised in-batch softmax retrieval (Yi et al. 2019 tune it in [0.05, 0.1]; lower
    sharpens the distribution over negatives)."""
    extra_negatives: int = 0
    """Sampled negatives per batch on top of the in-batch ones (shared by all rows)."""
    negative_sampling: str = "uniform"
    """How extra negatives are drawn: ``uniform`` over all items or ``popularity``
    (proportional to the item's count in training histories)."""
    logq_correction: bool = True
    """Subtract the log sampling probability of each candidate (Yi et al. 2019). In-batch
    labels are drawn in proportion to item popularity, so without it popular items are
    over-penalised as negatives."""
    projection: bool = False
    """Add a linear layer (D -> D) on top of the user embedding in the context tower only
    (the user embedding itself, ``encoder.embed``, is what downstream tasks use)."""
    distributed: bool = False
    """Use the labels of all ranks as negatives (needs torch.distributed)."""

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        if not self.temperature > 0:
            raise ValueError(f"dual.temperature={self.temperature!r} must be > 0")
        n = self.extra_negatives
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"dual.extra_negatives={n!r} must be an integer >= 0")
        if self.negative_sampling not in NEGATIVE_SAMPLING:
            raise ValueError(
                f"dual.negative_sampling={self.negative_sampling!r} must be one of "
                f"{', '.join(NEGATIVE_SAMPLING)}"
            )


def _gather_all_ranks(x: Tensor, distributed: bool) -> tuple[Tensor, int]:
    """Concatenate ``x`` (B, ...) over ranks, autograd-aware; also return this rank's offset.

    Assumes the same batch size on every rank (a DistributedSampler with drop_last).
    """
    if not (distributed and dist.is_available() and dist.is_initialized()):
        return x, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x)
    return torch.cat(parts), dist.get_rank() * x.shape[0]


class NextItemHead(nn.Module):
    """The softmax part of the dual encoder, apart from the encoder it scores with.

    Holds the optional context projection, the item-popularity tables and the negative
    sampler; the encoder is passed to each call, so that objectives sharing one encoder
    (``barlow+next``) keep a single copy of it in their ``state_dict``.
    ``item_popularity`` (vocab_size,) counts each item index in the training histories.
    """

    popularity: Tensor  # (vocab_size,) float64 counts, MASK and padding zeroed
    target_prob: Tensor  # (vocab_size,) float32 probability of being a training target

    def __init__(
        self, dim: int, vocab_size: int, cfg: DualConfig, item_popularity: ArrayLike | None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_items = vocab_size - 2  # ids 1..num_items; 0 = padding, vocab-1 = MASK
        # without counts the head can still be built (e.g. to load a checkpoint for
        # evaluation); a loss that needs them then refuses to run (see ``loss``)
        self.has_popularity = item_popularity is not None
        if item_popularity is None:
            pop = torch.ones(vocab_size, dtype=torch.float64)
        else:
            pop = torch.as_tensor(np.asarray(item_popularity), dtype=torch.float64).clone()
            if pop.shape != (vocab_size,):
                raise ValueError(
                    f"item_popularity has shape {tuple(pop.shape)}, expected ({vocab_size},)"
                )
            if bool((pop < 0).any()):
                raise ValueError("item_popularity counts must be >= 0")
        pop[0] = 0.0
        pop[-1] = 0.0
        if float(pop.sum()) <= 0:
            raise ValueError("item_popularity has no positive count for any item")
        self.register_buffer("popularity", pop, persistent=False)
        # each item's probability of being a training target (in-batch labels are drawn
        # like that); unseen items count 1 so that its log stays finite
        self.register_buffer(
            "target_prob", (pop.clamp_min(1.0) / pop.sum()).float(), persistent=False
        )
        self.context_proj = nn.Linear(dim, dim) if cfg.projection else None

    def sample_negatives(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` item ids (never padding or MASK) from the configured distribution."""
        device = self.popularity.device
        if self.cfg.negative_sampling == "uniform":
            return torch.randint(1, self.num_items + 1, (n,), generator=generator, device=device)
        return torch.multinomial(self.popularity.float(), n, replacement=True, generator=generator)

    def negative_prob(self, ids: Tensor) -> Tensor:
        """Probability that one extra-negative draw is each of ``ids``."""
        if self.cfg.negative_sampling == "uniform":
            return torch.full(ids.shape, 1.0 / self.num_items, device=ids.device)
        return (self.popularity[ids] / self.popularity.sum()).float()

    def context_tower(self, user_emb: Tensor) -> Tensor:
        """``(B, D)`` user embeddings -> ``(B, D)`` unit context vectors."""
        c = user_emb if self.context_proj is None else self.context_proj(user_emb)
        return F.normalize(c, dim=-1)

    def label_vectors(self, encoder: SequenceEncoder, ids: Tensor) -> Tensor:
        """Label tower: item ids ``(...)`` -> ``(..., D)`` unit vectors (shared item table)."""
        return F.normalize(encoder.item_vectors(ids), dim=-1)

    def check_popularity(self) -> None:
        """Raise ``ValueError`` if the settings need item counts and none were given."""
        if self.has_popularity:
            return
        if self.cfg.logq_correction:
            setting = "dual.logq_correction=true"
        elif self.cfg.extra_negatives > 0 and self.cfg.negative_sampling == "popularity":
            setting = "dual.negative_sampling=popularity"
        else:
            return
        raise ValueError(f"{setting} needs item_popularity (item counts), none given")

    def loss(self, encoder: SequenceEncoder, user_emb: Tensor, target: Tensor) -> Tensor:
        """The softmax loss given the contexts' user embeddings ``(B, D)`` and the next
        items ``(B,)``."""
        self.check_popularity()
        cfg = self.cfg
        c = self.context_tower(user_emb)  # (B, D)
        labels = self.label_vectors(encoder, target)  # (B, D)
        labels, offset = _gather_all_ranks(labels, cfg.distributed)  # (W*B, D)
        ids, _ = _gather_all_ranks(target, cfg.distributed)  # (W*B,)
        if offset:
            # this rank's positives sit at offset..offset+B-1: move them to the front
            order = torch.arange(ids.shape[0], device=ids.device).roll(-offset)
            labels, ids = labels[order], ids[order]
        n = cfg.extra_negatives
        if n > 0:
            neg_ids = self.sample_negatives(n)
            labels = torch.cat([labels, self.label_vectors(encoder, neg_ids)])  # (W*B + N, D)
            ids = torch.cat([ids, neg_ids])  # (W*B + N,)
        log_q = None
        if cfg.logq_correction:
            # expected count of each candidate in the candidate set: W*B labels drawn by
            # target popularity plus N extra draws (Yi et al. 2019; mixed negative
            # sampling, Yang et al. 2020). Constant factors cancel in the softmax.
            n_labels = labels.shape[0] - n
            q = n_labels * self.target_prob[ids]
            if n > 0:
                q = q + n * self.negative_prob(ids)
            log_q = q.log()
        return sampled_softmax_loss(c, labels, ids, cfg.temperature, log_q)


class DualEncoderObjective(nn.Module):
    """The ``dual`` objective: softmax between a history prefix and the item right after it.

    ``forward(batch)`` takes ``context`` (B, T), a right-padded history prefix, and
    ``target`` (B,), the id of the next item, and returns ``(loss, logs)``.
    ``item_popularity`` (vocab_size,) counts each item index in the training histories; it
    is needed for popularity sampling and for the logQ correction.
    """

    def __init__(
        self,
        encoder: SequenceEncoder,
        cfg: DualConfig,
        item_popularity: ArrayLike | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.head = NextItemHead(encoder.dim, encoder.vocab_size, cfg, item_popularity)

    def sample_negatives(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` extra-negative item ids (see :meth:`NextItemHead.sample_negatives`)."""
        return self.head.sample_negatives(n, generator)

    def context_vectors(self, context: Tensor) -> Tensor:
        """Context tower: ``(B, T)`` history prefixes -> ``(B, D)`` unit vectors."""
        return self.head.context_tower(self.encoder.embed(context))

    def label_vectors(self, ids: Tensor) -> Tensor:
        """Label tower: item ids ``(...)`` -> ``(..., D)`` unit vectors."""
        return self.head.label_vectors(self.encoder, ids)

    def loss_from_embeddings(self, user_emb: Tensor, target: Tensor) -> Tensor:
        """The loss given the contexts' user embeddings ``(B, D)`` and targets ``(B,)``."""
        return self.head.loss(self.encoder, user_emb, target)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        loss = self.loss_from_embeddings(self.encoder.embed(batch["context"]), batch["target"])
        return loss, {"loss": float(loss.detach())}
