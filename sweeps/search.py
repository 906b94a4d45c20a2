"""The search algorithm: Optuna's sampler through Ray Tune, one seed per repeat of a config.

Optuna proposes configurations; `SeededOptunaSearch` gives each trial a seed, so that no
two trials of a sweep train the same (config, seed):

- the r-th trial of a configuration (r = 0, 1, ...) gets seed `base_seed + r`. Once
  a discrete space is covered, Optuna can only propose configurations it has tried;
  those trials become seed replicates instead of copies (a trial's seed sets its view
  pairs, its initialisation and the probe's held-out slice, see `jepa.train`);
- `--seeds K`: every configuration Optuna proposes runs K times (seeds base_seed ..
  base_seed + K - 1 for a new config); Optuna is told the mean validation score of the
  K, once all K are done, as the value of its one trial.

The bookkeeping (config -> seeds handed out, replicates waiting, groups of K) lives in
the searcher's attributes, which Tune pickles with Optuna's state (`OptunaSearch.save`),
so `--resume` continues it.
"""

from __future__ import annotations

import json
from typing import Any

from ray.tune.search.optuna import OptunaSearch

SEED_KEY = "seed"


def config_key(config: dict[str, Any]) -> str:
    """A canonical text of a config's swept values, the seed left out (numpy scalars
    from Optuna and the plain values of a coverage point give the same text)."""
    plain = {k: _plain(v) for k, v in config.items() if k != SEED_KEY}
    return json.dumps(plain, sort_keys=True)


def _plain(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and value.is_integer():
        return int(value)  # a level 1 and a sampled 1.0 are one config
    return value


class SeededOptunaSearch(OptunaSearch):
    """OptunaSearch whose trials carry a `seed`: distinct per repeat of a config, K per
    proposed config (`seeds_per_config`), Optuna told the mean over the K.

    It also passes on only the reports that carry the search metric: epoch reports
    carry cheap diagnostics (loss, kNN, collapse metrics), the metric comes once, after
    training, and plain OptunaSearch fails on reports without it.
    """

    def __init__(
        self, *args: Any, seeds_per_config: int = 1, base_seed: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.seeds_per_config = seeds_per_config
        self.base_seed = base_seed
        self._seeds_handed: dict[str, int] = {}
        """config_key -> seeds handed out so far."""
        self._replicates: list[tuple[str, dict[str, Any]]] = []
        """(leader trial id, config) of replicates not yet handed to a trial."""
        self._leader: dict[str, str] = {}
        """trial id -> the trial id Optuna knows its group by."""
        self._groups: dict[str, dict[str, Any]] = {}
        """leader -> {"pending": trials still running or waiting, "values": [...]}."""

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._replicates:
            leader, config = self._replicates.pop(0)
            self._leader[trial_id] = leader
            return self._with_seed(config)
        config = super().suggest(trial_id)
        if not isinstance(config, dict):
            return config  # None (wait) or Searcher.FINISHED
        self._leader[trial_id] = trial_id
        self._groups[trial_id] = {"pending": self.seeds_per_config, "values": []}
        self._replicates += [(trial_id, config)] * (self.seeds_per_config - 1)
        return self._with_seed(config)

    def _with_seed(self, config: dict[str, Any]) -> dict[str, Any]:
        key = config_key(config)
        count = self._seeds_handed.get(key, 0)
        self._seeds_handed[key] = count + 1
        return {**config, SEED_KEY: self.base_seed + count}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Only the leader is an Optuna trial; its replicates report nothing to Optuna.
        if self.metric in result and trial_id in self._ot_trials:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        leader = self._leader.get(trial_id, trial_id)
        group = self._groups.get(leader)
        if group is None:  # a trial this searcher did not group (never expected)
            super().on_trial_complete(trial_id, result, error)
            return
        value = (result or {}).get(self.metric)
        if not error and value is not None:
            group["values"].append(float(value))
        group["pending"] -= 1
        if group["pending"] > 0:
            return
        del self._groups[leader]
        values = group["values"]
        if values:
            mean = sum(values) / len(values)
            super().on_trial_complete(leader, {self.metric: mean}, error=False)
        else:  # every seed failed (FAIL) or was stopped early by ASHA (PRUNED)
            super().on_trial_complete(leader, None, error=error)
