"""Distillation and compatibility losses; the update settings."""

from __future__ import annotations

import pytest
import torch

from seqtwins.errors import SeqtwinsError
from seqtwins.incremental.config import IncrementalConfig
from seqtwins.incremental.losses import Predictor, compat_loss, distill_loss, relative_l2
from seqtwins.objectives.barlow import BarlowTwinsLoss
from seqtwins.settings import build


def test_losses_are_zero_when_new_equals_old():
    z = torch.randn(32, 8)
    assert float(relative_l2(z, z)) == 0.0
    assert float(compat_loss(z, z)) == 0.0
    # the predictor starts as the identity: at the start of an update nothing is lost
    with torch.no_grad():
        assert float(distill_loss(Predictor(8)(z), z, "l2")) == pytest.approx(0.0, abs=1e-12)
    assert float(distill_loss(z + 0.1, z, "l2")) > 0


def test_relative_l2_matches_a_loop_and_ignores_common_scale():
    a, b = torch.randn(16, 4), torch.randn(16, 4)
    num = sum(float(((a[i] - b[i]) ** 2).sum()) for i in range(16)) / 16
    den = sum(float((b[i] ** 2).sum()) for i in range(16)) / 16
    assert float(relative_l2(a, b)) == pytest.approx(num / den, rel=1e-5)
    assert float(relative_l2(3 * a, 3 * b)) == pytest.approx(float(relative_l2(a, b)), rel=1e-5)


def test_gradient_flows_to_the_new_embeddings_only():
    a = torch.randn(8, 4, requires_grad=True)
    b = torch.randn(8, 4, requires_grad=True)
    compat_loss(a, b).backward()
    assert a.grad is not None and b.grad is None


def test_barlow_distillation_is_the_barlow_loss_and_affine_invariant():
    p, z = torch.randn(64, 6), torch.randn(64, 6)
    assert float(distill_loss(p, z, "barlow", lambda_=0.01)) == pytest.approx(
        float(BarlowTwinsLoss(0.01)(p, z)), rel=1e-6
    )
    scale, shift = torch.rand(6) + 0.5, torch.randn(6)
    assert float(distill_loss(p * scale + shift, z, "barlow")) == pytest.approx(
        float(distill_loss(p, z, "barlow")), rel=1e-3
    )


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"strategy": "forget"}, "incremental.strategy='forget' must be one of naive"),
        ({"replay_users": 0}, "incremental.replay_users=0 must be >= 1"),
        ({"distill_weight": -1.0}, "incremental.distill_weight=-1.0 must be >= 0"),
        ({"distill_loss": "kl"}, "incremental.distill_loss='kl' must be one of l2, barlow"),
        ({"which": "first"}, "incremental.which='first' must be best or last"),
        ({"replay_fraction": 0.0}, "incremental.replay_fraction=0.0 must be in (0, 10]"),
    ],
)
def test_settings_are_validated_naming_the_key(settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        IncrementalConfig(**settings)
    with pytest.raises(SeqtwinsError, match=r"^incremental\."):
        build(IncrementalConfig, settings, prefix="incremental")


def test_strategy_switches_and_reservoir_size():
    assert IncrementalConfig("naive").needs_old_encoder  # compat is on by default
    assert not IncrementalConfig("naive", compat=False).needs_old_encoder
    both = IncrementalConfig()
    assert both.replay and both.distill and both.compat
    assert both.reservoir_size(1000) == 500
    assert IncrementalConfig(replay_users=7).reservoir_size(1000) == 7
