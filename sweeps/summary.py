"""The sweep's summary in its parent MLflow run, read back from the trial runs.

After the Tuner finishes, `log_sweep_summary` collects every trial run of the sweep
from MLflow (so it sees exactly what was logged, whoever logged it), groups the runs by
configuration (the swept values; the seeds are its replicates) and adds to the parent
run:

- the answer: the best config, chosen on the validation split only
  (`val_probe_accuracy`, mean over its seeds) among configs none of whose trials
  collapsed or diverged; its `test_probe_accuracy` (mean over its seeds) with a t-based
  95% interval, `test_probe_lift` over the raw backbone paired seed by seed (each
  trial's `probe_lift`) with its interval; the tag `jepa.best_run_id` (its seed with the
  best validation score) and `best_config.yaml`. When no config qualifies, the tag
  `jepa.all_collapsed=true` and no best;
- `trials.csv`: one row per trial run: ids, run status, `jepa.status`, the resolved
  config (seed included), the final metrics, and its config's n, mean, std and 95%
  interval of the validation and test scores; `configs.csv`: one row per config;
- Optuna's parameter importances (fANOVA, `optuna.importance.get_param_importances`)
  for the validation score, on a study rebuilt from the finished trials: metrics
  `importance.<param>` and `param_importances.png`; skipped, with the reason in the tag
  `jepa.importance`, when the space sweeps fewer than 2 parameters or fewer than 3
  trials finished;
- the pictures of `sweeps.pictures`: per swept parameter `accuracy_vs_<param>.png`
  (validation and test against the value, seeds' intervals, the baselines as bands) and
  `curves_by_<param>.png` (every trial's per-epoch curves, read back with
  `metric_histories`), and `parallel_coordinates.png`.
"""

from __future__ import annotations

import csv
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import yaml
from matplotlib.figure import Figure

from jepa import metrics as M
from jepa.config import TrialConfig
from jepa.train import STATUS_COLLAPSED, STATUS_DIVERGED
from sweeps import pictures, tracking
from sweeps.spaces import SearchSpace
from sweeps.stats import Interval, mean_interval

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

TRIALS_CSV = "trials.csv"
CONFIGS_CSV = "configs.csv"
BEST_CONFIG = "best_config.yaml"
IMPORTANCE_PNG = "param_importances.png"
PARALLEL_PNG = pictures.PARALLEL_PNG
TAG_BEST_RUN = M.TAG_BEST_RUN
TAG_IMPORTANCE = "jepa.importance"
STATUS_FINISHED = "finished"  # jepa.train.STATUS_FINISHED; the only status eligible as best
MIN_IMPORTANCE_PARAMS = 2
# fANOVA fits a random forest on the finished trials; with 2 it has nothing to split.
MIN_IMPORTANCE_TRIALS = 3
METRIC_COLUMNS = (
    M.VAL_PROBE_ACCURACY,
    M.PROBE_ACCURACY,
    M.PROBE_ACCURACY_PLAIN,
    M.BASELINE_PROBE_ACCURACY,
    M.PROBE_LIFT,
    M.KNN_ACCURACY,
    M.EMBEDDING_STD,
    M.EMBEDDING_STD_RATIO,
    M.EFFECTIVE_RANK,
    M.TRAIN_LOSS,
    "epochs_run",
)


@dataclass
class TrialRecord:
    """One trial run as MLflow holds it."""

    run_id: str
    trial_id: str
    run_status: str
    status: str
    """`jepa.status`: finished, collapsed, diverged, or '' when the run never got there."""
    params: dict[str, str]
    metrics: dict[str, float]

    def metric(self, key: str) -> float | None:
        value = self.metrics.get(key)
        return value if value is not None and math.isfinite(value) else None

    @property
    def probe_accuracy(self) -> float | None:
        """The test split's score: reported, never selected on."""
        return self.metric(M.PROBE_ACCURACY)

    @property
    def val_probe_accuracy(self) -> float | None:
        """The validation split's score: what the search selects on."""
        return self.metric(M.VAL_PROBE_ACCURACY)

    @property
    def finished(self) -> bool:
        return self.run_status == "FINISHED" and self.val_probe_accuracy is not None


