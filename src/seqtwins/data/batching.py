"""Pretraining batches: deterministic batch plans, dynamic padding, per-objective collation.

A batch is fully determined by ``(seed, epoch, batch index)``: the plan (which users go in
which batch) comes from an epoch-seeded permutation and each batch's augmentation RNG from
``(seed, epoch, batch index)``. That is what makes a resumed run reproduce the
uninterrupted one, with any number of DataLoader workers.

Each row of a batch draws from its own random stream (derived from the batch RNG and the
row's position), so any subset of rows can be collated alone with exactly the values the
whole batch would give them: the ranks of a distributed run each collate their share of
every planned batch, and together they hold exactly the single-process batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from seqtwins.augment import mask_for_prediction
from seqtwins.data.dataset import Sequences

NEEDS_VIEWS = {"barlow", "barlow+next", "barlow+mask"}
NEEDS_NEXT = {"dual", "barlow+next"}
NEEDS_MASKED = {"barlow+mask"}

ViewTransform = Callable[..., tuple[np.ndarray, np.ndarray]]
"""``transform(history, rng[, times]) -> (view_a, view_b)``; ``times`` is passed only to
a transform whose ``uses_times`` attribute is true (:class:`seqtwins.augment.TwoViewTransform`)."""


@dataclass(frozen=True)
class ItemMasking:
    """Masked-item prediction on the views (``barlow+mask``): about ``rate`` of each view's
    real items become ``mask_token`` and are predicted (``mask.rate``)."""

    rate: float
    mask_token: int


def pad_right(seqs: Sequence[np.ndarray], min_len: int = 1) -> torch.Tensor:
    """Right-pad 1-D int arrays with 0 to the longest one -> LongTensor (B, T)."""
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    width = max(int(lens.max(initial=0)), min_len)
    out = np.zeros((len(seqs), width), dtype=np.int64)
    if lens.sum():
        # vectorised scatter: row-major positions where position < length
        out[np.arange(width)[None, :] < lens[:, None]] = np.concatenate(seqs)
    return torch.from_numpy(out)


def histories(
    sequences: Sequences, users: Sequence[int] | np.ndarray, max_len: int | None = None
) -> list[np.ndarray]:
    """Each user's history (the most recent ``max_len`` items when given) as int arrays."""
    offsets, hist_end, items = sequences.offsets, sequences.history_end, sequences.items
    if max_len is None:
        return [np.asarray(items[offsets[u] : hist_end[u]]) for u in users]
    return [np.asarray(items[max(offsets[u], hist_end[u] - max_len) : hist_end[u]]) for u in users]


def batch_plan(
    users: np.ndarray,
    lengths: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    bucket: bool,
    pool_batches: int = 50,
    drop_last: bool = True,
) -> list[np.ndarray]:
    """Split ``users`` into batches for one epoch.

    With ``bucket`` the shuffled users are cut into pools of ``pool_batches`` batches,
    each pool sorted by length before it is cut into batches, and the batches shuffled:
    batches of similar lengths waste little padding while the order stays random.
    ``drop_last`` drops a final short batch (Barlow Twins batch statistics need a full batch).
    """
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    order = users[rng.permutation(len(users))]
    if bucket:
        pool = batch_size * pool_batches
        chunks = []
        for start in range(0, len(order), pool):
            part = order[start : start + pool]
            chunks.append(part[np.argsort(lengths[part], kind="stable")])
        order = np.concatenate(chunks) if chunks else order
    n_full = len(order) // batch_size
    batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(n_full)]
    if not drop_last and len(order) % batch_size:
        batches.append(order[n_full * batch_size :])
    if bucket:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


@dataclass
class PretrainBatches(Dataset[dict[str, torch.Tensor]]):
    """Map-style dataset whose items are whole collated batches (use ``batch_size=None``).

    ``transform`` turns a history into two augmented views (``seqtwins.augment``); it is
    only needed by objectives with views. ``max_len`` caps every sequence to its most
    recent items.
    """

    sequences: Sequences
    plan: list[np.ndarray]
    objective: str
    max_len: int
    seed: int
    epoch: int
    transform: ViewTransform | None
    shard: tuple[int, int] = (0, 1)
    """``(rank, world_size)``: collate only rows ``rank, rank + world_size, ...`` of each
    planned batch (strided, so that ranks get similar lengths from a length-sorted
    batch). The union over ranks is exactly the single-process batch."""
    masking: ItemMasking | None = None
    """Masked-item prediction on the views (objectives in ``NEEDS_MASKED``)."""

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        users = self.plan[index]
        rng = np.random.default_rng([self.seed, self.epoch, index, 0xB47C])
        rank, world = self.shard
        rows = slice(rank, None, world) if world > 1 else None
        times = None
        if self.sequences.times is not None and getattr(self.transform, "uses_times", False):
            times = history_times(self.sequences, users)
        return collate(
            histories(self.sequences, users), self.objective, self.max_len, rng, self.transform,
            rows, self.masking, times,
        )  # fmt: skip


def history_times(sequences: Sequences, users: Sequence[int] | np.ndarray) -> list[np.ndarray]:
    """Each user's history timestamps (epoch seconds), aligned with :func:`histories`."""
    if sequences.times is None:
        raise ValueError("the dataset has no timestamps")
    offsets, hist_end, times = sequences.offsets, sequences.history_end, sequences.times
    return [np.asarray(times[offsets[u] : hist_end[u]]) for u in users]


