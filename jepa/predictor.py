"""The hierarchical predictor trained on top of frozen backbone embeddings.

Architecture (from the seed write-up, width w, embedding size D):

    x -> Linear(D, w) -> GELU -> Linear(w, D) -> (+ x) -> LayerNorm -> Linear(D, D)

`depth` > 1 stacks that residual bottleneck block before the output projection.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBottleneck(nn.Module):
    """`LayerNorm(x + Linear(GELU(Linear(x))))`; maps [B, D] -> [B, D]."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, width)
        self.act = nn.GELU()
        self.up = nn.Linear(width, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.up(self.act(self.down(x))))


class HierarchicalPredictor(nn.Module):
    """Predictor head: `depth` residual bottleneck blocks then a D->D projection.

    Args:
        dim: embedding size D of the backbone (1280 for I-JEPA ViT-H/14).
        width: hidden width w of each bottleneck (default 512 in the seed).
        depth: number of residual blocks (the seed has 1).

    Input [B, D] -> output [B, D].
    """

    def __init__(self, dim: int, width: int = 512, depth: int = 1) -> None:
        super().__init__()
        self.dim, self.width, self.depth = dim, width, depth
        self.blocks = nn.Sequential(*(ResidualBottleneck(dim, width) for _ in range(depth)))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.blocks(x))
