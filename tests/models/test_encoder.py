"""SequenceEncoder: shapes, padding invariance, empty rows, categories, config validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqtwins.models import EncoderConfig, Projector, SequenceEncoder
from seqtwins.models.encoder import dropout

NUM_ITEMS = 40
VOCAB = NUM_ITEMS + 2


def batch(lengths: list[int], t: int | None = None, seed: int = 0) -> torch.Tensor:
    """Right-padded random item ids, one row per length."""
    g = torch.Generator().manual_seed(seed)
    t = t or max(lengths)
    items = torch.randint(1, NUM_ITEMS + 2, (len(lengths), t), generator=g)  # MASK included
    keep = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    return items * keep


def make(seed: int = 0, **kw: object) -> SequenceEncoder:
    torch.manual_seed(seed)
    cfg = EncoderConfig(dim=16, layers=2, heads=2, ff_dim=32, max_len=20)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return SequenceEncoder(cfg, VOCAB)


@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
def test_shapes(pooling: str) -> None:
    enc = make(pooling=pooling)
    items = batch([3, 7, 1, 12])
    assert enc.embed(items).shape == (4, 16)
    assert enc(items).shape == (4, 16)
    assert enc.forward_features(items).shape == (4, 12, 16)
    assert enc.item_vectors(torch.tensor([[1, 2, 3]])).shape == (1, 3, 16)


@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
@pytest.mark.parametrize("pack_threshold", [0.0, 1.0])  # packed and dense code paths
def test_padding_does_not_change_embedding(pooling: str, pack_threshold: float) -> None:
    enc = make(pooling=pooling, pack_threshold=pack_threshold).eval()
    items = batch([5, 13, 2, 9])
    e = enc.embed(items)
    e_padded = enc.embed(F.pad(items, (0, 7)))  # T -> T + 7
    torch.testing.assert_close(e_padded, e, atol=1e-5, rtol=0)
    # a row alone, unpadded, gives the same embedding as inside the padded batch
    alone = enc.embed(items[1:2, :13])
    torch.testing.assert_close(alone, e[1:2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
@pytest.mark.parametrize("group_rows", [1, 3, 32])  # attention groups of similar length
def test_packed_and_dense_paths_agree_with_gradients(pooling: str, group_rows: int) -> None:
    items = batch([2, 11, 4, 1, 7, 0, 11, 3, 9, 5], seed=3)
    outs, grads = [], []
    for threshold in (0.0, 1.0):
        enc = make(seed=1, pooling=pooling, pack_threshold=threshold, dropout=0.0).train()
        enc.group_rows = group_rows
        e = enc.embed(items)
        e.square().sum().backward()
        outs.append(e.detach())
        grads.append(torch.cat([p.grad.flatten() for p in enc.parameters() if p.grad is not None]))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    # the two paths sum in different orders, and a CPU's kernels choose their own order:
    # on one of our machines a few of ~5,500 gradient entries differed by 2.7e-5 (7e-4
    # relative); a path that lets padding leak differs by orders of magnitude more
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-3)


def test_packed_path_handles_padding_inside_a_row() -> None:
    """Not the documented input, but a 0 in the middle must act as padding on both paths."""
    items = batch([6, 9, 4], seed=5)
    items[1, 3] = 0
    dense = make(pack_threshold=1.0).eval().forward_features(items)
    packed = make(pack_threshold=0.0).eval().forward_features(items)
    real = items != 0
    torch.testing.assert_close(packed[real], dense[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
def test_all_padding_row_is_finite(pooling: str) -> None:
    enc = make(pooling=pooling).train()
    items = batch([4, 0, 6])
    e = enc.embed(items)
    assert torch.isfinite(e).all()
    e.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)
    if pooling != "cls":  # no items, nothing to pool
        assert torch.equal(e[1], torch.zeros(16))
    assert torch.isfinite(enc.eval().embed(torch.zeros(2, 5, dtype=torch.long))).all()


def test_last_pooling_is_the_most_recent_item_state() -> None:
    enc = make(pooling="last").eval()
    items = batch([3, 8, 5])
    feats = enc.forward_features(items)
    expected = torch.stack([feats[0, 2], feats[1, 7], feats[2, 4]])
    torch.testing.assert_close(enc.embed(items), expected)


def test_mean_pooling_averages_real_positions_only() -> None:
    enc = make(pooling="mean").eval()
    items = batch([3, 6])
    feats = enc.forward_features(items)
    torch.testing.assert_close(enc.embed(items)[0], feats[0, :3].mean(0))


def test_rows_are_independent_and_order_matters() -> None:
    enc = make().eval()
    items = batch([6, 6])
    e = enc.embed(items)
    changed = items.clone()
    changed[1, 2] = (changed[1, 2] % NUM_ITEMS) + 1
    e2 = enc.embed(changed)
    torch.testing.assert_close(e2[0], e[0], atol=1e-6, rtol=0)  # bidirectional, but per row
    assert not torch.allclose(e2[1], e[1])
    flipped = items.flip(1)  # positions matter
    assert not torch.allclose(enc.embed(flipped), e)


def test_embed_many_matches_separate_calls() -> None:
    enc = make().eval()
    a, b = batch([3, 9, 4], seed=1), batch([2, 5, 1], seed=2)
    e_a, e_b = enc.embed_many(a, b)
    torch.testing.assert_close(e_a, enc.embed(a), atol=1e-5, rtol=0)
    torch.testing.assert_close(e_b, enc.embed(b), atol=1e-5, rtol=0)


def test_too_long_input_is_refused() -> None:
    enc = make()
    with pytest.raises(AssertionError, match="max_len"):
        enc.embed(torch.ones(1, 21, dtype=torch.long))


def test_category_embedding_is_added_to_items() -> None:
    cats = torch.full((VOCAB,), -1, dtype=torch.long)
    cats[1:11] = 0
    cats[11:21] = 1  # items 21.. have no category
    torch.manual_seed(0)
    cfg = EncoderConfig(dim=16, layers=1, heads=2, ff_dim=32, max_len=20, use_categories=True)
    enc = SequenceEncoder(cfg, VOCAB, item_categories=cats)
    ids = torch.tensor([0, 3, 12, 30])
    got = enc.item_vectors(ids)
    assert enc.cat_emb is not None
    torch.testing.assert_close(got[1], enc.item_emb.weight[3] + enc.cat_emb.weight[1])
    torch.testing.assert_close(got[2], enc.item_emb.weight[12] + enc.cat_emb.weight[2])
    torch.testing.assert_close(got[3], enc.item_emb.weight[30])  # -1: no category term
    torch.testing.assert_close(got[0], torch.zeros(16))  # padding
    # categories reach the embedding, and get gradients
    items = torch.tensor([[3, 12, 30, 0]])
    # a random direction, not .sum(): the sum of a normalised output is a constant, whose
    # gradient is zero (only float noise made it non-zero on some CPUs)
    weights = torch.randn(1, 16, generator=torch.Generator().manual_seed(1))
    (enc.embed(items) * weights).sum().backward()
    assert enc.cat_emb.weight.grad is not None
    assert enc.cat_emb.weight.grad[1:3].abs().sum() > 0
    assert enc.cat_emb.weight.grad[0].abs().sum() == 0


def test_categories_required_when_enabled() -> None:
    cfg = EncoderConfig(use_categories=True)
    with pytest.raises(ValueError, match="use_categories"):
        SequenceEncoder(cfg, VOCAB)
    with pytest.raises(ValueError, match="shape"):
        SequenceEncoder(cfg, VOCAB, item_categories=torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"dim": 70, "heads": 4}, "encoder.dim=70 must be divisible by encoder.heads=4"),
        ({"layers": 0}, "encoder.layers"),
        ({"dropout": 1.0}, "encoder.dropout"),
        ({"pooling": "max"}, "encoder.pooling"),
        ({"max_len": -1}, "encoder.max_len"),
    ],
)
def test_config_validation_names_the_setting(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EncoderConfig(**kw)  # type: ignore[arg-type]


def test_defaults() -> None:
    cfg = EncoderConfig()
    assert (cfg.dim, cfg.layers, cfg.heads, cfg.ff_dim, cfg.max_len) == (64, 2, 2, 256, 50)
    assert (cfg.dropout, cfg.pooling, cfg.use_categories) == (0.1, "mean", False)


def test_projector_layout() -> None:
    proj = Projector(16, (32, 32, 8))
    kinds = [type(m).__name__ for m in proj]
    assert kinds == [
        "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"
    ]  # fmt: skip
    assert proj(torch.randn(5, 16)).shape == (5, 8)
    assert proj.out_dim == 8
    assert Projector(16, (4,))(torch.randn(3, 16)).shape == (3, 4)


def test_dropout_rate_scale_and_seed() -> None:
    x = torch.ones(400, 500, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x, 0.3, training=True)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(0.3, abs=0.005)
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.7), atol=1e-4, rtol=0)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)  # inverted dropout keeps the mean
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # gradient flows through kept elements only
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.3, training=True), y)  # seeded like torch
    assert dropout(x, 0.3, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    odd = dropout(torch.ones(7, 3, dtype=torch.bfloat16), 0.5, training=True)
    assert odd.shape == (7, 3) and odd.dtype == torch.bfloat16


def test_training_mode_uses_dropout_eval_is_deterministic() -> None:
    enc = make(dropout=0.5)
    items = batch([6, 9])
    enc.train()
    assert not torch.allclose(enc.embed(items), enc.embed(items))
    enc.eval()
    torch.testing.assert_close(enc.embed(items), enc.embed(items), atol=0, rtol=0)


def test_bf16_autocast_is_close_to_fp32() -> None:
    enc = make(pack_threshold=0.0).eval()
    items = batch([4, 12, 7])
    ref = enc.embed(items)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = enc.embed(items)
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), ref, atol=0.1, rtol=0.05)


# --- building, loading and using an encoder ---------------------------------------------------


def _tiny_ds(tmp_path):  # type: ignore[no-untyped-def]
    from seqtwins.data.dataset import SequenceDataset
    from tests.helpers import tiny_dataset

    return SequenceDataset.open(tiny_dataset(tmp_path / "ds", users=40))


def test_embed_users_equals_embedding_each_history(tmp_path):
    from seqtwins.data.batching import histories, pad_right
    from seqtwins.models.encoder import build_encoder, embed_item_lists, embed_users

    ds = _tiny_ds(tmp_path)
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(dim=16, heads=2, ff_dim=32, max_len=8), ds).train()
    users = np.array([3, 0, 7])
    got = embed_users(enc, ds, users, batch_size=2)
    assert enc.training  # the mode is restored
    enc.eval()
    with torch.no_grad():
        want = enc.embed(pad_right(histories(ds.sequences, users, 8))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    lists = embed_item_lists(enc, histories(ds.sequences, users, 8), batch_size=2)
    np.testing.assert_allclose(lists, want, rtol=1e-5, atol=1e-6)


def test_build_encoder_reads_the_category_table(tmp_path):
    from seqtwins.models.encoder import build_encoder

    ds = _tiny_ds(tmp_path)
    enc = build_encoder(EncoderConfig(dim=16, heads=2, ff_dim=32, use_categories=True), ds)
    codes = torch.from_numpy(ds.item_categories()[0]) + 1
    assert torch.equal(enc.item_cat_codes, codes)


def test_load_encoder_tensors_is_strict_and_refuses_non_finite(tmp_path):
    from seqtwins.errors import SeqtwinsError
    from seqtwins.models.encoder import load_encoder_tensors

    cfg = EncoderConfig(dim=16, heads=2, ff_dim=32)
    saved = {f"encoder.{k}": v.clone() for k, v in SequenceEncoder(cfg, 10).state_dict().items()}
    enc = load_encoder_tensors(SequenceEncoder(cfg, 10), saved, "ckpt")
    assert not enc.training
    torch.testing.assert_close(enc.item_emb.weight, saved["encoder.item_emb.weight"])
    missing = {k: v for k, v in saved.items() if "ln_f" not in k}
    with pytest.raises(SeqtwinsError, match=r"missing keys \['ln_f.bias', 'ln_f.weight'\]"):
        load_encoder_tensors(SequenceEncoder(cfg, 10), missing, "ckpt")
    saved["encoder.ln_f.weight"][0] = float("inf")
    with pytest.raises(SeqtwinsError, match=r"ckpt holds NaN or infinite weights \(ln_f.weight"):
        load_encoder_tensors(SequenceEncoder(cfg, 10), saved, "ckpt")
