"""The sweep summary, on trial runs written into a real temporary MLflow store."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from jepa import metrics as M
from jepa.config import TrialConfig
from sweeps import tracking
from sweeps.pictures import accuracy_png
from sweeps.spaces import load_space
from sweeps.stats import mean_interval
from sweeps.summary import (
    BEST_CONFIG,
    CONFIGS_CSV,
    IMPORTANCE_PNG,
    PARALLEL_PNG,
    TAG_BEST_RUN,
    TAG_IMPORTANCE,
    TRIALS_CSV,
    log_sweep_summary,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _store(tmp_path: Path) -> tuple[MlflowClient, str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = tracking.ensure_experiment(uri, "summary-test")
    client = tracking.client(uri)
    parent = client.create_run(experiment_id, tags={M.TAG_ROLE: M.ROLE_SWEEP})
    return client, experiment_id, parent.info.run_id


def _trial(
    client, experiment_id, parent_id, overrides, accuracy, status="finished", i=0, test=None
):
    """A finished trial run whose validation score is `accuracy` and test score `test`
    (default the same), lift against a baseline of 0.5; `accuracy=None`: a failed run."""
    run = client.create_run(
        experiment_id,
        tags={
            M.TAG_ROLE: M.ROLE_TRIAL,
            "mlflow.parentRunId": parent_id,
            M.TAG_TRIAL_ID: f"t{i}",
        },
    )
    run_id = run.info.run_id
    tracking.log_params(client, run_id, TrialConfig.from_dict(overrides).to_dict())
    if accuracy is not None:
        test = accuracy if test is None else test
        tracking.log_metrics(
            client,
            run_id,
            {
                M.VAL_PROBE_ACCURACY: accuracy,
                M.PROBE_ACCURACY: test,
                M.PROBE_LIFT: test - 0.5,
            },
        )
        tracking.set_tags(client, run_id, {M.TAG_STATUS: status})
        client.set_terminated(run_id, "FINISHED")
    else:
        client.set_terminated(run_id, "FAILED")
    return run_id


def _artifact(client, run_id, name, tmp_path) -> Path:
    return Path(client.download_artifacts(run_id, name, str(tmp_path)))


def test_summary_of_a_multi_parameter_sweep(tmp_path):
    client, experiment_id, parent_id = _store(tmp_path)
    space = load_space("full")
    rng = random.Random(0)
    runs = {}
    for i in range(8):
        width = rng.choice([128, 256, 512, 1024])
        overrides = {
            "predictor_width": width,
            "depth": rng.choice([1, 2, 3]),
            "lr": 10 ** rng.uniform(-4, -1.6),
            "aug_strength": rng.choice([0.25, 0.5, 1.0]),
        }
        # probe accuracy driven by the width alone, so the importance must say so
        accuracy = 0.5 + width / 4096 + rng.uniform(0, 0.005)
        runs[i] = _trial(client, experiment_id, parent_id, overrides, accuracy, i=i)
    failed = _trial(client, experiment_id, parent_id, {"predictor_width": 128}, None, i=99)

    report = log_sweep_summary(client, experiment_id, parent_id, space, baseline=0.6)

    assert set(report.artifacts) == {
        TRIALS_CSV,
        CONFIGS_CSV,
        BEST_CONFIG,
        IMPORTANCE_PNG,
        PARALLEL_PNG,
        *(accuracy_png(k) for k in space.params),  # no curves: these trials log no epochs
    }
    parent = client.get_run(parent_id)
    importances = {
        k.removeprefix("importance."): v
        for k, v in parent.data.metrics.items()
        if k.startswith("importance.")
    }
    assert set(importances) == set(space.params)
    assert max(importances, key=importances.get) == "predictor_width"
    assert "fANOVA over 8 trials" in parent.data.tags[TAG_IMPORTANCE]
    best_id = max(runs.values(), key=lambda r: client.get_run(r).data.metrics[M.VAL_PROBE_ACCURACY])
    assert parent.data.tags[TAG_BEST_RUN] == best_id
    best = yaml.safe_load(_artifact(client, parent_id, BEST_CONFIG, tmp_path).read_text())
    assert best["run_id"] == best_id
    assert TrialConfig.from_dict(best["config"]).predictor_width == 1024

    rows = list(csv.DictReader(_artifact(client, parent_id, TRIALS_CSV, tmp_path).open()))
    assert len(rows) == 9
    by_run = {r["run_id"]: r for r in rows}
    assert by_run[failed]["run_status"] == "FAILED" and by_run[failed][M.PROBE_ACCURACY] == ""
    assert by_run[best_id]["jepa_status"] == "finished"
    assert list(rows[0])[4:8] == list(space.params)  # swept params come first
    for name in (IMPORTANCE_PNG, PARALLEL_PNG):
        assert _artifact(client, parent_id, name, tmp_path).read_bytes()[:8] == PNG_MAGIC


def test_summary_of_a_one_parameter_sweep_skips_importances(tmp_path):
    client, experiment_id, parent_id = _store(tmp_path)
    space = load_space("objective")
    for i, name in enumerate(space.levels("objective")):
        status = "collapsed" if name == "cross_view" else "finished"
        _trial(client, experiment_id, parent_id, {"objective": name}, 0.8 + i / 100, status, i)

    report = log_sweep_summary(client, experiment_id, parent_id, space, baseline=0.85)

    assert report.importances == {}
    assert "skipped" in report.importance_note and "at least 2" in report.importance_note
    assert set(report.artifacts) == {
        TRIALS_CSV,
        CONFIGS_CSV,
        BEST_CONFIG,
        PARALLEL_PNG,
        accuracy_png("objective"),
    }
    parent = client.get_run(parent_id)
    assert parent.data.tags[TAG_IMPORTANCE].startswith("skipped")
    assert not any(k.startswith("importance.") for k in parent.data.metrics)
    rows = list(csv.DictReader(_artifact(client, parent_id, TRIALS_CSV, tmp_path).open()))
    statuses = {r["objective"]: r["jepa_status"] for r in rows}
    assert statuses["cross_view"] == "collapsed" and statuses["vicreg"] == "finished"


def test_summary_with_too_few_trials_and_none_finished(tmp_path):
    client, experiment_id, parent_id = _store(tmp_path)
    space = load_space("full")
    _trial(client, experiment_id, parent_id, {"predictor_width": 256}, 0.7, i=0)
    report = log_sweep_summary(client, experiment_id, parent_id, space, baseline=None)
    assert report.importances == {} and "1 finished trial" in report.importance_note
    assert PARALLEL_PNG in report.artifacts

    client, experiment_id, parent_id = _store(tmp_path / "none")
    _trial(client, experiment_id, parent_id, {"predictor_width": 256}, None, i=0)
    report = log_sweep_summary(client, experiment_id, parent_id, space, baseline=0.5)
    assert report.best is None
    assert report.artifacts == [TRIALS_CSV, CONFIGS_CSV]


def test_best_is_chosen_on_validation_never_on_test(tmp_path):
    """Validation and test disagree on purpose: the best config is the validation one,
    and the parent run reports that config's test score, not the highest test score."""
    client, experiment_id, parent_id = _store(tmp_path)
    space = load_space("predictor_width")
    good_val = _trial(client, experiment_id, parent_id, {"predictor_width": 64}, 0.9, test=0.6)
    _trial(client, experiment_id, parent_id, {"predictor_width": 128}, 0.7, i=1, test=0.95)
    report = log_sweep_summary(client, experiment_id, parent_id, space, baseline=0.5)
    assert report.best.run_id == good_val
    parent = client.get_run(parent_id)
    assert parent.data.tags[TAG_BEST_RUN] == good_val
    assert parent.data.metrics[M.TEST_PROBE_ACCURACY] == 0.6
    assert parent.data.params["best.predictor_width"] == "64"


