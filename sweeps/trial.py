"""One Tune trial's trainable (`run_trial`): what the sweep shares with every trial
(`SweepContext`) and the job it hands a pool group (`TrialJob`).

`run_trial` opens the trial's run through `sweeps.lifecycle`, fetches the embedding
bank's reference from the sweep's cache actor, and hands the job to the sweep's pool of
long-lived Ray Train worker groups (`sweeps.pool`), whose workers run
`sweeps.trial_work.trial_body`; it reports to Tune the rows they stream back.

Light on purpose: no torch, no scikit-learn (a test checks). Tune starts one trainable
actor per running trial, beside the pool's processes that do import them; at ~0.2 GB
instead of ~1 GB each, eight concurrent trials fit in a 24 GB machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray

from jepa import metrics as M
from jepa.config import TrialConfig
from sweeps import lifecycle, pool, tracking
from sweeps.faults import Faults
from sweeps.mlflow_conventions import DatasetRef
from sweeps.resume import close_earlier_attempts

if TYPE_CHECKING:
    from jepa.backbone_spec import BackboneSpec


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
    fault: Faults | None = None
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


def worker_resources(workers: int, gpus_per_trial: float, cpus_per_worker: float) -> dict:
    """What one rank of a trial reserves: its CPUs and its share of the trial's GPUs."""
    resources = {"CPU": cpus_per_worker}
    if gpus_per_trial > 0:
        resources["GPU"] = gpus_per_trial / workers
    return resources
