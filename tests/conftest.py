"""Shared fixtures: a temporary MLflow store and Ray storage per test, one embedding cache
and one Ray cluster per session, and two ways to run the CLI: as a subprocess (as a user
would) and, for input it rejects before Ray starts, its `main` in this process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "sweeps" / "run.py"

# Set in each worker of `pytest -n N` (pytest-xdist; `make test` runs `-n 2`).
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def pytest_configure(config) -> None:
    """Under `pytest -n N` each worker, and each process its tests start, computes on one
    thread: N workers each with torch's default (a thread per core) on N cores spin their
    OpenMP threads against each other (measured with 2 workers: a 2.6 s test took 48.6 s)."""
    if XDIST_WORKER:
        os.environ["OMP_NUM_THREADS"] = "1"


# The tests on the session's Ray cluster and shared slow runs: under `pytest -n N --dist
# loadgroup` they all go to one worker (which alone starts the cluster and runs the batch),
# after the tests marked `before_the_batch`; the other tests go to the other workers
# meanwhile.
SESSION_GROUP = "session-cluster"
SESSION_FIXTURES = {"shared_sweeps", "ray_cluster"}
BEFORE_THE_BATCH = "before_the_batch"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items) -> None:
    if not XDIST_WORKER:
        return
    session = [item for item in items if SESSION_FIXTURES & set(item.fixturenames)]
    before = [
        item
        for item in items
        if item.get_closest_marker(BEFORE_THE_BATCH) is not None and item not in session
    ]
    group = before + session
    for item in group:
        item.add_marker(pytest.mark.xdist_group(SESSION_GROUP))
    # The batch is the longest stretch: its worker starts it as early as it may, while the
    # other worker runs the fast tests beside what goes before it.
    items[:] = group + [item for item in items if item not in group]


def pytest_runtest_setup(item) -> None:
    # Again before every test: a test may have raised torch's threads in this process (the
    # embedding cache's actor class, called in-process, takes every core).
    if XDIST_WORKER and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


@dataclass
class SweepDirs:
    root: Path
    tracking_uri: str
    storage: Path
    cache_dir: Path

    @classmethod
    def under(cls, root: Path, cache_dir: Path | None = None) -> SweepDirs:
        """A sqlite store and Ray storage in `root`; `cache_dir`, else `root/cache`."""
        return cls(
            root=root,
            tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
            storage=root / "ray_results",
            cache_dir=cache_dir or root / "cache",
        )

    def flags(self) -> list[str]:
        return [
            "--tracking-uri",
            self.tracking_uri,
            "--storage",
            str(self.storage),
            "--cache-dir",
            str(self.cache_dir),
        ]


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory) -> Path:
    """One embedding cache for the whole session. A bank is a pure function of its key
    (weights, data, views, seed...; `jepa.features.FeatureKey`), so sweeps over the same
    data share it: the default demo bank alone takes ~40 s to compute on 2 cores. Tests
    that count the backbone's work make a cache of their own (`SweepSpec.fresh_cache`,
    tests/shared_sweeps.py)."""
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture
def sweep_dirs(tmp_path: Path, embedding_cache: Path) -> SweepDirs:
    """A new MLflow store and Ray storage; the session's embedding cache."""
    return SweepDirs.under(tmp_path, embedding_cache)


def run_cli(
    args: list[str],
    timeout: float = 1200,
    env: dict | None = None,
    cwd: Path | None = None,
    cluster: list[str] | None = None,
) -> subprocess.CompletedProcess:
    """Run `python sweeps/run.py ARGS` in a fresh process; returns the completed process.
    `cluster`: the `ray_cluster` fixture's flags, to join the session's cluster instead
    of starting one."""
    if cluster:
        args, env = [*args, *cluster], {**cluster_env(), **(env or {})}
    full_env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, str(RUN), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd or ROOT,
    )


@pytest.fixture
def main_in_process(capsys, monkeypatch):
    """`sweeps.cli.main(argv)` in this process: returns (exit code, stdout, stderr lines).
    `sweeps/run.py` only hands `main`'s value to `sys.exit`; a new Python importing torch,
    timm and MLflow costs ~5 s per case. For input rejected before Ray starts."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("JEPA_INJECT_FAILURE", raising=False)

    def run(argv: list[str], new_process: bool = False) -> tuple[int, str, list[str]]:
        """`new_process`: `python sweeps/run.py argv` instead, as a user runs it, whose
        stderr also holds whatever its imports print."""
        if new_process:
            proc = run_cli(argv, timeout=180)
            return proc.returncode, proc.stdout, proc.stderr.strip().splitlines()
        from sweeps.cli import main

        code = main(argv)
        captured = capsys.readouterr()
        return code, captured.out, captured.err.strip().splitlines()

    return run


# A local Ray cluster held by a small Python process: `ray.init` starts it (through the
# sweep's `start_local`, which tries again when Ray's 30 s start-up limit passes on the
# busy cores), closing the process's stdin ends it (`ray.shutdown` stops exactly the
# processes it started, where `ray stop` would stop every cluster on the machine).
_CLUSTER_HOLDER = """
import sys
import ray
from sweeps.cluster import start_local

