"""A real 2-trial sweep on the embedded demo into a temporary MLflow store."""

import pytest
from mlflow.tracking import MlflowClient

from jepa import metrics as M
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_two_trial_sweep_logs_the_contract(sweep_dirs):
    proc = run_cli(
        [
            "--space",
            "predictor_width",
            "--num-samples",
            "2",
            "--max-epochs",
            "2",
            "--views",
            "2",
            *sweep_dirs.flags(),
        ]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "Running the embedded demo" in out
    assert "Ray dashboard: http://127.0.0.1:" in out and "auth_token" in out
    assert "mlflow/serve.sh start" in out  # the MLflow UI command (README, "Compare trials")
    assert "baseline" in out and "Best:" in out

    client = MlflowClient(tracking_uri=sweep_dirs.tracking_uri)
    exp = client.get_experiment_by_name("jepa-sweeps")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    by_role = {}
    for run in runs:
        by_role.setdefault(run.data.tags[M.TAG_ROLE], []).append(run)
    assert len(by_role[M.ROLE_SWEEP]) == 1 and len(by_role[M.ROLE_BASELINE]) == 1
    parent = by_role[M.ROLE_SWEEP][0]
    trials = by_role[M.ROLE_TRIAL]
    assert len(trials) == 2
    assert 0 < by_role[M.ROLE_BASELINE][0].data.metrics[M.PROBE_ACCURACY] <= 1
    assert parent.data.metrics["baseline_probe_accuracy"] > 0
    for run in trials + by_role[M.ROLE_BASELINE]:
        assert run.data.tags[M.TAG_BACKBONE] == "demo-vit"
        assert run.data.tags[M.TAG_DATASET] == "digits"
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert int(run.data.params["predictor_width"]) in (64, 128, 256, 512, 1024)
        for key in ("lr", "aug_strength", "objective", "backbone_sha256"):
            assert key in run.data.params
        for metric in (M.PROBE_ACCURACY, M.KNN_ACCURACY, M.EMBEDDING_STD, M.EFFECTIVE_RANK):
            assert metric in run.data.metrics, metric
        assert 0 <= run.data.metrics[M.PROBE_ACCURACY] <= 1
        losses = client.get_metric_history(run.info.run_id, M.TRAIN_LOSS)
        steps = [m.step for m in losses]
        assert steps == sorted(set(steps)) and steps[0] == 1
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {M.TSNE_ARTIFACT, M.PREDICTOR_ARTIFACT, M.CONFIG_ARTIFACT} <= artifacts