@dataclass
class ConfigStats:
    """One configuration (its swept values) over the seeds it ran with."""

    key: tuple[str, ...]
    """The swept values as logged (MLflow params), in the space's order."""
    config: dict[str, str]
    runs: list[TrialRecord]
    """Its trial runs that ended (run FINISHED), whatever their jepa.status."""
    val: Interval | None
    test: Interval | None
    lift: Interval | None
    """probe_lift of each seed: test score minus the raw backbone's at the same seed."""
    plain: Interval | None

    @property
    def seeds(self) -> list[int]:
        return sorted(int(r.params[SEED_PARAM]) for r in self.runs if SEED_PARAM in r.params)

    @property
    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.runs:
            counts[r.status or "?"] = counts.get(r.status or "?", 0) + 1
        return counts

    @property
    def eligible(self) -> bool:
        """Every seed finished normally (none collapsed or diverged) and was scored."""
        return (
            bool(self.runs)
            and all(r.status == STATUS_FINISHED for r in self.runs)
            and self.val is not None
        )

    @property
    def best_run(self) -> TrialRecord | None:
        scored = [r for r in self.runs if r.val_probe_accuracy is not None]
        return max(scored, key=lambda r: r.val_probe_accuracy, default=None)


SEED_PARAM = "seed"


@dataclass
class SummaryReport:
    """What `log_sweep_summary` logged, for the end-of-sweep printout and tests."""

    trials: list[TrialRecord]
    configs: list[ConfigStats] = field(default_factory=list)
    best_config: ConfigStats | None = None
    importances: dict[str, float] = field(default_factory=dict)
    importance_note: str = ""
    artifacts: list[str] = field(default_factory=list)

    @property
    def best(self) -> TrialRecord | None:
        """The best config's run with the best validation score."""
        return self.best_config.best_run if self.best_config else None

    @property
    def all_collapsed(self) -> bool:
        """Trials ended, yet none qualifies: every config had a collapsed or diverged seed."""
        return bool(self.configs) and self.best_config is None


def group_configs(trials: list[TrialRecord], swept: list[str]) -> list[ConfigStats]:
    """The ended trial runs grouped by their swept values, best validation mean first."""
    groups: dict[tuple[str, ...], list[TrialRecord]] = {}
    for t in trials:
        if t.run_status != "FINISHED":
            continue  # a failed or killed attempt: not a result
        groups.setdefault(tuple(t.params.get(k, "") for k in swept), []).append(t)
    out = []
    for key, runs in groups.items():
        out.append(
            ConfigStats(
                key=key,
                config=dict(zip(swept, key, strict=True)),
                runs=runs,
                val=mean_interval(r.val_probe_accuracy for r in runs),
                test=mean_interval(r.probe_accuracy for r in runs),
                lift=mean_interval(r.metric(M.PROBE_LIFT) for r in runs),
                plain=mean_interval(r.metric(M.PROBE_ACCURACY_PLAIN) for r in runs),
            )
        )
    out.sort(key=lambda c: -(c.val.mean if c.val else -1.0))
    return out


def choose_best(configs: list[ConfigStats]) -> ConfigStats | None:
    """The eligible config with the highest mean validation score; the test split
    plays no part."""
    eligible = [c for c in configs if c.eligible]
    return max(eligible, key=lambda c: c.val.mean, default=None)


def answer_metrics(best: ConfigStats) -> dict[str, float]:
    """The parent run's answer: the best config's test score and paired lift, with
    their intervals (bounds only from 2 seeds on)."""
    values: dict[str, float] = {M.BEST_SEEDS: float(best.test.n if best.test else 0)}
    for name, interval in ((M.TEST_PROBE_ACCURACY, best.test), (M.TEST_PROBE_LIFT, best.lift)):
        if interval is None:
            continue
        values[name] = interval.mean
        if interval.has_interval:
            values[name + M.CI_LOW] = interval.low
            values[name + M.CI_HIGH] = interval.high
    return values


def best_config(
    client, experiment_id: str, parent_id: str, space: SearchSpace
) -> ConfigStats | None:
    """The config `log_sweep_summary` will choose, read from the trial runs without
    writing anything (the sweep scores the baselines at its seeds before the summary)."""
    trials = trial_records(client, experiment_id, parent_id)
    return choose_best(group_configs(trials, list(space.params)))