def collate(
    histories: Sequence[np.ndarray],
    objective: str,
    max_len: int,
    rng: np.random.Generator,
    transform: ViewTransform | None = None,
    rows: slice | None = None,
    masking: ItemMasking | None = None,
    times: Sequence[np.ndarray] | None = None,
) -> dict[str, torch.Tensor]:
    """Collate users' histories into the batch keys the objective reads.

    - views (``barlow``, ``barlow+next``, ``barlow+mask``): ``view_a``, ``view_b`` (B, T)
      from ``transform`` (given ``times``, each history's timestamps, when there are
      some), each row with its own random stream (:class:`RowStreams`);
    - masked items (``barlow+mask``): ``masking`` then masks about ``masking.rate`` of each
      view's real items; ``target_a``, ``target_b`` (B, T), aligned with the views, hold
      the masked item at those positions and 0 elsewhere;
    - next item (``dual``, ``barlow+next``): a random cut ``c`` in ``[1, len-1]`` per user;
      ``context`` = the up to ``max_len`` items before it (B, T), ``target`` = item ``c`` (B,).

    ``rows`` collates only those rows of the batch (``histories`` is still the whole
    batch), with exactly the random values the whole batch gives them.
    """
    n = len(histories)
    picked = range(n)[rows] if rows is not None else range(n)
    hists = [histories[j] for j in picked]
    out: dict[str, torch.Tensor] = {}
    if objective in NEEDS_VIEWS:
        if transform is None:
            raise ValueError(f"objective {objective!r} needs an augmentation transform")
        if objective in NEEDS_MASKED and masking is None:
            raise ValueError(f"objective {objective!r} needs masking (ItemMasking)")
        out.update(_views(histories, picked, rng, transform,
                          masking if objective in NEEDS_MASKED else None, times))  # fmt: skip
    if objective in NEEDS_NEXT:
        lens = np.fromiter((len(h) for h in hists), dtype=np.int64, count=len(hists))
        if (lens < 2).any():
            raise ValueError("next-item objectives need histories of at least 2 items")
        u = rng.random(n)[list(picked)]  # drawn for the whole batch, then this share's rows
        cuts = 1 + (u * (lens - 1)).astype(np.int64)  # in [1, len-1]
        out["context"] = pad_right(
            [h[max(0, c - max_len) : c] for h, c in zip(hists, cuts, strict=True)]
        )
        out["target"] = torch.from_numpy(
            np.array([h[c] for h, c in zip(hists, cuts, strict=True)], dtype=np.int64)
        )
    return out


def _views(
    histories: Sequence[np.ndarray],
    picked: range,
    rng: np.random.Generator,
    transform: ViewTransform,
    masking: ItemMasking | None,
    times: Sequence[np.ndarray] | None,
) -> dict[str, torch.Tensor]:
    """``view_a`` / ``view_b`` (and with ``masking``, ``target_a`` / ``target_b``) of the
    ``picked`` rows; row ``j`` draws everything from its own stream, views first."""
    streams = RowStreams(rng, len(histories))
    views: list[list[np.ndarray]] = [[], [], [], []]  # a, b, target a, target b
    for j in picked:
        g = streams[j]  # finish row j before the next stream
        a, b = transform(histories[j], g) if times is None else transform(histories[j], g, times[j])
        if masking is not None:
            a, t_a = mask_for_prediction(a, masking.rate, masking.mask_token, g)
            b, t_b = mask_for_prediction(b, masking.rate, masking.mask_token, g)
            views[2].append(t_a)
            views[3].append(t_b)
        views[0].append(a)
        views[1].append(b)
    keys = ("view_a", "view_b", "target_a", "target_b")
    return {k: pad_right(v) for k, v in zip(keys, views, strict=True) if v or k[0] == "v"}


class RowStreams:
    """Independent random streams for the ``n`` rows of a batch, derived from its RNG.

    ``streams[j]`` depends only on the batch RNG and ``j``, never on which other rows are
    collated. Each stream is a PCG64 state set directly from 192 random bits (state and
    an odd increment, i.e. a distinct PCG stream): about 3 us, five times cheaper than
    seeding a ``Generator`` through ``SeedSequence``. The returned generator is reused:
    finish with row ``j`` before asking for the next one.
    """

    def __init__(self, rng: np.random.Generator, n: int) -> None:
        self.words = rng.integers(0, 2**64 - 1, size=(n, 3), dtype=np.uint64, endpoint=True)
        self.bitgen = np.random.PCG64(0)  # its state is overwritten per row
        self.gen = np.random.Generator(self.bitgen)

    def __getitem__(self, j: int) -> np.random.Generator:
        hi, lo, inc = (int(w) for w in self.words[j])
        self.bitgen.state = {
            "bit_generator": "PCG64",
            "state": {"state": hi << 64 | lo, "inc": inc | 1},
            "has_uint32": 0,
            "uinteger": 0,
        }
        return self.gen


def iter_history_batches(
    sequences: Sequences, users: np.ndarray, max_len: int, batch_size: int
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(user_idx, items (B, T))`` for embedding users' most recent ``max_len``
    history items, in the given user order."""
    for start in range(0, len(users), batch_size):
        chunk = users[start : start + batch_size]
        yield chunk, pad_right(histories(sequences, chunk, max_len))
