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
from jepa.backbones import BackboneSpec, check_backbone, weights_hash
from jepa.config import TrialConfig
from jepa.data import DatasetSpec, describe, load_dataset
from jepa.errors import UserInputError
from jepa.evaluate import evaluate_representation, untrained_predictor
from jepa.features import FeatureBank
from jepa.train import STATUS_COLLAPSED, STATUS_DIVERGED
from sweeps import faults, resume, tracking
from sweeps.cli import check_cluster, load_space_arg, resolve_paths
from sweeps.feature_cache import FeatureCacheActor
from sweeps.gpus import check_gpu_sharing
from sweeps.search import SeededOptunaSearch
from sweeps.spaces import SearchSpace
from sweeps.stats import Interval, mean_interval
from sweeps.summary import ConfigStats, SummaryReport, log_sweep_summary
from sweeps.trial import SweepContext, run_trial

NAMESPACE = "jepa-sweeps"
# Where Ray 2.5x+ keeps the token of a local cluster (RAY_AUTH_TOKEN_PATH overrides it).
TOKEN_PATH = Path.home() / ".ray" / "auth_token"
DRIVER_MEMORY = 256 * 1024**2  # bytes reserved by each trial's driver process
FAILED = "failed"  # the status column of a trial that raised on its last attempt
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Settings every process of the sweep needs. On a cluster the sweep did not start, the
# processes on other nodes do not inherit the driver's environment: they get these
# through the job's runtime env.
JOB_ENV = {
    # Rank 0 reports probe_accuracy only after the last epoch (see `_sweep`).
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    "RAY_TRAIN_V2_ENABLED": "1",
}
# Read by MlflowClient in the trials when the tracking server asks for credentials
# (`mlflow server --app-name basic-auth`) or uses TLS; forwarded when the driver has them.
FORWARDED_ENV = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
)


@dataclass
class SweepOptions:
    space: SearchSpace
    backbone: BackboneSpec
    dataset: DatasetSpec
    demo_reasons: list[str]
    num_samples: int = 8
    """Configurations Optuna proposes; the sweep runs num_samples x seeds trials."""
    seeds: int = 1
    """Seeds per proposed configuration (`--seeds K`)."""
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
    max_failures: int = 0
    resume_command: str = ""
    """The command that resumes this sweep (printed at the start and on Ctrl-C)."""

    def base_config(self) -> dict[str, Any]:
        base = {**TrialConfig().to_dict(), **self.space.fixed, "seed": self.seed}
        if self.max_epochs is not None:
            base["max_epochs"] = self.max_epochs
        return TrialConfig.from_dict(base).to_dict()

    @property
    def total_trials(self) -> int:
        return self.num_samples * self.seeds


