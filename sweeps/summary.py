"""The sweep's summary in its parent MLflow run, read back from the trial runs.

After the Tuner finishes, `log_sweep_summary` collects every trial run of the sweep
from MLflow (so it sees exactly what was logged, whoever logged it) and adds to the
parent run:

- `trials.csv`: one row per trial run: ids, run status, `jepa.status`, the resolved
  config and the final metrics;
- `best_config.yaml` and the tag `jepa.best_run_id`: the resolved config of the trial
  with the highest probe accuracy (the `best.*` params come from `sweeps.sweep`);
- Optuna's parameter importances (fANOVA, `optuna.importance.get_param_importances`)
  on a study rebuilt from the finished trials: metrics `importance.<param>` and
  `param_importances.png`; skipped, with the reason in the tag `jepa.importance`,
  when the space sweeps fewer than 2 parameters or fewer than 3 trials finished;
- `parallel_coordinates.png`: one line per finished trial across the swept parameters
  and its probe accuracy, collapsed trials dashed, the baseline marked.
"""

from __future__ import annotations

import csv
import math
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no screen on a cluster's head node; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from jepa import metrics as M  # noqa: E402
from jepa.config import TrialConfig  # noqa: E402
from sweeps import tracking  # noqa: E402
from sweeps.spaces import SearchSpace  # noqa: E402

