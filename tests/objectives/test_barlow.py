"""Barlow Twins loss: independent reference, invariances, the objective trains; distributed."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from seqtwins.models import EncoderConfig, SequenceEncoder
from seqtwins.objectives import (
    BarlowConfig,
    BarlowObjective,
    BarlowTwinsLoss,
    build_objective,
    cross_correlation,
)
from tests.helpers import spawn_ranks

EPS = 1e-5


def reference_loss(z_a: torch.Tensor, z_b: torch.Tensor, lambda_: float) -> tuple[float, float]:
    """Plain loops over dimensions and samples (float64): (on_diag, off_diag) terms."""
    za, zb = z_a.double().tolist(), z_b.double().tolist()
    n, k = len(za), len(za[0])

    def standardised(z: list[list[float]]) -> list[list[float]]:
        cols = []
        for j in range(k):
            col = [z[i][j] for i in range(n)]
            mean = sum(col) / n
            var = sum((x - mean) ** 2 for x in col) / n  # biased, as BatchNorm
            cols.append([(x - mean) / math.sqrt(var + EPS) for x in col])
        return cols  # cols[j][i]

    a, b = standardised(za), standardised(zb)
    on = off = 0.0
    for i in range(k):
        for j in range(k):
            c = sum(a[i][s] * b[j][s] for s in range(n)) / n
            if i == j:
                on += (1 - c) ** 2
            else:
                off += c**2
    return on, off


def test_loss_matches_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    z_a = torch.randn(12, 6, generator=g)
    z_b = 0.5 * z_a + torch.randn(12, 6, generator=g)
    on, off = reference_loss(z_a, z_b, 0.3)
    loss_fn = BarlowTwinsLoss(lambda_=0.3)
    got_on, got_off = loss_fn.terms(z_a, z_b)
    assert got_on.item() == pytest.approx(on, rel=1e-5)
    assert got_off.item() == pytest.approx(off, rel=1e-5)
    assert loss_fn(z_a, z_b).item() == pytest.approx(on + 0.3 * off, rel=1e-5)


def test_loss_invariant_to_per_dimension_affine_rescaling() -> None:
    g = torch.Generator().manual_seed(1)
    z_a, z_b = torch.randn(64, 16, generator=g), torch.randn(64, 16, generator=g)
    scale_a = torch.rand(16, generator=g) * 5 + 0.2  # a > 0 per dimension
    scale_b = torch.rand(16, generator=g) * 5 + 0.2
    shift_a, shift_b = torch.randn(16, generator=g) * 3, torch.randn(16, generator=g) * 3
    loss_fn = BarlowTwinsLoss(lambda_=0.01)
    base = loss_fn(z_a, z_b)
    moved = loss_fn(z_a * scale_a + shift_a, z_b * scale_b + shift_b)
    assert moved.item() == pytest.approx(base.item(), rel=1e-4)
    # a sign flip of one dimension is not an affine map with a > 0: it must matter
    flipped = z_a.clone()
    flipped[:, 0] *= -1
    assert loss_fn(flipped, z_a).item() > loss_fn(z_a, z_a).item() + 3.0


def test_perfect_correlation_gives_zero_invariance_term() -> None:
    z = torch.randn(128, 8, generator=torch.Generator().manual_seed(2))
    on, off = BarlowTwinsLoss(lambda_=1.0).terms(z, 3.0 * z + 1.0)
    assert on.item() < 1e-6
    c = cross_correlation(z, 3.0 * z + 1.0)
    torch.testing.assert_close(torch.diagonal(c), torch.ones(8), atol=1e-4, rtol=0)
    # decorrelated, whitened dimensions: the off-diagonal term vanishes too
    x = torch.randn(128, 8, generator=torch.Generator().manual_seed(3))
    q, _ = torch.linalg.qr(x - x.mean(0))  # orthonormal, zero-mean columns
    q = q * math.sqrt(128)  # unit variance per dimension
    on_w, off_w = BarlowTwinsLoss(lambda_=1.0).terms(q, q)
    assert on_w.item() < 1e-6
    assert off_w.item() < 1e-3


def test_loss_is_fp32_under_bf16_autocast() -> None:
    g = torch.Generator().manual_seed(4)
    z_a, z_b = torch.randn(32, 8, generator=g), torch.randn(32, 8, generator=g)
    loss_fn = BarlowTwinsLoss(lambda_=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss_fn(z_a.bfloat16(), z_b.bfloat16())
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(loss_fn(z_a, z_b).item(), rel=2e-2)


def views(n_users: int, t: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """Two noisy views (random MASK + random tail cut) of random sequences."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(1, vocab - 1, (n_users, t), generator=g)
    out = {}
    for key in ("view_a", "view_b"):
        v = base.clone()
        v[torch.rand(n_users, t, generator=g) < 0.2] = vocab - 1  # MASK
        lengths = torch.randint(3, t + 1, (n_users,), generator=g)
        out[key] = v * (torch.arange(t)[None, :] < lengths[:, None])
    return out