@dataclass
class Baselines:
    """The sweep's two baselines, each a `jepa.role=baseline` run: the raw backbone and
    the untrained predictor (the base config's random initialisation), scored on the
    same splits as the trials, at each seed a trial or the answer needs."""

    run_ids: dict[str, str]
    """M.BASELINE_RAW / M.BASELINE_UNTRAINED -> run id."""
    scores: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    """kind -> seed -> evaluate_representation's metrics."""

    def raw_test(self) -> dict[int, float]:
        return {s: v[M.PROBE_ACCURACY] for s, v in self.scores[M.BASELINE_RAW].items()}

    def to_state(self) -> dict[str, Any]:
        return {
            "run_ids": self.run_ids,
            "scores": {k: {str(s): v for s, v in d.items()} for k, d in self.scores.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Baselines:
        scores = {k: {int(s): v for s, v in d.items()} for k, d in state["scores"].items()}
        return cls(run_ids=dict(state["run_ids"]), scores=scores)


@dataclass
class SweepSummary:
    parent_run_id: str
    finished: int
    failed: int
    rows: list[dict[str, Any]]
    backbone_images: int
    report: SummaryReport
    baselines: Baselines
    untrained_lift: Interval | None = None
    """The best config's test score minus the untrained predictor's, paired by seed."""
    verdict: list[str] = field(default_factory=list)
    """`verdict_lines`: what the CLI prints last."""

    @property
    def best(self) -> ConfigStats | None:
        return self.report.best_config


def options_from_args(args: argparse.Namespace) -> SweepOptions:
    """Validate every flag before anything is started or written."""
    space = load_space_arg(args.space)
    backbone, checkpoint, data, reasons = resolve_paths(args)
    backbone_spec = BackboneSpec(
        name=backbone,
        checkpoint=str(checkpoint) if checkpoint else None,
        encoder=args.encoder,
        arch=args.arch,
    )
    print(f"Backbone: {check_backbone(backbone_spec)}")
    address = args.address or os.environ.get("RAY_ADDRESS")
    check_gpu_sharing(args.workers_per_trial, args.gpus_per_trial)
    check_cluster(address, args.gpus_per_trial)
    return SweepOptions(
        space=space,
        backbone=backbone_spec,
        dataset=DatasetSpec(
            source=data,
            images_per_class=args.images_per_class,
            eval_per_class=args.eval_per_class,
            val_per_class=args.val_per_class,
            seed=args.seed,
            skip_bad_images=args.skip_bad_images,
        ),
        demo_reasons=reasons,
        num_samples=args.num_samples,
        seeds=args.seeds,
        max_epochs=args.max_epochs,
        seed=args.seed,
        experiment=args.experiment,
        tracking_uri=args.tracking_uri or tracking.default_tracking_uri(),
        storage=args.storage,
        address=address,
        workers_per_trial=args.workers_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_worker=args.cpus_per_worker,
        max_concurrent=args.max_concurrent,
        scheduler=args.scheduler,
        feature_cache=args.feature_cache == "on",
        views=args.views,
        # Absolute: the cache actor's working directory is not the user's.
        cache_dir=str(Path(args.cache_dir).resolve()),
        resume=args.resume,
        max_failures=args.max_failures,
    )


def run_sweep(opts: SweepOptions) -> SweepSummary:
    """Run the sweep `opts` describes; returns what the end-of-sweep table shows."""
    # Checks that need no cluster and write nothing, so bad input leaves nothing behind.
    _check_writable(opts.storage, "--storage")
    _check_writable(opts.cache_dir, "--cache-dir")
    dataset = load_dataset(opts.dataset)
    backbone_hash = weights_hash(opts.backbone)
    base_config = opts.base_config()
    fault = faults.from_env()
    fingerprint = resume.fingerprint(opts, base_config, backbone_hash, dataset)
    previous = None
    if opts.resume:
        previous = resume.find_resumable(opts.storage, opts.space.path, opts.experiment)
        resume.check_same_options(previous[0], fingerprint)
    # The last check, and the first contact with the store (it creates the experiment).
    experiment_id = tracking.ensure_experiment(opts.tracking_uri, opts.experiment)

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
            "val_images": len(dataset.val_images),
            "eval_images": len(dataset.eval_images),
        }
        client = tracking.client(opts.tracking_uri)
        if previous is not None:
            record = resume.reopen(client, *previous)
        else:
            parent = client.create_run(
                experiment_id,
                run_name=sweep_name,
                tags={M.TAG_ROLE: M.ROLE_SWEEP, M.TAG_SWEEP_NAME: sweep_name, **run_tags},
            )
            state = resume.SweepState(
                sweep_name=sweep_name,
                space=resume.space_id(opts.space.path),
                experiment=opts.experiment,
                experiment_id=experiment_id,
                tracking_uri=opts.tracking_uri,
                parent_run_id=parent.info.run_id,
                fingerprint=fingerprint,
            )
            record = resume.SweepRecord(state, resume.experiment_dir(opts.storage, sweep_name))
            record.save()
        sweep_name, parent_id = record.state.sweep_name, record.state.parent_run_id
        print(f"MLflow: experiment {opts.experiment!r}, sweep run {parent_id}")
        if opts.resume_command:
            print(f"If interrupted, continue with: {opts.resume_command}")
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
                record,
                fault,
            )
        except KeyboardInterrupt:
            # Stop Ray first: once its processes are gone nothing can write to the runs.
            if started_ray:
                ray.shutdown()
            record.close(client, "KILLED", resume.INTERRUPTED)
            raise resume.SweepInterrupted(sweep_name) from None
        except BaseException:
            if started_ray:
                ray.shutdown()
            record.close(client, "FAILED", resume.FAILED)
            raise
        record.close(client, "FINISHED", resume.FINISHED)
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
    record: resume.SweepRecord,
    fault: faults.Fault | None = None,
) -> SweepSummary:
    from ray import tune

    if not record.resumed:  # a resumed sweep's parent run has them already
        tracking.log_params(
            client,
            parent_id,
            {
                "space": opts.space.name,
                M.PARAM_SEARCH_METRIC: M.SEARCH_METRIC,
                "num_samples": opts.num_samples,
                "seeds": opts.seeds,
                "seed": opts.seed,
                "feature_cache": opts.feature_cache,
                "views": opts.views,
                "max_failures": opts.max_failures,
                **{f"base.{k}": v for k, v in base_config.items()},
                **run_params,
            },
        )
        if dataset.skipped_images:
            print(f"Skipped {dataset.skipped_images} unreadable images (--skip-bad-images)")
            tracking.log_metrics(client, parent_id, {"skipped_images": dataset.skipped_images})
    cache_name = f"jepa-feature-cache-{sweep_name}"
    cache = FeatureCacheActor.options(
        name=cache_name,
        namespace=NAMESPACE,
        lifetime=None,
        num_gpus=0,  # GPU work runs in short tasks: see feature_cache._compute_on_gpu
    ).remote(
        opts.cache_dir,
        opts.backbone,
        ray.put(dataset),
        backbone_hash,
        opts.views,
        opts.seed,
        gpu_share=min(1.0, opts.gpus_per_trial),
    )

    bank = _baseline_bank(opts, cache, base_config)
    if record.state.baseline is None:
        baselines = _new_baselines(
            client, experiment_id, parent_id, sweep_name, run_tags, run_params
        )
        seeds = range(opts.seed, opts.seed + opts.seeds)
        _score_baselines(client, baselines, bank, base_config, seeds, announce=True)
        for run_id in baselines.run_ids.values():
            client.set_terminated(run_id, "FINISHED")
        record.state.baseline = baselines.to_state()
        record.save()
    else:
        baselines = Baselines.from_state(record.state.baseline)
        print(f"Baselines (before the interruption): {_fmt_baselines(baselines, opts.seed)}")

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
        storage_path=storage_path(opts.storage),
        feature_cache=opts.feature_cache,
        workers_per_trial=opts.workers_per_trial,
        gpus_per_trial=opts.gpus_per_trial,
        cpus_per_worker=opts.cpus_per_worker,
        baseline_probe_accuracy=baselines.raw_test(),
        extra={"fault": fault},
    )
    # Rank 0 reports probe_accuracy only after the last epoch; the epochs before report
    # the cheap diagnostics. Tune would otherwise reject those reports.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    scheduler = None
    if opts.scheduler == "asha":
        # kNN on the validation split, every epoch: never the test split.
        scheduler = tune.schedulers.ASHAScheduler(
            metric=M.ASHA_METRIC,
            mode="max",
            time_attr="training_iteration",
            max_t=base_config["max_epochs"],
            grace_period=2,
        )
    # The trial's driver only waits on its TorchTrainer: it reserves no CPU (the Ray
    # Train workers do) but a little memory, since Tune refuses an empty request.
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, ctx=ctx), {"cpu": 0, "memory": DRIVER_MEMORY}
    )
    if record.resumed and tune.Tuner.can_restore(record.folder):
        tuner = resume.restore_tuner(record, trainable)
    else:
        tuner = _new_tuner(opts, trainable, scheduler, sweep_name)
    with resume.watch_interrupt() as interrupted:
        grid = tuner.fit()
    if interrupted() or grid.num_terminated + grid.num_errors < opts.total_trials:
        raise resume.SweepInterrupted(sweep_name)
    rows = _rows(grid, opts.space)
    stats = ray.get(cache.stats.remote())
    backbone_images = stats["images_embedded"] + int(
        sum(r.get("backbone_images") or 0 for r in rows)
    )
    raw_val = baselines.scores[M.BASELINE_RAW][opts.seed][M.VAL_PROBE_ACCURACY]
    report = log_sweep_summary(client, experiment_id, parent_id, opts.space, raw_val)
    untrained_lift = None
    if report.best_config is not None:
        # The answer is paired seed by seed: the baselines need the best config's seeds.
        _score_baselines(client, baselines, bank, base_config, report.best_config.seeds)
        record.state.baseline = baselines.to_state()
        record.save()
        untrained_lift = _untrained_lift(report.best_config, baselines)
    summary = SweepSummary(
        parent_run_id=parent_id,
        finished=sum(r["status"] != FAILED for r in rows),
        failed=sum(r["status"] == FAILED for r in rows),
        rows=rows,
        backbone_images=backbone_images,
        report=report,
        baselines=baselines,
        untrained_lift=untrained_lift,
    )
    _log_summary(client, parent_id, summary, opts.seed)
    print(
        f"Sweep summary in run {parent_id}: {', '.join(report.artifacts)}; importances "
        f"{report.importances or report.importance_note}"
    )
    lines = print_table(summary, opts.space, opts.seed)
    summary.verdict = verdict_lines(summary, opts.seed)
    # The parent run's description in the MLflow UI: the same table and answer.
    note = f"Sweep `{opts.space.name}`, chosen on `{M.SEARCH_METRIC}`:\n\n```\n"
    tracking.set_tags(client, parent_id, {"mlflow.note.content": note + "\n".join(lines) + "\n```"})
    return summary


