"""Barlow Twins (Zbontar et al., ICML 2021, arXiv:2103.03230) on user sequences.

Two augmented views of each user's history go through the shared encoder, its pooled user
embedding through a projector MLP, and the loss pushes the cross-correlation matrix of the
two projected views towards the identity (arXiv:2505.00953 applies this to user sequences).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from seqtwins.models.encoder import SequenceEncoder
from seqtwins.models.heads import Projector


def _world_active(distributed: bool) -> bool:
    return distributed and dist.is_available() and dist.is_initialized()


def _sum_all_ranks(x: Tensor, distributed: bool) -> Tensor:
    """Sum ``x`` over all ranks, autograd-aware (gradients flow back to every rank).

    Uses ``torch.distributed.nn.functional.all_reduce``, never the raw collective, whose
    missing backward silently gives wrong gradients (lightly PR 1980).
    """
    if not _world_active(distributed):
        return x
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x, op=dist.ReduceOp.SUM)


def _batch_size(z: Tensor, distributed: bool) -> int:
    if not _world_active(distributed):
        return z.shape[0]
    n = torch.tensor([z.shape[0]], device=z.device)
    dist.all_reduce(n)  # a count: no gradient needed
    return int(n.item())


def batch_standardize(z: Tensor, eps: float = 1e-5, distributed: bool = False) -> Tensor:
    """Per-dimension standardisation over the batch: ``(B, K) -> (B, K)``.

    ``(z - mean) / sqrt(var + eps)`` with the biased batch variance: ``BatchNorm1d(K,
    affine=False)`` in training mode, as in facebookresearch/barlowtwins. With
    ``distributed`` (and an initialised process group) the statistics are over the global
    batch of all ranks.
    """
    n = _batch_size(z, distributed)
    mean = _sum_all_ranks(z.sum(0), distributed) / n  # (K,)
    centred = z - mean
    var = _sum_all_ranks(centred.square().sum(0), distributed) / n  # (K,)
    return centred * torch.rsqrt(var + eps)


def cross_correlation(
    z_a: Tensor, z_b: Tensor, eps: float = 1e-5, distributed: bool = False
) -> Tensor:
    """Cross-correlation matrix ``C`` (K, K) of two ``(B, K)`` batches, computed in fp32.

    ``C = z_a_n^T z_b_n / B`` with ``z_n`` the batch-standardised inputs; ``C_ij`` lies in
    ``[-1, 1]`` (up to ``eps``) and is the identity for perfectly (and only self-)
    correlated dimensions. This is also what the report plots.
    """
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(
            f"z_a and z_b must both be (B, K); got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    # the loss sums K^2 squared correlations: keep it out of bf16 autocast
    with torch.autocast(device_type=z_a.device.type, enabled=False):
        a = batch_standardize(z_a.float(), eps, distributed)
        b = batch_standardize(z_b.float(), eps, distributed)
        n = _batch_size(a, distributed)
        return _sum_all_ranks(a.T @ b, distributed) / n  # (K, K)


class BarlowTwinsLoss(nn.Module):
    """``sum_i (1 - C_ii)^2 + lambda_ * sum_{i != j} C_ij^2`` (Zbontar et al. 2021, eq. 1).

    A pure function of two ``(B, K)`` tensors (STYLE.md #1). ``distributed=True`` computes
    the batch statistics and ``C`` over the global batch of all ranks with autograd-aware
    collectives; without an initialised process group it is the single-process loss.
    Under DDP every rank then holds the same loss and gets ``world_size`` times its share of
    the gradient, which DDP's gradient averaging turns back into the exact gradient.
    """

    def __init__(self, lambda_: float, eps: float = 1e-5, distributed: bool = False) -> None:
        super().__init__()
        self.lambda_ = lambda_
        self.eps = eps
        self.distributed = distributed

    def terms(self, z_a: Tensor, z_b: Tensor) -> tuple[Tensor, Tensor]:
        """The invariance term ``sum_i (1 - C_ii)^2`` and the (unweighted) redundancy term
        ``sum_{i != j} C_ij^2``."""
        c = cross_correlation(z_a, z_b, self.eps, self.distributed)  # (K, K)
        diag = torch.diagonal(c)
        on_diag = (1.0 - diag).square().sum()
        off_diag = c.square().sum() - diag.square().sum()
        return on_diag, off_diag

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        on_diag, off_diag = self.terms(z_a, z_b)
        return on_diag + self.lambda_ * off_diag


@dataclass
class BarlowConfig:
    """Settings of the ``barlow`` objective (loss and projector)."""

    lambda_: float = 0.0051
    """Weight of the redundancy-reduction (off-diagonal) term. 0.0051 is the Barlow Twins
    paper's value (Zbontar et al. 2021, tuned for an 8192-d projector); it is close to the
    ``1/K`` scaling of Tsai et al. 2021 (arXiv:2104.13712) for the default K=256 (0.0039),
    so the two terms stay balanced at these sizes. Scale it roughly as ``1/K`` when
    changing the projector width a lot."""
    projector: tuple[int, ...] = (256, 256)
    """Projector MLP widths after the user embedding; the last one is K, the size of the
    cross-correlation matrix. (The paper used 8192-8192-8192 on ResNet-50 features; a
    64-d sequence embedding needs far less.)"""
    eps: float = 1e-5
    """Added to the batch variance before standardising (BatchNorm's default eps)."""
    distributed: bool = False
    """Compute the statistics over the global batch of all ranks (needs torch.distributed)."""

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        if not self.lambda_ >= 0:
            raise ValueError(f"barlow.lambda_={self.lambda_!r} must be >= 0")
        if not self.projector or any(
            not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in self.projector
        ):
            raise ValueError(
                f"barlow.projector={list(self.projector)!r} must be a non-empty list of "
                "positive layer widths"
            )
        if not self.eps > 0:
            raise ValueError(f"barlow.eps={self.eps!r} must be > 0")


class BarlowObjective(nn.Module):
    """The ``barlow`` objective: encoder -> user embedding -> projector -> Barlow Twins loss.

    ``forward(batch)`` takes ``view_a`` (B, Ta) and ``view_b`` (B, Tb), two right-padded
    augmented views of the same B users, and returns ``(loss, logs)``.
    """

    def __init__(self, encoder: SequenceEncoder, cfg: BarlowConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = Projector(encoder.dim, cfg.projector)
        self.loss = BarlowTwinsLoss(cfg.lambda_, cfg.eps, cfg.distributed)

    def project(self, view_a: Tensor, view_b: Tensor) -> tuple[Tensor, Tensor]:
        """Projector outputs ``(B, K)`` of both views.

        The encoder runs once on both views stacked (it has no batch statistics); the
        projector runs per view so that its BatchNorm sees each view's own batch, as in the
        reference implementation.
        """
        e_a, e_b = self.encoder.embed_many(view_a, view_b)  # (B, D) each
        return self.projector(e_a), self.projector(e_b)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        z_a, z_b = self.project(batch["view_a"], batch["view_b"])  # (B, K) each
        on_diag, off_diag = self.loss.terms(z_a, z_b)
        loss = on_diag + self.cfg.lambda_ * off_diag
        logs = {
            "loss": float(loss.detach()),
            "on_diag": float(on_diag.detach()),
            "off_diag": float(off_diag.detach()),
        }
        return loss, logs

    @torch.no_grad()
    def cross_correlation(self, batch: dict[str, Tensor]) -> Tensor:
        """The ``(K, K)`` cross-correlation matrix of a batch's two views (for plots).

        Runs in the module's current mode; call ``.eval()`` first for a deterministic
        matrix (BatchNorm then uses its running statistics, dropout is off).
        """
        z_a, z_b = self.project(batch["view_a"], batch["view_b"])
        return cross_correlation(z_a, z_b, self.cfg.eps)
