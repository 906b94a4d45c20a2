"""The searcher: Optuna's proposals through Ray Tune's OptunaSearch, a seed per repeat of
a config, K seeds per config, Optuna told the validation mean (real Optuna, no cluster)."""

from __future__ import annotations

import json

import pytest
from ray import tune

from jepa import metrics as M
from sweeps.search import SEED_KEY, SeededOptunaSearch, config_key


def _searcher(seeds: int = 1, base_seed: int = 0, **space) -> SeededOptunaSearch:
    return SeededOptunaSearch(
        space=space or {"predictor_width": tune.choice([64, 128])},
        metric=M.SEARCH_METRIC,
        mode="max",
        seed=0,
        seeds_per_config=seeds,
        base_seed=base_seed,
    )


def test_no_config_and_seed_twice_once_a_discrete_space_is_covered():
    searcher = _searcher(base_seed=7)
    pairs = []
    for i in range(9):
        config = searcher.suggest(f"t{i}")
        pairs.append((config["predictor_width"], config[SEED_KEY]))
        searcher.on_trial_complete(f"t{i}", {M.SEARCH_METRIC: 0.5 + i / 100})
    assert len(set(pairs)) == 9, pairs  # 2 configs, 9 trials: replicates, never copies
    for width in (64, 128):
        seeds = sorted(s for w, s in pairs if w == width)
        assert seeds == list(range(7, 7 + len(seeds)))


def test_k_seeds_per_config_and_optuna_sees_their_mean():
    searcher = _searcher(seeds=3, lr=tune.loguniform(1e-4, 1e-2))
    first = [searcher.suggest(f"a{i}") for i in range(3)]
    assert len({config_key(c) for c in first}) == 1  # one config ...
    assert [c[SEED_KEY] for c in first] == [0, 1, 2]  # ... with three seeds
    for i, value in enumerate((0.2, 0.5, 0.8)):
        searcher.on_trial_result(f"a{i}", {"training_iteration": 1, M.KNN_ACCURACY: 0.3})
        searcher.on_trial_complete(f"a{i}", {M.SEARCH_METRIC: value, M.PROBE_ACCURACY: 0.0})
    (trial,) = searcher._ot_study.trials
    assert trial.value == pytest.approx(0.5)  # the validation mean, never the test score
    second = searcher.suggest("b0")
    assert config_key(second) != config_key(first[0]) and second[SEED_KEY] == 0


def test_a_failed_group_is_a_failed_optuna_trial():
    searcher = _searcher(seeds=2)
    searcher.suggest("a0"), searcher.suggest("a1")
    searcher.on_trial_complete("a0", None, error=True)
    searcher.on_trial_complete("a1", None, error=True)
    assert searcher._ot_study.trials[0].state.name == "FAIL"


def test_config_key_ignores_the_seed_and_numpy_types():
    import numpy as np

    a = {"predictor_width": np.int64(64), "lr": np.float64(0.5), SEED_KEY: 3}
    b = {"predictor_width": 64.0, "lr": 0.5}
    assert config_key(a) == config_key(b) == json.dumps({"lr": 0.5, "predictor_width": 64})