def test_seeds_of_a_config_give_its_mean_and_t_interval(tmp_path):
    client, experiment_id, parent_id = _store(tmp_path)
    space = load_space("predictor_width")
    vals, tests = [0.80, 0.84, 0.82], [0.70, 0.76, 0.73]
    for seed, (v, t) in enumerate(zip(vals, tests, strict=True)):
        overrides = {"predictor_width": 256, "seed": seed}
        _trial(client, experiment_id, parent_id, overrides, v, i=seed, test=t)
    _trial(client, experiment_id, parent_id, {"predictor_width": 64}, 0.5, i=9)
    report = log_sweep_summary(client, experiment_id, parent_id, space, baseline=0.5)

    best = report.best_config
    assert best.config == {"predictor_width": "256"} and best.seeds == [0, 1, 2]
    assert best.val.n == 3 and abs(best.val.mean - 0.82) < 1e-9
    # t with 2 degrees of freedom: 4.303 x std / sqrt(3); std of the tests is 0.03.
    assert abs(best.test.high - best.test.mean - 4.3027 * 0.03 / 3**0.5) < 1e-3
    parent = client.get_run(parent_id).data.metrics
    assert abs(parent[M.TEST_PROBE_ACCURACY] - 0.73) < 1e-9
    assert abs(parent[M.TEST_PROBE_ACCURACY + M.CI_LOW] - best.test.low) < 1e-9
    assert abs(parent[M.TEST_PROBE_LIFT] - 0.23) < 1e-9  # paired: each seed's test - 0.5
    assert parent[M.TEST_PROBE_LIFT + M.CI_HIGH] > parent[M.TEST_PROBE_LIFT]
    assert parent[M.BEST_SEEDS] == 3

    rows = list(csv.DictReader(_artifact(client, parent_id, TRIALS_CSV, tmp_path).open()))
    for row in rows:
        want = mean_interval(vals) if row["predictor_width"] == "256" else mean_interval([0.5])
        assert int(row["config_val_n"]) == want.n
        assert abs(float(row["config_val_mean"]) - want.mean) < 1e-9
    configs = list(csv.DictReader(_artifact(client, parent_id, CONFIGS_CSV, tmp_path).open()))
    assert [c["predictor_width"] for c in configs] == ["256", "64"]
    assert configs[0]["seeds"] == "0 1 2" and configs[0]["test_n"] == "3"


def test_collapsed_configs_are_never_best_and_all_collapsed_is_tagged(tmp_path):
    client, experiment_id, parent_id = _store(tmp_path)
    space = load_space("predictor_width")
    _trial(client, experiment_id, parent_id, {"predictor_width": 64}, 0.9, "collapsed")
    ok = _trial(client, experiment_id, parent_id, {"predictor_width": 128}, 0.6, i=1)
    report = log_sweep_summary(client, experiment_id, parent_id, space, baseline=0.5)
    assert report.best.run_id == ok and not report.all_collapsed

    client, experiment_id, parent_id = _store(tmp_path / "all")
    for i, width in enumerate((64, 128)):
        _trial(client, experiment_id, parent_id, {"predictor_width": width}, 0.9, "collapsed", i)
    report = log_sweep_summary(client, experiment_id, parent_id, space, baseline=0.5)
    assert report.best is None and report.all_collapsed
    parent = client.get_run(parent_id)
    assert parent.data.tags[M.TAG_ALL_COLLAPSED] == "true"
    assert M.TEST_PROBE_ACCURACY not in parent.data.metrics
    assert TAG_BEST_RUN not in parent.data.tags
