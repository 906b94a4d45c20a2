"""A real sweep over the `objective` space: the four objectives, the baseline, probe_lift,
collapse tags (`jepa.collapse` none/scale/information), and the summary in the parent run."""

import pytest
from mlflow.tracking import MlflowClient

from jepa import metrics as M
from jepa.train import COLLAPSE_STD_FRACTION
from sweeps.summary import PARALLEL_PNG, TAG_IMPORTANCE, TRIALS_CSV

pytestmark = pytest.mark.slow


@pytest.mark.shared_sweep("objective")
def test_objective_sweep_shows_all_four_with_lift_and_collapse_tags(shared_sweep):
    # The session's objective sweep (tests/shared_sweeps.py): 4 trials of 4 epochs on the
    # end-to-end sweep's data; the checks below hold the verdicts to the logged curves.
    proc, sweep_dirs = shared_sweep.proc, shared_sweep.dirs
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
        assert len(ratios) == int(m["epochs_run"]) >= 1
        # Two verdicts (jepa.train.collapse_verdict): `information` marks the run collapsed
        # (and stops it); `scale` is a tag on a finished run.
        verdict = run.data.tags[M.TAG_COLLAPSE]
        assert verdict in M.COLLAPSE_VERDICTS
        want = "collapsed" if verdict == M.COLLAPSE_INFORMATION else "finished"
        assert run.data.tags[M.TAG_STATUS] == want, (run.data.params["objective"], ratios)
        if verdict == M.COLLAPSE_SCALE:
            assert min(ratios) < COLLAPSE_STD_FRACTION
        if verdict == M.COLLAPSE_NONE:
            assert min(ratios) >= COLLAPSE_STD_FRACTION and int(m["epochs_run"]) == 4
        assert f"{run.data.tags[M.TAG_TRIAL_ID][:8]}" in proc.stdout

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {TRIALS_CSV, PARALLEL_PNG} <= artifacts
    assert parent.data.tags[TAG_IMPORTANCE].startswith("skipped")
