"""A whole sweep: Ray cluster, MLflow parent and baseline runs, the Tuner, the summary."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from jepa import metrics as M
from jepa.backbones import BackboneSpec, weights_hash
from jepa.config import TrialConfig
from jepa.data import DatasetSpec, describe, load_dataset
from jepa.errors import UserInputError
from jepa.evaluate import evaluate_representation
from sweeps import tracking
from sweeps.cli import resolve_paths
from sweeps.feature_cache import FeatureCacheActor
from sweeps.search import FinalMetricOptunaSearch
from sweeps.spaces import SearchSpace, load_space
from sweeps.trial import SweepContext, run_trial

NAMESPACE = "jepa-sweeps"
TOKEN_PATH = Path.home() / ".ray" / "auth_token"
DRIVER_MEMORY = 256 * 1024**2  # bytes reserved by each trial's driver process


@dataclass
class SweepOptions:
    space: SearchSpace
    backbone: BackboneSpec
    dataset: DatasetSpec
    demo_reasons: list[str]
    num_samples: int = 8
    max_epochs: int | None = None
    seed: int = 0
    experiment: str = tracking.DEFAULT_EXPERIMENT
    tracking_uri: str = field(default_factory=tracking.default_tracking_uri)
    storage: str = "ray_results"
    address: str | None = None
    workers_per_trial: int = 1
    gpus_per_trial: float = 0.0
    cpus_per_worker: float = 1.0
    max_concurrent: int | None = None
    scheduler: str = "none"
    feature_cache: bool = True
    views: int = 8
    cache_dir: str = ".cache/embeddings"
    resume: bool = False

    def base_config(self) -> dict[str, Any]:
        base = {**TrialConfig().to_dict(), **self.space.fixed, "seed": self.seed}
        if self.max_epochs is not None:
            base["max_epochs"] = self.max_epochs
        return TrialConfig.from_dict(base).to_dict()


@dataclass
class SweepSummary:
    parent_run_id: str
    finished: int
    failed: int
    best_config: dict[str, Any] | None
    best_probe_accuracy: float | None
    baseline_probe_accuracy: float
    rows: list[dict[str, Any]]
    backbone_images: int


def options_from_args(args: argparse.Namespace) -> SweepOptions:
    """Validate every flag before anything is started or written."""
    space = load_space(args.space)
    backbone, checkpoint, data, reasons = resolve_paths(args)
    return SweepOptions(
        space=space,
        backbone=BackboneSpec(
            name=backbone,
            checkpoint=str(checkpoint) if checkpoint else None,
            encoder=args.encoder,
        ),
        dataset=DatasetSpec(
            source=data,
            images_per_class=args.images_per_class,
            eval_per_class=args.eval_per_class,
            seed=args.seed,
            skip_bad_images=args.skip_bad_images,
        ),
        demo_reasons=reasons,
        num_samples=args.num_samples,
        max_epochs=args.max_epochs,
        seed=args.seed,
        experiment=args.experiment,
        tracking_uri=args.tracking_uri or tracking.default_tracking_uri(),
        storage=args.storage,
        address=args.address or os.environ.get("RAY_ADDRESS"),
        workers_per_trial=args.workers_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_worker=args.cpus_per_worker,
        max_concurrent=args.max_concurrent,
        scheduler=args.scheduler,
        feature_cache=args.feature_cache == "on",
        views=args.views,
        cache_dir=args.cache_dir,
        resume=args.resume,
    )


def run_sweep(opts: SweepOptions) -> SweepSummary:
    """Run the sweep `opts` describes; returns what the end-of-sweep table shows."""
    # Checks that need no cluster and write nothing, so bad input leaves nothing behind.
    _check_writable(opts.storage, "--storage")
    _check_writable(opts.cache_dir, "--cache-dir")
    dataset = load_dataset(opts.dataset)
    backbone_hash = weights_hash(opts.backbone)
    experiment_id = tracking.ensure_experiment(opts.tracking_uri, opts.experiment)
    base_config = opts.base_config()

    if opts.demo_reasons:
        print(
            "Running the embedded demo (scikit-learn digits, small random ViT) because: "
            + "; ".join(opts.demo_reasons)
            + "."
        )
    started_ray = _init_ray(opts)
    try:
        _check_gpus(opts)
        sweep_name = f"{opts.space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_tags = {
            M.TAG_BACKBONE: _backbone_tag(opts.backbone),
            M.TAG_DATASET: describe(opts.dataset),
        }
        run_params = {
            "backbone_sha256": backbone_hash,
            "dataset_manifest": dataset.manifest_hash,
            "train_images": len(dataset.train_images),
            "eval_images": len(dataset.eval_images),
        }
        client = tracking.client(opts.tracking_uri)
        parent = client.create_run(
            experiment_id,
            run_name=sweep_name,
            tags={M.TAG_ROLE: M.ROLE_SWEEP, M.TAG_SWEEP_NAME: sweep_name, **run_tags},
        )
        parent_id = parent.info.run_id
        print(f"MLflow: experiment {opts.experiment!r}, sweep run {parent_id}")
        try:
            summary = _sweep(
                opts,
                client,
                experiment_id,
                parent_id,
                sweep_name,
                dataset,
                backbone_hash,
                base_config,
                run_tags,
                run_params,
            )
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            client.set_terminated(parent_id, status)
            raise
        client.set_terminated(parent_id, "FINISHED")
        return summary
    finally:
        if started_ray:
            ray.shutdown()


def _sweep(
    opts,
    client,
    experiment_id,
    parent_id,
    sweep_name,
    dataset,
    backbone_hash,
    base_config,
    run_tags,
    run_params,
) -> SweepSummary:
    from ray import tune

    tracking.log_params(
        client,
        parent_id,
        {
            "space": opts.space.name,
            "num_samples": opts.num_samples,
            "seed": opts.seed,
            "feature_cache": opts.feature_cache,
            "views": opts.views,
            **{f"base.{k}": v for k, v in base_config.items()},
            **run_params,
        },
    )
    cache_name = f"jepa-feature-cache-{sweep_name}"
    cache = FeatureCacheActor.options(
        name=cache_name,
        namespace=NAMESPACE,
        lifetime=None,
        num_gpus=1 if opts.gpus_per_trial > 0 else 0,
    ).remote(
        opts.cache_dir,
        opts.backbone,
        ray.put(dataset),
        backbone_hash,
        opts.views,
        opts.seed,
        use_gpu=opts.gpus_per_trial > 0,
    )

    baseline = _baseline(
        opts, client, cache, experiment_id, parent_id, sweep_name, base_config, run_tags, run_params
    )

    ctx = SweepContext(
        sweep_name=sweep_name,
        tracking_uri=opts.tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent_id,
        base_config=base_config,
        backbone=opts.backbone,
        run_tags=run_tags,
        run_params=run_params,
        cache_actor=cache_name,
        namespace=NAMESPACE,
        storage_path=str(Path(opts.storage).resolve()),
        feature_cache=opts.feature_cache,
        workers_per_trial=opts.workers_per_trial,
        gpus_per_trial=opts.gpus_per_trial,
        cpus_per_worker=opts.cpus_per_worker,
        baseline_probe_accuracy=baseline[M.PROBE_ACCURACY],
    )
    # Rank 0 reports probe_accuracy only after the last epoch; the epochs before report
    # the cheap diagnostics. Tune would otherwise reject those reports.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    scheduler = None
    if opts.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            metric=M.KNN_ACCURACY,
            mode="max",
            time_attr="training_iteration",
            max_t=base_config["max_epochs"],
            grace_period=2,
        )
    tuner = tune.Tuner(
        # The trial's driver only waits on its TorchTrainer: it reserves no CPU (the Ray
        # Train workers do) but a little memory, since Tune refuses an empty request.
        tune.with_resources(
            tune.with_parameters(run_trial, ctx=ctx), {"cpu": 0, "memory": DRIVER_MEMORY}
        ),
        param_space=opts.space.tune_space(),
        tune_config=tune.TuneConfig(
            search_alg=FinalMetricOptunaSearch(
                metric=M.SEARCH_METRIC, mode=M.SEARCH_MODE, seed=opts.seed
            ),
            scheduler=scheduler,
            num_samples=opts.num_samples,
            max_concurrent_trials=opts.max_concurrent or _default_concurrency(opts),
            # A trial's driver process serves the next trial: no new process (seconds of
            # imports) per trial. The driver keeps no state between trials.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=sweep_name,
            storage_path=str(Path(opts.storage).resolve()),
            verbose=1,
        ),
    )
    grid = tuner.fit()
    rows = _rows(grid, opts.space)
    stats = ray.get(cache.stats.remote())
    backbone_images = stats["images_embedded"] + int(
        sum(r.get("backbone_images") or 0 for r in rows)
    )
    summary = _summarise(rows, baseline, parent_id, backbone_images)
    _log_summary(client, parent_id, summary)
    print_table(summary, opts.space)
    return summary


def _baseline(
    opts, client, cache, experiment_id, parent_id, sweep_name, base_config, run_tags, run_params
) -> dict[str, float]:
    """The raw backbone's probe on the same splits, logged as the sweep's baseline run."""
    levels = opts.space.levels("aug_strength")
    level = levels[0] if levels else base_config["aug_strength"]
    # With the cache off the trials make their own views: the baseline needs clean ones only.
    ref = cache.bank.remote(level) if opts.feature_cache else cache.clean_bank.remote()
    bank = ray.get(ray.get(ref)[0])
    run = client.create_run(
        experiment_id,
        run_name=f"baseline-{sweep_name}",
        tags={
            M.TAG_ROLE: M.ROLE_BASELINE,
            "mlflow.parentRunId": parent_id,
            M.TAG_SWEEP_NAME: sweep_name,
            **run_tags,
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        tsne = Path(tmp) / M.TSNE_ARTIFACT
        scores = evaluate_representation(
            None, bank, tsne_path=tsne, title="raw backbone", seed=opts.seed
        )
        tracking.log_params(client, run.info.run_id, run_params)
        tracking.log_metrics(client, run.info.run_id, scores)
        client.log_artifact(run.info.run_id, str(tsne))
    client.set_terminated(run.info.run_id, "FINISHED")
    print(
        f"Baseline (raw backbone): probe_accuracy={scores[M.PROBE_ACCURACY]:.4f} "
        f"knn_accuracy={scores[M.KNN_ACCURACY]:.4f}"
    )
    return scores


def _rows(grid, space: SearchSpace) -> list[dict[str, Any]]:
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        config = {k: v for k, v in (result.config or {}).items() if k in space.params}
        rows.append(
            {
                "trial_id": metrics.get("trial_id") or (result.path or "").rsplit("_", 1)[-1],
                "config": config,
                M.PROBE_ACCURACY: metrics.get(M.PROBE_ACCURACY),
                M.KNN_ACCURACY: metrics.get(M.KNN_ACCURACY),
                M.PROBE_LIFT: metrics.get(M.PROBE_LIFT),
                M.EFFECTIVE_RANK: metrics.get(M.EFFECTIVE_RANK),
                "status": "error" if result.error else metrics.get(M.TAG_STATUS, "?"),
                "backbone_images": metrics.get("backbone_images"),
            }
        )
    return rows


def _summarise(rows, baseline, parent_id, backbone_images) -> SweepSummary:
    done = [r for r in rows if r["status"] != "error" and r[M.PROBE_ACCURACY] is not None]
    best = max(done, key=lambda r: r[M.PROBE_ACCURACY], default=None)
    return SweepSummary(
        parent_run_id=parent_id,
        finished=len(done),
        failed=len(rows) - len(done),
        best_config=best["config"] if best else None,
        best_probe_accuracy=best[M.PROBE_ACCURACY] if best else None,
        baseline_probe_accuracy=baseline[M.PROBE_ACCURACY],
        rows=rows,
        backbone_images=backbone_images,
    )


def _log_summary(client, parent_id: str, summary: SweepSummary) -> None:
    values = {
        "baseline_probe_accuracy": summary.baseline_probe_accuracy,
        "finished_trials": summary.finished,
        "failed_trials": summary.failed,
        "backbone_images": summary.backbone_images,
    }
    if summary.best_probe_accuracy is not None:
        values["best_probe_accuracy"] = summary.best_probe_accuracy
        values["best_probe_lift"] = summary.best_probe_accuracy - summary.baseline_probe_accuracy
    tracking.log_metrics(client, parent_id, values)
    if summary.best_config:
        tracking.log_params(
            client, parent_id, {f"best.{k}": v for k, v in summary.best_config.items()}
        )


def print_table(summary: SweepSummary, space: SearchSpace) -> None:
    keys = list(space.params)
    header = ["trial", *keys, "probe_acc", "knn_acc", "lift", "status"]
    lines = [header]
    ordered = sorted(summary.rows, key=lambda r: -(r[M.PROBE_ACCURACY] or -1))
    for r in ordered:
        lines.append(
            [
                r["trial_id"],
                *(_fmt(r["config"].get(k)) for k in keys),
                _fmt(r[M.PROBE_ACCURACY]),
                _fmt(r[M.KNN_ACCURACY]),
                _fmt(r[M.PROBE_LIFT], sign=True),
                r["status"],
            ]
        )
    lines.append(
        [
            "baseline",
            *("-" for _ in keys),
            _fmt(summary.baseline_probe_accuracy),
            "",
            "",
            "raw backbone",
        ]
    )
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    print()
    for i, row in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()
    if summary.best_config is not None:
        print(
            f"Best: {summary.best_config} probe_accuracy={summary.best_probe_accuracy:.4f} "
            f"(baseline {summary.baseline_probe_accuracy:.4f}, lift "
            f"{summary.best_probe_accuracy - summary.baseline_probe_accuracy:+.4f})"
        )
    print(
        f"{summary.finished} trials finished, {summary.failed} failed; "
        f"backbone ran on {summary.backbone_images} images."
    )


def _fmt(value: Any, sign: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return (
            f"{value:+.4f}" if sign else (f"{value:.4g}" if abs(value) < 1e-2 else f"{value:.4f}")
        )
    return str(value)


def _init_ray(opts: SweepOptions) -> bool:
    """Connect to `--address` or start a local cluster; True when we started it."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized():
        return False
    if opts.address:
        try:
            ray.init(address=opts.address, namespace=NAMESPACE, log_to_driver=True)
        except Exception as exc:
            raise UserInputError(
                f"cannot connect to the Ray cluster at {opts.address}: "
                f"{str(exc).strip().splitlines()[0][:200]}; check --address / RAY_ADDRESS"
            ) from None
        print(f"Ray: connected to {opts.address}")
        return True
    context = ray.init(
        namespace=NAMESPACE,
        include_dashboard=True,
        dashboard_host="127.0.0.1",  # never a public interface by default
        log_to_driver=True,
    )
    url = context.dashboard_url or "(dashboard not running)"
    print(
        f"Ray dashboard: http://{url}"
        if url and not url.startswith("http")
        else f"Ray dashboard: {url}"
    )
    if TOKEN_PATH.exists():
        print(f"  it asks for the token in {TOKEN_PATH} (cat it and paste it in the login box)")
    print(f"MLflow UI: {tracking.ui_command(opts.tracking_uri)}")
    return True


def _check_gpus(opts: SweepOptions) -> None:
    if opts.gpus_per_trial > 0:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < opts.gpus_per_trial:
            raise UserInputError(
                f"--gpus-per-trial {opts.gpus_per_trial} but the Ray cluster has {gpus:g} GPUs; "
                "use --gpus-per-trial 0 here"
            )


def _default_concurrency(opts: SweepOptions) -> int:
    resources = ray.cluster_resources()
    per_trial_cpu = opts.workers_per_trial * opts.cpus_per_worker
    slots = int(resources.get("CPU", 1) // per_trial_cpu)
    if opts.gpus_per_trial > 0:
        slots = min(slots, int(resources.get("GPU", 0) // opts.gpus_per_trial))
    return max(1, slots)


def _check_writable(path: str, flag: str) -> None:
    """Fail early, before any run exists, when a folder cannot be created or written."""
    if "://" in path:
        return  # an object-store URI; Ray Tune checks it
    target = Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserInputError(
            f"{flag} {path} is not writable ({exc.strerror}); choose another folder"
        ) from None


def _backbone_tag(spec: BackboneSpec) -> str:
    return spec.name if spec.is_demo else f"{spec.name}:{Path(spec.checkpoint).name}:{spec.encoder}"
