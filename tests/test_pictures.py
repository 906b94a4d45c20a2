"""sweeps/pictures.py: real matplotlib files from plain trial data."""

from __future__ import annotations

import random

import matplotlib.image as mpimg
import pytest

from jepa import metrics as M
from sweeps import pictures as P
from sweeps.stats import mean_interval

SPACE = {
    "learning_rate": ("loguniform", [1e-4, 1e-1]),
    "predictor_width": ("choice", [128, 256, 512]),
}


def _trials(seeds: int = 3) -> list[P.TrialPoint]:
    """lr=1e-3 is better by ~0.05; lr=3e-2 collapses."""
    rng = random.Random(0)
    out = []
    for lr in (2e-4, 1e-3, 3e-2):
        for width in (128, 512):
            for _ in range(seeds):
                acc = 0.80 + 0.05 * (lr == 1e-3) + rng.gauss(0, 0.005)
                status = "collapsed" if lr == 3e-2 else "finished"
                curves = {m: [(e, acc * e / 5) for e in range(1, 6)] for m in P.CURVE_METRICS}
                out.append(
                    P.TrialPoint(
                        {"learning_rate": repr(lr), "predictor_width": str(width)},
                        status,
                        acc,
                        acc - 0.01,
                        acc - 0.81,
                        curves,
                    )
                )
    return out


BASELINES = [
    P.Baseline("raw backbone", mean_interval([0.81, 0.812, 0.808]), mean_interval([0.8, 0.81])),
    P.Baseline("untrained predictor", mean_interval([0.75, 0.76]), mean_interval([0.74, 0.75])),
]


def test_summary_pictures_are_written_at_print_size(tmp_path):
    paths = P.summary_pictures(_trials(), SPACE, BASELINES, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [
            "accuracy_vs_learning_rate.png",
            "accuracy_vs_predictor_width.png",
            "curves_by_learning_rate.png",
            "curves_by_predictor_width.png",
            "parallel_coordinates.png",
        ]
    )
    for path in paths:
        height, width, _ = mpimg.imread(path).shape
        assert width >= 1500 and height >= 700, (path.name, width, height)


def test_best_is_the_eligible_config_with_the_best_validation_mean():
    configs = P.group(_trials(), list(SPACE))
    best = P.best_config(configs)
    assert best is not None and best.key[0] == repr(1e-3)
    assert all(c.collapsed for c in configs if c.key[0] == repr(3e-2))
    assert not any(c.eligible for c in configs if c.key[0] == repr(3e-2))
    assert best.lift.n == 3 and best.lift.low > 0  # ~ +0.04, seeds agree


@pytest.mark.parametrize(
    ("lifts", "word"),
    [([0.04, 0.05, 0.045], "beyond noise"), ([-0.02, 0.03, 0.01], "within noise")],
)
def test_title_says_whether_the_lift_is_beyond_noise(lifts, word):
    trials = [
        P.TrialPoint({"learning_rate": "0.001"}, "finished", 0.85, 0.85, lift) for lift in lifts
    ]
    best = P.best_config(P.group(trials, ["learning_rate"]))
    title = P._verdict_title("learning_rate", "learning_rate=0.001", best, BASELINES)
    assert word in title and "paired by seed" in title


def test_one_seed_says_noise_is_unknown():
    trials = [P.TrialPoint({"learning_rate": "0.001"}, "finished", 0.85, 0.85, 0.04)]
    best = P.best_config(P.group(trials, ["learning_rate"]))
    assert "noise unknown" in P._verdict_title("learning_rate", "x", best, BASELINES)


def test_all_collapsed_draws_without_a_best(tmp_path):
    trials = [t for t in _trials(1) if t.status == "collapsed"]
    path = P.plot_accuracy_vs_param(trials, SPACE, "learning_rate", BASELINES, tmp_path / "a.png")
    assert path.stat().st_size > 10_000
    assert P.best_config(P.group(trials, list(SPACE))) is None


def test_positions_follow_the_space():
    assert P._x_position("256", "choice", [128, 256, 512], 0.0) == 1
    assert P._x_position("256.0", "choice", [128, 256, 512], 0.0) == 1  # a float param
    assert P._x_position("0.001", "loguniform", [1e-4, 1e-1], 0.0) == pytest.approx(1e-3)
    # Siblings fan out by a factor in log space, not by an offset that could go negative.
    assert P._x_position("0.0001", "loguniform", [1e-4, 1e-1], -0.1) > 0
    assert P._axis_position(SPACE, "learning_rate", "0.001") == pytest.approx(1 / 3)
    assert P._axis_position(SPACE, "predictor_width", "512") == 1.0


def test_baseline_from_scores_per_seed():
    scores = {
        0: {M.VAL_PROBE_ACCURACY: 0.80, M.PROBE_ACCURACY: 0.70},
        1: {M.VAL_PROBE_ACCURACY: 0.82, M.PROBE_ACCURACY: 0.72},
    }
    b = P.baseline_from_scores("raw backbone", scores)
    assert b.label == "raw backbone" and b.val.n == 2
    assert b.val.mean == pytest.approx(0.81) and b.test.mean == pytest.approx(0.71)
