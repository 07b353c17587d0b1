"""barlow+mask: the masked-item losses against loop-based references, only masked positions
count, the encoder's token-state accessor on both code paths, a few training steps, config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqtwins.data.batching import ItemMasking, collate
from seqtwins.models import EncoderConfig, SequenceEncoder
from seqtwins.objectives import (
    BATCH_KEYS,
    BarlowConfig,
    BarlowMaskObjective,
    BarlowObjective,
    MaskConfig,
    build_objective,
    full_item_softmax_loss,
    sampled_item_softmax_loss,
)

NUM_ITEMS = 30
VOCAB = NUM_ITEMS + 2
MASK = VOCAB - 1


def encoder(seed: int = 0, **kw: object) -> SequenceEncoder:
    torch.manual_seed(seed)
    cfg = EncoderConfig(dim=16, layers=1, heads=2, ff_dim=32, max_len=12, dropout=0.0)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return SequenceEncoder(cfg, VOCAB)


def test_full_softmax_matches_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    states, table = torch.randn(5, 4, generator=g), torch.randn(7, 4, generator=g)
    targets = torch.tensor([0, 3, 3, 6, 1])
    total = 0.0
    for m in range(5):
        scores = [float(states[m] @ table[v]) for v in range(7)]
        log_z = math.log(sum(math.exp(s) for s in scores))
        total += log_z - scores[int(targets[m])]
    got = full_item_softmax_loss(states, targets, table)
    assert got.item() == pytest.approx(total / 5, rel=1e-5)


def test_sampled_softmax_matches_loop_reference_with_logq_and_accidental_hits() -> None:
    g = torch.Generator().manual_seed(1)
    states = torch.randn(3, 4, generator=g)
    pos, neg = torch.randn(3, 4, generator=g), torch.randn(4, 4, generator=g)
    pos_ids, neg_ids = torch.tensor([2, 5, 9]), torch.tensor([5, 1, 9, 9])
    lq_pos, lq_neg = torch.tensor([-1.0, 0.5, 0.2]), torch.tensor([0.5, -2.0, 0.2, 0.2])
    total = 0.0
    for m in range(3):
        s_pos = float(states[m] @ pos[m]) - float(lq_pos[m])
        scores = [s_pos]
        for j in range(4):
            if neg_ids[j] == pos_ids[m]:
                continue  # an accidental hit: the positive itself among the negatives
            scores.append(float(states[m] @ neg[j]) - float(lq_neg[j]))
        total += math.log(sum(math.exp(s) for s in scores)) - s_pos
    got = sampled_item_softmax_loss(states, pos, neg, pos_ids, neg_ids, lq_pos, lq_neg)
    assert got.item() == pytest.approx(total / 3, rel=1e-5)
    # without logQ it is the plain sampled softmax
    plain = sampled_item_softmax_loss(states, pos, neg, pos_ids, neg_ids)
    assert plain.item() != pytest.approx(got.item())


def test_no_masked_position_gives_a_zero_loss_with_gradients() -> None:
    table = torch.randn(5, 3, requires_grad=True)
    loss = full_item_softmax_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), table)
    loss.backward()
    assert loss.item() == 0.0 and table.grad is not None


@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
def test_token_states_match_dense_features_on_both_paths(pooling: str) -> None:
    g = torch.Generator().manual_seed(2)
    lengths = [3, 9, 1, 6, 12, 2]
    items = torch.randint(1, VOCAB, (6, 12), generator=g)
    items *= torch.arange(12)[None, :] < torch.tensor(lengths)[:, None]
    where = (torch.rand(items.shape, generator=g) < 0.4) & (items > 0)
    for threshold in (0.0, 1.0):  # packed and dense
        enc = encoder(pooling=pooling, pack_threshold=threshold).eval()
        emb, states = enc.embed_with_states(items, where)
        torch.testing.assert_close(emb, enc.embed(items), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(states, enc.forward_features(items)[where], atol=1e-5,
                                   rtol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="padding"):
        encoder(pack_threshold=0.0).embed_with_states(items, items == 0)


def batch(b: int = 16, t: int = 10, seed: int = 3) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    hists = [rng.integers(1, NUM_ITEMS + 1, int(rng.integers(3, t + 1))) for _ in range(b)]

    def transform(h: np.ndarray, g: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return h[int(g.integers(0, 2)) :], h.copy()

    out = collate(hists, "barlow+mask", t, rng, transform, masking=ItemMasking(0.3, MASK))
    assert set(out) == set(BATCH_KEYS["barlow+mask"])
    return out


def test_collation_masks_views_and_records_targets() -> None:
    out = batch()
    for view, target in (("view_a", "target_a"), ("view_b", "target_b")):
        v, t = out[view], out[target]
        assert v.shape == t.shape
        assert bool((v[t > 0] == MASK).all())  # every target position is masked
        assert bool((t[v == 0] == 0).all())  # never on padding
        visible = ((v > 0) & (v != MASK)).sum(1)
        assert bool((visible >= 1).all())  # one real item always stays
    assert int((out["target_a"] > 0).sum()) > 0


def test_only_masked_positions_contribute() -> None:
    """The masked-item term depends on the token states at masked positions only: its
    gradient with respect to every other position's input vector is zero."""
    obj = build_objective("barlow+mask", encoder(), barlow=BarlowConfig(projector=(16, 8)))
    assert isinstance(obj, BarlowMaskObjective)
    data = batch()
    items = torch.cat([data["view_a"], torch.nn.functional.pad(
        data["view_b"], (0, data["view_a"].shape[1] - data["view_b"].shape[1]))])  # fmt: skip
    where = torch.zeros_like(items, dtype=torch.bool)
    where[0, 1] = where[3, 2] = True
    states = obj.encoder.forward_features(items).detach().requires_grad_()
    picked = states[where]  # (2, D)
    loss = obj.head.loss(obj.encoder, picked, torch.tensor([4, 7]))
    loss.backward()
    assert states.grad is not None
    assert bool((states.grad[~where] == 0).all()) and bool((states.grad[where] != 0).any())
    # and the objective's term equals the head on the masked positions' states
    torch.manual_seed(0)
    _, logs = obj.eval()(data)
    a, b = data["view_a"], data["view_b"]
    t = a.shape[1]
    pad = (0, t - b.shape[1])
    full = torch.cat([a, torch.nn.functional.pad(b, pad)])
    targets = torch.cat([data["target_a"], torch.nn.functional.pad(data["target_b"], pad)])
    ref = obj.head.loss(obj.encoder, obj.encoder.forward_features(full)[targets > 0],
                        targets[targets > 0])  # fmt: skip
    assert logs["masked_item"] == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("softmax", ["full", "sampled"])