def _new_tuner(opts: SweepOptions, trainable, scheduler, sweep_name: str):
    from ray import tune

    return tune.Tuner(
        trainable,
        param_space=opts.space.tune_space(),
        tune_config=tune.TuneConfig(
            search_alg=SeededOptunaSearch(
                metric=M.SEARCH_METRIC,
                mode=M.SEARCH_MODE,
                seed=opts.seed,
                points_to_evaluate=opts.space.coverage_points(opts.num_samples),
                seeds_per_config=opts.seeds,
                base_seed=opts.seed,
            ),
            scheduler=scheduler,
            num_samples=opts.total_trials,
            max_concurrent_trials=opts.max_concurrent or _default_concurrency(opts),
            # A trial's driver process serves the next trial: no new process (seconds of
            # imports) per trial. The driver keeps no state between trials.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=sweep_name,
            storage_path=storage_path(opts.storage),
            verbose=1,
            # A trial that raises runs again (a new MLflow run each attempt), then counts
            # as failed; the sweep goes on either way.
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        ),
    )


def _baseline_bank(opts: SweepOptions, cache, base_config: dict[str, Any]) -> FeatureBank:
    """The bank whose clean embeddings the baselines are scored on (the trials' too)."""
    levels = opts.space.levels("aug_strength")
    level = levels[0] if levels else base_config["aug_strength"]
    # With the cache off the trials make their own views: the baselines need clean ones.
    ref = cache.bank.remote(level) if opts.feature_cache else cache.clean_bank.remote()
    return ray.get(ray.get(ref)[0])


