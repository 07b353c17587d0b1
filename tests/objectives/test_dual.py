"""Dual encoder: softmax vs a hand-written reference, false negatives, logQ, sampling,
training steps for ``dual`` and ``barlow+next``, the factory."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from seqtwins.models import EncoderConfig, SequenceEncoder
from seqtwins.objectives import (
    BATCH_KEYS,
    OBJECTIVES,
    BarlowConfig,
    BarlowNextObjective,
    BarlowObjective,
    DualConfig,
    DualEncoderObjective,
    NextItemConfig,
    build_objective,
    sampled_softmax_loss,
)
from tests.helpers import spawn_ranks

NUM_ITEMS = 30
VOCAB = NUM_ITEMS + 2


def reference_loss(
    c: torch.Tensor, lab: torch.Tensor, ids: list[int], temp: float, log_q: list[float] | None
) -> float:
    """Row by row: softmax over candidates, skipping other columns holding the same item."""
    total = 0.0
    b = c.shape[0]
    for i in range(b):
        scores = []
        for j in range(lab.shape[0]):
            if j != i and ids[j] == ids[i]:
                continue  # a false negative: the same item as the positive
            s = float(c[i] @ lab[j]) / temp - (log_q[j] if log_q else 0.0)
            scores.append((j == i, s))
        log_z = math.log(sum(math.exp(s) for _, s in scores))
        total += -(next(s for pos, s in scores if pos) - log_z)
    return total / b


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def test_softmax_matches_hand_written_reference() -> None:
    g = torch.Generator().manual_seed(0)
    c, lab = unit(torch.randn(4, 3, generator=g)), unit(torch.randn(6, 3, generator=g))
    ids = [5, 7, 5, 9, 7, 11]  # rows 0/2 share a target; candidate 4 repeats row 1's item
    log_q = [-1.0, -2.0, -1.0, -3.0, -2.0, -0.5]
    got = sampled_softmax_loss(c, lab, torch.tensor(ids), 0.1, torch.tensor(log_q))
    assert got.item() == pytest.approx(reference_loss(c, lab, ids, 0.1, log_q), rel=1e-5)
    got = sampled_softmax_loss(c, lab, torch.tensor(ids), 0.5)
    assert got.item() == pytest.approx(reference_loss(c, lab, ids, 0.5, None), rel=1e-5)


def test_false_negatives_are_masked() -> None:
    g = torch.Generator().manual_seed(1)
    c = unit(torch.randn(3, 4, generator=g))
    lab = unit(torch.randn(3, 4, generator=g))
    lab[2] = lab[0]  # rows 0 and 2 have the same target item
    ids = torch.tensor([4, 8, 4])
    masked = sampled_softmax_loss(c, lab, ids, 0.1)
    # equivalent: each of rows 0 / 2 sees only its own copy of the item
    per_row = [
        F.cross_entropy((c[0:1] @ lab[[0, 1]].T) / 0.1, torch.tensor([0])),
        F.cross_entropy((c[1:2] @ lab.T) / 0.1, torch.tensor([1])),
        F.cross_entropy((c[2:3] @ lab[[1, 2]].T) / 0.1, torch.tensor([1])),
    ]
    assert masked.item() == pytest.approx(torch.stack(per_row).mean().item(), rel=1e-5)
    different = sampled_softmax_loss(c, lab, torch.tensor([4, 8, 6]), 0.1)  # no masking
    assert different.item() > masked.item()


def test_logq_correction_favours_popular_positives() -> None:
    g = torch.Generator().manual_seed(2)
    c, lab = unit(torch.randn(5, 4, generator=g)), unit(torch.randn(5, 4, generator=g))
    ids = torch.arange(1, 6)
    plain = sampled_softmax_loss(c, lab, ids, 0.2)
    # a constant log q cancels in the softmax
    const = sampled_softmax_loss(c, lab, ids, 0.2, torch.full((5,), -3.0))
    assert const.item() == pytest.approx(plain.item(), rel=1e-6)
    # popular candidates are penalised less as negatives: the loss of a popular row's
    # positive rises (its score drops by log q) and that of the others falls
    log_q = torch.tensor([0.0, -5.0, -5.0, -5.0, -5.0])
    logits = (c @ lab.T) / 0.2 - log_q
    row0 = F.cross_entropy(logits[:1], torch.tensor([0]))
    assert row0.item() > F.cross_entropy((c[:1] @ lab.T) / 0.2, torch.tensor([0])).item()
    corrected = sampled_softmax_loss(c, lab, ids, 0.2, log_q)
    assert corrected.item() != pytest.approx(plain.item(), rel=1e-3)


def encoder(seed: int = 0, **kw: object) -> SequenceEncoder:
    torch.manual_seed(seed)
    cfg = EncoderConfig(dim=16, layers=1, heads=2, ff_dim=32, max_len=10, dropout=0.0)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return SequenceEncoder(cfg, VOCAB)


def popularity() -> np.ndarray:
    pop = np.zeros(VOCAB)
    pop[1 : NUM_ITEMS + 1] = 1000.0 / np.arange(1, NUM_ITEMS + 1)
    pop[NUM_ITEMS] = 0.0  # an item never seen in training
    return pop


def dual_batch(b: int, t: int, seed: int) -> dict[str, torch.Tensor]:
    """Contexts whose next item is a deterministic function of their last item."""
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randint(1, NUM_ITEMS - 1, (b, t), generator=g)
    lengths = torch.randint(2, t + 1, (b,), generator=g)
    ctx = ctx * (torch.arange(t)[None, :] < lengths[:, None])
    last = ctx[torch.arange(b), lengths - 1]
    return {"context": ctx, "target": (last % (NUM_ITEMS - 1)) + 1}


def test_objective_loss_matches_reference_with_logq() -> None:
    obj = DualEncoderObjective(encoder(), DualConfig(temperature=0.1), popularity()).eval()
    batch = dual_batch(6, 5, seed=3)
    batch["target"][3] = batch["target"][0]  # a duplicate target
    loss, logs = obj(batch)
    c = unit(obj.encoder.embed(batch["context"]))
    lab = unit(obj.encoder.item_vectors(batch["target"]))
    pop = popularity()
    ids = batch["target"].tolist()
    log_q = [math.log(6 * pop[i] / pop.sum()) for i in ids]
    expected = reference_loss(c.detach(), lab.detach(), ids, 0.1, log_q)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert logs["loss"] == pytest.approx(loss.item())


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_extra_negatives(sampling: str) -> None:
    cfg = DualConfig(extra_negatives=50, negative_sampling=sampling)
    obj = DualEncoderObjective(encoder(), cfg, popularity())
    torch.manual_seed(0)
    ids = obj.sample_negatives(4000)
    assert ids.min() >= 1 and ids.max() <= NUM_ITEMS  # never padding or MASK
    counts = torch.bincount(ids, minlength=VOCAB).float()
    if sampling == "popularity":
        assert counts[NUM_ITEMS] == 0  # zero count: never drawn
        assert counts[1] > 5 * counts[10]
    else:
        assert counts[1 : NUM_ITEMS + 1].min() > 0
    # the extra negatives enter the loss (same seed => same draw)
    batch = dual_batch(8, 6, seed=4)
    torch.manual_seed(1)
    with_neg = obj(batch)[0]
    torch.manual_seed(1)
    neg_ids = obj.sample_negatives(50)
    c = unit(obj.encoder.embed(batch["context"]))
    labels = unit(obj.encoder.item_vectors(torch.cat([batch["target"], neg_ids])))
    all_ids = torch.cat([batch["target"], neg_ids])
    pop = torch.tensor(popularity())
    p_target = pop.clamp_min(1) / pop.sum()
    p_neg = torch.full((VOCAB,), 1 / NUM_ITEMS) if sampling == "uniform" else pop / pop.sum()
    log_q = (8 * p_target[all_ids] + 50 * p_neg[all_ids]).log()
    expected = reference_loss(c.detach(), labels.detach(), all_ids.tolist(), 0.05, log_q.tolist())
    assert with_neg.item() == pytest.approx(expected, rel=1e-4)


def test_popularity_required_for_logq() -> None:
    """Building without counts works (checkpoint loading for evaluation); a loss that
    needs them refuses to run, naming the setting."""
    batch = dual_batch(4, 5, seed=0)
    with pytest.raises(ValueError, match="dual.logq_correction"):
        DualEncoderObjective(encoder(), DualConfig())(batch)
    cfg = DualConfig(logq_correction=False, extra_negatives=3, negative_sampling="popularity")
    with pytest.raises(ValueError, match="dual.negative_sampling"):
        DualEncoderObjective(encoder(), cfg)(batch)
    plain = DualEncoderObjective(encoder(), DualConfig(logq_correction=False))
    assert torch.isfinite(plain(batch)[0])  # fine without counts
    with pytest.raises(ValueError, match="shape"):
        DualEncoderObjective(encoder(), DualConfig(), np.ones(5))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"temperature": 0.0}, "dual.temperature"),
        ({"extra_negatives": -1}, "dual.extra_negatives"),
        ({"negative_sampling": "zipf"}, "dual.negative_sampling"),
    ],
)
def test_config_validation(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DualConfig(**kw)  # type: ignore[arg-type]


def train(obj: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int) -> list[float]:
    opt = torch.optim.AdamW(obj.parameters(), lr=5e-3)
    losses = []
    for _ in range(steps):
        loss, _ = obj(batch)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in obj.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    return losses


@pytest.mark.parametrize("projection", [False, True])
def test_dual_few_steps_decrease_loss(projection: bool) -> None:
    cfg = DualConfig(extra_negatives=8, projection=projection)
    obj = build_objective("dual", encoder(), dual=cfg, item_popularity=popularity())
    losses = train(obj, dual_batch(32, 6, seed=5), steps=10)
    assert losses[-1] < 0.8 * losses[0]


def test_barlow_next_few_steps_decrease_loss() -> None:
    torch.manual_seed(0)
    batch = dual_batch(32, 8, seed=6)
    masked = batch["context"].clone()
    masked[torch.rand(masked.shape) < 0.2] = VOCAB - 1
    batch |= {"view_a": batch["context"][:, :6], "view_b": masked}
    assert set(batch) == set(BATCH_KEYS["barlow+next"])
    obj = build_objective(
        "barlow+next",
        encoder(),
        barlow=BarlowConfig(projector=(32, 16), lambda_=0.05),
        next_item=NextItemConfig(alpha=2.0),
        item_popularity=popularity(),
    )
    assert isinstance(obj, BarlowNextObjective)
    assert isinstance(obj, BarlowObjective)  # same projector / cross_correlation API
    loss, logs = obj(batch)
    assert logs["loss"] == pytest.approx(logs["barlow"] + 2.0 * logs["next_item"], rel=1e-5)
    losses = train(obj, batch, steps=10)
    assert losses[-1] < 0.8 * losses[0]
    assert obj.eval().cross_correlation(batch).shape == (16, 16)


def test_build_objective_names() -> None:
    assert OBJECTIVES == ("barlow", "dual", "barlow+next", "barlow+mask")
    with pytest.raises(ValueError, match="objective='simclr'"):
        build_objective("simclr", encoder())
    with pytest.raises(ValueError, match="next.alpha"):
        build_objective("barlow+next", encoder(), next_item=NextItemConfig(alpha=-1.0))


# ---------------------------------------------------------------- distributed (2 x gloo)
WORLD, PER_RANK = 2, 4


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        obj = DualEncoderObjective(encoder(), DualConfig(distributed=True), popularity())
        batch = dual_batch(WORLD * PER_RANK, 5, seed=7)
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        emb = obj.encoder.embed(batch["context"][rows]).detach().requires_grad_()
        loss = obj.loss_from_embeddings(emb, batch["target"][rows])
        loss.backward()
        grad_items = obj.encoder.item_emb.weight.grad
        torch.save({"loss": loss.detach(), "g_emb": emb.grad, "g_items": grad_items},
                   f"{out_dir}/{rank}.pt")  # fmt: skip
        dist.barrier()  # nobody tears down gloo while the other rank is still in a collective
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_distributed_negatives_equal_global_batch(tmp_path: Path) -> None:
    """Labels of all ranks are negatives: the mean of the rank losses is the global-batch
    loss, and averaged gradients (as DDP does) are the global-batch gradients."""
    spawn_ranks(_worker, WORLD, str(tmp_path / "init"), str(tmp_path))
    obj = DualEncoderObjective(encoder(), DualConfig(), popularity())
    batch = dual_batch(WORLD * PER_RANK, 5, seed=7)
    emb = obj.encoder.embed(batch["context"]).detach().requires_grad_()
    full = obj.loss_from_embeddings(emb, batch["target"])
    full.backward()
    got = [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD)]
    mean_loss = sum(g["loss"].item() for g in got) / WORLD
    assert mean_loss == pytest.approx(full.item(), rel=1e-5)
    assert emb.grad is not None
    for r, g in enumerate(got):
        rows = slice(r * PER_RANK, (r + 1) * PER_RANK)
        torch.testing.assert_close(g["g_emb"], WORLD * emb.grad[rows], rtol=1e-4, atol=1e-6)
    avg_items = sum(g["g_items"] for g in got) / WORLD
    torch.testing.assert_close(avg_items, obj.encoder.item_emb.weight.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_state_dict_holds_each_tensor_once_and_round_trips(name: str, tmp_path: Path) -> None:
    """The shared encoder appears once (safetensors refuses shared tensors), under
    ``encoder.``; a fresh objective loads the file strictly."""
    from safetensors.torch import load_file, save_file

    def build(seed: int) -> torch.nn.Module:
        dual = DualConfig(projection=True)
        return build_objective(name, encoder(seed), dual=dual, item_popularity=popularity())

    obj = build(0)
    state = obj.state_dict()
    assert "encoder.item_emb.weight" in state
    assert sum(k.endswith("item_emb.weight") for k in state) == 1
    ptrs = [t.data_ptr() for t in state.values() if t.numel()]
    assert len(ptrs) == len(set(ptrs))
    save_file(state, str(tmp_path / "model.safetensors"))
    other = build(1)
    other.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
    for key, value in other.state_dict().items():
        assert torch.equal(value, state[key]), key
