"""A real 7-trial sweep on the embedded demo into a temporary MLflow store: the MLflow
contract (DESIGN.md), no two trials with the same (config, seed), the answer in the
parent run."""

import statistics

import pytest
from mlflow.tracking import MlflowClient

from jepa import metrics as M

pytestmark = pytest.mark.slow

TRIAL_FINAL = (
    M.VAL_PROBE_ACCURACY,
    M.PROBE_ACCURACY,
    M.PROBE_ACCURACY_PLAIN,
    M.PROBE_LIFT,
    M.BASELINE_PROBE_ACCURACY,
    M.KNN_ACCURACY,
    M.EMBEDDING_STD,
    M.EFFECTIVE_RANK,
)


@pytest.mark.shared_sweep("predictor_width")
def test_seven_trial_sweep_logs_the_contract_and_never_repeats_a_trial(shared_sweep):
    # The session's predictor_width sweep (tests/shared_sweeps.py): 7 samples over 5
    # widths, 2 at once; the last 2 repeat a width, and must do so with a new seed. On the
    # session's cluster: the lines a sweep that starts its own prints (the dashboard's URL
    # and token) are tests/test_dashboard.py's.
    proc, sweep_dirs = shared_sweep.proc, shared_sweep.dirs
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "Running the embedded demo" in out
    assert "mlflow/serve.sh start" in out  # the MLflow UI command (README, "Compare trials")
    assert "baseline: raw backbone" in out and "baseline: untrained predictor" in out

    client = MlflowClient(tracking_uri=sweep_dirs.tracking_uri)
    exp = client.get_experiment_by_name("jepa-sweeps")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    by_role = {}
    for run in runs:
        by_role.setdefault(run.data.tags[M.TAG_ROLE], []).append(run)
    (parent,) = by_role[M.ROLE_SWEEP]
    trials = by_role[M.ROLE_TRIAL]
    assert len(trials) == 7
    baselines = {r.data.tags[M.TAG_BASELINE]: r for r in by_role[M.ROLE_BASELINE]}
    assert set(baselines) == {M.BASELINE_RAW, M.BASELINE_UNTRAINED}

    # No two trials trained the same (config, seed): their params are never all equal.
    params = [tuple(sorted(r.data.params.items())) for r in trials]
    assert len(set(params)) == 7, params
    widths = [int(r.data.params["predictor_width"]) for r in trials]
    assert set(widths) == {64, 128, 256, 512, 1024}

    raw_by_seed = {}
    for h in client.get_metric_history(baselines[M.BASELINE_RAW].info.run_id, M.PROBE_ACCURACY):
        raw_by_seed[h.step] = h.value
    for run in trials + list(baselines.values()):
        assert run.data.tags[M.TAG_BACKBONE] == "demo-vit"
        assert run.data.tags[M.TAG_DATASET] == "digits"
    for run in trials:
        m = run.data.metrics
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for key in ("lr", "aug_strength", "objective", "seed", "backbone_sha256"):
            assert key in run.data.params
        for metric in TRIAL_FINAL:
            assert metric in m, metric
        assert 0 <= m[M.VAL_PROBE_ACCURACY] <= 1 and 0 <= m[M.PROBE_ACCURACY] <= 1
        # The lift is paired: against the raw backbone at the trial's own seed.
        seed = int(run.data.params["seed"])
        if seed in raw_by_seed:
            assert m[M.BASELINE_PROBE_ACCURACY] == pytest.approx(raw_by_seed[seed])
        assert m[M.PROBE_LIFT] == pytest.approx(m[M.PROBE_ACCURACY] - m[M.BASELINE_PROBE_ACCURACY])
        losses = client.get_metric_history(run.info.run_id, M.TRAIN_LOSS)
        steps = [h.step for h in losses]
        assert steps == sorted(set(steps)) and steps[0] == 1
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {M.TSNE_ARTIFACT, M.PREDICTOR_ARTIFACT, M.CONFIG_ARTIFACT} <= artifacts

    assert parent.data.params[M.PARAM_SEARCH_METRIC] == M.VAL_PROBE_ACCURACY
    pm = parent.data.metrics
    assert pm[M.BASELINE_PROBE_ACCURACY] == pytest.approx(raw_by_seed[0])
    if M.TAG_BEST_RUN in parent.data.tags:
        # The best config: the highest mean validation score among configs whose every
        # seed finished (none collapsed or diverged); its test mean is the answer.
        groups = {}
        for run in trials:
            groups.setdefault(run.data.params["predictor_width"], []).append(run)
        eligible = {
            w: g
            for w, g in groups.items()
            if all(r.data.tags[M.TAG_STATUS] == "finished" for r in g)
        }
        val = {
            w: statistics.mean(r.data.metrics[M.VAL_PROBE_ACCURACY] for r in g)
            for w, g in eligible.items()
        }
        best = max(val, key=val.get)
        assert parent.data.params["best.predictor_width"] == best
        assert parent.data.tags[M.TAG_BEST_RUN] in {r.info.run_id for r in eligible[best]}
        tests = [r.data.metrics[M.PROBE_ACCURACY] for r in eligible[best]]
        assert pm[M.TEST_PROBE_ACCURACY] == pytest.approx(statistics.mean(tests))
        assert M.TEST_PROBE_LIFT in pm and M.TEST_PROBE_LIFT_UNTRAINED in pm
        assert "Best (chosen on val_probe_accuracy" in out
    else:
        # Every trial collapsed: said in words, with the way out, in the last lines.
        assert parent.data.tags[M.TAG_ALL_COLLAPSED] == "true"
        assert "--space objective" in out.strip().splitlines()[-1]