def _new_baselines(client, experiment_id, parent_id, sweep_name, run_tags, run_params) -> Baselines:
    """The two baseline runs, open until their first seeds are scored."""
    run_ids = {}
    for kind in (M.BASELINE_RAW, M.BASELINE_UNTRAINED):
        run = client.create_run(
            experiment_id,
            run_name=f"baseline-{kind.replace('_', '-')}-{sweep_name}",
            tags={
                M.TAG_ROLE: M.ROLE_BASELINE,
                M.TAG_BASELINE: kind,
                "mlflow.parentRunId": parent_id,
                M.TAG_SWEEP_NAME: sweep_name,
                **run_tags,
            },
        )
        tracking.log_params(client, run.info.run_id, run_params)
        run_ids[kind] = run.info.run_id
    return Baselines(run_ids=run_ids, scores={k: {} for k in run_ids})


def _score_baselines(
    client,
    baselines: Baselines,
    bank: FeatureBank,
    base_config: dict[str, Any],
    seeds,
    announce: bool = False,
) -> None:
    """Score both baselines at each of `seeds` not scored yet, logged in their runs at
    step = seed (a seed moves the probe's held-out slice and the untrained predictor's
    initialisation); the first seed also gets the t-SNE picture."""
    dim = bank.train_clean.shape[1]
    for seed in seeds:
        for kind, run_id in baselines.run_ids.items():
            done = baselines.scores[kind]
            if seed in done:
                continue
            if kind == M.BASELINE_RAW:
                transform, title = None, "raw backbone"
            else:
                cfg = TrialConfig.from_dict({**base_config, "seed": seed})
                transform = untrained_predictor(dim, cfg)
                title = f"untrained predictor w={cfg.predictor_width} seed={seed}"
            with tempfile.TemporaryDirectory() as tmp:
                tsne = Path(tmp) / M.TSNE_ARTIFACT if not done else None
                scores = evaluate_representation(
                    transform, bank, tsne_path=tsne, title=title, seed=seed
                )
                tracking.log_metrics(client, run_id, scores, step=seed)
                if tsne is not None:
                    client.log_artifact(run_id, str(tsne))
            done[seed] = scores
            if announce:
                print(f"Baseline ({kind.replace('_', ' ')}, seed {seed}): {_fmt_scores(scores)}")