TRIALS_CSV = "trials.csv"
BEST_CONFIG = "best_config.yaml"
IMPORTANCE_PNG = "param_importances.png"
PARALLEL_PNG = "parallel_coordinates.png"
TAG_BEST_RUN = "jepa.best_run_id"
TAG_IMPORTANCE = "jepa.importance"
MIN_IMPORTANCE_PARAMS = 2
# fANOVA fits a random forest on the finished trials; with 2 it has nothing to split.
MIN_IMPORTANCE_TRIALS = 3
METRIC_COLUMNS = (
    M.PROBE_ACCURACY,
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

    @property
    def probe_accuracy(self) -> float | None:
        value = self.metrics.get(M.PROBE_ACCURACY)
        return value if value is not None and math.isfinite(value) else None

    @property
    def finished(self) -> bool:
        return self.run_status == "FINISHED" and self.probe_accuracy is not None


@dataclass
class SummaryReport:
    """What `log_sweep_summary` logged, for the end-of-sweep printout and tests."""

    trials: list[TrialRecord]
    best: TrialRecord | None
    importances: dict[str, float] = field(default_factory=dict)
    importance_note: str = ""
    artifacts: list[str] = field(default_factory=list)


def log_sweep_summary(
    client, experiment_id: str, parent_id: str, space: SearchSpace, baseline: float | None
) -> SummaryReport:
    """Write the summary into the parent run; returns what it wrote.

    A part that fails (a plot, say) is reported on stderr and in the tag
    `jepa.summary_error`, and the other parts are still written: a finished sweep is not
    marked failed because of its summary.
    """
    trials = trial_records(client, experiment_id, parent_id)
    finished = [t for t in trials if t.finished]
    best = max(finished, key=lambda t: t.probe_accuracy, default=None)
    report = SummaryReport(trials=trials, best=best)
    swept = list(space.params)
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

        part(TRIALS_CSV, lambda: [write_trials_csv(trials, swept, out / TRIALS_CSV)])
        if best is not None:
            tracking.set_tags(client, parent_id, {TAG_BEST_RUN: best.run_id})
            part(BEST_CONFIG, lambda: [_write_best_config(best, out / BEST_CONFIG)])

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
            part(
                PARALLEL_PNG,
                lambda: [plot_parallel_coordinates(finished, space, baseline, out / PARALLEL_PNG)],
            )
    if errors:
        tracking.set_tags(client, parent_id, {"jepa.summary_error": "; ".join(errors)[:5000]})
    return report


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


def write_trials_csv(trials: list[TrialRecord], swept: list[str], path: Path) -> Path:
    """Columns: ids and statuses, the swept params first, the rest of the config, metrics."""
    config_keys = [k for k in TrialConfig.field_names() if k not in swept]
    header = ["trial_id", "run_id", "run_status", "jepa_status", *swept, *config_keys]
    header += list(METRIC_COLUMNS)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for t in trials:
            writer.writerow(
                [t.trial_id, t.run_id, t.run_status, t.status]
                + [t.params.get(k, "") for k in (*swept, *config_keys)]
                + [_csv_number(t.metrics.get(k)) for k in METRIC_COLUMNS]
            )
    return path


def _csv_number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _write_best_config(best: TrialRecord, path: Path) -> Path:
    config = {k: best.params[k] for k in TrialConfig.field_names() if k in best.params}
    typed = TrialConfig.from_dict(config).to_dict()
    doc = {
        "run_id": best.run_id,
        "trial_id": best.trial_id,
        M.PROBE_ACCURACY: best.probe_accuracy,
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
    """An in-memory Optuna study holding each finished trial's swept params and probe
    accuracy (MLflow params are strings; they are mapped back onto the space's types)."""
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
                params=params, distributions=distributions, value=t.probe_accuracy
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
            if str(level) == text or _same_number(level, text):
                return level
        return None
    return int(float(text)) if dist == "int" else float(text)


def _same_number(level: Any, text: str) -> bool:
    """A YAML level `1` and a logged float param `1.0` are the same value."""
    if isinstance(level, bool) or not isinstance(level, int | float):
        return False
    try:
        return float(text) == float(level)
    except ValueError:
        return False


def plot_importances(values: dict[str, float], path: Path) -> Path:
    names = list(values)[::-1]  # largest on top
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.2), dpi=100)
    ax.barh(names, [values[n] for n in names], color="tab:blue")
    for i, n in enumerate(names):
        ax.text(values[n], i, f" {values[n]:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("importance for probe_accuracy (fANOVA, sums to 1)")
    ax.set_title("Parameter importances", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_parallel_coordinates(
    finished: list[TrialRecord], space: SearchSpace, baseline: float | None, path: Path
) -> Path:
    """One polyline per trial over the swept parameters and probe_accuracy (last axis).

    Each axis is scaled to [0, 1]: choice levels evenly spaced in their listed order,
    uniform/int linearly, loguniform on a log scale between the space's bounds.
    """
    keys = list(space.params)
    accuracies = [t.probe_accuracy for t in finished]
    low = min([*accuracies, *([baseline] if baseline is not None else [])])
    high = max([*accuracies, *([baseline] if baseline is not None else [])])
    span = (high - low) or 1.0
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(2.0 * (len(keys) + 1) + 1.5, 4.5), dpi=100)
    xs = list(range(len(keys) + 1))
    for t in sorted(finished, key=lambda t: t.probe_accuracy):
        ys = [_axis_position(space, k, t.params.get(k)) for k in keys]
        ys.append((t.probe_accuracy - low) / span)
        collapsed = t.status == "collapsed"
        ax.plot(
            xs,
            ys,
            color=cmap((t.probe_accuracy - low) / span),
            linestyle="--" if collapsed else "-",
            marker="o",
            markersize=3,
            linewidth=1.5,
            alpha=0.85,
        )
    if baseline is not None:
        y = (baseline - low) / span
        ax.plot([xs[-1] - 0.15, xs[-1] + 0.15], [y, y], color="red", linewidth=2)
        ax.annotate("baseline", (xs[-1] + 0.17, y), color="red", fontsize=8, va="center")
    for i, k in enumerate(keys):
        ax.axvline(i, color="grey", linewidth=0.8)
        for label, y in _axis_ticks(space, k):
            ax.annotate(label, (i, y), xytext=(3, 0), textcoords="offset points", fontsize=7)
    ax.axvline(xs[-1], color="grey", linewidth=0.8)
    for y in (0.0, 0.5, 1.0):
        ax.annotate(
            f"{low + y * span:.3f}",
            (xs[-1], y),
            xytext=(3, 0),
            textcoords="offset points",
            fontsize=7,
        )
    labels = [f"{k} (log)" if space.params[k][0] == "loguniform" else k for k in keys]
    ax.set_xticks(xs, [*labels, M.PROBE_ACCURACY])
    ax.set_yticks([])
    ax.set_ylim(-0.08, 1.08)
    ax.set_xlim(-0.3, xs[-1] + 0.6)
    ax.set_title(f"{len(finished)} trials, colour = probe_accuracy; dashed = collapsed", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _axis_position(space: SearchSpace, key: str, text: str | None) -> float:
    value = _typed_value(space, key, text)
    dist, args = space.params[key]
    if value is None:
        return float("nan")
    if dist == "choice":
        return args.index(value) / max(len(args) - 1, 1) if len(args) > 1 else 0.5
    lo, hi = float(args[0]), float(args[1])
    if dist == "loguniform":
        return (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (float(value) - lo) / (hi - lo)


def _axis_ticks(space: SearchSpace, key: str) -> list[tuple[str, float]]:
    dist, args = space.params[key]
    if dist == "choice":
        return [(str(level), _axis_position(space, key, str(level))) for level in args]
    return [(f"{args[0]:g}", 0.0), (f"{args[1]:g}", 1.0)]
