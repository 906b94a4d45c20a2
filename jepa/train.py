"""Training a predictor on pairs of views: a function that returns its metrics.

A Tune trial (through Ray Train workers), a test and `python -m jepa.train` all call
`train_predictor`; that command trains one configuration without a sweep and logs it to
MLflow like a trial (its wiring is `sweeps/single.py`, which calls this library, never
the other way: `jepa/commands.py` says how the command reaches it).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # `python -m jepa.train` (DESIGN.md) is `sweeps.single`'s command: hand over before the
    # imports below, which would load torch and scikit-learn (~3 s) only for the process
    # that replaces this one to load them again.
    from jepa.commands import hand_over

    hand_over("train", sys.argv[1:])

import math
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

# The collapse rule (README, "Collapse and objectives"). Its metrics come from
# `epoch_metrics` on the predictor's outputs for the clean images, after every epoch,
# and are judged against the raw backbone's own values, so that an anisotropic backbone
# (the demo's random ViT: embedding_std 0.009 where isotropic 192-d features have 0.072)
# never counts as collapsed by itself. Two verdicts, because the two failures differ in
# what a consumer of the outputs loses (Jing et al., ICLR 2022, tell complete from
# dimensional collapse the same way):
# - scale: embedding_std < COLLAPSE_STD_FRACTION x the backbone's. The spread around the
#   mean direction shrank tenfold; what varies between images may all still be there
#   (on the demo cross_view shrinks to 0.04 x while its centred rank rises 20 -> 35 and
#   the probe stays at the baseline's). A tag, not a reason to stop.
# - information: the centred effective_rank < COLLAPSE_RANK_FRACTION x the backbone's
#   (what varies between images spans a quarter of the directions it spanned in the
#   input, e.g. 3-10 of the demo's 20, or of I-JEPA's hundreds), or the kNN accuracy fell
#   below KNN_CHANCE_FACTOR x chance while the backbone's is above it. The representation
#   lost what the probe needs; the run stops (`stop_on_collapse`).
# The fractions sit below every run that kept its probe: on the demo, at their chosen
# learning rates, the objectives end 10 epochs at a centred rank >= 0.71 x the backbone's
# and a kNN >= 0.48 (chance 0.10); the runs marked `information` there (ema at lr 3e-3 with
# a slow target) lost 5-10 points of probe (README, "Measured on the embedded default").
COLLAPSE_STD_FRACTION = 0.1
COLLAPSE_RANK_FRACTION = 0.25
KNN_CHANCE_FACTOR = 1.5


@dataclass
class EvalSet:
    """Clean embeddings used to watch training: train [N, D] / eval [M, D] with labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor


@dataclass(frozen=True)
class CollapseReference:
    """The raw backbone's collapse metrics on the clean training embeddings; `knn_accuracy`
    and `chance` (the majority class's share of the evaluation split, what a constant
    output scores) when labels were given."""

    embedding_std: float
    effective_rank: float
    knn_accuracy: float | None = None
    chance: float | None = None

    @classmethod
    def of(cls, backbone_embeddings: torch.Tensor) -> CollapseReference:
        """backbone_embeddings: [N, D]."""
        return cls(*collapse_metrics(backbone_embeddings))

    @classmethod
    def of_evalset(cls, evalset: EvalSet) -> CollapseReference:
        """The backbone's metrics on `evalset` (the raw embeddings), kNN and chance included."""
        std, rank = collapse_metrics(evalset.train_x)
        knn = knn_accuracy(evalset.train_x, evalset.train_y, evalset.eval_x, evalset.eval_y)
        counts = torch.bincount(torch.as_tensor(evalset.eval_y).long().cpu())
        return cls(std, rank, knn, float(counts.max()) / max(int(counts.sum()), 1))


