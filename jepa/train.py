"""Training a predictor on pairs of views: a function that returns its metrics.

A Tune trial (through Ray Train workers), a test and `python -m jepa.train` all call
`train_predictor`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from jepa import metrics as M
from jepa.config import TrialConfig
from jepa.objectives import build_objective
from jepa.predictor import HierarchicalPredictor
from jepa.probe import collapse_metrics, knn_accuracy

STATUS_FINISHED = "finished"
STATUS_DIVERGED = "diverged"
STATUS_COLLAPSED = "collapsed"

# A run counts as collapsed when both signs are there (see README, "Collapse"): the
# per-dimension std of the L2-normalised outputs is below 10% of the frozen backbone's
# own (the predictor squashed the variation it was given; an absolute threshold would
# misfire on backbones whose features are already anisotropic), and the outputs span
# fewer than 2 effective dimensions.
COLLAPSE_STD_FRACTION = 0.1
COLLAPSE_MAX_RANK = 2.0


@dataclass
class EvalSet:
    """Clean embeddings used to watch training: train [N, D] / eval [M, D] with labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor


@dataclass
class TrainResult:
    predictor: HierarchicalPredictor
    history: list[dict[str, float]] = field(default_factory=list)
    status: str = STATUS_FINISHED
    backbone_images: int = 0


def is_collapsed(embedding_std: float, effective_rank: float, backbone_std: float) -> bool:
    """backbone_std: `embedding_std` of the raw backbone embeddings the predictor sees."""
    return embedding_std < COLLAPSE_STD_FRACTION * backbone_std and (
        effective_rank < COLLAPSE_MAX_RANK
    )


@torch.no_grad()
def epoch_metrics(predictor: HierarchicalPredictor, evalset: EvalSet) -> dict[str, float]:
    """Cheap per-epoch diagnostics of the predictor's outputs on clean views."""
    was_training = predictor.training
    predictor.eval()
    train_z, eval_z = predictor(evalset.train_x), predictor(evalset.eval_x)
    predictor.train(was_training)
    std, rank = collapse_metrics(train_z)
    return {
        M.EMBEDDING_STD: std,
        M.EFFECTIVE_RANK: rank,
        M.KNN_ACCURACY: knn_accuracy(train_z.cpu(), evalset.train_y, eval_z.cpu(), evalset.eval_y),
    }


def train_predictor(
    cfg: TrialConfig,
    views,
    evalset: EvalSet,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    rank: int = 0,
    world_size: int = 1,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    device: torch.device | str = "cpu",
    stop_on_collapse: bool = True,
) -> TrainResult:
    """Train a fresh predictor for `cfg.max_epochs` epochs.

    views: a `CachedViewPairs` or `LiveViewPairs` giving x1, x2 [B, D] for an index [B].
    Each epoch shuffles the training images (the same permutation on every rank; rank r
    takes every world_size-th batch) and calls `on_epoch` with `train_loss` (mean over
    this rank's batches) and the `epoch_metrics`. Stops early when the loss is not
    finite (status `diverged`) or the outputs collapsed (status `collapsed`).
    `wrap` wraps the objective module, e.g. in DistributedDataParallel.
    """
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    dim = evalset.train_x.shape[1]
    backbone_std, _ = collapse_metrics(evalset.train_x)
    predictor = HierarchicalPredictor(dim, cfg.predictor_width, cfg.depth).to(device)
    objective = build_objective(cfg.objective, predictor).to(device)
    model = wrap(objective) if wrap else objective
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    evalset = EvalSet(
        *(t.to(device) for t in (evalset.train_x, evalset.train_y, evalset.eval_x, evalset.eval_y))
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    result = TrainResult(predictor)
    for epoch in range(1, cfg.max_epochs + 1):
        order = torch.randperm(len(views), generator=generator)
        batches = list(order.split(cfg.batch_size))
        if world_size > 1:
            # DDP needs the same number of steps on every rank: drop the ragged tail.
            batches = batches[: len(batches) // world_size * world_size][rank::world_size]
        total, count = 0.0, 0
        predictor.train()
        for index in batches:
            if len(index) < 2:
                continue  # VICReg's variance needs two samples; a 1-image tail adds nothing
            x1, x2 = views.pairs(index, generator)
            loss = model(x1.to(device), x2.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            objective.after_step()
            total += float(loss.detach()) * len(index)
            count += len(index)
        train_loss = total / max(count, 1)
        row = {M.EPOCH: epoch, M.TRAIN_LOSS: train_loss}
        if math.isfinite(train_loss):
            row.update(epoch_metrics(predictor, evalset))
        else:
            # The weights are no longer finite: the diagnostics (an SVD) would raise, and
            # the trial must end as `diverged`, not as an error.
            result.status = STATUS_DIVERGED
        result.history.append(row)
        if (
            result.status == STATUS_FINISHED
            and stop_on_collapse
            and is_collapsed(row[M.EMBEDDING_STD], row[M.EFFECTIVE_RANK], backbone_std)
        ):
            result.status = STATUS_COLLAPSED
        if on_epoch:
            on_epoch(row)
        if result.status != STATUS_FINISHED:
            break
    result.backbone_images = views.backbone_images
    return result
