"""The search algorithm: Optuna's sampler through Ray Tune."""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch


class FinalMetricOptunaSearch(OptunaSearch):
    """OptunaSearch that passes on only the reports that carry the search metric.

    Epoch reports carry cheap diagnostics (loss, kNN, collapse metrics); probe_accuracy
    comes once, after training. Plain OptunaSearch forwards every report to Optuna as an
    intermediate value and fails on those without the metric.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)
