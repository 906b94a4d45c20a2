"""One Tune trial: its driver (`run_trial`, a Ray Train TorchTrainer job inside the
trial's MLflow run) and its body (`trial_body`, what one rank does for one config).

`run_trial` is the Tune function trainable. It opens the trial's run through
`sweeps.lifecycle`, fetches the embedding bank's reference from the sweep's cache actor,
and starts a `TorchTrainer` whose workers run `trial_body`. Every rank trains; rank 0
logs each epoch to MLflow and reports it to Tune (through `TuneReportCallback`), then
evaluates and logs through `lifecycle.finish_trial`.
"""

from __future__ import annotations

import functools
import os
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
from sweeps import lifecycle, tracking
from sweeps.faults import Fault
from sweeps.mlflow_conventions import DatasetRef
from sweeps.resume import close_earlier_attempts

if TYPE_CHECKING:
    from jepa.backbones import BackboneSpec
    from jepa.data import ImageDataset

# Ray Train V2 settings for short trials, used unless the environment sets them. The
# controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default 2 s), and
# a worker's `report` waits until the previous report was collected by such a poll, so
# with the default every epoch of a small trial waited up to 2 s, and so did the end of
# every trial. The preemption watcher (an extra actor, i.e. a process, per trial) only
# matters on clusters whose nodes get preempted (cloud spot instances).
# See ray/train/v2/_internal/constants.py; Train passes them on to its controller and
# workers (ENV_VARS_TO_PROPAGATE).
TRAIN_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


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
    trial_started: float = 0.0
    """Wall clock when the trial's driver started (the startup time is measured from it)."""


def run_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """Tune trainable: train and evaluate one configuration, logged as an MLflow run."""
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
            trial_started=started,
        )
        # Train reads TRAIN_ENV from this process's environment when it starts its
        # controller and workers; it is put back afterwards (this process serves the
        # next trial too).
        with tracking.scoped_environ({**TRAIN_ENV, **_already_set(TRAIN_ENV)}):
            result = _trainer(ctx, trial_id, job).fit()
        tracking.log_metrics(client, run_id, trial_timings(started, result.return_value))


def _already_set(defaults: dict[str, str]) -> dict[str, str]:
    """The values of `defaults`' names the environment sets: those win."""
    return {k: os.environ[k] for k in defaults if k in os.environ}


def _trainer(ctx: SweepContext, trial_id: str, job: TrialJob) -> Any:
    """The trial's TorchTrainer: `ctx.workers_per_trial` workers running `train_worker`."""
    from ray.train import RunConfig, ScalingConfig
    from ray.tune.integration.ray_train import TuneReportCallback

    return lean_torch_trainer()(
        train_worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(
            num_workers=ctx.workers_per_trial,
            use_gpu=ctx.gpus_per_trial > 0,
            resources_per_worker=_worker_resources(ctx),
        ),
        run_config=RunConfig(
            name=f"{ctx.sweep_name}-{trial_id}",
            storage_path=os.path.join(ctx.storage_path, "_train"),
            callbacks=[TuneReportCallback()],
        ),
    )


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


@functools.cache
def lean_torch_trainer() -> type:
    """`TorchTrainer` that does not start a `DatasetManager` actor when it is given no
    Ray Datasets (we give none: the embeddings come through the object store). Every
    actor is a new Python process that imports Ray Train and Ray Data, seconds of CPU
    per trial on a small machine; a trial started six.

    (The placement-group cleaner, another actor per run, stays: it removes the run's
    placement group when the controller dies uncleanly. Without it, after workers were
    killed for memory, their runs' CPUs stayed reserved and the next trials waited for
    them indefinitely.)

    Still a Ray Train V2 `TorchTrainer`. Ray versions without this private class get
    the plain TorchTrainer.
    """
    from ray.train.torch import TorchTrainer

    try:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    except ImportError:
        return TorchTrainer

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return LeanTorchTrainer


def trial_timings(started: float, worker: dict[str, float] | None) -> dict[str, float]:
    """The trial's time split: wall time of the driver, the work rank 0 timed (training,
    backbone, evaluation) and the rest, the orchestration overhead (see `jepa.metrics`)."""
    times = {M.TIME_TRIAL: time.time() - started, **(worker or {})}
    work = sum(times.get(k, 0.0) for k in (M.TIME_TRAIN, M.TIME_BACKBONE, M.TIME_EVAL))
    times[M.TIME_OVERHEAD] = times[M.TIME_TRIAL] - work
    return times


def _worker_resources(ctx: SweepContext) -> dict[str, float]:
    resources = {"CPU": ctx.cpus_per_worker}
    if ctx.gpus_per_trial > 0:
        resources["GPU"] = ctx.gpus_per_trial / ctx.workers_per_trial
    return resources


def train_worker(config: dict[str, Any]) -> dict[str, float]:
    """Ray Train's worker loop: `trial_body` of the loop config's `job`."""
    return trial_body(config["job"])


def trial_body(job: TrialJob) -> dict[str, float]:
    """What one rank does for one config, inside a Ray Train worker group: fetch the
    bank, train (every rank), report each epoch; rank 0 also logs the epochs and then
    evaluates and logs the run through `lifecycle.finish_trial`.

    Returns rank 0's timings (`jepa.metrics.TIME_*`), which the driver gets back as the
    result's `return_value`.
    """
    import ray.train
    import ray.train.torch

    times = {M.TIME_STARTUP: time.time() - job.trial_started}
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    cfg = job.config
    client = tracking.client(job.tracking_uri) if rank == 0 else None
    if rank == 0:
        # Tagged here, not by the trial's driver: the driver reserves no CPU and may sit
        # on any node; the node that trains is the one that matters.
        tracking.set_tags(client, job.run_id, node_tags())
    bank, views = _fetch(job, device, times)
    # The per-epoch diagnostics (kNN, what ASHA prunes on) score the validation split:
    # nothing the search sees comes from the test split.
    evalset = EvalSet(bank.train_clean, bank.train_labels, bank.val_clean, bank.val_labels)
    reporting = 0.0  # seconds in on_epoch: logging and reporting are not training

    def on_epoch(row: dict[str, float]) -> None:
        nonlocal reporting
        start = time.perf_counter()
        if rank == 0:
            lifecycle.log_epoch(client, job.run_id, row)
        if job.fault is not None:
            job.fault.maybe_raise(cfg.to_dict())  # mid-trial, after an epoch was logged
        ray.train.report(dict(row) if rank == 0 else {})
        reporting += time.perf_counter() - start

    wrap = ray.train.torch.prepare_model if world_size > 1 else None
    start = time.perf_counter()
    result = train_predictor(
        cfg,
        views,
        evalset,
        on_epoch=on_epoch,
        rank=rank,
        world_size=world_size,
        wrap=wrap,
        device=device,
    )
    times[M.TIME_TRAIN] = time.perf_counter() - start - reporting
    final: dict[str, Any] = {}
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
    ray.train.report(final)
    return times


def _fetch(
    job: TrialJob, device: torch.device, times: dict[str, float]
) -> tuple[FeatureBank, CachedViewPairs | LiveViewPairs]:
    """The trial's bank and its training views: the cached bank's, or (cache off) live
    views from the images, with the backbone's time in `times`."""
    data = ray.get(job.data[0])
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
