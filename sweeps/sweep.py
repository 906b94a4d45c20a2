"""A whole sweep as phases a reader follows top-down: `run_sweep` prepares (checks that
write nothing), then a `Sweep`, which owns the parent run, scores the baselines, runs
the search and summarises it.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from jepa import metrics as M
from jepa.backbones import weights_hash
from jepa.config import TrialConfig
from jepa.data import ImageDataset, describe, load_dataset
from jepa.errors import UserInputError
from jepa.evaluate import evaluate_representation, load_predictor, untrained_predictor
from jepa.features import FeatureBank
from sweeps import cluster, console, faults, pictures, resume, tracking
from sweeps.feature_cache import CACHE_ENV, FeatureCacheActor
from sweeps.mlflow_conventions import (
    DatasetRef,
    closing_lines,
    log_dataset_input,
    log_parent_note,
    log_registered_predictor,
    parent_note,
    runs_view_url,
)
from sweeps.options import SweepOptions
from sweeps.pool import PoolTrials, pool_broker_name
from sweeps.report import Baselines, SweepSummary, fmt_scores, print_table, verdict_lines
from sweeps.search import STUDY_FILE, SeededOptunaSearch, dashboard_command
from sweeps.spaces import SearchSpace
from sweeps.stats import Interval, mean_interval
from sweeps.summary import ConfigStats, best_config, log_sweep_summary, log_sweep_totals
from sweeps.trial import SweepContext, run_trial, worker_resources
from sweeps.trial_work import pool_body

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# The two baselines as the summary pictures label their bands (raw backbone first).
BASELINE_LABELS = {M.BASELINE_RAW: "raw backbone", M.BASELINE_UNTRAINED: "untrained predictor"}

DRIVER_MEMORY = 256 * 1024**2  # bytes reserved by each trial's trainable process
# The longest the first trials wait for the pool's last group to start; after it they
# start on the groups that are up.
POOL_READY_S = 120.0
FAILED = "failed"  # the status column of a trial that raised on its last attempt


@dataclass(frozen=True)
class Prepared:
    """What the checks before the cluster found: nothing here started or wrote a thing
    except the MLflow experiment (the last check, of the store)."""

    dataset: ImageDataset
    backbone_hash: str
    base_config: dict[str, Any]
    fingerprint: dict[str, Any]
    previous: tuple[resume.SweepState, Path] | None
    experiment_id: str
    fault: faults.Faults | None

    def run_tags(self, opts: SweepOptions) -> dict[str, str]:
        """Tags every run of the sweep gets: backbone and data set."""
        return {M.TAG_BACKBONE: opts.backbone.tag, M.TAG_DATASET: describe(opts.dataset)}

    def run_params(self) -> dict[str, Any]:
        """Params every trial and baseline run gets besides its config."""
        return {
            "backbone_sha256": self.backbone_hash,
            "dataset_manifest": self.dataset.manifest_hash,
            "train_images": len(self.dataset.train_images),
            "val_images": len(self.dataset.val_images),
            "eval_images": len(self.dataset.eval_images),
        }

    def dataset_ref(self, opts: SweepOptions) -> DatasetRef:
        """The data set as every run's MLflow dataset input (the runs table's column)."""
        return DatasetRef.of_loaded(self.dataset, opts.dataset)


def run_sweep(opts: SweepOptions) -> SweepSummary:
    """Run the sweep `opts` describes; returns what the end-of-sweep table shows."""
    prepared = prepare(opts)
    if opts.demo_reasons:
        print(
            "Running the embedded demo (scikit-learn digits, small random ViT) because: "
            + "; ".join(opts.demo_reasons)
            + "."
        )
    # Rank 0 reports probe_accuracy only after the last epoch (Tune's strict metric
    # check would reject the epochs before), and the trials use Ray Train V2: the
    # processes this sweep starts inherit JOB_ENV; it ends with the sweep.
    with tracking.scoped_environ(cluster.JOB_ENV), cluster.driver_threads():
        started_ray = cluster.init_ray(opts.address, opts.tracking_uri)
        try:
            cluster.check_gpus(opts.gpus_per_trial)
            sweep = Sweep.open(opts, prepared, started_ray)
            with sweep.closing():
                sweep.start_cache()
                if opts.gpus_per_trial > 0:
                    sweep.compute_banks()  # on the GPU, before the pool's groups take it
                # On CPUs the pool's processes start (import torch, join their groups)
                # while the cache computes and the baselines are scored; their output
                # goes to the sweep's log from the start.
                with sweep.quiet(), sweep.start_pool() as pool:
                    sweep.baseline()
                    sweep.wait_for_pool(pool)
                    grid = sweep.search()
                return sweep.summarise(grid)
        finally:
            if started_ray:
                ray.shutdown()


def prepare(opts: SweepOptions) -> Prepared:
    """Checks that need no cluster and write nothing, so bad input leaves nothing behind;
    the last one creates the MLflow experiment."""
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
    experiment_id = tracking.ensure_experiment(opts.tracking_uri, opts.experiment)
    return Prepared(
        dataset, backbone_hash, base_config, fingerprint, previous, experiment_id, fault
    )


class Sweep:
    """One sweep on a running cluster; owns its parent run (`record`) from `open` to the
    end of `closing`, and is the one writer of the parent's summary (`summarise`)."""

    def __init__(
        self,
        opts: SweepOptions,
        prepared: Prepared,
        client: MlflowClient,
        record: resume.SweepRecord,
        started_ray: bool,
    ) -> None:
        self.opts, self.prepared, self.client, self.record = opts, prepared, client, record
        self.started_ray = started_ray
        self.name = record.state.sweep_name
        self.parent_id = record.state.parent_run_id
        self.cache_name = f"jepa-feature-cache-{self.name}"
        self.pool_name = f"jepa-pool-{self.name}"
        self.cache: Any = None  # the FeatureCacheActor's handle, from `start_cache`
        self.bank: FeatureBank | None = None  # the baselines' bank, from `baseline`
        self.baselines: Baselines | None = None

    @classmethod
    def open(cls, opts: SweepOptions, prepared: Prepared, started_ray: bool) -> Sweep:
        """The parent run: a new one, or the interrupted sweep's (`--resume`) reopened."""
        client = tracking.client(opts.tracking_uri)
        if prepared.previous is not None:
            record = resume.reopen(client, *prepared.previous)
        else:
            record = _new_parent(opts, prepared, client)
        sweep = cls(opts, prepared, client, record, started_ray)
        print(f"MLflow: experiment {opts.experiment!r}, sweep run {sweep.parent_id}")
        if opts.resume_command:
            print(f"If interrupted, continue with: {opts.resume_command}")
        if not record.resumed:  # a resumed sweep's parent run has them already
            sweep._log_setup()
        return sweep

    @contextlib.contextmanager
    def closing(self) -> Iterator[None]:
        """Close the parent run (and `sweep.json`) as the block ends: FINISHED, KILLED on
        Ctrl-C (raised on as `SweepInterrupted`), FAILED on anything else."""
        try:
            yield
        except KeyboardInterrupt:
            # Stop Ray first: once its processes are gone nothing can write to the runs.
            self._stop_ray()
            self.record.close(self.client, "KILLED", resume.INTERRUPTED)
            raise resume.SweepInterrupted(self.name) from None
        except BaseException:
            self._stop_ray()
            self.record.close(self.client, "FAILED", resume.FAILED)
            raise
        self.record.close(self.client, "FINISHED", resume.FINISHED)

    def _stop_ray(self) -> None:
        if self.started_ray:
            ray.shutdown()

    def _log_setup(self) -> None:
        opts, prepared = self.opts, self.prepared
        tracking.log_params(
            self.client,
            self.parent_id,
            {
                "space": opts.space.name,
                M.PARAM_SEARCH_METRIC: M.SEARCH_METRIC,
                "num_samples": opts.num_samples,
                "seeds": opts.seeds,
                "seed": opts.seed,
                "feature_cache": opts.feature_cache,
                "views": opts.views,
                "max_failures": opts.max_failures,
                **{f"base.{k}": v for k, v in prepared.base_config.items()},
                **prepared.run_params(),
            },
        )
        log_dataset_input(self.client, self.parent_id, prepared.dataset_ref(opts))
        skipped = prepared.dataset.skipped_images
        if skipped:
            print(f"Skipped {skipped} unreadable images (--skip-bad-images)")
            tracking.log_metrics(self.client, self.parent_id, {"skipped_images": skipped})

    def start_cache(self) -> None:
        """The embedding cache actor every trial fetches its bank from."""
        opts = self.opts
        self.cache = FeatureCacheActor.options(
            name=self.cache_name,
            namespace=cluster.NAMESPACE,
            lifetime=None,
            num_gpus=0,  # GPU work runs in short tasks: see feature_cache._compute_on_gpu
            runtime_env={"env_vars": dict(CACHE_ENV)},
        ).remote(
            opts.cache_dir,
            opts.backbone,
            ray.put(self.prepared.dataset),
            self.prepared.backbone_hash,
            opts.views,
            opts.seed,
            gpu_share=min(1.0, opts.gpus_per_trial),
        )

    def compute_banks(self) -> None:
        """Every bank the trials will ask for, computed now. With GPUs the cache computes
        on them in short tasks (`feature_cache._compute_on_gpu`), which could not start
        once the pool's groups hold every GPU share for the whole search."""
        opts = self.opts
        if not opts.feature_cache:
            ray.get(self.cache.clean_bank.remote())  # the baselines'; trials make their own
            return
        levels = opts.space.levels("aug_strength") or [self.prepared.base_config["aug_strength"]]
        for level in levels:
            ray.get(self.cache.bank.remote(level))

    def baseline(self) -> None:
        """The raw backbone and the untrained predictor, at each of the sweep's seeds,
        in two baseline runs (kept from before an interruption when resuming)."""
        opts, record = self.opts, self.record
        self.bank = _baseline_bank(opts, self.cache, self.prepared.base_config)
        if record.state.baseline is not None:
            self.baselines = Baselines.from_state(record.state.baseline)
            print(
                f"Baselines (before the interruption): {_fmt_baselines(self.baselines, opts.seed)}",
                file=console.out(),
            )
            return
        self.baselines = _new_baselines(
            self.client,
            self.prepared.experiment_id,
            self.parent_id,
            self.name,
            self.prepared.run_tags(opts),
            self.prepared.run_params(),
        )
        for run_id in self.baselines.run_ids.values():
            log_dataset_input(self.client, run_id, self.prepared.dataset_ref(opts))
        seeds = range(opts.seed, opts.seed + opts.seeds)
        self._score_baselines(seeds, announce=True)
        for run_id in self.baselines.run_ids.values():
            self.client.set_terminated(run_id, "FINISHED")
        self._save_baselines()

    def _score_baselines(self, seeds: Iterable[int], announce: bool = False) -> None:
        assert self.baselines is not None and self.bank is not None
        _score_baselines(
            self.client, self.baselines, self.bank, self.prepared.base_config, seeds, announce
        )

    def _save_baselines(self) -> None:
        """Into `sweep.json`: a resumed sweep reuses them."""
        assert self.baselines is not None
        self.record.state.baseline = self.baselines.to_state()
        self.record.save()

    def search(self) -> Any:
        """Tune's trials (a new Tuner, or the interrupted one restored), run by the
        sweep's pool of long-lived Ray Train worker groups (`start_pool`, around this);
        the ResultGrid. A Ctrl-C Tune caught, or trials left unrun, raise
        `SweepInterrupted`."""
        from ray import tune

        trainable = tune.with_resources(
            tune.with_parameters(run_trial, ctx=self._context()),
            # The trial's trainable only waits on the pool: it reserves no CPU (the
            # pool's workers do) but a little memory; Tune refuses an empty request.
            {"cpu": 0, "memory": DRIVER_MEMORY},
        )
        if self.record.resumed and tune.Tuner.can_restore(self.record.folder):
            tuner = resume.restore_tuner(self.record, trainable)
        else:
            tuner = _new_tuner(self.opts, trainable, self.name, self.study_path)
        with resume.watch_interrupt() as interrupted:
            grid = tuner.fit()
        if interrupted() or grid.num_terminated + grid.num_errors < self.opts.total_trials:
            raise resume.SweepInterrupted(self.name)
        return grid

    def quiet(self) -> contextlib.AbstractContextManager[None]:
        """Tune's and Ray's output into `<storage>/<sweep>/sweep.log` (`console.quiet`),
        unless `--verbose`; the sweep's own lines go to `console.out()`."""
        log = Path(storage_path(self.opts.storage), self.name, console.LOG_FILE)
        return console.quiet(log, enabled=not self.opts.verbose)

    def start_pool(self) -> PoolTrials:
        """The sweep's pool, started now (its groups start in the background), a context
        manager that closes it: one group of `--workers-per-trial` ranks per concurrent
        trial (as many as the CPUs, GPUs and memory hold), each rank
        reserving what a trial's rank reserves (CPUs, its GPU share); started once, they
        run every trial of the sweep (`sweeps.pool`)."""
        opts = self.opts
        wanted = concurrency(opts)
        groups, limit = cluster.pool_groups(
            wanted,
            ray.cluster_resources(),
            opts.workers_per_trial,
            opts.cpus_per_worker,
            opts.gpus_per_trial,
        )
        if limit is not None:
            print(
                f"Pool: {groups} worker groups, not {wanted}: the cluster's {limit} hold "
                f"{groups}; the other trials wait for a free group.",
                file=console.out(),
            )
        return PoolTrials(
            pool_body,
            groups=groups,
            storage_path=str(Path(storage_path(opts.storage), "_train")),
            workers_per_group=opts.workers_per_trial,
            resources_per_worker=worker_resources(
                opts.workers_per_trial, opts.gpus_per_trial, opts.cpus_per_worker
            ),
            use_gpu=opts.gpus_per_trial > 0,
            name=self.pool_name,
            namespace=cluster.NAMESPACE,
        )

    def wait_for_pool(self, pool: PoolTrials) -> None:
        """Until every pool group has started (`PoolTrials.wait_ready`), so that the
        first trials run side by side, on as many nodes as there are groups; not for a
        group whose placement waits for CPUs that others hold, and at most
        `POOL_READY_S`: then the trials start on the groups that are up."""
        ready = pool.wait_ready(POOL_READY_S)
        if ready < pool.groups:
            print(
                f"Pool: {ready} of {pool.groups} worker groups started; the trials start "
                "on those, the others join when the cluster has room for them.",
                file=console.out(),
            )

    def _context(self) -> SweepContext:
        opts, prepared = self.opts, self.prepared
        assert self.baselines is not None
        return SweepContext(
            sweep_name=self.name,
            tracking_uri=opts.tracking_uri,
            experiment_id=prepared.experiment_id,
            parent_run_id=self.parent_id,
            base_config=prepared.base_config,
            backbone=opts.backbone,
            run_tags=prepared.run_tags(opts),
            run_params=prepared.run_params(),
            cache_actor=self.cache_name,
            namespace=cluster.NAMESPACE,
            pool_broker=pool_broker_name(self.pool_name),
            storage_path=storage_path(opts.storage),
            feature_cache=opts.feature_cache,
            workers_per_trial=opts.workers_per_trial,
            gpus_per_trial=opts.gpus_per_trial,
            cpus_per_worker=opts.cpus_per_worker,
            baseline_probe_accuracy=self.baselines.raw_test(),
            dataset=prepared.dataset_ref(opts),
            extra={"fault": prepared.fault},
        )

    def summarise(self, grid: Any) -> SweepSummary:
        """The parent run's summary (artifacts, answer, totals, note), the console table;
        the returned summary carries the verdict the CLI prints last."""
        opts, client, parent_id = self.opts, self.client, self.parent_id
        assert self.baselines is not None
        rows = _rows(grid, opts.space)
        stats = ray.get(self.cache.stats.remote())
        trial_images = int(sum(r.get("backbone_images") or 0 for r in rows))
        raw_val = self.baselines.scores[M.BASELINE_RAW][opts.seed][M.VAL_PROBE_ACCURACY]
        best = best_config(client, self.prepared.experiment_id, parent_id, opts.space)
        untrained_lift = None
        if best is not None:
            # The answer is paired seed by seed: the baselines need the best config's
            # seeds (and the pictures' baseline bands their intervals).
            self._score_baselines(best.seeds)
            self._save_baselines()
            untrained_lift = _untrained_lift(best, self.baselines)
        report = log_sweep_summary(
            client,
            self.prepared.experiment_id,
            parent_id,
            opts.space,
            raw_val,
            baselines=[
                pictures.baseline_from_scores(label, self.baselines.scores[kind])
                for kind, label in BASELINE_LABELS.items()
            ],
        )
        summary = SweepSummary(
            parent_run_id=parent_id,
            finished=sum(r["status"] != FAILED for r in rows),
            failed=sum(r["status"] == FAILED for r in rows),
            rows=rows,
            backbone_images=stats["images_embedded"] + trial_images,
            report=report,
            baselines=self.baselines,
            untrained_lift=untrained_lift,
        )
        log_sweep_totals(
            client,
            parent_id,
            raw=self.baselines.scores[M.BASELINE_RAW][opts.seed],
            untrained=self.baselines.scores[M.BASELINE_UNTRAINED][opts.seed],
            statuses=[r["status"] for r in rows],
            failed_status=FAILED,
            configs=len(report.configs),
            backbone_images=summary.backbone_images,
            untrained_lift=untrained_lift,
        )
        print(
            f"Sweep summary in run {parent_id}: {', '.join(report.artifacts)}; importances "
            f"{report.importances or report.importance_note}"
        )
        if report.best is not None:
            try:
                self._register_best(report.best.run_id)
            except Exception as exc:  # noqa: BLE001 - said on stderr and in a tag
                # As for the summary's other parts: the sweep is done; a store without a
                # model registry (or a flavour that cannot be logged) does not fail it.
                print(f"warning: registering the best predictor failed: {exc}", file=sys.stderr)
                tracking.set_tags(client, parent_id, {"jepa.register_error": str(exc)[:5000]})
        summary.verdict = self._answer(summary)
        return summary

    def _answer(self, summary: SweepSummary) -> list[str]:
        """Print the table; write the parent run's description (the answer, the table,
        the pictures, where to look further); return the lines the CLI prints last."""
        opts, exp_id = self.opts, self.prepared.experiment_id
        lines = print_table(summary, opts.space, opts.seed)
        verdict = verdict_lines(summary, opts.seed)
        dashboard = dashboard_command(self.study_path)
        note = parent_note(
            opts.space.name,
            verdict,
            lines,
            summary.report.artifacts,
            runs_view_url(opts.tracking_uri, exp_id, self.parent_id),
            dashboard,
        )
        log_parent_note(self.client, self.parent_id, note)
        return closing_lines(verdict, opts.tracking_uri, exp_id, self.parent_id, dashboard)

    @property
    def study_path(self) -> Path:
        """Optuna's study (a journal file) in the sweep's Tune folder."""
        return Path(self.record.folder) / STUDY_FILE

    def _register_best(self, run_id: str) -> None:
        """The best run's predictor (`jepa.best_run_id`) as an MLflow model, registered as
        a new version of `jepa-predictor` (loadable by `models:/jepa-predictor/N`)."""
        assert self.bank is not None
        # MLflow draws a progress bar for one small file: not on the sweep's console.
        quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
        with tempfile.TemporaryDirectory() as tmp, tracking.scoped_environ(quiet):
            path = self.client.download_artifacts(run_id, M.PREDICTOR_ARTIFACT, tmp)
            predictor, _ = load_predictor(path)
        example = self.bank.eval_clean[:8].float().numpy()
        model = log_registered_predictor(self.opts.tracking_uri, run_id, predictor, example)
        tracking.set_tags(self.client, self.parent_id, {M.TAG_BEST_MODEL: model.model_uri})
        print(f"Best predictor registered: {model.model_uri} (run {run_id})")


