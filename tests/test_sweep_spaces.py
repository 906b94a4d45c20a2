"""Every space in search_spaces/ (and a space mixing every kind of distribution) runs
through a real, tiny sweep: Ray Tune with Optuna, Ray Train, MLflow on sqlite.

Parametrised over the folder, so a new space file is covered without a new test."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from jepa import metrics as M
from sweeps.spaces import SPACES_DIR, list_spaces
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

# A small demo: 10 training, 5 validation and 5 test digits of each class, 2 views.
SMALL = ["--views", "2", "--images-per-class", "10", "--val-per-class", "5"]
SMALL += ["--eval-per-class", "5", "--num-samples", "2", "--max-epochs", "1"]
# One pool group: these trials take ~2 s, a second group ~15 s to start on 2 cores
# (measured: 43 vs 58 s per sweep). Concurrency is tests/test_reliability.py's subject.
SMALL += ["--max-concurrent", "1"]

MIXED_SPACE = """\
description: choice, uniform, loguniform and int in one space
params:
  predictor_width:
    choice: [64, 128]
  aug_strength:
    uniform: [0.2, 0.8]
  lr:
    loguniform: [1.0e-4, 1.0e-2]
  depth:
    int: [1, 2]
"""


def _space_files() -> list[Path]:
    return [SPACES_DIR / f"{name}.yaml" for name in list_spaces()]


def _check_sweep(proc, tracking_uri: str, trials_expected: int) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name("jepa-sweeps")
    runs = client.search_runs([exp.experiment_id])
    roles: dict[str, list] = {}
    for run in runs:
        roles.setdefault(run.data.tags[M.TAG_ROLE], []).append(run)
    (parent,) = roles[M.ROLE_SWEEP]
    assert parent.data.params[M.PARAM_SEARCH_METRIC] == M.VAL_PROBE_ACCURACY
    assert len(roles[M.ROLE_TRIAL]) == trials_expected
    for run in roles[M.ROLE_TRIAL]:
        assert run.info.status == "FINISHED"
        if run.data.tags[M.TAG_STATUS] != "diverged":
            assert {M.VAL_PROBE_ACCURACY, M.PROBE_ACCURACY} <= set(run.data.metrics)
    kinds = sorted(r.data.tags[M.TAG_BASELINE] for r in roles[M.ROLE_BASELINE])
    assert kinds == [M.BASELINE_RAW, M.BASELINE_UNTRAINED]


@pytest.mark.parametrize("space", _space_files(), ids=lambda p: p.stem)
def test_every_shipped_space_sweeps(space, sweep_dirs, ray_cluster):
    args = ["--space", space.stem, *SMALL, *sweep_dirs.flags()]
    proc = run_cli(args, timeout=900, cluster=ray_cluster)
    _check_sweep(proc, sweep_dirs.tracking_uri, 2)


def test_a_space_mixing_choice_uniform_loguniform_and_int_sweeps(sweep_dirs, tmp_path, ray_cluster):
    space = tmp_path / "mixed.yaml"
    space.write_text(MIXED_SPACE)
    args = ["--space", str(space), *SMALL, *sweep_dirs.flags()]
    proc = run_cli(args, timeout=900, cluster=ray_cluster)
    _check_sweep(proc, sweep_dirs.tracking_uri, 2)
