"""Captum attributions checked against independent recomputations on tiny encoders."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch

from seqtwins.errors import SeqtwinsError
from seqtwins.explain import attribution
from seqtwins.explain.attribution import (
    batch_attributions,
    compact,
    integrated_gradients,
    occlusion,
    self_projection,
)
from seqtwins.models import EncoderConfig, SequenceEncoder

VOCAB = 30


def tiny_encoder(pooling: str = "mean", categories: bool = False) -> SequenceEncoder:
    torch.manual_seed(0)
    cfg = EncoderConfig(dim=16, layers=2, heads=2, ff_dim=32, max_len=12, pooling=pooling,
                        use_categories=categories, dropout=0.0)  # fmt: skip
    cats = torch.arange(VOCAB) % 3 if categories else None
    if cats is not None:
        cats[0] = -1
        cats[-1] = -1
    enc = SequenceEncoder(cfg, VOCAB, item_categories=cats)
    with torch.no_grad():  # weights of a trained size, not the near-zero init
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        enc.item_emb.weight[0].zero_()  # padding rows stay zero in training (padding_idx)
        if enc.cat_emb is not None:
            enc.cat_emb.weight[0].zero_()
    return enc.eval()


WINDOW = np.array([3, 7, 7, 12, 5, 21, 9])


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
@pytest.mark.parametrize("categories", [False, True])
def test_ig_completeness_against_an_independent_baseline(pooling: str, categories: bool) -> None:
    """Attributions add up to f(x) - f(baseline), the baseline computed by an encoder whose
    item (and category) tables are zero: no hooks, no Captum."""
    enc = tiny_encoder(pooling, categories)
    ids = torch.from_numpy(WINDOW)[None]
    e = enc.embed(ids)[0].detach()
    target = self_projection(e)
    values, f_base, gap = integrated_gradients(enc, WINDOW, target, steps=128)
    zeroed = copy.deepcopy(enc)
    with torch.no_grad():
        zeroed.item_emb.weight.zero_()
        if zeroed.cat_emb is not None:
            zeroed.cat_emb.weight.zero_()
        f_x = float(target(enc.embed(ids))[0])
        f_b = float(target(zeroed.embed(ids))[0])
    assert values.shape == (len(WINDOW),)
    assert f_base == pytest.approx(f_b, abs=1e-5)
    assert values.sum() == pytest.approx(f_x - f_b, abs=2e-3 * max(1.0, abs(f_x - f_b)))
    assert abs(gap) < 2e-3 * max(1.0, abs(f_x - f_b))
    assert np.abs(values).max() > 1e-3  # the items matter: not a trivial zero answer


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_occlusion_is_the_change_when_the_item_is_removed(pooling: str) -> None:
    """Item i's occlusion = f(x) - f(x with item i taken out of the sequence), recomputed
    by embedding the shorter sequence directly; padding left in place would differ."""
    enc = tiny_encoder(pooling)
    e = enc.embed(torch.from_numpy(WINDOW)[None])[0].detach()
    target = self_projection(e)
    got = occlusion(enc, WINDOW, target)
    with torch.no_grad():
        f_x = float(target(enc.embed(torch.from_numpy(WINDOW)[None]))[0])
        want = [
            f_x - float(target(enc.embed(torch.from_numpy(np.delete(WINDOW, i))[None]))[0])
            for i in range(len(WINDOW))
        ]
        holes = WINDOW.copy()
        holes[1] = 0  # padding in place instead of removal
        f_hole = float(target(enc.embed(torch.from_numpy(holes)[None]))[0])
    np.testing.assert_allclose(got, want, atol=1e-5)
    if pooling == "last":
        assert abs((f_x - f_hole) - got[1]) > 1e-4


def test_compact_takes_padding_out_of_the_middle() -> None:
    ids = torch.tensor([[4, 0, 5, 6, 0], [0, 0, 1, 0, 2]])
    assert compact(ids).tolist() == [[4, 5, 6, 0, 0], [1, 2, 0, 0, 0]]


def test_batched_attributions_equal_one_user_at_a_time() -> None:
    """Padding a user's window to the batch's length changes none of its attributions."""
    enc = tiny_encoder()
    windows = [WINDOW, np.array([2, 8]), np.array([13, 1, 4, 4])]
    head = lambda e: e[:, :3]  # noqa: E731 (B, 3) scores
    cols = np.array([0, 2, 1])
    for method, single in (("ig", integrated_gradients), ("occlusion", occlusion)):
        batch = batch_attributions(enc, windows, head, cols, method)
        for w, c, got in zip(windows, cols, batch, strict=True):
            one = single(enc, w, lambda e, c=c: e[:, c])  # type: ignore[misc]
            want = one[0] if isinstance(one, tuple) else one
            np.testing.assert_allclose(got, want, atol=1e-5)


def test_encoder_left_as_found() -> None:
    enc = tiny_encoder().train()
    cfg = enc.cfg
    occlusion(enc, WINDOW, lambda e: e[:, 0])
    assert enc.training and enc.cfg is cfg and cfg.pack_threshold == 0.15


def test_bad_windows_and_missing_captum(monkeypatch: pytest.MonkeyPatch) -> None:
    enc = tiny_encoder()
    with pytest.raises(SeqtwinsError, match="at least one item"):
        occlusion(enc, np.array([], dtype=np.int64), lambda e: e[:, 0])
    with pytest.raises(SeqtwinsError, match="zero"):
        self_projection(torch.zeros(4))
    attribution.captum.cache_clear()
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    try:
        with pytest.raises(SeqtwinsError, match=r'pip install "seqtwins\[explain\]"'):
            occlusion(enc, WINDOW, lambda e: e[:, 0])
    finally:
        attribution.captum.cache_clear()
