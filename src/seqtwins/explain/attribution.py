"""Per-item attributions of one user's embedding, computed with Captum.

Two methods, both over the items the encoder reads (the last ``encoder.max_len`` items of
the user's history), and both explaining a scalar *target* of the user embedding:

- **integrated gradients** (:func:`integrated_gradients`, Sundararajan et al. 2017,
  Captum ``LayerIntegratedGradients``) on the encoder's item-embedding layer (with the
  category embedding added in, as one layer, when the run uses categories: the item's
  whole input vector). The baseline is the all-zero item vector, the padding row of the
  table: every position keeps its position embedding and attention mask, only the item
  information is integrated from nothing to the item. Per item, the attribution is the
  sum over the embedding width; by completeness the items' attributions add up to
  ``f(x) - f(baseline)`` (Captum's convergence delta says how closely).
- **occlusion by removal** (:func:`occlusion`, Captum ``FeatureAblation`` with one feature
  per position): item ``i``'s attribution is ``f(x) - f(x without item i)``. Captum puts
  the padding id at the ablated position and the forward function then *takes the item out
  of the sequence* (:func:`compact`: the later items move up one place, the sequence stays
  right-padded), so the encoder sees exactly the history the user would have without that
  item. Not padding left in place: the encoder never saw a hole in a sequence in training,
  and ``last`` pooling reads position ``length - 1``. Not a replacement id: any other item
  (or the MASK token, which training uses for augmentation) carries information of its own.
  The window is not refilled from older history, so each removal changes one item only.

Targets (:func:`self_projection`, :func:`probe_score`) map ``(B, D)`` embeddings to ``(B,)``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.probe import FittedProbe
from seqtwins.models.encoder import PAD, SequenceEncoder

Target = Callable[[Tensor], Tensor]
"""A scalar of each user embedding: ``(B, D)`` -> ``(B,)``."""
IG_STEPS = 64
"""Integration steps of integrated gradients (Gauss-Legendre, Captum's default method):
on the tests' tiny encoder the completeness gap is below 1e-4 of the target at 64 steps."""


@functools.cache
def captum() -> Any:
    """The ``captum.attr`` module (imported on first use), or one line saying how to
    install it."""
    try:
        import captum.attr
    except ImportError:
        raise SeqtwinsError(
            'explanations need Captum, which is not installed; pip install "seqtwins[explain]"'
        ) from None
    return captum.attr


def compact(ids: Tensor) -> Tensor:
    """Take the padding out of the middle of sequences: ``(B, T)`` ids -> ``(B, T)`` with the
    non-padding ids of each row first, in their order, then padding (right-padded again)."""
    pad = (ids == PAD).to(torch.int8)  # (B, T) 1 where removed
    order = torch.argsort(pad, dim=1, stable=True)  # (B, T) kept positions first
    return torch.gather(ids, 1, order)


class _ItemVectors(torch.nn.Module):
    """An item's whole input vector as one layer: item embedding + category embedding
    (what :meth:`SequenceEncoder.item_vectors` adds), so that integrated gradients
    attributes both together and padding still maps to zero."""

    def __init__(self, item_emb: torch.nn.Embedding, cat_emb: torch.nn.Embedding, codes: Tensor):
        super().__init__()
        self.item_emb, self.cat_emb, self.codes = item_emb, cat_emb, codes

    def forward(self, ids: Tensor) -> Tensor:
        return self.item_emb(ids) + self.cat_emb(self.codes[ids])


@contextmanager
def dense(encoder: SequenceEncoder) -> Iterator[SequenceEncoder]:
    """The encoder on its dense path (no token packing) while the block runs, in eval mode,
    with its item and category embeddings as one layer (``item_emb``).

    Packing changes the item-embedding layer's output shape with the number of padding
    tokens, which differs between an input and its all-padding baseline; the dense path
    computes the same embedding (packing is a CPU speed optimisation only). Config, layers
    and mode are restored on exit."""
    cfg, was_training = encoder.cfg, encoder.training
    item_emb, cat_emb = encoder.item_emb, encoder.cat_emb
    encoder.cfg = dataclasses.replace(cfg, pack_threshold=1.0)
    encoder.eval()
    if cat_emb is not None:
        encoder.item_emb = _ItemVectors(item_emb, cat_emb, encoder.item_cat_codes)  # type: ignore[assignment]
        encoder.cat_emb = None
    try:
        yield encoder
    finally:
        encoder.cfg = cfg
        encoder.item_emb, encoder.cat_emb = item_emb, cat_emb
        encoder.train(was_training)


def self_projection(embedding: Tensor) -> Target:
    """The embedding's length along the user's own direction: ``<e', e / |e|>``.

    At the user's history it equals ``|e|``; it is linear in the embedding, so item
    attributions add up to a change of the embedding itself (not of a non-linear summary),
    and it is the component that the cosine to other users and the probe's linear scores
    read. A zero embedding has no direction: SeqtwinsError."""
    norm = float(embedding.norm())
    if not norm > 0:
        raise SeqtwinsError("the user's embedding is zero; it has no direction to explain")
    unit = (embedding / norm).detach().reshape(-1)  # (D,)
    return lambda e: e @ unit


def probe_scores(probe: FittedProbe, emb: Tensor) -> Tensor:
    """The probe's class scores in torch: ``(B, D)`` embeddings -> ``(B, K)`` (the same
    function as :meth:`FittedProbe.predict`, differentiable)."""
    mean = torch.from_numpy(np.asarray(probe.mean, np.float32))
    scale = torch.from_numpy(np.asarray(probe.scale, np.float32))
    w = [torch.from_numpy(np.asarray(a, np.float32)) for a in probe.weights]
    x = (emb.float() - mean) / scale  # (B, D) standardised as in training
    if probe.kind == "mlp":
        return torch.relu(x @ w[0] + w[1]) @ w[2] + w[3]
    return x @ w[0] + w[1]


def probe_score(probe: FittedProbe, column: int) -> Target:
    """The probe's score of class column ``column`` (a logit for logistic / MLP probes, the
    least-squares score for ridge)."""
    return lambda e: probe_scores(probe, e)[:, column]


def _window(items: np.ndarray | Tensor) -> Tensor:
    ids = torch.as_tensor(np.array(items), dtype=torch.long).reshape(1, -1)  # (1, T)
    if ids.shape[1] == 0 or bool((ids == PAD).any()):
        raise SeqtwinsError("a history to explain needs at least one item and no padding")
    return ids


Head = Callable[[Tensor], Tensor]
"""Scores of each user embedding: ``(B, D)`` -> ``(B, K)``; attributions explain one
column per user."""


def _ig(enc: SequenceEncoder, ids: Tensor, head: Head, columns: list[int], steps: int) -> Tensor:
    """(B, T) integrated-gradients attributions of ``head(embed(ids))[b, columns[b]]``;
    ``enc`` is on its dense path (:func:`dense`)."""
    lig = captum().LayerIntegratedGradients(lambda x: head(enc.embed(x)), enc.item_emb)
    out = lig.attribute(ids, baselines=torch.zeros_like(ids), target=columns, n_steps=steps)
    return out.detach().sum(-1)  # (B, T): summed over the embedding width


def _occlusion(enc: SequenceEncoder, ids: Tensor, head: Head, columns: list[int]) -> Tensor:
    """(B, T) ``f(x) - f(x without item t)`` of ``head(embed(ids))[b, columns[b]]``."""

    @torch.no_grad()
    def forward(x: Tensor) -> Tensor:
        return head(enc.embed(compact(x)))  # (B', K): a removed item leaves the sequence

    t = ids.shape[1]
    ablation = captum().FeatureAblation(forward)
    out = ablation.attribute(
        ids, baselines=PAD, target=columns, feature_mask=torch.arange(t).reshape(1, t),
        perturbations_per_eval=t,
    )  # fmt: skip
    return out.detach()


def _single(target: Target) -> Head:
    return lambda e: target(e)[:, None]  # (B, 1)


def integrated_gradients(
    encoder: SequenceEncoder, items: np.ndarray | Tensor, target: Target, steps: int = IG_STEPS
) -> tuple[np.ndarray, float, float]:
    """Integrated-gradients attribution of ``target(embed(items))`` to each item (T,),
    ``f(baseline)`` and the completeness gap ``sum(attributions) - (f(x) - f(baseline))``.

    The baseline is the same sequence with every item vector zero (same positions, same
    attention mask). Captum's own convergence delta is not used: it evaluates the baseline
    *ids* (all padding, an empty history), not the baseline the layer integrates from."""
    ids = _window(items)
    with dense(encoder) as enc:
        values = _ig(enc, ids, _single(target), [0], steps).reshape(-1).double().numpy()
        with torch.no_grad():
            f_x = float(target(enc.embed(ids))[0])
            f_base = float(target(zero_items(enc, ids))[0])
    return values, f_base, float(values.sum()) - (f_x - f_base)


def zero_items(encoder: SequenceEncoder, ids: Tensor) -> Tensor:
    """Embeddings of ``ids`` (B, T) with every item (and category) vector zero: the
    integrated-gradients baseline, computed independently of Captum (a forward hook)."""
    with dense(encoder) as enc:
        hook = enc.item_emb.register_forward_hook(lambda _m, _i, o: torch.zeros_like(o))
        try:
            return enc.embed(ids)
        finally:
            hook.remove()


def occlusion(encoder: SequenceEncoder, items: np.ndarray | Tensor, target: Target) -> np.ndarray:
    """Occlusion attribution (T,): ``f(x) - f(x with item i taken out)`` for every item."""
    ids = _window(items)
    with dense(encoder) as enc:
        return _occlusion(enc, ids, _single(target), [0]).reshape(-1).double().numpy()


def batch_attributions(
    encoder: SequenceEncoder,
    windows: list[np.ndarray],
    head: Head,
    columns: np.ndarray,
    method: str,
    steps: int = IG_STEPS,
    batch: int = 16,
) -> list[np.ndarray]:
    """Attributions of many users at once: ``windows[i]`` (T_i,) items, explained target
    ``head(embedding)[i, columns[i]]``; ``method`` ``ig`` or ``occlusion``. Rows are
    right-padded to a common length; a padding position is masked and has no item, so it
    gets no attribution and changes no other position's (one (T_i,) array per user)."""
    from seqtwins.data.batching import pad_right

    if method not in ("ig", "occlusion"):
        raise SeqtwinsError(f"attribution method {method!r} must be ig or occlusion")
    out: list[np.ndarray] = []
    with dense(encoder) as enc:
        for a in range(0, len(windows), batch):
            ids = pad_right(windows[a : a + batch])  # (B, T)
            cols = [int(c) for c in columns[a : a + batch]]
            if method == "ig":
                values = _ig(enc, ids, head, cols, steps)
            else:
                values = _occlusion(enc, ids, head, cols)
            out += [
                values[i, : len(w)].double().numpy() for i, w in enumerate(windows[a : a + batch])
            ]
    return out


@torch.no_grad()
def embed_windows(encoder: SequenceEncoder, windows: list[np.ndarray], batch: int = 512) -> Tensor:
    """Embeddings ``(n, D)`` of item windows (each at most ``max_len`` items), eval mode."""
    from seqtwins.data.batching import pad_right

    was_training = encoder.training
    encoder.eval()
    out = [
        encoder.embed(pad_right(windows[i : i + batch])).float()
        for i in range(0, len(windows), batch)
    ]
    encoder.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, encoder.dim)
