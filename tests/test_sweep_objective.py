"""A real sweep over the `objective` space: the four objectives, the baseline, probe_lift,
collapse tags where the rule applies, and the summary in the parent run."""

import pytest
from mlflow.tracking import MlflowClient

from jepa import metrics as M
from jepa.train import COLLAPSE_MIN_RANK, COLLAPSE_STD_FRACTION
from sweeps.summary import PARALLEL_PNG, TAG_IMPORTANCE, TRIALS_CSV
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_objective_sweep_shows_all_four_with_lift_and_collapse_tags(sweep_dirs):
    proc = run_cli(
        [
            "--space",
            "objective",
            "--num-samples",
            "4",
            "--max-epochs",
            "4",
            "--views",
            "2",
            *sweep_dirs.flags(),
        ]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "status" in proc.stdout and "Sweep summary in run" in proc.stdout

    client = MlflowClient(tracking_uri=sweep_dirs.tracking_uri)
    exp = client.get_experiment_by_name("jepa-sweeps")
    runs = client.search_runs([exp.experiment_id])
    by_role = {}
    for run in runs:
        by_role.setdefault(run.data.tags[M.TAG_ROLE], []).append(run)
    (baseline,) = [
        r for r in by_role[M.ROLE_BASELINE] if r.data.tags[M.TAG_BASELINE] == M.BASELINE_RAW
    ]
    (parent,) = by_role[M.ROLE_SWEEP]
    trials = by_role[M.ROLE_TRIAL]
    # The first trials cover every level of the choice, whatever the sampler would pick.
    assert sorted(r.data.params["objective"] for r in trials) == sorted(
        ["cross_view", "stopgrad", "ema", "vicreg"]
    )
    base = baseline.data.metrics[M.PROBE_ACCURACY]
    for run in trials:
        m = run.data.metrics
        assert m[M.PROBE_LIFT] == pytest.approx(m[M.PROBE_ACCURACY] - base)  # all seed 0
        ratios = [
            x.value for x in client.get_metric_history(run.info.run_id, M.EMBEDDING_STD_RATIO)
        ]
        ranks = [x.value for x in client.get_metric_history(run.info.run_id, M.EFFECTIVE_RANK)]
        assert len(ratios) == int(m["epochs_run"]) >= 1
        collapsed = min(ratios) < COLLAPSE_STD_FRACTION or min(ranks) < COLLAPSE_MIN_RANK
        want = "collapsed" if collapsed else "finished"
        assert run.data.tags[M.TAG_STATUS] == want, (run.data.params["objective"], ratios)
        if collapsed:
            assert int(m["epochs_run"]) < 4 or ratios[-1] < COLLAPSE_STD_FRACTION
        assert f"{run.data.tags[M.TAG_TRIAL_ID][:8]}" in proc.stdout

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {TRIALS_CSV, PARALLEL_PNG} <= artifacts
    assert parent.data.tags[TAG_IMPORTANCE].startswith("skipped")