def _fmt_scores(scores: dict[str, float]) -> str:
    return (
        f"val_probe_accuracy={scores[M.VAL_PROBE_ACCURACY]:.4f} "
        f"probe_accuracy={scores[M.PROBE_ACCURACY]:.4f} "
        f"probe_accuracy_plain={scores[M.PROBE_ACCURACY_PLAIN]:.4f} "
        f"knn_accuracy={scores[M.KNN_ACCURACY]:.4f}"
    )


def _fmt_baselines(baselines: Baselines, seed: int) -> str:
    return "; ".join(
        f"{kind.replace('_', ' ')}: {_fmt_scores(by_seed[seed])}"
        for kind, by_seed in baselines.scores.items()
    )


def _rows(grid, space: SearchSpace) -> list[dict[str, Any]]:
    """What Tune knows of each trial: its status (failed when it raised on its last
    attempt) and the backbone work it did. The scores come from MLflow (summary)."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        # A diverged or collapsed trial ended normally (its run is FINISHED, tagged with
        # the reason); only a trial that raised on its last attempt counts as failed.
        rows.append(
            {
                "trial_id": metrics.get("trial_id") or (result.path or "").rsplit("_", 1)[-1],
                "status": FAILED if result.error else metrics.get(M.TAG_STATUS, "?"),
                "backbone_images": metrics.get("backbone_images"),
            }
        )
    return rows


def _untrained_lift(best: ConfigStats, baselines: Baselines) -> Interval | None:
    """The best config's test score minus the untrained predictor's, seed by seed."""
    untrained = baselines.scores[M.BASELINE_UNTRAINED]
    diffs = []
    for run in best.runs:
        seed = int(run.params.get("seed", -1))
        if run.probe_accuracy is not None and seed in untrained:
            diffs.append(run.probe_accuracy - untrained[seed][M.PROBE_ACCURACY])
    return mean_interval(diffs)


def _log_summary(client, parent_id: str, summary: SweepSummary, seed: int) -> None:
    raw = summary.baselines.scores[M.BASELINE_RAW][seed]
    untrained = summary.baselines.scores[M.BASELINE_UNTRAINED][seed]
    values = {
        M.BASELINE_PROBE_ACCURACY: raw[M.PROBE_ACCURACY],
        "baseline_val_probe_accuracy": raw[M.VAL_PROBE_ACCURACY],
        "untrained_probe_accuracy": untrained[M.PROBE_ACCURACY],
        "finished_trials": summary.finished,
        "failed_trials": summary.failed,
        "diverged_trials": sum(r["status"] == STATUS_DIVERGED for r in summary.rows),
        "collapsed_trials": sum(r["status"] == STATUS_COLLAPSED for r in summary.rows),
        "configs": len(summary.report.configs),
        "backbone_images": summary.backbone_images,
    }
    lift = summary.untrained_lift
    if lift is not None:
        values[M.TEST_PROBE_LIFT_UNTRAINED] = lift.mean
        if lift.has_interval:
            values[M.TEST_PROBE_LIFT_UNTRAINED + M.CI_LOW] = lift.low
            values[M.TEST_PROBE_LIFT_UNTRAINED + M.CI_HIGH] = lift.high
    tracking.log_metrics(client, parent_id, values)


def print_table(summary: SweepSummary, space: SearchSpace, seed: int) -> list[str]:
    """Print `summary_lines` (and return them with `verdict_lines`, which `sweeps.cli`
    prints last, after Ray has stopped and its workers' log lines are out)."""
    lines = summary_lines(summary, space, seed)
    print("\n".join(lines))
    return lines + verdict_lines(summary, seed)


def summary_lines(summary: SweepSummary, space: SearchSpace, seed: int) -> list[str]:
    """One line per config (n seeds, validation and test means with 95% intervals,
    paired lift, statuses), best validation mean first; the baselines; then the answer,
    or, when every trial collapsed, what that means and the way out, as the last lines."""
    keys = list(space.params)
    header = [*keys, "n", "val_probe_acc [95% CI]", "test_probe_acc [95% CI]", "lift"]
    header += ["plain", "status"]
    out: list[str] = []
    lines = [header]
    for c in summary.report.configs:
        lines.append(
            [
                *(_fmt_param(v) for v in c.key),
                str(len(c.runs)),
                c.val.text() if c.val else "-",
                c.test.text() if c.test else "-",
                c.lift.text(sign=True) if c.lift else "-",
                f"{c.plain.mean:.4f}" if c.plain else "-",
                " ".join(f"{k}:{v}" for k, v in sorted(c.statuses.items())),
            ]
        )
    for kind, by_seed in summary.baselines.scores.items():
        val = mean_interval(v[M.VAL_PROBE_ACCURACY] for v in by_seed.values())
        test = mean_interval(v[M.PROBE_ACCURACY] for v in by_seed.values())
        plain = mean_interval(v[M.PROBE_ACCURACY_PLAIN] for v in by_seed.values())
        lines.append(
            [
                *("-" for _ in keys),
                str(len(by_seed)),
                val.text() if val else "-",
                test.text() if test else "-",
                "",
                f"{plain.mean:.4f}" if plain else "-",
                f"baseline: {kind.replace('_', ' ')}",
            ]
        )
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    out.append("")
    for i, row in enumerate(lines):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    out.append("")
    diverged = sum(r["status"] == STATUS_DIVERGED for r in summary.rows)
    collapsed = sum(r["status"] == STATUS_COLLAPSED for r in summary.rows)
    out.append(
        f"{summary.finished} trials finished ({collapsed} collapsed, {diverged} diverged), "
        f"{summary.failed} failed; backbone ran on {summary.backbone_images} images."
    )
    if summary.failed:
        out.append(
            "Failed trials: traceback.txt in each attempt's MLflow run (tag jepa.attempt); "
            "Ray's logs in /tmp/ray/session_latest/logs."
        )
    return out


def verdict_lines(summary: SweepSummary, seed: int) -> list[str]:
    """The answer: the best config by validation with its test score and paired lifts;
    or, when every trial collapsed or diverged, that there is no best and the way out."""
    out: list[str] = []
    diverged = sum(r["status"] == STATUS_DIVERGED for r in summary.rows)
    collapsed = sum(r["status"] == STATUS_COLLAPSED for r in summary.rows)
    raw = summary.baselines.scores[M.BASELINE_RAW][seed][M.PROBE_ACCURACY]
    best = summary.best
    if best is not None:
        out.append(
            f"Best (chosen on {M.SEARCH_METRIC}, collapsed and diverged trials excluded): "
            f"{' '.join(f'{k}={v}' for k, v in best.config.items())} over {len(best.runs)} "
            f"seed(s) {best.seeds}: "
            f"val {best.val.text()}"
        )
        out.append(
            f"Test: {M.TEST_PROBE_ACCURACY}={best.test.text()} (raw backbone {raw:.4f}); "
            f"{M.TEST_PROBE_LIFT}={best.lift.text(sign=True) if best.lift else '-'} "
            "(paired by seed)"
            + (
                f"; over the untrained predictor {summary.untrained_lift.text(sign=True)}"
                if summary.untrained_lift
                else ""
            )
        )
    elif summary.report.all_collapsed:
        out.append(
            f"No best configuration: every trial that ended collapsed or diverged "
            f"({collapsed} collapsed, {diverged} diverged), so none is a representation "
            f"to choose; the raw backbone's probe ({raw:.4f}) is the answer for now."
        )
        out.append(
            "Way out: an objective that does not collapse, e.g. "
            "`python sweeps/run.py --space objective` (stopgrad, ema, vicreg; "
            'README, "Collapse and objectives").'
        )
    else:
        out.append("No best configuration: no trial finished.")
    return out


def _fmt_param(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() else f"{number:.4g}"


def _init_ray(opts: SweepOptions) -> bool:
    """Connect to `--address` or start a local cluster; True when we called ray.init."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized():
        return False
    if opts.address:
        _connect(opts.address)
        print(f"MLflow: {tracking.ui_command(opts.tracking_uri)}")
        return True
    context = ray.init(
        namespace=NAMESPACE,
        include_dashboard=True,
        dashboard_host="127.0.0.1",  # never a public interface by default
        log_to_driver=True,
    )
    url = context.dashboard_url
    if url:
        print(f"Ray dashboard: {url if url.startswith('http') else 'http://' + url}")
        print(f"  {_token_hint()}")
    else:
        print("Ray dashboard: not running (ray[default] missing?)")
    print(f"MLflow UI: {tracking.ui_command(opts.tracking_uri)}")
    return True


def _token_hint() -> str:
    """How to get past the dashboard's "Authentication Token Required" dialog."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return f"token authentication is off (RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']})"
    if os.environ.get("RAY_AUTH_TOKEN"):
        where = "the RAY_AUTH_TOKEN environment variable"
    else:
        where = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(TOKEN_PATH)
    return (
        f"it asks for the token in {where}: paste it into the Authentication Token box "
        "(`ray get-auth-token` prints it)"
    )


