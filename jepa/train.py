"""Training a predictor on pairs of views: a function that returns its metrics.

A Tune trial (through Ray Train workers), a test and `python -m jepa.train` all call
`train_predictor`. `python -m jepa.train --help` trains one configuration without a
sweep and logs it to MLflow like a trial (the wiring is in `sweeps/single.py`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from jepa import metrics as M
from jepa.config import TrialConfig
from jepa.objectives import build_objective
from jepa.predictor import HierarchicalPredictor
from jepa.probe import collapse_metrics, knn_accuracy

STATUS_FINISHED = "finished"
STATUS_DIVERGED = "diverged"
STATUS_COLLAPSED = "collapsed"

# The collapse rule (README, "Collapse and objectives"). Both metrics come from
# `collapse_metrics` on the predictor's outputs for the clean training images, after
# every epoch, and are judged against the raw backbone's own values, so that an
# anisotropic backbone (the demo's random ViT: embedding_std 0.009 where isotropic
# 192-d features have 0.072) never counts as collapsed by itself. A run is collapsed
# when either kind of collapse (Jing et al., ICLR 2022) shows:
# - complete: embedding_std < COLLAPSE_STD_FRACTION x the backbone's: the outputs'
#   spread around their mean direction shrank tenfold, towards one vector (the
#   seed's loss-falls-to-zero failure; on the demo cross_view gets there in 2-3
#   epochs, the other objectives stay above 0.35 x);
# - dimensional: effective_rank (centred) < COLLAPSE_MIN_RANK while the backbone's is
#   not: what still varies between images varies along a single direction.
COLLAPSE_STD_FRACTION = 0.1
COLLAPSE_MIN_RANK = 2.0


@dataclass
class EvalSet:
    """Clean embeddings used to watch training: train [N, D] / eval [M, D] with labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor


@dataclass(frozen=True)
class CollapseReference:
    """The raw backbone's collapse metrics on the clean training embeddings."""

    embedding_std: float
    effective_rank: float

    @classmethod
    def of(cls, backbone_embeddings: torch.Tensor) -> CollapseReference:
        """backbone_embeddings: [N, D]."""
        return cls(*collapse_metrics(backbone_embeddings))


@dataclass
class TrainResult:
    predictor: HierarchicalPredictor
    history: list[dict[str, float]] = field(default_factory=list)
    status: str = STATUS_FINISHED
    backbone_images: int = 0
    reference: CollapseReference | None = None


def is_collapsed(embedding_std: float, effective_rank: float, reference: CollapseReference) -> bool:
    """The collapse rule above: complete or dimensional collapse, relative to `reference`."""
    complete = embedding_std < COLLAPSE_STD_FRACTION * reference.embedding_std
    dimensional = effective_rank < COLLAPSE_MIN_RANK <= reference.effective_rank
    return complete or dimensional


@torch.no_grad()
def epoch_metrics(
    predictor: HierarchicalPredictor,
    evalset: EvalSet,
    reference: CollapseReference | None = None,
) -> dict[str, float]:
    """Cheap per-epoch diagnostics of the predictor's outputs on clean views; with a
    `reference`, also `embedding_std_ratio` (the output's std over the backbone's)."""
    was_training = predictor.training
    predictor.eval()
    train_z, eval_z = predictor(evalset.train_x), predictor(evalset.eval_x)
    predictor.train(was_training)
    std, rank = collapse_metrics(train_z)
    row = {
        M.EMBEDDING_STD: std,
        M.EFFECTIVE_RANK: rank,
        M.KNN_ACCURACY: knn_accuracy(train_z.cpu(), evalset.train_y, eval_z.cpu(), evalset.eval_y),
    }
    if reference is not None:
        row[M.EMBEDDING_STD_RATIO] = std / max(reference.embedding_std, 1e-12)
    return row


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
    finite (status `diverged`) or the outputs collapsed (status `collapsed`, see
    `is_collapsed`; `stop_on_collapse=False` only tags it and trains on).
    `wrap` wraps the objective module, e.g. in DistributedDataParallel.
    """
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    dim = evalset.train_x.shape[1]
    reference = CollapseReference.of(evalset.train_x)
    predictor = HierarchicalPredictor(dim, cfg.predictor_width, cfg.depth).to(device)
    objective = build_objective(cfg.objective, predictor).to(device)
    model = wrap(objective) if wrap else objective
    optimizer = torch.optim.AdamW(
        objective.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    # Embeddings go to the device for the predictor's forward pass; labels stay on the
    # CPU, where the diagnostics (kNN) run.
    evalset = EvalSet(
        evalset.train_x.to(device), evalset.train_y, evalset.eval_x.to(device), evalset.eval_y
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    result = TrainResult(predictor, reference=reference)
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
            row.update(epoch_metrics(predictor, evalset, reference))
        else:
            # The weights are no longer finite: the diagnostics (an SVD) would raise, and
            # the trial must end as `diverged`, not as an error.
            result.status = STATUS_DIVERGED
        result.history.append(row)
        if result.status == STATUS_FINISHED and is_collapsed(
            row[M.EMBEDDING_STD], row[M.EFFECTIVE_RANK], reference
        ):
            result.status = STATUS_COLLAPSED
        if on_epoch:
            on_epoch(row)
        if result.status == STATUS_DIVERGED or (
            result.status == STATUS_COLLAPSED and stop_on_collapse
        ):
            break
    result.backbone_images = views.backbone_images
    return result


def save_predictor(predictor: HierarchicalPredictor, cfg: TrialConfig, path: str | Path) -> Path:
    """Write `predictor.pt`: {"state_dict", "config" (the TrialConfig as a dict), "dim"}.

    Only tensors and plain values, so that `jepa.evaluate.load_predictor` reads it with
    `torch.load(weights_only=True)`. The objective's extra parts (prediction head, EMA
    target) are not saved: as in SimSiam and BYOL, only the trained network is kept.
    """
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in predictor.state_dict().items()}
    torch.save({"state_dict": state, "config": cfg.to_dict(), "dim": predictor.dim}, path)
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m jepa.train`: one configuration, no sweep, logged like a trial."""
    from sweeps.single import train_main

    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