def test_objective_few_steps_decrease_loss_with_finite_gradients() -> None:
    torch.manual_seed(0)
    vocab = 52
    cfg = EncoderConfig(dim=16, layers=1, heads=2, ff_dim=32, max_len=12, dropout=0.0)
    obj = build_objective("barlow", SequenceEncoder(cfg, vocab), barlow=BarlowConfig(
        projector=(32, 16), lambda_=0.05
    ))  # fmt: skip
    assert isinstance(obj, BarlowObjective)
    opt = torch.optim.AdamW(obj.parameters(), lr=3e-3)
    batch = views(48, 12, vocab, seed=0)
    losses = []
    for _ in range(10):
        loss, logs = obj(batch)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in obj.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(gr).all() for gr in grads)
        opt.step()
        losses.append(loss.item())
        assert logs["loss"] == pytest.approx(logs["on_diag"] + 0.05 * logs["off_diag"], rel=1e-5)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.8 * losses[0]
    c = obj.eval().cross_correlation(batch)
    assert c.shape == (16, 16)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="barlow.lambda_"):
        BarlowConfig(lambda_=-1.0)
    with pytest.raises(ValueError, match="barlow.projector"):
        BarlowConfig(projector=())
    assert BarlowConfig().lambda_ == 0.0051


# ---------------------------------------------------------------- distributed (2 x gloo)
WORLD, PER_RANK, K = 2, 8, 5


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    z_a = torch.randn(WORLD * PER_RANK, K, generator=g)
    return z_a, 0.7 * z_a + torch.randn(WORLD * PER_RANK, K, generator=g)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        z_a, z_b = _inputs()
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        a = z_a[rows].clone().requires_grad_()
        b = z_b[rows].clone().requires_grad_()
        loss = BarlowTwinsLoss(lambda_=0.2, distributed=True)(a, b)
        loss.backward()
        torch.save({"loss": loss.detach(), "ga": a.grad, "gb": b.grad}, f"{out_dir}/{rank}.pt")
        dist.barrier()  # nobody tears down gloo while the other rank is still in a collective
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_distributed_loss_equals_global_batch_loss(tmp_path: Path) -> None:
    """Each rank's loss is the global-batch loss; its gradient is WORLD x the global one
    (DDP's gradient averaging divides it back)."""
    spawn_ranks(_worker, WORLD, str(tmp_path / "init"), str(tmp_path))
    z_a, z_b = _inputs()
    a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    full = BarlowTwinsLoss(lambda_=0.2)(a, b)
    full.backward()
    assert a.grad is not None and b.grad is not None
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"{rank}.pt")
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        assert got["loss"].item() == pytest.approx(full.item(), rel=1e-5)
        torch.testing.assert_close(got["ga"], WORLD * a.grad[rows], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got["gb"], WORLD * b.grad[rows], rtol=1e-4, atol=1e-6)
