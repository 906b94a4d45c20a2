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

With `study_path`, Optuna's study lives on disk, in an Optuna journal file (an
append-only log that several processes may write; Optuna's recommended file storage):
`optuna-dashboard <path>` (`dashboard_command`) shows its history, slices and
importances, live. A searcher over an existing journal continues the same study: it
sees the earlier trials, does not enqueue the coverage points again, and hands each
config the seeds after those its earlier trials used (each Optuna trial records its
seeds and their scores as the user attributes `seeds` and `seed_values`).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

SEED_KEY = "seed"
STUDY_FILE = "optuna_journal.log"
"""The journal's file name beside Tune's results: `<storage>/<sweep>/optuna_journal.log`."""
STUDY_NAME = "jepa"
ATTR_SEEDS = "seeds"
ATTR_SEED_VALUES = "seed_values"


def study_storage(path: str | Path):
    """Optuna's journal storage in the file `path` (its folder created); the file is
    created on first use and read back, with every study in it, when it exists."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(path).resolve()  # the searcher is pickled: a resume may run elsewhere
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def dashboard_command(path: str | Path) -> str:
    """The one command that serves the study in `path` on http://127.0.0.1:8080
    (optuna-dashboard is in the `dev` extra; it reads a journal file given as a path)."""
    return f"optuna-dashboard --host 127.0.0.1 --port 8080 {shlex.quote(str(Path(path).resolve()))}"


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
        self,
        *args: Any,
        seeds_per_config: int = 1,
        base_seed: int = 0,
        study_path: str | Path | None = None,
        study_name: str = STUDY_NAME,
        **kwargs: Any,
    ) -> None:
        """study_path: the journal file of an on-disk study (None: in memory)."""
        if study_path is not None:
            kwargs["storage"] = study_storage(study_path)
            kwargs["study_name"] = study_name
        # Set before OptunaSearch.__init__, which sets the study up (`_setup_study`).
        self.seeds_per_config = seeds_per_config
        self.base_seed = base_seed
        self._seeds_handed: dict[str, int] = {}
        """config_key -> seeds handed out so far."""
        super().__init__(*args, **kwargs)
        self._replicates: list[tuple[str, dict[str, Any]]] = []
        """(leader trial id, config) of replicates not yet handed to a trial."""
        self._leader: dict[str, str] = {}
        """trial id -> the trial id Optuna knows its group by."""
        self._groups: dict[str, dict[str, Any]] = {}
        """leader -> {"pending": trials still running or waiting, "values": [...]}."""

    def _setup_study(self, mode: str | list) -> None:
        import optuna

        # Optuna's INFO lines ("A new study created in Journal ...") go to the stderr it
        # saw on import, past the sweep's quiet console; the sweep names the journal.
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        earlier = self._earlier_trials()
        if earlier:
            # A continued study: its coverage points were enqueued (and run) the first
            # time; its configs' seeds carry on where they stopped.
            self._points_to_evaluate = []
            for trial in earlier:
                key = config_key(trial.params)
                seeds = trial.user_attrs.get(ATTR_SEEDS, [])
                handed = max(seeds, default=self.base_seed - 1) - self.base_seed + 1
                self._seeds_handed[key] = max(self._seeds_handed.get(key, 0), handed)
        super()._setup_study(mode)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._fail_orphans()

    def _fail_orphans(self) -> None:
        """FAIL the RUNNING trials of the study on disk that this restored searcher does
        not hold: the cut-off process asked for them after Tune's last save, so nothing
        will ever tell them a value (optuna-dashboard would show them running forever).
        Tune runs their configs again as new trials."""
        if self._ot_study is None:
            return
        from optuna.trial import TrialState

        held = {trial._trial_id for trial in self._ot_trials.values()}
        storage = self._ot_study._storage
        for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial._trial_id not in held:
                storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)

    def _earlier_trials(self) -> list:
        """The trials already in this study's on-disk storage ([] in memory or new)."""
        if self._storage is None:
            return []
        import optuna

        names = {s.study_name for s in optuna.get_all_study_summaries(self._storage)}
        if self._study_name not in names:
            return []
        study = optuna.load_study(study_name=self._study_name, storage=self._storage)
        return study.get_trials(deepcopy=False)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._replicates:
            leader, config = self._replicates.pop(0)
            self._leader[trial_id] = leader
            return self._with_seed(config, trial_id, leader)
        config = super().suggest(trial_id)
        if not isinstance(config, dict):
            return config  # None (wait) or Searcher.FINISHED
        self._leader[trial_id] = trial_id
        self._groups[trial_id] = {"pending": self.seeds_per_config, "values": []}
        self._replicates += [(trial_id, config)] * (self.seeds_per_config - 1)
        return self._with_seed(config, trial_id, trial_id)

    def _with_seed(self, config: dict[str, Any], trial_id: str, leader: str) -> dict[str, Any]:
        key = config_key(config)
        count = self._seeds_handed.get(key, 0)
        self._seeds_handed[key] = count + 1
        seed = self.base_seed + count
        group = self._groups.get(leader)
        if group is not None:
            group.setdefault("seed_of", {})[trial_id] = seed
            group.setdefault("seeds", []).append(seed)
            self._set_attr(leader, ATTR_SEEDS, group["seeds"])
        return {**config, SEED_KEY: seed}

    def _set_attr(self, leader: str, key: str, value: Any) -> None:
        """A user attribute of the leader's Optuna trial (what optuna-dashboard shows)."""
        trial = self._ot_trials.get(leader)
        if trial is not None and not self._told_already(leader):
            trial.set_user_attr(key, value)

    def _told_already(self, leader: str) -> bool:
        """Whether the study on disk already holds the leader's final value. After a
        resume, Tune reruns a trial its last save did not record as done, though the
        earlier attempt told Optuna (the journal outlives the pickled searcher); Optuna
        refuses to update a finished trial, and the value it has is that trial's."""
        trial = self._ot_trials.get(leader)
        if trial is None:
            return False
        return trial.storage.get_trial(trial._trial_id).state.is_finished()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Only the leader is an Optuna trial; its replicates report nothing to Optuna.
        if self.metric in result and trial_id in self._ot_trials:
            if not self._told_already(trial_id):
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
            seed = group.get("seed_of", {}).get(trial_id)
            if seed is not None:
                group.setdefault("seed_values", {})[str(seed)] = float(value)
                self._set_attr(leader, ATTR_SEED_VALUES, group["seed_values"])
        group["pending"] -= 1
        if group["pending"] > 0:
            return
        del self._groups[leader]
        if self._told_already(leader):
            return  # a rerun after a resume: Optuna has this config's value
        values = group["values"]
        if values:
            mean = sum(values) / len(values)
            super().on_trial_complete(leader, {self.metric: mean}, error=False)
        else:  # every seed failed (FAIL) or was stopped early by ASHA (PRUNED)
            super().on_trial_complete(leader, None, error=error)