context = start_local(num_cpus=3, include_dashboard=False, logging_level="ERROR")
print(context.address_info["gcs_address"], flush=True)
sys.stdin.read()
ray.shutdown()
"""


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[list[str]]:
    """`--address` flags of one local Ray cluster for the session's sweeps that need no
    cluster of their own (a sweep joining it works as on a team cluster: its code goes
    with the job, `sweeps.cluster.job_runtime_env`). Starting and stopping Ray with its
    dashboard costs a sweep ~10 s on 2 cores; sweeps that test exactly that (Ctrl-C,
    the dashboard, the printed links) start their own. 3 logical CPUs on the 2 cores:
    the shared sweeps (`shared_sweeps`) run two at a time, one of them with 2 pool
    groups; the sweeps here that take the default `--max-concurrent` state theirs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    holder = subprocess.Popen(
        [sys.executable, "-c", _CLUSTER_HOLDER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd="/",  # nothing of the project on its path: the sweeps ship their code
    )
    address = holder.stdout.readline().strip()
    if not address:
        holder.kill()
        pytest.fail("the session's Ray cluster did not start")
    try:
        yield ["--address", address]
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()


def cluster_env() -> dict[str, str]:
    """What a sweep joining `ray_cluster` needs in its environment: a driver given an
    address sends the cluster's token (`~/.ray/auth_token`) only when told to."""
    return {"RAY_AUTH_MODE": "token"}


@pytest.fixture(scope="session")
def shared_sweeps(request, tmp_path_factory, embedding_cache) -> dict:
    """{name: what it left} of the session's slow runs (tests/shared_sweeps.py): the
    sweeps and scenarios the session's selected tests name with
    `@pytest.mark.shared_sweep(...)`, all run (two at a time) when the first is asked for,
    before any test reads one. Reading a run that raised raises that."""
    from tests.shared_sweeps import MARKER, SweepSpec, run_shared_sweeps, spec_of

    wanted: dict = {}
    for item in request.session.items:
        for mark in item.iter_markers(MARKER):
            spec = spec_of(mark.args[0])
            assert wanted.setdefault(spec.name, spec) == spec, f"two sweeps named {spec.name}"
    # The session's cluster, started only for sweeps (scenarios start what they need).
    sweeps = any(isinstance(spec, SweepSpec) for spec in wanted.values())
    cluster = request.getfixturevalue("ray_cluster") if sweeps else []
    root = tmp_path_factory.mktemp("shared-sweeps")
    runs = run_shared_sweeps(list(wanted.values()), root, embedding_cache, cluster)
    request.config.stash[SHARED_RUNS] = runs
    return runs


SHARED_RUNS = pytest.StashKey()
SHARED_RUNS_LINES = pytest.StashKey()  # what a pytest-xdist worker reported of them


def _shared_runs_lines(config) -> list[str] | None:
    runs = config.stash.get(SHARED_RUNS, None)
    if runs is None:
        return config.stash.get(SHARED_RUNS_LINES, None)
    from tests.shared_sweeps import summary_lines

    return summary_lines(runs)


def pytest_sessionfinish(session) -> None:
    """A pytest-xdist worker sends its shared runs' walls to the controlling process."""
    lines = _shared_runs_lines(session.config)
    if XDIST_WORKER and lines:
        session.config.workeroutput["shared_runs"] = lines


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    lines = getattr(node, "workeroutput", {}).get("shared_runs")
    if lines:
        node.config.stash[SHARED_RUNS_LINES] = lines


def pytest_terminal_summary(terminalreporter, config) -> None:
    """Each shared slow run's wall (`--durations` shows the batch as one fixture setup)."""
    lines = _shared_runs_lines(config)
    if lines:
        terminalreporter.section("shared slow runs")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def shared_sweep(request, shared_sweeps):
    """The shared sweep this test names with `@pytest.mark.shared_sweep(...)`."""
    from tests.shared_sweeps import spec_of

    mark = request.node.get_closest_marker("shared_sweep")
    assert mark is not None, "mark the test @pytest.mark.shared_sweep(NAME or SweepSpec)"
    return shared_sweeps[spec_of(mark.args[0]).name]
