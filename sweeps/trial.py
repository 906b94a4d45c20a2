"""One Tune trial: its trainable (`run_trial`, light, inside the trial's MLflow run) and
its body (`trial_body`, what one rank of a pool group does for one config).

`run_trial` is the Tune function trainable. It opens the trial's run through
`sweeps.lifecycle`, fetches the embedding bank's reference from the sweep's cache actor,
and hands the job to the sweep's pool of long-lived Ray Train worker groups
(`sweeps.pool`), whose workers run `trial_body`. Every rank trains; rank 0 logs each
epoch to MLflow and streams it back to the trainable, which reports it to Tune, then
evaluates and logs through `lifecycle.finish_trial`.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray
import torch

from jepa import metrics as M
from jepa.config import TrialConfig
from jepa.features import FeatureBank
from jepa.train import EvalSet, train_predictor
from jepa.views import CachedViewPairs, LiveViewPairs
from sweeps import lifecycle, pool, tracking
from sweeps.faults import Fault
from sweeps.mlflow_conventions import DatasetRef
from sweeps.pool import TrialContext
from sweeps.resume import close_earlier_attempts

if TYPE_CHECKING:
    from jepa.backbones import BackboneSpec
    from jepa.data import ImageDataset


@dataclass(frozen=True)
class SweepContext:
    """What every trial of one sweep shares (passed with `tune.with_parameters`)."""

    sweep_name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    base_config: dict[str, Any]
    backbone: BackboneSpec
    run_tags: dict[str, str]
    """Tags every run gets: backbone and data set."""
    run_params: dict[str, str]
    """Params every trial run gets besides its config (checkpoint SHA-256, data set)."""
    cache_actor: str
    namespace: str
    pool_broker: str
    """The name of the sweep's pool broker actor (`sweeps.pool`), in `namespace`."""
    storage_path: str
    feature_cache: bool = True
    workers_per_trial: int = 1
    gpus_per_trial: float = 0.0
    cpus_per_worker: float = 1.0
    baseline_probe_accuracy: dict[int, float] = field(default_factory=dict)
    """The raw backbone's probe_accuracy (test) by seed: a trial's lift is paired with
    its own seed's; a seed not here is computed by the trial."""
    dataset: DatasetRef | None = None
    """The data set, logged as every trial run's MLflow dataset input."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialJob:
    """What one rank needs to run one trial (`trial_body`): picklable, sent by Ray."""

    config: TrialConfig
    run_id: str
    tracking_uri: str
    data: list[Any]
    """[ObjectRef] of a `FeatureBank`, or of the `ImageDataset` when the cache is off (a
    bare ref in the loop config would be resolved by Ray before the worker asks)."""
    feature_cache: bool = True
    backbone: BackboneSpec | None = None
    """Only with the cache off; unpickling it would import timm in the worker."""
    baseline_probe_accuracy: dict[int, float] = field(default_factory=dict)
    fault: Fault | None = None
    """A test's injected failure (`sweeps.faults`), else None."""
    attempt: int = 1
    """Which attempt of the trial this is (1, then 2... when Tune retries it)."""
    trial_started: float = 0.0
    """Wall clock when the trial's driver started (the startup time is measured from it)."""


def run_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """Tune trainable: train and evaluate one configuration, logged as an MLflow run.

    Light: it opens the run, hands the work to the sweep's pool (`sweeps.pool`), whose
    long-lived Ray Train workers run `trial_body`, and reports the rows they stream back.
    A pool worker that dies mid-trial makes this raise (`PoolWorkerDied`): the run ends
    FAILED with the reason and Tune retries the trial (`--max-failures`).
    """
    from ray import tune

    started = time.time()  # wall clock: compared with the worker's, on the same node or not
    cfg = TrialConfig.from_dict({**ctx.base_config, **config})
    trial_id = tune.get_context().get_trial_id()
    client = tracking.client(ctx.tracking_uri)
    earlier = close_earlier_attempts(client, ctx.experiment_id, ctx.parent_run_id, trial_id)
    if earlier.finished_run is not None:
        # The sweep was cut off after this trial finished but before Tune recorded it:
        # hand Tune the logged result instead of training (and logging) it twice.
        tune.report(_logged_result(earlier.finished_run))
        return
    tags = {
        "mlflow.parentRunId": ctx.parent_run_id,
        M.TAG_TRIAL_ID: trial_id,
        M.TAG_ATTEMPT: str(earlier.count + 1),  # the REST store takes strings only
        M.TAG_SWEEP_NAME: ctx.sweep_name,
        **ctx.run_tags,
    }
    with lifecycle.trial_run(
        client,
        ctx.experiment_id,
        f"trial-{trial_id}",
        tags,
        ctx.run_params,
        cfg,
        dataset=ctx.dataset,
        baseline=ctx.baseline_probe_accuracy.get(cfg.seed),
    ) as run_id:
        cache = ray.get_actor(ctx.cache_actor, namespace=ctx.namespace)
        if ctx.feature_cache:
            data_ref = ray.get(cache.bank.remote(cfg.aug_strength))
        else:
            data_ref = ray.get(cache.dataset_ref.remote())
        job = TrialJob(
            config=cfg,
            run_id=run_id,
            tracking_uri=ctx.tracking_uri,
            data=data_ref,
            feature_cache=ctx.feature_cache,
            backbone=None if ctx.feature_cache else ctx.backbone,
            baseline_probe_accuracy=ctx.baseline_probe_accuracy,
            fault=ctx.extra.get("fault"),
            attempt=earlier.count + 1,
            trial_started=started,
        )
        broker = ray.get_actor(ctx.pool_broker, namespace=ctx.namespace)
        pool.relay(broker, trial_id, {"job": job}, tune.report)


def _logged_result(run) -> dict[str, Any]:
    """What a finished trial reported to Tune, read back from its MLflow run."""
    return {**run.data.metrics, M.TAG_STATUS: run.data.tags.get(M.TAG_STATUS, "?")}


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


def worker_resources(workers: int, gpus_per_trial: float, cpus_per_worker: float) -> dict:
    """What one rank of a trial reserves: its CPUs and its share of the trial's GPUs."""
    resources = {"CPU": cpus_per_worker}
    if gpus_per_trial > 0:
        resources["GPU"] = gpus_per_trial / workers
    return resources


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