def _new_parent(opts: SweepOptions, prepared: Prepared, client: MlflowClient) -> resume.SweepRecord:
    """A new parent run and the `sweep.json` that names it (for `--resume`)."""
    sweep_name = f"{opts.space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent = client.create_run(
        prepared.experiment_id,
        run_name=sweep_name,
        tags={
            M.TAG_ROLE: M.ROLE_SWEEP,
            M.TAG_SWEEP_NAME: sweep_name,
            **prepared.run_tags(opts),
        },
    )
    state = resume.SweepState(
        sweep_name=sweep_name,
        space=resume.space_id(opts.space.path),
        experiment=opts.experiment,
        experiment_id=prepared.experiment_id,
        tracking_uri=opts.tracking_uri,
        parent_run_id=parent.info.run_id,
        fingerprint=prepared.fingerprint,
    )
    record = resume.SweepRecord(state, resume.experiment_dir(opts.storage, sweep_name))
    record.save()
    return record


def _new_tuner(opts: SweepOptions, trainable: Any, sweep_name: str, study_path: Path) -> Any:
    from ray import tune

    scheduler = None
    if opts.scheduler == "asha":
        # kNN on the validation split, every epoch: never the test split.
        scheduler = tune.schedulers.ASHAScheduler(
            metric=M.ASHA_METRIC,
            mode="max",
            time_attr="training_iteration",
            max_t=opts.base_config()["max_epochs"],
            grace_period=2,
        )
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
                # On disk beside Tune's results: optuna-dashboard shows it, and a
                # restored searcher (`--resume`) writes on to the same study.
                study_path=study_path,
                study_name=sweep_name,
            ),
            scheduler=scheduler,
            num_samples=opts.total_trials,
            max_concurrent_trials=concurrency(opts),
            # A trial's trainable process serves the next trial: no new process (seconds
            # of imports) per trial. The trainable keeps no state between trials.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=sweep_name,
            storage_path=storage_path(opts.storage),
            # Tune's status tables: in the sweep's log file unless --verbose
            # (`sweeps.console`); the console gets `TrialLines`.
            verbose=1,
            callbacks=[console.TrialLines(opts.total_trials)],
            # A trial that raises runs again (a new MLflow run each attempt), then counts
            # as failed; the sweep goes on either way.
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        ),
    )


