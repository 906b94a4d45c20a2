"""What a sweep found, for people: the `SweepSummary`, the console table with the
baselines and the verdict line(s) the CLI prints last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jepa import metrics as M
from jepa.train import STATUS_COLLAPSED, STATUS_DIVERGED
from sweeps.mlflow_conventions import lift_claim
from sweeps.spaces import SearchSpace
from sweeps.stats import Interval, mean_interval
from sweeps.summary import ConfigStats, SummaryReport


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
        claim = lift_claim(best.lift)
        if claim:
            out.append(claim)
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


def fmt_scores(scores: dict[str, float]) -> str:
    return (
        f"val_probe_accuracy={scores[M.VAL_PROBE_ACCURACY]:.4f} "
        f"probe_accuracy={scores[M.PROBE_ACCURACY]:.4f} "
        f"probe_accuracy_plain={scores[M.PROBE_ACCURACY_PLAIN]:.4f} "
        f"knn_accuracy={scores[M.KNN_ACCURACY]:.4f}"
    )


def _fmt_baselines(baselines: Baselines, seed: int) -> str:
    return "; ".join(
        f"{kind.replace('_', ' ')}: {fmt_scores(by_seed[seed])}"
        for kind, by_seed in baselines.scores.items()
    )
