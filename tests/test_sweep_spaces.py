"""Every space in search_spaces/ (and a space mixing every kind of distribution) runs
through a real, tiny sweep: Ray Tune with Optuna, Ray Train, MLflow on sqlite.

Parametrised over the folder, so a new space file is covered without a new test."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from mlflow.tracking import MlflowClient

from jepa import metrics as M
from sweeps.spaces import list_spaces
from tests.conftest import SweepDirs, run_cli

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


# Two sweeps at a time on the session's 2-CPU cluster (one pool group each): a tiny sweep
# keeps 2 cores ~70% busy (imports, process starts, waits); two at once fill the rest.
AT_ONCE = 2
MIXED = "mixed"


def _wanted(request) -> list[str]:
    """The spaces whose tests this session runs from this module (`-k` may pick fewer)."""
    wanted = []
    for item in request.session.items:
        if item.module is not request.module:
            continue
        callspec = getattr(item, "callspec", None)
        wanted.append(callspec.params["space"] if callspec else MIXED)
    return wanted


@pytest.fixture(scope="module")
def space_sweeps(request, tmp_path_factory, embedding_cache, ray_cluster):
    """{space: Future of (process, tracking URI)}: one sweep per space this module's
    selected tests check, all submitted at once, `AT_ONCE` running at a time."""
    mixed = tmp_path_factory.mktemp("mixed-space") / "mixed.yaml"
    mixed.write_text(MIXED_SPACE)

    def sweep(space: str) -> tuple[subprocess.CompletedProcess, str]:
        dirs = SweepDirs.under(tmp_path_factory.mktemp(f"space-{space}"), embedding_cache)
        name = str(mixed) if space == MIXED else space
        args = ["--space", name, *SMALL, *dirs.flags()]
        return run_cli(args, timeout=900, cluster=ray_cluster), dirs.tracking_uri

    with ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
        yield {space: pool.submit(sweep, space) for space in _wanted(request)}


@pytest.mark.parametrize("space", list_spaces())
def test_every_shipped_space_sweeps(space, space_sweeps):
    proc, uri = space_sweeps[space].result()
    _check_sweep(proc, uri, 2)


def test_a_space_mixing_choice_uniform_loguniform_and_int_sweeps(space_sweeps):
    proc, uri = space_sweeps[MIXED].result()
    _check_sweep(proc, uri, 2)