# Long on purpose: every part below shares one temporary folder and `part`'s rule (a
# failing part is reported, the others still written); split, that rule would be copied.
def log_sweep_summary(
    client,
    experiment_id: str,
    parent_id: str,
    space: SearchSpace,
    baseline: float | None,
    baselines: Sequence[pictures.Baseline] = (),
) -> SummaryReport:
    """Write the summary into the parent run; returns what it wrote.

    baseline: the raw backbone's validation score at the sweep's seed (the parallel
    plot's mark); baselines: the raw backbone first, then the untrained predictor, with
    their scores over the seeds (the bands of the accuracy pictures). Without
    `baselines`, the raw backbone's band is `baseline` alone, on the validation panel.

    A part that fails (a plot, say) is reported on stderr and in the tag
    `jepa.summary_error`, and the other parts are still written: a finished sweep is not
    marked failed because of its summary.
    """
    trials = trial_records(client, experiment_id, parent_id)
    finished = [t for t in trials if t.finished]
    swept = list(space.params)
    configs = group_configs(trials, swept)
    best_config = choose_best(configs)
    report = SummaryReport(trials=trials, configs=configs, best_config=best_config)
    best = report.best
    if best_config is not None:
        tracking.log_metrics(client, parent_id, answer_metrics(best_config))
        tracking.log_params(
            client, parent_id, {f"best.{k}": v for k, v in best_config.config.items()}
        )
    if report.all_collapsed:
        tracking.set_tags(client, parent_id, {M.TAG_ALL_COLLAPSED: "true"})
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)

        def part(name: str, write: Callable[[], list[Path]]) -> None:
            try:
                for path in write():
                    client.log_artifact(parent_id, str(path))
                    report.artifacts.append(path.name)
            except Exception as exc:  # noqa: BLE001 - reported below, never silent
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
                print(f"warning: sweep summary: {name} failed: {exc}", file=sys.stderr)

        part(TRIALS_CSV, lambda: [write_trials_csv(trials, swept, out / TRIALS_CSV, configs)])
        part(CONFIGS_CSV, lambda: [write_configs_csv(configs, swept, out / CONFIGS_CSV)])
        if best is not None and best_config is not None:
            tracking.set_tags(client, parent_id, {TAG_BEST_RUN: best.run_id})
            part(BEST_CONFIG, lambda: [_write_best_config(best, best_config, out / BEST_CONFIG)])

        def importances() -> list[Path]:
            values, note = param_importances(finished, space)
            report.importances, report.importance_note = values, note
            tracking.set_tags(client, parent_id, {TAG_IMPORTANCE: note})
            if not values:
                return []
            tracking.log_metrics(
                client, parent_id, {f"importance.{k}": v for k, v in values.items()}
            )
            return [plot_importances(values, out / IMPORTANCE_PNG)]

        part(IMPORTANCE_PNG, importances)
        if finished:
            bands = list(baselines)
            if not bands and baseline is not None:
                bands = [pictures.Baseline("raw backbone", mean_interval([baseline]), None)]

            def summary_pictures() -> list[Path]:
                histories = metric_histories(client, [t.run_id for t in finished])
                points = [trial_point(t, space, histories.get(t.run_id, {})) for t in finished]
                return pictures.summary_pictures(points, space.params, bands, out)

            part("pictures", summary_pictures)
    if errors:
        tracking.set_tags(client, parent_id, {"jepa.summary_error": "; ".join(errors)[:5000]})
    return report


def log_sweep_totals(
    client: MlflowClient,
    parent_id: str,
    raw: dict[str, float],
    untrained: dict[str, float],
    statuses: list[str],
    failed_status: str,
    configs: int,
    backbone_images: int,
    untrained_lift: Interval | None,
) -> None:
    """The parent run's totals, after `log_sweep_summary`: the baselines at the sweep's
    seed, trials by outcome, configs, backbone work and the lift over the untrained
    predictor (`untrained_lift`, None when no config is best)."""
    values = {
        M.BASELINE_PROBE_ACCURACY: raw[M.PROBE_ACCURACY],
        "baseline_val_probe_accuracy": raw[M.VAL_PROBE_ACCURACY],
        "untrained_probe_accuracy": untrained[M.PROBE_ACCURACY],
        "finished_trials": sum(s != failed_status for s in statuses),
        "failed_trials": sum(s == failed_status for s in statuses),
        "diverged_trials": sum(s == STATUS_DIVERGED for s in statuses),
        "collapsed_trials": sum(s == STATUS_COLLAPSED for s in statuses),
        "configs": configs,
        "backbone_images": backbone_images,
    }
    if untrained_lift is not None:
        values[M.TEST_PROBE_LIFT_UNTRAINED] = untrained_lift.mean
        if untrained_lift.has_interval:
            values[M.TEST_PROBE_LIFT_UNTRAINED + M.CI_LOW] = untrained_lift.low
            values[M.TEST_PROBE_LIFT_UNTRAINED + M.CI_HIGH] = untrained_lift.high
    tracking.log_metrics(client, parent_id, values)