def _connect(address: str) -> None:
    """Join an existing cluster (`auto`, HOST:PORT, or ray://HOST:PORT through Ray Client)
    and say which nodes the trials can run on."""
    try:
        _init_with_retries(address)
    except Exception as exc:
        # Ray sends its token only when told to, never on its own to a given address, and
        # a cluster that wants one answers a client without it by timing out.
        hint = ""
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = (
                "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and put "
                f"its token in {TOKEN_PATH} (or RAY_AUTH_TOKEN)"
            )
        raise UserInputError(
            f"cannot connect to the Ray cluster at {address}: "
            f"{str(exc).strip().splitlines()[0][:200]}; check --address / RAY_ADDRESS{hint}"
        ) from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    print(f"Ray: connected to {address}, {len(nodes)} node(s):")
    for node in nodes:
        print(f"  {describe_node(node)}")


CLIENT_INIT_TRIES = 3


def _init_with_retries(address: str) -> None:
    """`ray.init` on `address`, tried again when Ray Client's server fails to start the
    session's driver ("Initialization failure from server" with no reason: seen on a
    loaded machine, gone on the next try). Other errors are raised at once."""
    for attempt in range(1, CLIENT_INIT_TRIES + 1):
        try:
            ray.init(address=address, namespace=NAMESPACE, runtime_env=job_runtime_env())
            return
        except ConnectionAbortedError as exc:
            if attempt == CLIENT_INIT_TRIES or "Initialization failure" not in str(exc):
                raise
            print(f"Ray Client: the server could not start the session ({attempt}); again")
            ray.shutdown()
            time.sleep(2 * attempt)


