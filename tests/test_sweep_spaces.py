"""Every space in search_spaces/ (and a space mixing every kind of distribution) runs
through a real, tiny sweep: Ray Tune with Optuna, Ray Train, MLflow on sqlite.

Parametrised over the folder, so a new space file is covered without a new test. The
sweeps are the session's shared ones (tests/shared_sweeps.py): predictor_width's and
objective's are the ones tests/test_sweep_end_to_end.py and tests/test_sweep_objective.py
read in depth."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from jepa import metrics as M
from sweeps.spaces import list_spaces
from tests.shared_sweeps import MIXED

pytestmark = pytest.mark.slow


def _check_sweep(sweep) -> None:
    proc = sweep.proc
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=sweep.dirs.tracking_uri)
    exp = client.get_experiment_by_name("jepa-sweeps")
    runs = client.search_runs([exp.experiment_id])
    roles: dict[str, list] = {}
    for run in runs:
        roles.setdefault(run.data.tags[M.TAG_ROLE], []).append(run)
    (parent,) = roles[M.ROLE_SWEEP]
    assert parent.data.params[M.PARAM_SEARCH_METRIC] == M.VAL_PROBE_ACCURACY
    assert len(roles[M.ROLE_TRIAL]) == sweep.spec.trials
    for run in roles[M.ROLE_TRIAL]:
        assert run.info.status == "FINISHED"
        if run.data.tags[M.TAG_STATUS] != "diverged":
            assert {M.VAL_PROBE_ACCURACY, M.PROBE_ACCURACY} <= set(run.data.metrics)
    kinds = sorted(r.data.tags[M.TAG_BASELINE] for r in roles[M.ROLE_BASELINE])
    assert kinds == [M.BASELINE_RAW, M.BASELINE_UNTRAINED]


@pytest.mark.parametrize(
    "space", [pytest.param(s, marks=pytest.mark.shared_sweep(s)) for s in list_spaces()]
)
def test_every_shipped_space_sweeps(space, shared_sweep):
    _check_sweep(shared_sweep)


@pytest.mark.shared_sweep(MIXED)
def test_a_space_mixing_choice_uniform_loguniform_and_int_sweeps(shared_sweep):
    _check_sweep(shared_sweep)