def trial_records(client, experiment_id: str, parent_id: str) -> list[TrialRecord]:
    """Every trial run whose parent is `parent_id`, oldest first."""
    query = f"tags.mlflow.parentRunId = '{parent_id}' and tags.`{M.TAG_ROLE}` = '{M.ROLE_TRIAL}'"
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=query, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    runs.sort(key=lambda r: r.info.start_time or 0)
    return [
        TrialRecord(
            run_id=r.info.run_id,
            trial_id=r.data.tags.get(M.TAG_TRIAL_ID, r.info.run_name or ""),
            run_status=r.info.status,
            status=r.data.tags.get(M.TAG_STATUS, ""),
            params=dict(r.data.params),
            metrics=dict(r.data.metrics),
        )
        for r in runs
    ]


def metric_histories(
    client, run_ids: Sequence[str], keys: Sequence[str] = pictures.CURVE_METRICS
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """run id -> metric -> [(step, value)] of the per-epoch metrics `keys`, by step.

    One call per run and metric (MLflow's client has no bulk history call; over HTTP
    ~90 ms each): a 32-trial sweep reads its curves in ~9 s, once, at its end."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run_id in run_ids:
        for key in keys:
            points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            if points:
                out.setdefault(run_id, {})[key] = points
    return out


def trial_point(
    t: TrialRecord, space: SearchSpace, curves: dict[str, list[tuple[int, float]]]
) -> pictures.TrialPoint:
    """A trial run as the pictures take it: its swept values, status, scores, curves."""
    return pictures.TrialPoint(
        params={k: t.params.get(k, "") for k in space.params},
        status=t.status,
        val=t.val_probe_accuracy,
        test=t.probe_accuracy,
        lift=t.metric(M.PROBE_LIFT),
        curves=curves,
    )


INTERVAL_PARTS = ("n", "mean", "std", "ci95_low", "ci95_high")


def _interval_columns(prefix: str) -> list[str]:
    return [f"{prefix}_{part}" for part in INTERVAL_PARTS]


def _interval_cells(interval: Interval | None) -> list[str]:
    if interval is None:
        return ["0", "", "", "", ""]
    return [str(interval.n)] + [
        _csv_number(v) for v in (interval.mean, interval.std, interval.low, interval.high)
    ]


CONFIG_INTERVALS = (("config_val", "val"), ("config_test", "test"), ("config_lift", "lift"))


def write_trials_csv(
    trials: list[TrialRecord],
    swept: list[str],
    path: Path,
    configs: list[ConfigStats] | None = None,
) -> Path:
    """Columns: ids and statuses, the swept params first, the rest of the config (seed
    included), metrics, then the trial's config over its seeds: n, mean, std and 95%
    interval of the validation score, the test score and the paired lift."""
    config_keys = [k for k in TrialConfig.field_names() if k not in swept]
    header = ["trial_id", "run_id", "run_status", "jepa_status", *swept, *config_keys]
    header += list(METRIC_COLUMNS)
    for prefix, _ in CONFIG_INTERVALS:
        header += _interval_columns(prefix)
    by_key = {c.key: c for c in configs or []}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for t in trials:
            group = by_key.get(tuple(t.params.get(k, "") for k in swept))
            cells = []
            for _, attr in CONFIG_INTERVALS:
                cells += _interval_cells(getattr(group, attr) if group else None)
            writer.writerow(
                [t.trial_id, t.run_id, t.run_status, t.status]
                + [t.params.get(k, "") for k in (*swept, *config_keys)]
                + [_csv_number(t.metrics.get(k)) for k in METRIC_COLUMNS]
                + cells
            )
    return path


def write_configs_csv(configs: list[ConfigStats], swept: list[str], path: Path) -> Path:
    """One row per config, best validation mean first: its swept values, seeds, trial
    statuses, eligibility, and n, mean, std, 95% interval of validation, test, paired
    lift and the seed's plain probe."""
    header = [*swept, "seeds", "statuses", "eligible"]
    parts = (("val", "val"), ("test", "test"), ("lift", "lift"), ("plain", "plain"))
    for prefix, _ in parts:
        header += _interval_columns(prefix)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for c in configs:
            row = [*c.key, " ".join(map(str, c.seeds))]
            row += [" ".join(f"{k}:{v}" for k, v in sorted(c.statuses.items())), c.eligible]
            for _, attr in parts:
                row += _interval_cells(getattr(c, attr))
            writer.writerow(row)
    return path


def _csv_number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _write_best_config(best: TrialRecord, group: ConfigStats, path: Path) -> Path:
    config = {k: best.params[k] for k in TrialConfig.field_names() if k in best.params}
    typed = TrialConfig.from_dict(config).to_dict()
    doc = {
        "run_id": best.run_id,
        "trial_id": best.trial_id,
        "chosen_on": M.SEARCH_METRIC,
        "seeds": group.seeds,
        M.VAL_PROBE_ACCURACY: group.val.mean if group.val else None,
        M.TEST_PROBE_ACCURACY: group.test.mean if group.test else None,
        "config": typed,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def param_importances(
    finished: list[TrialRecord], space: SearchSpace
) -> tuple[dict[str, float], str]:
    """({param: importance}, note) from Optuna's default (fANOVA) evaluator on a study
    rebuilt from the finished trials; ({}, why) when there is too little to say."""
    if len(space.params) < MIN_IMPORTANCE_PARAMS:
        return {}, (
            f"skipped: the space sweeps {len(space.params)} parameter(s); "
            f"importance needs at least {MIN_IMPORTANCE_PARAMS}"
        )
    study = rebuild_study(finished, space)
    if len(study.trials) < MIN_IMPORTANCE_TRIALS:
        return {}, (
            f"skipped: {len(study.trials)} finished trial(s); "
            f"importance needs at least {MIN_IMPORTANCE_TRIALS}"
        )
    import optuna

    # Named explicitly: Optuna 5's default evaluator is PED-ANOVA, which on a few dozen
    # trials ranked a parameter with no effect first in our tests; fANOVA (Hutter et
    # al., ICML 2014) did not. Seeded so that the same trials give the same numbers.
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    values = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return {k: float(v) for k, v in values.items()}, f"fANOVA over {len(study.trials)} trials"


def rebuild_study(finished: list[TrialRecord], space: SearchSpace):
    """An in-memory Optuna study holding each finished trial's swept params and
    validation score (MLflow params are strings; they are mapped back onto the space's
    types)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {k: _distribution(dist, args) for k, (dist, args) in space.params.items()}
    study = optuna.create_study(direction="maximize")
    for t in finished:
        params = {k: _typed_value(space, k, t.params.get(k)) for k in space.params}
        if any(v is None for v in params.values()):
            continue  # a run from another space version; it has no place in this study
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=distributions, value=t.val_probe_accuracy
            )
        )
    return study


def _distribution(dist: str, args: list[Any]):
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if dist == "choice":
        return CategoricalDistribution(args)
    if dist == "int":
        return IntDistribution(int(args[0]), int(args[1]))
    return FloatDistribution(float(args[0]), float(args[1]), log=dist == "loguniform")


def _typed_value(space: SearchSpace, key: str, text: str | None) -> Any:
    if text is None:
        return None
    dist, args = space.params[key]
    if dist == "choice":
        for level in args:
            if str(level) == text or pictures.same_number(level, text):
                return level
        return None
    return int(float(text)) if dist == "int" else float(text)


def plot_importances(values: dict[str, float], path: Path) -> Path:
    names = list(values)[::-1]  # largest on top
    with matplotlib.rc_context(pictures.FONT):  # no pyplot: see jepa.plots
        fig = Figure(figsize=(9, 0.6 * len(names) + 1.8), dpi=pictures.DPI)
        ax = fig.subplots()
        ax.barh(names, [values[n] for n in names], color="tab:blue")
        for i, n in enumerate(names):
            ax.text(values[n], i, f" {values[n]:.2f}", va="center")
        ax.set_xlim(0, 1.15)
        ax.set_xlabel(f"importance for {M.SEARCH_METRIC} (fANOVA, sums to 1)")
        ax.set_title("Parameter importances")
        fig.tight_layout()
        fig.savefig(path)
    return path
