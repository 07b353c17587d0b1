"""Losses of an incremental update: pure functions of tensors (STYLE.md 1).

- :func:`relative_l2`: ``mean ||a - b||^2 / mean ||b||^2``, zero exactly when ``a == b``,
  unchanged when both are scaled together (the loss does not depend on the embeddings'
  overall scale);
- :func:`distill_loss`: a predictor's output against the frozen old embeddings (CaSSLe,
  Fini et al. CVPR 2022, "Self-Supervised Models are Continual Learners": the new encoder
  may move, a predictor must still map it onto the old space);
- :func:`compat_loss`: new embeddings against the old ones directly, without a predictor,
  so that a probe fitted on old embeddings still reads new ones (Shen et al., CVPR 2020,
  "Towards Backward-Compatible Representation Learning").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqtwins.objectives.barlow import BarlowTwinsLoss


def relative_l2(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """``mean_i ||a_i - b_i||^2 / mean_i ||b_i||^2`` over rows of ``(B, D)`` tensors; ``b``
    is the target (no gradient flows into it)."""
    b = b.detach()
    num = (a.float() - b.float()).square().sum(1).mean()
    return num / b.float().square().sum(1).mean().clamp_min(eps)


def distill_loss(
    predicted: Tensor, old: Tensor, kind: str = "l2", lambda_: float = 0.0051
) -> Tensor:
    """Distillation loss between ``predicted`` (B, D) (the predictor applied to the new
    embeddings) and the frozen ``old`` (B, D) embeddings: ``l2`` (:func:`relative_l2`) or
    ``barlow`` (the Barlow Twins loss, as CaSSLe uses the learner's own SSL loss)."""
    if kind == "l2":
        return relative_l2(predicted, old)
    if kind == "barlow":
        return BarlowTwinsLoss(lambda_)(predicted.float(), old.detach().float())
    raise ValueError(f"incremental.distill_loss={kind!r} must be l2 or barlow")


def compat_loss(new: Tensor, old: Tensor) -> Tensor:
    """Backward-compatibility loss: new embeddings (B, D) towards the old ones of the same
    sequences (:func:`relative_l2`), so that a linear probe fitted on old embeddings keeps
    working on new ones."""
    return relative_l2(new, old)


class Predictor(nn.Module):
    """The distillation predictor: a linear map from the new embedding space to the old one,
    initialised to the identity (at the start of an update the two spaces coincide)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(dim))
            self.linear.bias.zero_()

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(z)  # (B, D) -> (B, D)
