"""`--workers-per-trial 2`: one trial trained by two Ray Train workers with DDP (gloo on
CPU), logged like any other trial."""

import pytest
from mlflow.tracking import MlflowClient

from jepa import metrics as M
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_two_worker_ddp_trial_on_cpu(sweep_dirs):
    proc = run_cli(
        ["--space", "predictor_width", "--num-samples", "1", "--max-epochs", "2"]
        + ["--views", "2", "--workers-per-trial", "2", *sweep_dirs.flags()]
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # Ray Train's own lines: a process group of two ranks, the model wrapped in DDP.
    assert "world_size=2" in log and "DistributedDataParallel" in log
    client = MlflowClient(tracking_uri=sweep_dirs.tracking_uri)
    exp = client.get_experiment_by_name("jepa-sweeps")
    trials = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags[M.TAG_ROLE] == M.ROLE_TRIAL
    ]
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"
    run = trials[0]
    assert 0 <= run.data.metrics[M.PROBE_ACCURACY] <= 1
    # Only rank 0 logs: one train_loss point per epoch, not one per worker.
    steps = [m.step for m in client.get_metric_history(run.info.run_id, M.TRAIN_LOSS)]
    assert steps == [1, 2]
