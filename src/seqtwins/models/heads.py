"""Heads that sit on top of the user embedding (never inside it, STYLE.md #6)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class Projector(nn.Sequential):
    """Barlow Twins projector: ``(B, in_dim) -> (B, widths[-1])``.

    ``Linear -> BatchNorm1d -> ReLU`` between layers and a plain last ``Linear``, all without
    bias, exactly as facebookresearch/barlowtwins (``main.py``, ``BarlowTwins.__init__``).
    """

    def __init__(self, in_dim: int, widths: Sequence[int]) -> None:
        widths = list(widths)
        if not widths:
            raise ValueError("projector widths must name at least one layer")
        if any(w < 1 for w in widths):
            raise ValueError(f"projector widths {widths} must all be positive")
        layers: list[nn.Module] = []
        sizes = [in_dim, *widths]
        for i in range(len(widths) - 1):
            layers += [
                nn.Linear(sizes[i], sizes[i + 1], bias=False),
                nn.BatchNorm1d(sizes[i + 1]),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        super().__init__(*layers)
        self.out_dim = sizes[-1]

    def forward(self, x: Tensor) -> Tensor:  # (B, in_dim) -> (B, out_dim)
        return super().forward(x)
