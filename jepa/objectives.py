"""Training objectives: how a predictor turns two views' embeddings into a loss.

The trained `HierarchicalPredictor` f is the representation that is evaluated (probe,
kNN, t-SNE) whatever the objective. x1, x2 are backbone embeddings of two views, [B, D].

- `cross_view` (the seed's): `D(f(x1), f(x2))`, gradients through both branches. It
  collapses: every output the same vector is a perfect minimum.
- `stopgrad`: SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning",
  CVPR 2021). f plays SimSiam's encoder; a small prediction head h (owned by the
  objective, discarded after training as in the paper) predicts the other view's
  output, whose gradient is stopped: `D(h(f(x1)), sg(f(x2)))`, symmetrised.
- `ema`: BYOL (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020). As `stopgrad`,
  but the target comes from a copy of the predictor updated as an exponential moving
  average of f after every step: `D(h(f(x1)), f_ema(x2))`, symmetrised.
- `vicreg`: VICReg (Bardes, Ponce & LeCun, ICLR 2022) on f's outputs: invariance plus
  variance and covariance terms that make a constant output expensive.

Why the prediction head is an extra module and not the predictor's last layer: with
the predictor's residual blocks as "encoder" and its output projection as "predictor
head", both stop-gradient objectives shrank the outputs' spread on the demo to 5%
(SimSiam) and 30-45% (BYOL) of the backbone's within 5 epochs; with a separate head
it stays at 35-40% and ~50% over 20 epochs (demo defaults, measured while writing
this), and the evaluated network is the whole predictor for every objective.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from jepa import losses
from jepa.predictor import HierarchicalPredictor

# BYOL's base target momentum tau (Grill et al. 2020, sec. 3.2: tau_base = 0.996; the
# paper raises it to 1 with a cosine schedule, which matters over 1000 epochs, not 10).
EMA_MOMENTUM = 0.996
# SimSiam's predictor is a bottleneck MLP with hidden size a quarter of its output
# (2048 -> 512 -> 2048, sec. 4.4 / appendix A).
HEAD_BOTTLENECK = 4


class PredictionHead(nn.Module):
    """SimSiam / BYOL prediction MLP h: `Linear D->D/4, GELU, Linear D/4->D`, [B, D] -> [B, D].

    The papers put BatchNorm in the hidden layer; it is left out because on the demo
    (measured) it made SimSiam's outputs shrink to 3% of the backbone's spread in 10
    epochs, and without it they stay at ~35%.
    """

    def __init__(self, dim: int, bottleneck: int = HEAD_BOTTLENECK) -> None:
        super().__init__()
        hidden = max(1, dim // bottleneck)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Objective(nn.Module):
    """A loss over a batch of view pairs; owns any extra parameters or state.

    An `Objective` is an `nn.Module` so that DistributedDataParallel can wrap it whole:
    its forward then syncs the gradients of every parameter it touches. The optimiser
    trains `trainable_parameters()`: the predictor's plus any head's, never a target's.
    """

    def __init__(self, predictor: HierarchicalPredictor) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """x1, x2: backbone embeddings of two views of the same images, [B, D] -> scalar."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def after_step(self) -> None:
        """Called after each optimiser step."""


class CrossView(Objective):
    """The seed's loss: `D(f(x1), f(x2))`, gradients through both branches (collapses)."""

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return losses.cross_view_loss(self.predictor(x1), self.predictor(x2))


class StopGrad(Objective):
    """SimSiam (Chen & He, CVPR 2021): `D(h(f(x1)), sg(f(x2))) / 2 + D(h(f(x2)), sg(f(x1))) / 2`."""

    def __init__(self, predictor: HierarchicalPredictor) -> None:
        super().__init__(predictor)
        self.head = PredictionHead(predictor.dim)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.predictor(x1), self.predictor(x2)
        return losses.simsiam_loss(self.head(z1), self.head(z2), z1, z2)


class EMA(Objective):
    """BYOL (Grill et al., NeurIPS 2020): targets from `f_ema`, a copy of the predictor,
    `f_ema <- m * f_ema + (1 - m) * f` after each step (m = `EMA_MOMENTUM`)."""

    def __init__(self, predictor: HierarchicalPredictor, momentum: float = EMA_MOMENTUM) -> None:
        super().__init__(predictor)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.head = PredictionHead(predictor.dim)
        self.target = copy.deepcopy(predictor).requires_grad_(False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        p1, p2 = self.head(self.predictor(x1)), self.head(self.predictor(x2))
        with torch.no_grad():
            t1, t2 = self.target(x1), self.target(x2)
        return losses.simsiam_loss(p1, p2, t1, t2)

    @torch.no_grad()
    def after_step(self) -> None:
        online = self.predictor.parameters()
        for t, o in zip(self.target.parameters(), online, strict=True):
            t.mul_(self.momentum).add_(o.detach(), alpha=1 - self.momentum)
        for t, o in zip(self.target.buffers(), self.predictor.buffers(), strict=True):
            t.copy_(o)


class VICReg(Objective):
    """VICReg (Bardes et al., ICLR 2022) on the predictor's outputs, paper coefficients."""

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