def concurrency(opts: SweepOptions) -> int:
    """Trials at once: `--max-concurrent`, else as many as the cluster's resources hold."""
    return opts.max_concurrent or cluster.default_concurrency(
        opts.workers_per_trial * opts.cpus_per_worker, opts.gpus_per_trial
    )


def _baseline_bank(opts: SweepOptions, cache, base_config: dict[str, Any]) -> FeatureBank:
    """The bank whose clean embeddings the baselines are scored on (the trials' too)."""
    levels = opts.space.levels("aug_strength")
    level = levels[0] if levels else base_config["aug_strength"]
    # With the cache off the trials make their own views: the baselines need clean ones.
    ref = cache.bank.remote(level) if opts.feature_cache else cache.clean_bank.remote()
    return ray.get(ray.get(ref)[0])


def _new_baselines(
    client: MlflowClient,
    experiment_id: str,
    parent_id: str,
    sweep_name: str,
    run_tags: dict[str, str],
    run_params: dict[str, Any],
) -> Baselines:
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
    client: MlflowClient,
    baselines: Baselines,
    bank: FeatureBank,
    base_config: dict[str, Any],
    seeds: Iterable[int],
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
                line = f"Baseline ({kind.replace('_', ' ')}, seed {seed}): {fmt_scores(scores)}"
                print(line, file=console.out())


def _fmt_baselines(baselines: Baselines, seed: int) -> str:
    return "; ".join(
        f"{kind.replace('_', ' ')}: {fmt_scores(by_seed[seed])}"
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


def storage_path(storage: str) -> str:
    """What Ray Tune gets as `storage_path`: the folder made absolute (on a cluster every
    node mounts it). A file:// URI became its folder in `cli.check_storage`."""
    return str(Path(storage).resolve())


def _check_writable(path: str, flag: str) -> None:
    """Fail early, before any run exists, when a folder cannot be created or written."""
    target = Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserInputError(
            f"{flag} {path} is not writable ({exc.strerror}); choose another folder"
        ) from None
