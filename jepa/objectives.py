"""Training objectives: how a predictor turns two views' embeddings into a loss.

Each objective sees the predictor as two halves, `encode` (the residual blocks) and the
output projection, the way SimSiam and BYOL split a network into encoder and predictor.

- `cross_view`: the seed's loss between both predictions, gradients through both. It
  collapses: a constant output is a perfect minimum.
- `stopgrad`: SimSiam (Chen & He, CVPR 2021): predict the other view's encoding, with
  the gradient stopped on that target.
- `ema`: BYOL (Grill et al., NeurIPS 2020): the target encoding comes from a slowly
  updated exponential moving average of the encoder.
- `vicreg`: VICReg (Bardes et al., ICLR 2022) on the predictions: invariance plus
  variance and covariance terms that forbid a constant output.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from jepa import losses
from jepa.predictor import HierarchicalPredictor


class Objective(nn.Module):
    """A loss over a batch of view pairs; owns any extra state (an EMA target).

    An `Objective` is an `nn.Module` so that DistributedDataParallel can wrap it whole:
    its forward then syncs the gradients of every predictor parameter it touches.
    """

    def __init__(self, predictor: HierarchicalPredictor) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """x1, x2: backbone embeddings of two views of the same images, [B, D]."""
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self) -> None:
        """Called after each optimiser step."""


class CrossView(Objective):
    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return losses.cross_view_loss(self.predictor(x1), self.predictor(x2))


class StopGrad(Objective):
    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.predictor.encode(x1), self.predictor.encode(x2)
        p1, p2 = self.predictor.proj(z1), self.predictor.proj(z2)
        return losses.simsiam_loss(p1, p2, z1, z2)


class EMA(Objective):
    """BYOL's target network: `target <- m * target + (1 - m) * online` after each step."""

    def __init__(self, predictor: HierarchicalPredictor, momentum: float = 0.99) -> None:
        super().__init__(predictor)
        self.momentum = momentum
        self.target = copy.deepcopy(predictor.blocks).requires_grad_(False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        p1, p2 = self.predictor(x1), self.predictor(x2)
        with torch.no_grad():
            t1, t2 = self.target(x1), self.target(x2)
        return losses.simsiam_loss(p1, p2, t1, t2)

    @torch.no_grad()
    def after_step(self) -> None:
        online = self.predictor.blocks
        for t, o in zip(self.target.parameters(), online.parameters(), strict=True):
            t.mul_(self.momentum).add_(o.detach(), alpha=1 - self.momentum)


class VICReg(Objective):
    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return losses.vicreg_loss(self.predictor(x1), self.predictor(x2))


OBJECTIVES: dict[str, type[Objective]] = {
    "cross_view": CrossView,
    "stopgrad": StopGrad,
    "ema": EMA,
    "vicreg": VICReg,
}


def build_objective(name: str, predictor: HierarchicalPredictor) -> Objective:
    """The objective called `name`; an unknown name lists the known ones."""
    try:
        return OBJECTIVES[name](predictor)
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}") from None
