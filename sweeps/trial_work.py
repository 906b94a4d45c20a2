"""What one rank of a pool group does for one trial (`trial_body`): fetch the bank, train,
stream each epoch back to the trial's trainable (`sweeps.trial.run_trial`), and on rank 0
log the epochs, evaluate and close the work through `sweeps.lifecycle.finish_trial`.

Runs in the pool's Ray Train workers (`sweeps.pool`), which import torch once and keep
the banks they fetched between trials.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

import ray
import torch

from jepa import metrics as M
from jepa.features import FeatureBank
from jepa.train import EvalSet, train_predictor
from jepa.views import CachedViewPairs, LiveViewPairs
from sweeps import lifecycle, tracking
from sweeps.pool import TrialContext
from sweeps.trial import TrialJob

if TYPE_CHECKING:
    from jepa.backbones import BackboneSpec
    from jepa.config import TrialConfig
    from jepa.data import ImageDataset


def node_tags() -> dict[str, str]:
    """Where this process runs: host name, node IP and Ray node id. Several Ray nodes can
    share one host and IP (as in the tests); the node id tells them apart."""
    node_id = ray.get_runtime_context().get_node_id()
    ip = ray.util.get_node_ip_address()
    host = socket.gethostname()
    return {
        M.TAG_NODE: f"{host} ({ip}) node {node_id[:12]}",
        M.TAG_NODE_ID: node_id,
        M.TAG_NODE_IP: ip,
        M.TAG_HOST: host,
    }


def trial_timings(started: float, worker: dict[str, float]) -> dict[str, float]:
    """The trial's time split: wall time since its trainable started, the work rank 0
    timed (training, backbone, evaluation) and the rest, the orchestration overhead
    (see `jepa.metrics`)."""
    times = {M.TIME_TRIAL: time.time() - started, **worker}
    work = sum(times.get(k, 0.0) for k in (M.TIME_TRAIN, M.TIME_BACKBONE, M.TIME_EVAL))
    times[M.TIME_OVERHEAD] = times[M.TIME_TRIAL] - work
    return times


class TrialStopped(Exception):
    """Tune stopped the trial (ASHA, the end of the sweep): its ranks return early."""


def pool_body(config: dict[str, Any], ctx: TrialContext) -> None:
    """The pool's body (`sweeps.pool`): `trial_body` of the config's `job`."""
    trial_body(config["job"], ctx)


def trial_body(job: TrialJob, ctx: TrialContext) -> None:
    """What one rank of a pool group does for one config: fetch the bank (kept in the
    worker for the next trials), train (every rank), report each epoch's row to the
    Tune trial (`ctx.report`); rank 0 also logs the epochs, evaluates and logs the run
    through `lifecycle.finish_trial`, and logs the trial's timings (`jepa.metrics.TIME_*`).

    Between epochs every rank asks `ctx.should_stop()`; once Tune stopped the trial the
    ranks return and rank 0 closes its run KILLED, as an interrupted trial's.
    """
    import ray.train.torch

    times = {M.TIME_STARTUP: time.time() - job.trial_started}
    rank = ctx.rank
    device = ray.train.torch.get_device()
    cfg = job.config
    client = tracking.client(job.tracking_uri) if rank == 0 else None
    if rank == 0:
        # Tagged here, not by the trial's trainable: the trainable reserves no CPU and
        # may sit on any node; the node that trains is the one that matters.
        tracking.set_tags(client, job.run_id, node_tags())
    bank, views = _fetch(job, device, times, ctx.state)
    # The per-epoch diagnostics (kNN, what ASHA prunes on) score the validation split:
    # nothing the search sees comes from the test split.
    evalset = EvalSet(bank.train_clean, bank.train_labels, bank.val_clean, bank.val_labels)
    reporting = 0.0  # seconds in on_epoch: logging and reporting are not training

    def on_epoch(row: dict[str, float]) -> None:
        nonlocal reporting
        start = time.perf_counter()
        if rank == 0:
            lifecycle.log_epoch(client, job.run_id, row)
        if job.fault is not None:  # mid-trial, after an epoch was logged
            job.fault.maybe_raise(cfg.to_dict(), job.attempt)
        ctx.report(row)
        if ctx.should_stop():
            raise TrialStopped
        reporting += time.perf_counter() - start

    wrap = ray.train.torch.prepare_model if ctx.world_size > 1 else None
    start = time.perf_counter()
    try:
        result = train_predictor(
            cfg,
            views,
            evalset,
            on_epoch=on_epoch,
            rank=rank,
            world_size=ctx.world_size,
            wrap=wrap,
            device=device,
        )
    except TrialStopped:
        if rank == 0:
            client.set_terminated(job.run_id, "KILLED")
        return
    times[M.TIME_TRAIN] = time.perf_counter() - start - reporting
    if rank == 0:
        final = lifecycle.finish_trial(
            client,
            job.run_id,
            result,
            bank,
            cfg,
            baseline=job.baseline_probe_accuracy.get(cfg.seed),
            times=times,
        )
        tracking.log_metrics(client, job.run_id, trial_timings(job.trial_started, times))
        ctx.report(final)


BANKS_KEPT = 4  # banks a pool worker keeps between trials (one per augmentation level)


def _fetch(
    job: TrialJob, device: torch.device, times: dict[str, float], kept: dict[str, Any]
) -> tuple[FeatureBank, CachedViewPairs | LiveViewPairs]:
    """The trial's bank and its training views: the cached bank's (from `kept`, the
    worker's banks by object id, when an earlier trial fetched it), or (cache off) live
    views from the images, with the backbone's time in `times`."""
    key = job.data[0].hex()
    if key not in kept:
        while len(kept) >= BANKS_KEPT:
            kept.pop(next(iter(kept)))
        kept[key] = ray.get(job.data[0])
    data = kept[key]
    if job.feature_cache:
        return data, CachedViewPairs(data.views)
    start = time.perf_counter()
    assert job.backbone is not None  # the driver sends it when the cache is off
    bank, views = _live_views(data, job.backbone, job.config, device)
    times[M.TIME_BACKBONE] = time.perf_counter() - start
    return bank, views


def _live_views(
    data: ImageDataset, spec: BackboneSpec, cfg: TrialConfig, device: torch.device
) -> tuple[FeatureBank, LiveViewPairs]:
    """The seed's way (cache off): views made by augmenting and running the backbone on
    every batch; the clean embeddings for evaluation are computed here, by this trial."""
    from jepa.augment import clean_transform
    from jepa.backbones import build_backbone
    from jepa.batch_augment import BatchViews
    from jepa.features import embed_views

    backbone = build_backbone(spec)
    views = LiveViewPairs(data.train_images, backbone, cfg.aug_strength, device)
    # Batched on the trial's device (`embed_views`), unlike `jepa.evaluate.clean_bank`,
    # which feeds one image at a time through a loader: the same transform, faster here.
    clean = BatchViews(clean_transform(backbone.image_size))
    bank = FeatureBank(
        views=torch.empty(0, 0, 0),
        train_clean=embed_views(backbone, data.train_images, clean, device=device),
        train_labels=data.train_labels,
        eval_clean=embed_views(backbone, data.eval_images, clean, device=device),
        eval_labels=data.eval_labels,
        val_clean=embed_views(backbone, data.val_images, clean, device=device),
        val_labels=data.val_labels,
    )
    views.backbone_images += len(data.train_images) + len(data.val_images)
    views.backbone_images += len(data.eval_images)
    return bank, views
