"""The summary's pictures from trial runs in a real temporary MLflow store: per-epoch
curves read back, the baselines as bands, every picture logged to the parent run."""

from __future__ import annotations

from pathlib import Path

from jepa import metrics as M
from jepa.config import TrialConfig
from sweeps import pictures, tracking
from sweeps.spaces import load_space
from sweeps.stats import mean_interval
from sweeps.summary import PARALLEL_PNG, log_sweep_summary, metric_histories

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _trial(client, experiment_id, parent_id, lr, seed, val, status="finished") -> str:
    run_id = client.create_run(
        experiment_id,
        tags={M.TAG_ROLE: M.ROLE_TRIAL, "mlflow.parentRunId": parent_id, M.TAG_TRIAL_ID: "t"},
    ).info.run_id
    tracking.log_params(client, run_id, TrialConfig.from_dict({"lr": lr, "seed": seed}).to_dict())
    rows = [
        (e, {M.KNN_ACCURACY: val * e / 3, M.EMBEDDING_STD_RATIO: 1 - e / 10, M.TRAIN_LOSS: 1 / e})
        for e in (3, 1, 2)  # logged out of order: the curve must come back by step
    ]
    tracking.log_metric_rows(client, run_id, rows)
    final = {M.VAL_PROBE_ACCURACY: val, M.PROBE_ACCURACY: val - 0.01, M.PROBE_LIFT: val - 0.81}
    tracking.log_metrics(client, run_id, final, step=3)
    tracking.set_tags(client, run_id, {M.TAG_STATUS: status})
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_pictures_of_a_seeded_sweep_land_in_the_parent_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = tracking.ensure_experiment(uri, "pictures")
    client = tracking.client(uri)
    parent_id = client.create_run(experiment_id, tags={M.TAG_ROLE: M.ROLE_SWEEP}).info.run_id
    space = load_space("learning_rate")
    runs = []
    for lr, base in ((3e-4, 0.82), (1e-3, 0.86), (1e-2, 0.80)):
        for seed in range(3):
            status = "collapsed" if lr == 1e-2 else "finished"
            val = base + (seed - 1) * 0.004
            runs.append(_trial(client, experiment_id, parent_id, lr, seed, val, status))
    baselines = [
        pictures.Baseline("raw backbone", mean_interval([0.81, 0.812]), mean_interval([0.80])),
        pictures.Baseline("untrained predictor", mean_interval([0.7]), mean_interval([0.69])),
    ]

    report = log_sweep_summary(
        client, experiment_id, parent_id, space, baseline=0.81, baselines=baselines
    )

    expected = {PARALLEL_PNG, pictures.accuracy_png("lr"), pictures.curves_png("lr")}
    assert expected <= set(report.artifacts)
    for name in expected:
        path = Path(client.download_artifacts(parent_id, name, str(tmp_path)))
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert "jepa.summary_error" not in client.get_run(parent_id).data.tags
    curves = metric_histories(client, runs[:1])[runs[0]]
    assert set(curves) == set(pictures.CURVE_METRICS)
    assert [step for step, _ in curves[M.TRAIN_LOSS]] == [1, 2, 3]
    assert curves[M.TRAIN_LOSS][0][1] == 1.0
