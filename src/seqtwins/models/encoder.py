"""The sequence encoder shared by every objective: item ids -> pooled user embedding.

A small pre-LN Transformer (as in GPT-2 / BERT4Rec-style recommenders) over right-padded
item-id sequences. The user embedding is :meth:`SequenceEncoder.embed`, the pooled output
of the final LayerNorm; projectors and probes sit on top of it (STYLE.md #6).

Speed notes (measured in ``benchmarks/bench_train.py``):

* Attention goes through ``F.scaled_dot_product_attention`` with a boolean key-padding mask
  (``None`` when a batch has no padding, which lets the fused kernel skip the mask).
* When a batch has enough padding (``EncoderConfig.pack_threshold``) everything runs on the
  *packed* real tokens ``(N, D)``: embeddings, LayerNorm, QKV, output projection and
  feed-forward (~90% of the FLOPs at dim 64 / length 50), and pooling. Only attention sees
  a padded layout, and there sequences are grouped by length (``group_rows`` per group),
  each group padded to its own longest sequence. The cost follows the number of real
  interactions, whatever the batching (random batches of skewed lengths: ~2.5x faster
  than padding to the batch's longest sequence).
* No dropout on attention probabilities: the fused CPU attention kernel has no dropout, and
  the residual / embedding dropouts regularise the same way (GPT-2 keeps attention dropout;
  many recent recommenders drop it). The residual dropouts use :func:`dropout`, which needs
  a quarter of the random draws of ``F.dropout``.
* Under CPU bf16 autocast the GEMMs run in bf16 but attention itself stays in fp32 (its
  bf16 backward is slower on CPU).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqtwins.checkpoint import load_state_dict_strict, non_finite
from seqtwins.data.batching import iter_history_batches, pad_right
from seqtwins.errors import SeqtwinsError

if TYPE_CHECKING:
    from seqtwins.data.dataset import SequenceDataset

PAD = 0
POOLINGS = ("mean", "last", "cls")


@dataclass
class EncoderConfig:
    """Sizes and options of :class:`SequenceEncoder`."""

    dim: int = 64
    """Model width D: item, position and hidden size; the user embedding has D dimensions."""
    layers: int = 2
    """Number of Transformer blocks."""
    heads: int = 2
    """Attention heads per block; ``dim`` must be divisible by ``heads``."""
    ff_dim: int = 256
    """Hidden width of each block's feed-forward MLP (4 x dim, as in BERT / GPT-2)."""
    dropout: float = 0.1
    """Dropout on the input embeddings and on each residual branch (not on attention weights)."""
    max_len: int = 50
    """Longest input sequence (most recent items, truncated by the caller); 50 as in SASRec."""
    pooling: str = "mean"
    """How token states become the user embedding: ``mean`` over real items (masked),
    ``last`` real item (the most recent), or a learned ``cls`` token prepended to the sequence."""
    use_categories: bool = False
    """Add a learned embedding of each item's category to its item embedding (needs the
    ``item_categories`` table)."""
    pack_threshold: float = 0.15
    """Run the token-wise layers on packed real tokens when at least this fraction of a
    batch is padding (1.0 disables packing). A speed setting only: results are the same.
    CPU only: inputs on CUDA always take the dense padded layout."""

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        for name in ("dim", "layers", "heads", "ff_dim", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"encoder.{name}={value!r} must be a positive integer")
        if self.dim % self.heads != 0:
            raise ValueError(
                f"encoder.dim={self.dim} must be divisible by encoder.heads={self.heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"encoder.dropout={self.dropout!r} must be in [0, 1)")
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"encoder.pooling={self.pooling!r} must be one of {', '.join(POOLINGS)}"
            )
        if not 0.0 <= self.pack_threshold <= 1.0:
            raise ValueError(f"encoder.pack_threshold={self.pack_threshold!r} must be in [0, 1]")


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout, ~1.6x faster than ``F.dropout`` on CPU (fwd + bwd, measured).

    ``F.dropout`` draws one random number per element through ``bernoulli_``; this draws
    64-bit random words and compares each 16-bit slice with a threshold, so it needs a
    quarter of the draws. ``p`` is rounded to a multiple of 1/65536 (at most 7.6e-6 off) and
    the kept values are scaled by the exact ``1 / (1 - p_rounded)``. Seeded by
    ``torch.manual_seed`` like any other torch randomness. Non-CPU tensors use ``F.dropout``.
    """
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    threshold = round(p * 65536)  # drop when the 16-bit word, read unsigned, is below it
    if threshold >= 65536:
        return x * 0.0
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    keep = words.view(torch.int16)[:n].view(x.shape) >= threshold - 32768  # signed view
    return (x * keep).mul_(65536 / (65536 - threshold))


@dataclass
class _Layout:
    """Where token states live and how attention sees them.

    Dense: states are ``(B, T, D)`` and attention runs once over the whole batch
    (``index`` is None, one group). Packed: states are ``(N, D)``, the real tokens only;
    for attention they are scattered (``index`` (N,): the slot of each token) into
    ``slots`` rows made of groups of sequences of similar length, each group padded only to
    its own longest sequence, so attention does not pay for the batch's longest sequence
    either. Attention is permutation invariant over keys (positions are in the
    embeddings), so the slot order inside a sequence does not matter.
    """

    shape: tuple[int, int]  # (B, T) of the input
    index: Tensor | None
    slots: int
    groups: list[tuple[int, int, int, Tensor | None]]  # (first slot, rows, T_g, key mask)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    if q.device.type == "cpu" and q.dtype != torch.float32:
        # under CPU bf16 autocast the fused attention backward is ~3x slower in bf16 than
        # in fp32 (torch 2.13, measured): only the GEMMs around attention run in bf16
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class _Block(nn.Module):
    """Pre-LN Transformer block: x + Attn(LN(x)), then x + MLP(LN(x)).

    Works on token states of shape ``(B, T, D)`` (dense) or ``(N, D)`` (packed real tokens),
    as described by a :class:`_Layout`.
    """

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)  # fused Q, K, V projection: one GEMM instead of 3
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, ff_dim)
        self.ff2 = nn.Linear(ff_dim, dim)

    def _attention(self, h: Tensor, layout: _Layout) -> Tensor:
        d = h.shape[-1]
        qkv = self.qkv(h)  # (B, T, 3D) or (N, 3D)
        if layout.index is not None:
            # scatter the packed tokens into the grouped, padded attention layout
            qkv = qkv.new_zeros(layout.slots, 3 * d).index_copy(0, layout.index, qkv)
        qkv = qkv.reshape(layout.slots, 3 * d)  # (slots, 3D)
        outs = []
        for start, rows, t, mask in layout.groups:
            g = qkv[start : start + rows * t].view(rows, t, 3, self.heads, d // self.heads)
            q, k, v = g.permute(2, 0, 3, 1, 4).unbind(0)  # each (rows, H, T_g, D/H)
            a = _sdpa(q, k, v, mask)  # (rows, H, T_g, D/H)
            outs.append(a.transpose(1, 2).reshape(rows * t, d))  # (rows*T_g, D)
        a = outs[0] if len(outs) == 1 else torch.cat(outs)  # (slots, D)
        # back to the caller's layout: packed (N, D) or dense (B, T, D)
        if layout.index is not None:
            a = a.index_select(0, layout.index)
        else:
            a = a.view(*layout.shape, d)
        return self.proj(a)

    def forward(self, x: Tensor, layout: _Layout) -> Tensor:
        p = self.dropout if self.training else 0.0
        x = x + dropout(self._attention(self.ln1(x), layout), p, self.training)
        h = self.ff2(F.gelu(self.ff1(self.ln2(x))))
        return x + dropout(h, p, self.training)


def _packed_layout(attend: Tensor, group_rows: int) -> tuple[Tensor, _Layout]:
    """Flat positions ``(N,)`` of the attended tokens of ``attend`` (B, T) and the layout
    that groups sequences of similar length (``group_rows`` sequences per group)."""
    b, t = attend.shape
    pack_index = attend.view(-1).nonzero().squeeze(1)  # (N,), row-major
    lengths = attend.sum(1)  # (B,)
    order = torch.argsort(lengths, stable=True)  # short to long
    sorted_len = lengths[order].tolist()
    groups: list[tuple[int, int, int, Tensor | None]] = []
    base_sorted: list[int] = []  # first slot of each sequence, in sorted order
    start = 0
    for g0 in range(0, b, group_rows):
        rows = min(group_rows, b - g0)
        tg = max(1, sorted_len[g0 + rows - 1])  # longest in the group
        base_sorted += range(start, start + rows * tg, tg)
        mask = None
        if sorted_len[g0] < tg:  # some sequence in the group is shorter: mask its padding
            ids = order[g0 : g0 + rows]
            mask = (torch.arange(tg, device=attend.device) < lengths[ids, None])[:, None, None]
        groups.append((start, rows, tg, mask))
        start += rows * tg
    base = torch.empty(b, dtype=torch.long, device=attend.device)
    base[order] = torch.tensor(base_sorted, dtype=torch.long, device=attend.device)
    row = pack_index // t
    rank = (attend.cumsum(1) - 1).view(-1)[pack_index]  # position among the row's tokens
    return pack_index, _Layout((b, t), base[row] + rank, start, groups)


@dataclass
class _Encoded:
    """Encoder output: ``states`` are ``(B, T', D)`` (dense) or, when ``pack_index`` is
    set, ``(N, D)`` for the attended tokens only, at flat positions ``pack_index`` (N,) of
    the ``(B, T')`` grid. ``real`` (B, T') marks real items (and the cls slot)."""

    states: Tensor
    real: Tensor
    pack_index: Tensor | None

    def dense(self) -> Tensor:
        """``(B, T', D)`` states, zeros where nothing was computed."""
        if self.pack_index is None:
            return self.states
        b, t = self.real.shape
        d = self.states.shape[-1]
        grid = self.states.new_zeros(b * t, d).index_copy(0, self.pack_index, self.states)
        return grid.view(b, t, d)

    def at(self, where: Tensor, skip: int) -> Tensor:
        """States ``(M, D)`` at the ``M`` True positions of ``where`` (B, T), row-major.

        ``skip`` is the number of leading slots that are not input positions (1 for the
        cls token). Every selected position must be a real (attended) token: on the packed
        path only those have states.
        """
        b, t = self.real.shape
        if where.shape != (b, t - skip):
            raise ValueError(f"where must be {(b, t - skip)}, got {tuple(where.shape)}")
        rows, cols = where.nonzero(as_tuple=True)  # (M,) each
        flat = rows * t + cols + skip  # (M,) slots of the (B, T') grid
        if self.pack_index is None:
            return self.states.reshape(b * t, -1)[flat]
        slot = torch.full((b * t,), -1, dtype=torch.long, device=flat.device)
        slot[self.pack_index] = torch.arange(self.pack_index.shape[0], device=flat.device)
        picked = slot[flat]  # (M,) row of each position among the packed states
        if bool((picked < 0).any()):
            raise ValueError("where selects padding positions, which have no token state")
        return self.states[picked]


class SequenceEncoder(nn.Module):
    """Transformer encoder over right-padded item-id sequences.

    ``vocab_size`` is ``num_items + 2``: index 0 is padding and ``num_items + 1`` the MASK
    token used by augmentations. ``item_categories`` is a ``(vocab_size,)`` int64 tensor of
    category codes (``-1`` = no category), used only when ``cfg.use_categories``.
    """

    item_cat_codes: Tensor  # (vocab_size,) category code + 1 per item; only with categories

    def __init__(
        self, cfg: EncoderConfig, vocab_size: int, item_categories: Tensor | None = None
    ) -> None:
        super().__init__()
        if vocab_size < 3:
            raise ValueError(f"vocab_size={vocab_size} must be at least 3 (pad, one item, MASK)")
        self.cfg = cfg
        self.vocab_size = vocab_size
        d = cfg.dim
        self.item_emb = nn.Embedding(vocab_size, d, padding_idx=PAD)
        self.cat_emb: nn.Embedding | None = None
        if cfg.use_categories:
            if item_categories is None:
                raise ValueError(
                    "encoder.use_categories=true needs the item category table, "
                    "but none was given (does the dataset have item categories?)"
                )
            cats = torch.as_tensor(item_categories, dtype=torch.long)
            if cats.shape != (vocab_size,):
                raise ValueError(
                    f"item_categories has shape {tuple(cats.shape)}, expected ({vocab_size},)"
                )
            if int(cats.min()) < -1:
                raise ValueError("item_categories codes must be >= -1 (-1 means no category)")
            # shift by one so that "no category" (-1) maps to the all-zero padding row 0
            self.register_buffer("item_cat_codes", cats + 1)
            self.cat_emb = nn.Embedding(int(cats.max()) + 2, d, padding_idx=0)
        n_pos = cfg.max_len + (1 if cfg.pooling == "cls" else 0)
        self.pos_emb = nn.Embedding(n_pos, d)
        self.cls_token = nn.Parameter(torch.zeros(d)) if cfg.pooling == "cls" else None
        self.blocks = nn.ModuleList(
            _Block(d, cfg.heads, cfg.ff_dim, cfg.dropout) for _ in range(cfg.layers)
        )
        self.ln_f = nn.LayerNorm(d)
        self.group_rows = 32  # sequences per attention group on the packed path (speed only)
        self._taps: list[Tensor] | None = None  # see tap()
        self.reset_parameters()

    @property
    def dim(self) -> int:
        """Width of the user embedding and of the item vectors."""
        return self.cfg.dim

    def reset_parameters(self) -> None:
        """GPT-2 style init: N(0, 0.02) weights and embeddings, zero biases, zero padding row."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    def item_vectors(self, ids: Tensor) -> Tensor:
        """The shared item table: ``(...)`` item ids -> ``(..., D)`` vectors.

        Item embedding plus (if enabled) its category embedding; padding maps to zero. This
        is the input embedding of the encoder and the label tower of the dual encoder.
        """
        x = self.item_emb(ids)
        if self.cat_emb is not None:
            x = x + self.cat_emb(self.item_cat_codes[ids])
        return x

    def _encode(self, items: Tensor) -> _Encoded:
        """Run the Transformer; see :class:`_Encoded` for the two layouts of the result."""
        if items.dim() != 2:
            raise ValueError(f"items must have shape (B, T), got {tuple(items.shape)}")
        b, t = items.shape
        assert t <= self.cfg.max_len, f"sequence length {t} > encoder.max_len={self.cfg.max_len}"
        real = items != PAD  # (B, T)
        cls = self.cls_token
        if cls is not None:
            real = torch.cat([real.new_ones(b, 1), real], dim=1)  # (B, T+1): cls is real
            t += 1
        attend = real
        if cls is None and t > 0:
            # every non-empty right-padded row has a real item at 0; letting an all-padding
            # row attend to its first slot keeps its softmax finite (no NaN) and changes nothing
            attend = real.clone()
            attend[:, 0] = True
        pack_index: Tensor | None = None
        # Packing off: always dense with the mask, and no host sync on the token count (no
        # data-dependent shapes for torch.compile). On CUDA the host syncs of the packed
        # path cost more than padding saves: 22.7k vs 87.6k users/s on an H200
        # (benchmarks/results/gpu.md), so packing is a CPU-only optimisation.
        dense_only = self.cfg.pack_threshold >= 1.0 or items.is_cuda
        n_real = -1 if dense_only else int(attend.sum())
        if dense_only:
            layout = _Layout((b, t), None, b * t, [(0, b, t, attend[:, None, None, :])])
        elif n_real == b * t:  # no padding: dense, no mask (the fastest attention path)
            layout = _Layout((b, t), None, b * t, [(0, b, t, None)])
        elif n_real > (1.0 - self.cfg.pack_threshold) * b * t:  # little padding: dense
            layout = _Layout((b, t), None, b * t, [(0, b, t, attend[:, None, None, :])])
        else:
            pack_index, layout = _packed_layout(attend, self.group_rows)
        if pack_index is None:
            x = self.item_vectors(items)  # (B, T, D)
            if cls is not None:
                x = torch.cat([cls.expand(b, 1, -1), x], dim=1)  # (B, T+1, D)
            x = x + self.pos_emb.weight[:t]
        else:
            # only the real tokens from here on: (N, D)
            pos = pack_index % t  # (N,) position of each token in its row
            if cls is not None:
                ids = F.pad(items, (1, 0)).view(-1)[pack_index]  # slot 0 of each row: cls
                x = self.item_vectors(ids)
                x = torch.where((pos == 0)[:, None], cls.to(x.dtype), x)
            else:
                x = self.item_vectors(items.view(-1)[pack_index])
            x = x + self.pos_emb(pos)
        x = dropout(x, self.cfg.dropout, self.training)
        for block in self.blocks:
            x = block(x, layout)
        return _Encoded(self.ln_f(x), real, pack_index)

    def forward_features(self, items: Tensor) -> Tensor:
        """Per-position states: ``(B, T)`` item ids -> ``(B, T, D)`` (cls token excluded);
        padding positions hold unspecified (finite) values."""
        x = self._encode(items).dense()  # (B, T', D)
        return x[:, 1:] if self.cls_token is not None else x

    def embed(self, items: Tensor) -> Tensor:
        """The user embedding: ``(B, T)`` right-padded item ids -> ``(B, D)``.

        An all-padding row gets the zero vector with ``mean`` / ``last`` pooling.
        """
        return self._tapped(self._pool(self._encode(items)))

    def embed_with_states(self, items: Tensor, where: Tensor) -> tuple[Tensor, Tensor]:
        """User embeddings ``(B, D)`` and, from the same pass, the token states ``(M, D)``
        at the ``M`` True positions of ``where`` (B, T), in row-major order.

        For heads that predict something per position (masked-item prediction) beside the
        pooled embedding: one encoder run, on the packed path too; only the selected
        states are gathered (``where`` may select real items and MASK tokens, not
        padding).
        """
        enc = self._encode(items)
        skip = 1 if self.cls_token is not None else 0
        return self._tapped(self._pool(enc)), enc.at(where, skip)

    @contextmanager
    def tap(self) -> Iterator[list[Tensor]]:
        """Record the user embeddings ``(B, D)`` of every :meth:`embed` /
        :meth:`embed_with_states` pass made inside the block, in order, as computed (with
        their autograd history). An incremental update uses it to read the training step's
        own embedding of the first view instead of encoding that view a second time."""
        taps: list[Tensor] = []
        self._taps = taps
        try:
            yield taps
        finally:
            self._taps = None

    def _tapped(self, pooled: Tensor) -> Tensor:
        if self._taps is not None:
            self._taps.append(pooled)
        return pooled

    def _pool(self, enc: _Encoded) -> Tensor:
        """Pool encoded token states into user embeddings ``(B, D)``."""
        h, real = enc.states, enc.real  # (B, T', D) or (N, D); (B, T')
        b, t = real.shape
        pooling = self.cfg.pooling
        lengths = real.sum(1)  # (B,) real items (+1 for cls)
        if enc.pack_index is None:
            if pooling == "cls":
                return h[:, 0]
            if pooling == "mean":
                w = real.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
                return (h * w).sum(1) / w.sum(1).clamp_min(1.0)
            last = h[torch.arange(b, device=h.device), (lengths - 1).clamp_min(0)]  # (B, D)
            return last * (lengths > 0).to(h.dtype).unsqueeze(-1)
        # packed: pool straight from the (N, D) token states
        if pooling == "mean":
            row = enc.pack_index // t  # (N,)
            w = real.view(-1)[enc.pack_index].to(h.dtype).unsqueeze(-1)  # (N, 1)
            sums = h.new_zeros(b, h.shape[-1]).index_add(0, row, h * w)  # (B, D)
            return sums / lengths.clamp_min(1).to(h.dtype).unsqueeze(-1)
        # cls sits at slot 0 and "last" at slot length-1 of each row: find them among
        # the packed tokens
        slot = torch.zeros(b, dtype=torch.long, device=h.device)
        if pooling == "last":
            slot = (lengths - 1).clamp_min(0)
        where = torch.full((b * t,), -1, dtype=torch.long, device=h.device)
        where[enc.pack_index] = torch.arange(h.shape[0], device=h.device)
        picked = h[where[torch.arange(b, device=h.device) * t + slot]]  # (B, D)
        if pooling == "last":
            picked = picked * (lengths > 0).to(h.dtype).unsqueeze(-1)
        return picked

    def forward(self, items: Tensor) -> Tensor:
        """Same as :meth:`embed`."""
        return self.embed(items)

    def embed_many(self, *batches: Tensor) -> list[Tensor]:
        """Embed several right-padded batches in one encoder pass.

        Each ``(B_i, T_i)`` batch is padded to ``max T_i`` and stacked, so the encoder runs
        once (bigger GEMMs, fewer kernel launches); the result is the list of ``(B_i, D)``
        embeddings, identical to calling :meth:`embed` on each (padding does not matter).
        """
        t = max(x.shape[1] for x in batches)
        stacked = torch.cat([F.pad(x, (0, t - x.shape[1]), value=PAD) for x in batches])
        return list(self.embed(stacked).split([x.shape[0] for x in batches]))


# --- building, loading and using an encoder --------------------------------------------------


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def build_encoder(
    cfg: EncoderConfig, ds: SequenceDataset, vocab_size: int | None = None
) -> SequenceEncoder:
    """A freshly initialised encoder for dataset ``ds`` (its item category table when
    ``cfg.use_categories``); ``vocab_size`` defaults to the dataset's."""
    categories = None
    if cfg.use_categories:
        if not ds.has_categories:
            raise SeqtwinsError(f"encoder.use_categories=true but {ds.path} has no item categories")
        categories = torch.from_numpy(ds.item_categories()[0])
    return SequenceEncoder(cfg, vocab_size=vocab_size or ds.vocab_size, item_categories=categories)


def load_encoder_tensors(
    encoder: SequenceEncoder, tensors: Mapping[str, Tensor], what: str, prefix: str = "encoder."
) -> SequenceEncoder:
    """Load the ``prefix``-ed entries of a saved objective state dict into ``encoder``,
    strictly (the exact missing and unexpected keys are named), and refuse NaN or infinite
    weights; returns the encoder in eval mode."""
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    bad = non_finite(state)
    if bad:
        raise SeqtwinsError(
            f"{what} holds NaN or infinite weights ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); it cannot be used, retrain the run"
        )
    load_state_dict_strict(encoder, state, what)
    return encoder.eval()


@torch.no_grad()
def embed_users(
    encoder: SequenceEncoder,
    ds: SequenceDataset,
    users: np.ndarray,
    batch_size: int = 1024,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> np.ndarray:
    """User embeddings ``(len(users), D)`` float32 from each user's most recent history
    items (at most ``encoder.cfg.max_len``), in eval mode (the mode is restored after)."""
    device = device or next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = np.zeros((len(users), encoder.cfg.dim), dtype=np.float32)
    pos = 0
    for chunk, items in iter_history_batches(ds.sequences, users, encoder.cfg.max_len, batch_size):
        with autocast(device, dtype):
            emb = encoder.embed(items.to(device))  # (B, D)
        out[pos : pos + len(chunk)] = emb.float().cpu().numpy()
        pos += len(chunk)
    encoder.train(was_training)
    return out


@torch.no_grad()
def embed_item_lists(
    encoder: SequenceEncoder, sequences: list[np.ndarray], batch_size: int = 1024
) -> np.ndarray:
    """Embeddings ``(len(sequences), D)`` of item-index sequences (each its most recent
    ``encoder.cfg.max_len`` items are used), in eval mode."""
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = np.zeros((len(sequences), encoder.cfg.dim), dtype=np.float32)
    max_len = encoder.cfg.max_len
    for start in range(0, len(sequences), batch_size):
        rows = sequences[start : start + batch_size]
        items = pad_right([np.asarray(s[-max_len:], dtype=np.int64) for s in rows]).to(device)
        out[start : start + len(rows)] = encoder.embed(items).float().cpu().numpy()  # (B, D)
    encoder.train(was_training)
    return out
