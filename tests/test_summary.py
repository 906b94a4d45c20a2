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
from sweeps.spaces import load_space
from sweeps.summary import (
    BEST_CONFIG,
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


def _trial(client, experiment_id, parent_id, overrides, accuracy, status="finished", i=0):
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
        tracking.log_metrics(
            client, run_id, {M.PROBE_ACCURACY: accuracy, M.PROBE_LIFT: accuracy - 0.5}
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

    assert set(report.artifacts) == {TRIALS_CSV, BEST_CONFIG, IMPORTANCE_PNG, PARALLEL_PNG}
    parent = client.get_run(parent_id)
    importances = {
        k.removeprefix("importance."): v
        for k, v in parent.data.metrics.items()
        if k.startswith("importance.")
    }
    assert set(importances) == set(space.params)
    assert max(importances, key=importances.get) == "predictor_width"
    assert "fANOVA over 8 trials" in parent.data.tags[TAG_IMPORTANCE]
    best_id = max(runs.values(), key=lambda r: client.get_run(r).data.metrics[M.PROBE_ACCURACY])
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
    assert set(report.artifacts) == {TRIALS_CSV, BEST_CONFIG, PARALLEL_PNG}
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
    assert report.artifacts == [TRIALS_CSV]