@dataclass
class TrainResult:
    predictor: HierarchicalPredictor
    history: list[dict[str, float]] = field(default_factory=list)
    status: str = STATUS_FINISHED
    """finished, diverged, or collapsed (= an `information` verdict)."""
    backbone_images: int = 0
    reference: CollapseReference | None = None
    collapse: str = M.COLLAPSE_NONE
    """The most severe `collapse_verdict` over the epochs (`jepa.collapse`)."""
    total_steps: int = 0
    """Optimiser steps the run was planned for on this rank (the EMA schedule's K)."""


def collapse_verdict(
    embedding_std: float,
    effective_rank: float,
    reference: CollapseReference,
    knn: float | None = None,
) -> str:
    """The collapse rule above: `information`, `scale` or `none` (`jepa.metrics`), judged
    against the backbone's `reference`; the kNN test applies when `knn` and the
    reference's chance are known."""
    rank_lost = effective_rank < COLLAPSE_RANK_FRACTION * reference.effective_rank
    at_chance = False
    if knn is not None and reference.chance is not None:
        floor = KNN_CHANCE_FACTOR * reference.chance
        backbone_above = reference.knn_accuracy is None or reference.knn_accuracy >= floor
        at_chance = knn < floor and backbone_above
    if rank_lost or at_chance:
        return M.COLLAPSE_INFORMATION
    if embedding_std < COLLAPSE_STD_FRACTION * reference.embedding_std:
        return M.COLLAPSE_SCALE
    return M.COLLAPSE_NONE


def _more_severe(a: str, b: str) -> str:
    return max(a, b, key=M.COLLAPSE_VERDICTS.index)


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1, rank: int = 0) -> int:
    """Optimiser steps one rank takes per epoch on n images (as `train_predictor` batches)."""
    sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    sizes = [s for s in sizes if s >= 2]
    if world_size > 1:
        sizes = sizes[: len(sizes) // world_size * world_size][rank::world_size]
    return len(sizes)


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
    this rank's batches) and the `epoch_metrics`. Each epoch gets a `collapse_verdict`;
    the result keeps the most severe in `collapse`. Stops early when the loss is not
    finite (status `diverged`) or on an `information` verdict (status `collapsed`;
    `stop_on_collapse=False` only tags it and trains on); a `scale` verdict never stops.
    `wrap` wraps the objective module, e.g. in DistributedDataParallel.
    evalset's eval part must be a validation split, never the test split: its kNN feeds
    the collapse verdict, which stops runs and tags them for the search.
    """
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    dim = evalset.train_x.shape[1]
    reference = CollapseReference.of_evalset(evalset)
    predictor = HierarchicalPredictor(dim, cfg.predictor_width, cfg.depth).to(device)
    total_steps = cfg.max_epochs * steps_per_epoch(len(views), cfg.batch_size, world_size, rank)
    objective = build_objective(cfg.objective, predictor, cfg, max(total_steps, 1)).to(device)
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
    result = TrainResult(predictor, reference=reference, total_steps=total_steps)
    for epoch in range(1, cfg.max_epochs + 1):
        order = torch.randperm(len(views), generator=generator)
        # A 1-image tail is dropped before the batches are dealt to the ranks: VICReg's
        # variance needs two samples, and a rank that skipped it would take one step
        # fewer than the others, and DDP's all-reduce would wait for it forever.
        batches = [b for b in order.split(cfg.batch_size) if len(b) >= 2]
        if world_size > 1:
            # DDP needs the same number of steps on every rank: drop the ragged tail.
            batches = batches[: len(batches) // world_size * world_size][rank::world_size]
        total, count = 0.0, 0
        predictor.train()
        for index in batches:
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
        if result.status != STATUS_DIVERGED:
            verdict = collapse_verdict(
                row[M.EMBEDDING_STD], row[M.EFFECTIVE_RANK], reference, row[M.KNN_ACCURACY]
            )
            result.collapse = _more_severe(result.collapse, verdict)
            if result.collapse == M.COLLAPSE_INFORMATION:
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
    target, VICReg's expander) are not saved: as in the papers, only the trained network
    is kept.
    """
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in predictor.state_dict().items()}
    torch.save({"state_dict": state, "config": cfg.to_dict(), "dim": predictor.dim}, path)
    return path
