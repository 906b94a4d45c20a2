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
  average of f after every step: `D(h(f(x1)), f_ema(x2))`, symmetrised. The momentum
  follows BYOL's schedule, rising from a base to 1 along a cosine over the run's steps.
- `vicreg`: VICReg (Bardes, Ponce & LeCun, ICLR 2022): invariance plus variance and
  covariance terms that make a constant output expensive, on an expander e (VICReg's
  MLP, owned by the objective and discarded after training): `L(e(f(x1)), e(f(x2)))`.
  f's output, before the expander, is what is evaluated, as in the paper. Under DDP the
  terms are computed on the batch gathered from every rank.

Why the prediction head is an extra module and not the predictor's last layer: with
the predictor's residual blocks as "encoder" and its output projection as "predictor
head", both stop-gradient objectives shrank the outputs' spread on the demo to 5%
(SimSiam) and 30-45% (BYOL) of the backbone's within 5 epochs; with a separate head
it stays at 35-40% and ~50% over 20 epochs (demo defaults, measured while writing
this), and the evaluated network is the whole predictor for every objective.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from jepa import losses
from jepa.config import TrialConfig
from jepa.predictor import HierarchicalPredictor

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


def byol_momentum(step: int, total_steps: int, base: float) -> float:
    """BYOL's target momentum at step k of K (Grill et al. 2020, sec. 3.2):
    `tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2`.

    tau_base at the first step (k = 0), 1 at k = K; k counts optimiser steps from 0, so
    the last update of a K-step run (k = K - 1) uses `1 - (1 - tau_base) (1 - cos(pi / K)) / 2`.
    Steps past K (a run longer than announced) keep tau = 1.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    k = min(step, total_steps)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * k / total_steps) + 1.0) / 2.0


class EMA(Objective):
    """BYOL (Grill et al., NeurIPS 2020): targets from `f_ema`, a copy of the predictor,
    `f_ema <- tau_k f_ema + (1 - tau_k) f` after step k, tau_k = `byol_momentum(k, K,
    base_momentum)`. K is the run's actual number of optimiser steps: over 10 epochs of
    the demo (100 steps) BYOL's constant 0.996 would leave the target 0.996^100 = 67%
    its random initialisation; the schedule's base is a config field (`ema_momentum`)."""

    def __init__(
        self,
        predictor: HierarchicalPredictor,
        base_momentum: float = TrialConfig.ema_momentum,
        total_steps: int = 1,
    ) -> None:
        super().__init__(predictor)
        if not 0.0 <= base_momentum < 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1), got {base_momentum}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.base_momentum = base_momentum
        self.total_steps = total_steps
        self.step = 0
        self.head = PredictionHead(predictor.dim)
        self.target = copy.deepcopy(predictor).requires_grad_(False)

    @property
    def momentum(self) -> float:
        """tau for the next update."""
        return byol_momentum(self.step, self.total_steps, self.base_momentum)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        p1, p2 = self.head(self.predictor(x1)), self.head(self.predictor(x2))
        with torch.no_grad():
            t1, t2 = self.target(x1), self.target(x2)
        return losses.simsiam_loss(p1, p2, t1, t2)

    @torch.no_grad()
    def after_step(self) -> None:
        tau = self.momentum
        online = self.predictor.parameters()
        for t, o in zip(self.target.parameters(), online, strict=True):
            t.mul_(tau).add_(o.detach(), alpha=1 - tau)
        for t, o in zip(self.target.buffers(), self.predictor.buffers(), strict=True):
            t.copy_(o)
        self.step += 1


class Expander(nn.Module):
    """VICReg's expander: `Linear D->W, BN, ReLU, Linear W->W, BN, ReLU, Linear W->W`
    (no bias on the last layer), [B, D] -> [B, W].

    As `Projector` in facebookresearch/vicreg `main_vicreg.py` with `--mlp W-W-W`; the
    paper uses W = 8192 (sec. 4.2), here `TrialConfig.expander_width`. Its BatchNorm sees
    the whole batch under DDP because `VICReg` gathers f's outputs before it.
    """

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, width),
            nn.BatchNorm1d(width),
            nn.ReLU(inplace=True),
            nn.Linear(width, width),
            nn.BatchNorm1d(width),
            nn.ReLU(inplace=True),
            nn.Linear(width, width, bias=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def gather_batch(z: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of z, concatenated in rank order, with gradients: [B_r, D] ->
    [sum_r B_r, D]. Without a process group of two or more, z itself.

    The backward pass sums the gradients of each rank's rows over ranks (as VICReg's
    `FullGatherLayer`); DDP then averages over ranks, so a parameter's gradient equals
    the one-process gradient of the loss on the whole gathered batch. Ranks may hold
    batches of different sizes (a ragged last batch): rows are padded to the largest
    and the padding is cut off again.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return z
    from torch.distributed.nn.functional import all_gather

    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=z.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(z)], dtype=torch.long, device=z.device))
    counts = [int(n) for n in sizes]
    padded = F.pad(z, (0, 0, 0, max(counts) - len(z)))
    parts = all_gather(padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)])


class VICReg(Objective):
    """VICReg (Bardes et al., ICLR 2022): `vicreg_loss(e(f(x1)), e(f(x2)))` with the
    paper's coefficients, e = `Expander`, on the batch gathered from every rank."""

    def __init__(
        self, predictor: HierarchicalPredictor, expander_width: int = TrialConfig.expander_width
    ) -> None:
        super().__init__(predictor)
        self.expander = Expander(predictor.dim, expander_width)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        # Gather f's outputs (small, [B, D]) rather than the expander's: the expander then
        # runs on the whole batch on every rank, so its BatchNorm and the loss's
        # statistics are those of the whole batch, without SyncBatchNorm (CUDA only).
        z1, z2 = gather_batch(self.predictor(x1)), gather_batch(self.predictor(x2))
        return losses.vicreg_loss(self.expander(z1), self.expander(z2))


OBJECTIVES: dict[str, type[Objective]] = {
    "cross_view": CrossView,
    "stopgrad": StopGrad,
    "ema": EMA,
    "vicreg": VICReg,
}


def build_objective(
    name: str,
    predictor: HierarchicalPredictor,
    cfg: TrialConfig | None = None,
    total_steps: int = 1,
) -> Objective:
    """The objective called `name`, with its settings from `cfg` (default: the config's
    defaults); `total_steps`, the run's number of optimiser steps, sets the length of
    `ema`'s momentum schedule. An unknown name lists the known ones."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    cfg = cfg or TrialConfig()
    if name == "ema":
        return EMA(predictor, cfg.ema_momentum, total_steps)
    if name == "vicreg":
        return VICReg(predictor, cfg.expander_width)
    return OBJECTIVES[name](predictor)