def job_runtime_env() -> dict[str, Any]:
    """The runtime env of a sweep on a cluster it did not start.

    `py_modules` ships this checkout's `jepa/` and `sweeps/` to every node, so the
    trials run the code the driver runs (the nodes need only the dependencies); the
    env vars carry `JOB_ENV` and the MLflow credentials of `FORWARDED_ENV`. Anyone who
    can see the job's runtime env (the cluster's token holders) can read those.
    """
    env_vars = dict(JOB_ENV)
    env_vars.update({k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)})
    return {
        "py_modules": [str(PROJECT_ROOT / "jepa"), str(PROJECT_ROOT / "sweeps")],
        "env_vars": env_vars,
    }


def describe_node(node: dict[str, Any]) -> str:
    """One line for a `ray.nodes()` entry: id, IP, CPUs, GPUs and custom resources."""
    res = node.get("Resources", {})
    builtin = {"CPU", "GPU", "memory", "object_store_memory"}
    custom = sorted(
        k for k in res if k not in builtin and not k.startswith(("node:", "accelerator_type:"))
    )
    return (
        f"node {node['NodeID'][:12]} {node.get('NodeManagerAddress', '?')} "
        f"CPU {res.get('CPU', 0):g} GPU {res.get('GPU', 0):g}"
        + (f" {' '.join(custom)}" if custom else "")
    )


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


def storage_path(storage: str) -> str:
    """What Ray Tune gets as `storage_path`: a URI it supports (s3://, gs://, file://...)
    as given, else the folder made absolute (it must be shared by all nodes)."""
    return storage if "://" in storage else str(Path(storage).resolve())


def _check_writable(path: str, flag: str) -> None:
    """Fail early, before any run exists, when a folder cannot be created or written."""
    if "://" in path:
        return  # an object-store URI: Ray Tune checks it when it writes there
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