def test_few_steps_decrease_loss(softmax: str) -> None:
    pop = np.r_[0, np.arange(1, NUM_ITEMS + 1), 0].astype(np.float64)
    obj = build_objective(
        "barlow+mask", encoder(), barlow=BarlowConfig(projector=(32, 16), lambda_=0.05),
        mask=MaskConfig(alpha=2.0, softmax=softmax, negatives=16), item_popularity=pop,
    )  # fmt: skip
    assert isinstance(obj, BarlowObjective)  # same projector / cross_correlation API
    data = batch(32)
    loss, logs = obj(data)
    assert logs["loss"] == pytest.approx(logs["barlow"] + 2.0 * logs["masked_item"], rel=1e-4)
    opt = torch.optim.AdamW(obj.parameters(), lr=5e-3)
    losses = []
    for _ in range(10):
        torch.manual_seed(0)  # the same sampled negatives every step
        loss, logs = obj(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["masked_item"])
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    ("kw", "key"),
    [({"alpha": -1.0}, "mask.alpha"), ({"rate": 0.0}, "mask.rate"),
     ({"softmax": "nce"}, "mask.softmax"), ({"negatives": 0}, "mask.negatives")],
)  # fmt: skip
def test_config_names_the_bad_key(kw: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        MaskConfig(**kw)  # type: ignore[arg-type]


def test_auto_softmax_follows_the_item_count() -> None:
    cfg = MaskConfig(full_max_items=100)
    assert cfg.uses_full_softmax(100) and not cfg.uses_full_softmax(101)
    assert MaskConfig(softmax="sampled").uses_full_softmax(10) is False


def test_row_shares_hold_exactly_the_whole_batch_masks() -> None:
    """Each rank collates its rows with the random values of the whole batch (views and
    masks alike), so a distributed run sees the single-process batch."""
    rng_seed = 11
    rng = np.random.default_rng(4)
    hists = [rng.integers(1, NUM_ITEMS + 1, int(rng.integers(3, 11))) for _ in range(8)]

    def transform(h: np.ndarray, g: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return g.permutation(h), h.copy()

    def run(rows: slice | None) -> dict[str, torch.Tensor]:
        return collate(hists, "barlow+mask", 10, np.random.default_rng(rng_seed), transform,
                       rows, ItemMasking(0.4, MASK))  # fmt: skip

    full = run(None)
    for rank in range(2):
        part = run(slice(rank, None, 2))
        for key in BATCH_KEYS["barlow+mask"]:
            width = part[key].shape[1]
            torch.testing.assert_close(part[key], full[key][rank::2, :width])
