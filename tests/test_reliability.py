"""Interrupted sweeps, failing trials, NaN losses and concurrent logging lose nothing.

The slow tests run real sweeps of the embedded demo (Ray, Tune, Train, MLflow on sqlite)
on a small slice of the digits (20 training and 10 evaluation images per class) and
read the store afterwards.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from jepa import metrics as M
from jepa.config import TrialConfig
from jepa.train import STATUS_DIVERGED, EvalSet, train_predictor
from jepa.views import CachedViewPairs
from sweeps import search, tracking
from tests.conftest import ROOT, RUN, SweepDirs, run_cli
from tests.shared_sweeps import EIGHT_AT_ONCE, Scenario, SweepSpec

SMALL = ["--views", "2", "--images-per-class", "20", "--eval-per-class", "10"]
TRIAL_METRICS = (
    M.TRAIN_LOSS,
    M.VAL_PROBE_ACCURACY,
    M.PROBE_ACCURACY,
    M.KNN_ACCURACY,
    M.EMBEDDING_STD,
    M.EFFECTIVE_RANK,
)
TRIAL_ARTIFACTS = {M.TSNE_ARTIFACT, M.PREDICTOR_ARTIFACT, M.CONFIG_ARTIFACT}


# --- without Ray ------------------------------------------------------------------------


def test_nan_loss_stops_training_as_diverged():
    """lr=1e30 sends the weights to inf after one step: a real divergence, no hook."""
    torch.manual_seed(0)
    views = CachedViewPairs(torch.randn(64, 2, 16))
    evalset = EvalSet(
        torch.randn(64, 16), torch.arange(64) % 4, torch.randn(32, 16), torch.arange(32) % 4
    )
    cfg = TrialConfig(lr=1e30, max_epochs=5, batch_size=16, predictor_width=8)
    result = train_predictor(cfg, views, evalset)
    assert result.status == STATUS_DIVERGED
    assert len(result.history) == 1  # stopped early
    assert not math.isfinite(result.history[0][M.TRAIN_LOSS])


# Ray's own test hook (RAY_testing_asio_delay_us): the GCS answers a raylet's
# registration after 40 s, past the 30 s a local `ray.init` waits, as on CI's busy cores.
SLOW_REGISTRATION = {
    "RAY_testing_asio_delay_us": "NodeInfoGcsService.grpc_server.RegisterNode=40000000:40000000"
}
START_AND_LIST_LEFTOVERS = """
import json, psutil
from sweeps.cluster import start_local
try:
    start_local(include_dashboard=False, num_cpus=1, _temp_dir=TEMP)
except Exception as exc:
    print("raised:", exc)
left = psutil.Process().children(recursive=True)
print("left:", json.dumps([f"{p.name()} ({p.status()})" for p in left]))
"""


@pytest.mark.slow
def test_a_local_ray_start_that_times_out_is_tried_again_and_leaves_nothing():
    """A raylet that misses Ray's 30 s to register: the sweep starts the local cluster a
    second time, and a start that failed leaves none of its processes running (Ray's
    `ray.init` leaves GCS, raylet, agents and idle workers: 7 processes when tried by
    hand). Here every try is slow, so the last one's error is raised."""
    temp = Path(tempfile.mkdtemp(prefix="jepa-rs-"))  # short: Ray's socket paths
    try:
        proc = subprocess.run(
            [sys.executable, "-c", START_AND_LIST_LEFTOVERS.replace("TEMP", repr(str(temp)))],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
            env={**os.environ, **SLOW_REGISTRATION, "RAY_ADDRESS": ""},
        )
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    out = proc.stdout
    assert proc.returncode == 0, out[-2000:] + proc.stderr[-3000:]
    assert "did not start within Ray's 30 s (try 1 of 2" in out, out
    assert "raised: The current node timed out during startup" in out, out
    assert "left: []" in out, out


@dataclass
class LockedStore:
    """What two clients logging to a locked sqlite store did (`_log_to_a_locked_store`)."""

    outcome: dict[str, str]
    """{client: "logged" or its error}"""
    retries: int
    """How often ours said it retries (`sweeps.tracking`'s warning) while locked."""
    history: list[float]
    """The metric ours logged, as the store has it."""


def _log_to_a_locked_store(folder: Path, cache: Path, cluster: list[str]) -> LockedStore:
    """Another connection holds sqlite's write lock until a plain MlflowClient gave up
    (MLflow's busy timeout is 20 s) and ours said it retries; then lets go. Waits on
    what it checks rather than sleeping a fixed time: on a busy machine a thread may
    start its write late. (`cache`, `cluster` unused.)"""
    db = folder / "mlflow.db"
    uri = f"sqlite:///{db}"
    experiment_id = tracking.ensure_experiment(uri, "locked")
    retrying = tracking.client(uri)
    run_id = retrying.create_run(experiment_id).info.run_id
    plain = MlflowClient(tracking_uri=uri)
    outcome: dict[str, str] = {}
    retries: list[logging.LogRecord] = []

    class Retries(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "store locked" in record.getMessage():
                retries.append(record)

    def log(name: str, client, value: float) -> None:
        try:
            tracking.log_metrics(client, run_id, {name: value}, step=1)
            outcome[name] = "logged"
        except Exception as exc:
            outcome[name] = str(exc)

    handler = Retries()
    logging.getLogger(tracking.__name__).addHandler(handler)
    conn = sqlite3.connect(db, isolation_level=None)
    writers = [
        threading.Thread(target=log, args=("plain", plain, 1.0)),
        threading.Thread(target=log, args=("retrying", retrying, 2.0)),
    ]
    try:
        conn.execute("BEGIN EXCLUSIVE")
        for w in writers:
            w.start()
        deadline = time.monotonic() + 120
        while ("plain" not in outcome or not retries) and time.monotonic() < deadline:
            time.sleep(0.2)
        conn.execute("COMMIT")
    finally:
        conn.close()
        for w in writers:
            if w.is_alive():
                w.join(timeout=120)
        logging.getLogger(tracking.__name__).removeHandler(handler)
    history = [m.value for m in plain.get_metric_history(run_id, "retrying")]
    return LockedStore(outcome, len(retries), history)


# ~20 s of waiting on a lock: run beside the session's shared sweeps (tests/shared_sweeps.py).
LOCKED_STORE = Scenario("locked-store", _log_to_a_locked_store, weight=2)


@pytest.mark.shared_sweep(LOCKED_STORE)
def test_logging_waits_out_a_locked_sqlite_store(shared_sweeps):
    """Another connection holds sqlite's write lock for longer than MLflow's 20 s busy
    timeout: a plain MlflowClient fails with "database is locked", ours waits it out."""
    seen = shared_sweeps[LOCKED_STORE.name]
    assert "database is locked" in seen.outcome["plain"], seen.outcome
    assert seen.retries >= 1 and seen.outcome["retrying"] == "logged", seen
    assert seen.history == [2.0]


# --- real sweeps --------------------------------------------------------------------------


def _flags(sweep_dirs, cache: Path) -> list[str]:
    """Small data, this test's store and storage, the module's embedding cache."""
    return [
        *SMALL,
        "--tracking-uri",
        sweep_dirs.tracking_uri,
        "--storage",
        str(sweep_dirs.storage),
        "--cache-dir",
        str(cache),
    ]


def _start(args: list[str]) -> subprocess.Popen:
    """The CLI in its own session, as from a terminal (Ctrl-C reaches its process group)."""
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, str(RUN), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _runs(db: Path) -> list[tuple[str, str, str, int, int]]:
    """(run id, status, role, train_loss points, FINISHED trial) straight from sqlite."""
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(
            """select r.run_uuid, r.status, t.value,
                 (select count(*) from metrics m where m.run_uuid = r.run_uuid
                  and m.key = 'train_loss')
               from runs r join tags t on t.run_uuid = r.run_uuid and t.key = 'jepa.role'"""
        ).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        conn.close()


def _wait_mid_trial(db: Path, proc: subprocess.Popen, finished: int, timeout: float = 420):
    """Until `finished` trials are FINISHED and another trial has logged an epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = _runs(db)
        done = sum(1 for r in runs if r[2] == M.ROLE_TRIAL and r[1] == "FINISHED")
        mid = [r for r in runs if r[2] == M.ROLE_TRIAL and r[1] == "RUNNING" and r[3] >= 1]
        if done >= finished and mid:
            return
        if proc.poll() is not None:
            pytest.fail(f"sweep ended before the interruption:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no trial in mid-training after {timeout}s")


def _session_processes(output: str) -> list[int]:
    """Processes of the Ray session named in the sweep's output (raylet, GCS, workers)."""
    match = re.search(r"/tmp/ray/(session_[0-9_\-]+)", output)
    assert match, "the sweep printed no Ray session folder"
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and match.group(1).encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _experiment_runs(client: MlflowClient, name: str = "jepa-sweeps"):
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], max_results=1000)


def _assert_steps_unique(client: MlflowClient, run) -> None:
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), (run.info.run_id, key, steps)


@dataclass
class Cut:
    """A sweep process cut off in mid-trial: its exit code, its output, and the runs in the
    store (`_runs`) once it ended."""

    returncode: int
    out: str
    runs: list[tuple[str, str, str, int, int]]


@dataclass
class Interrupted:
    """What `_interrupt_then_resume` saw, for the test to check."""

    dirs: SweepDirs
    ctrl_c: Cut
    outlived: list[int]
    """Processes of the Ctrl-C'd sweep's Ray session still there 5 s after it exited."""
    sigkill: Cut
    final: subprocess.CompletedProcess


def _interrupt_then_resume(folder: Path, cache: Path, cluster: list[str]) -> Interrupted:
    """Ctrl-C in mid-trial, resume, SIGKILL of the driver in mid-trial, resume again, each
    sweep starting its own Ray cluster as on a laptop; `cluster` (the session's) unused."""
    sweep_dirs = SweepDirs.under(folder, cache)
    db = sweep_dirs.root / "mlflow.db"
    args = ["--space", "predictor_width", "--num-samples", "2", "--max-concurrent", "1"]
    args += ["--max-epochs", "4", *_flags(sweep_dirs, cache)]

    # 1. Ctrl-C (SIGINT to the process group, as a terminal sends it) in the first trial.
    proc = _start(args)
    _wait_mid_trial(db, proc, finished=0)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    ctrl_c = Cut(proc.returncode, out, _runs(db))
    time.sleep(5)  # Ray's agents exit a moment after the raylet
    outlived = _session_processes(out)

    # 2. Resume; SIGKILL the driver once a trial finished and the next one is training.
    proc = _start([*args, "--resume"])
    _wait_mid_trial(db, proc, finished=1)
    proc.kill()
    out, _ = proc.communicate(timeout=60)
    sigkill = Cut(proc.returncode, out, _runs(db))

    # 3. Resume again; it finishes.
    return Interrupted(sweep_dirs, ctrl_c, outlived, sigkill, run_cli([*args, "--resume"]))


# Run with the session's shared sweeps (tests/shared_sweeps.py): ~2 minutes of mostly
# process starts and waits, which the other runs fill.
INTERRUPTED = Scenario("interrupt-then-resume", _interrupt_then_resume, weight=12)


@pytest.mark.slow
@pytest.mark.shared_sweep(INTERRUPTED)
def test_interrupted_sweep_resumes_with_exact_mlflow_content(shared_sweeps):
    """Ctrl-C in mid-trial, resume, SIGKILL of the driver in mid-trial, resume again:
    one parent run throughout, exactly one FINISHED run per trial, the runs cut off
    KILLED, none RUNNING, no metric step twice, and Tune/Optuna kept their history."""
    seen = shared_sweeps[INTERRUPTED.name]
    sweep_dirs = seen.dirs

    # 1. Ctrl-C: exit 130, every run closed, the way on printed, no Ray process left.
    out = seen.ctrl_c.out
    assert seen.ctrl_c.returncode == 130, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert "MLflow runs closed as KILLED" in last and "--resume" in last, last
    assert f"--storage {sweep_dirs.storage}" in last
    runs = seen.ctrl_c.runs
    assert not [r for r in runs if r[1] == "RUNNING"], runs
    assert {r[1] for r in runs if r[2] == M.ROLE_SWEEP} == {"KILLED"}
    assert seen.outlived == [], "Ray processes outlived Ctrl-C"

    # 2. The resumed sweep knew the first trial; its SIGKILL left runs RUNNING.
    out = seen.sigkill.out
    head = out[: out.find("Trial status")]  # what the CLI says before Tune's tables
    assert "Resuming sweep" in head and "Optuna sampler's history: 1 trials" in head, head
    assert [r for r in seen.sigkill.runs if r[1] == "RUNNING"], "SIGKILL should leave runs RUNNING"

    # 3. The second resume finished.
    proc = seen.final
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # 1 when Tune's last periodic save came before the second trial started.
    assert re.search(r"Optuna sampler's history: [12] trials", proc.stdout), proc.stdout[-3000:]
    # Optuna's study on disk, beside Tune's results: the resumed runs wrote on to the
    # same study (both configs' values in it), and the sweep printed where it is.
    (journal,) = sweep_dirs.storage.glob(f"predictor_width-*/{search.STUDY_FILE}")
    assert search.dashboard_command(journal) in proc.stdout
    study = optuna.load_study(study_name=None, storage=search.study_storage(journal))  # the one
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2, [t.state for t in study.trials]

    client = MlflowClient(tracking_uri=sweep_dirs.tracking_uri)
    runs = _experiment_runs(client)
    by_role: dict[str, list] = {}
    for run in runs:
        by_role.setdefault(run.data.tags[M.TAG_ROLE], []).append(run)
    assert len(by_role[M.ROLE_SWEEP]) == 1
    parent = by_role[M.ROLE_SWEEP][0]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["finished_trials"] == 2 and parent.data.metrics["failed_trials"] == 0
    # Two baselines (raw backbone, untrained predictor), made once, before the first cut.
    assert [r.info.status for r in by_role[M.ROLE_BASELINE]] == ["FINISHED"] * 2
    assert all(r.info.status != "RUNNING" for r in runs)
    trials = by_role[M.ROLE_TRIAL]
    finished = Counter(r.data.tags[M.TAG_TRIAL_ID] for r in trials if r.info.status == "FINISHED")
    assert len(finished) == 2 and set(finished.values()) == {1}, finished
    killed = [r for r in trials if r.info.status == "KILLED"]
    # The Ctrl-C always leaves a KILLED run (Ray stops before the runs are closed). The
    # SIGKILL kills the driver only: the trial's pool worker outlives it a moment and
    # may close its run itself before the resume closes what is left RUNNING as KILLED, so
    # a second KILLED run depends on timing. When Tune's last periodic save came before
    # the cut-off trial started (the pool starts a trial within a second of the previous
    # one's end), the resumed Tune never knew that trial: it runs the same config and
    # seed again as a new trial. Either way no work is lost: every KILLED run's
    # (config, seed) has its FINISHED run. Checked above: one FINISHED run per trial,
    # none RUNNING.
    assert len(killed) >= 1
    # The trial's trainable may also see an actor it waits on (the pool's broker, a
    # worker) die with the SIGKILLed sweep and close its run FAILED before the resume
    # would close it KILLED; then its traceback says that an actor died.
    cut_off = [r for r in trials if r.info.status == "FAILED"]
    for run in cut_off:
        path = client.download_artifacts(run.info.run_id, "traceback.txt")
        text = Path(path).read_text()
        assert "ActorDiedError" in text or "PoolWorkerDied" in text, text[-2000:]

    def config(run) -> tuple[str, str]:
        return run.data.params["predictor_width"], run.data.params["seed"]

    done = {config(r) for r in trials if r.info.status == "FINISHED"}
    assert {config(r) for r in killed + cut_off} <= done, [r.data.tags for r in killed]
    assert {r.info.status for r in trials} <= {"FINISHED", "KILLED", "FAILED"}
    for run in runs:
        assert run.data.tags.get("mlflow.parentRunId", parent.info.run_id) == parent.info.run_id
        _assert_steps_unique(client, run)
    for run in trials:
        if run.info.status == "FINISHED":
            assert set(TRIAL_METRICS) <= set(run.data.metrics)
            losses = client.get_metric_history(run.info.run_id, M.TRAIN_LOSS)
            assert sorted(m.step for m in losses) == [1, 2, 3, 4]
            assert TRIAL_ARTIFACTS <= {a.path for a in client.list_artifacts(run.info.run_id)}

    # Tune ran 2 trials in all, and the Optuna study (restored twice) saw both.
    (experiment_dir,) = [p for p in sweep_dirs.storage.iterdir() if p.name != "_train"]
    newest = sorted(experiment_dir.glob("searcher-state-*.pkl"))[-1]
    with open(newest, "rb") as f:
        searcher = pickle.load(f)
    assert set(searcher["_ot_trials"]) == set(finished)
    states = [t.state.name for t in searcher["_ot_study"].trials]
    # The study lives on disk: an Optuna trial the SIGKILLed attempt had asked for, which
    # Tune's last save never knew (it ran that config again as a new trial), is marked
    # FAIL by the restored searcher; the two configs' values are told once each.
    assert states.count("COMPLETE") == 2 and set(states) <= {"COMPLETE", "FAIL"}, states


FAULTY_SPACE = """\
description: test space; width 64 fails (injected), width 96's pool worker is killed
  (injected, first attempt), lr 1e30 diverges for real
params:
  predictor_width:
    choice: [64, 96, 128, 128]
  lr:
    choice: [1.0e-3, 1.0e-3, 1.0e-3, 1.0e30]
"""
FAULTS = "trial-raise@predictor_width=64,worker-kill@predictor_width=96"


def _kind(attempts: list) -> str:
    """Which fault a trial (its runs, one per attempt) was given, from its logged params."""
    params = attempts[0].data.params
    if float(params["lr"]) > 1:
        return "nan"
    return {"64": "fail", "96": "kill"}.get(params["predictor_width"], "ok")


def _faulty_space(folder: Path) -> list[str]:
    space = folder / "faulty.yaml"
    space.write_text(FAULTY_SPACE)
    return ["--space", str(space)]


# Run with the session's shared sweeps (tests/shared_sweeps.py).
FAULTY_SWEEP = SweepSpec(
    "faulty",
    ("--num-samples", "4", "--max-concurrent", "2", "--seed", "6", "--max-epochs", "2")
    + ("--max-failures", "1", *SMALL),
    trials=4,
    prepare=_faulty_space,
    env={"JEPA_INJECT_FAILURE": FAULTS},
)


@pytest.fixture(scope="module")
def faulty_sweep(shared_sweeps):
    """One sweep, 2 trials at once, one retry, with a trial that fails (injected), one
    whose pool worker SIGKILLs itself after its first epoch (injected, first attempt
    only), one diverging and one normal: {kind: that trial's runs, one per attempt}.

    The sweep's first trials cover every level of the choice parameters (level i of each
    in trial i: `SearchSpace.coverage_points`), so the four trials are (64, 1e-3),
    (96, 1e-3), (128, 1e-3) and (128, 1e30) whatever Optuna's sampler would draw; the
    fixture checks that precondition from what was logged.
    """
    sweep = shared_sweeps[FAULTY_SWEEP.name]
    proc, dirs = sweep.proc, sweep.dirs
    uri = dirs.tracking_uri
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    runs = _experiment_runs(client)
    trials: dict[str, list] = {}
    for run in runs:
        if run.data.tags[M.TAG_ROLE] == M.ROLE_TRIAL:
            trials.setdefault(run.data.tags[M.TAG_TRIAL_ID], []).append(run)
    kinds = Counter(_kind(a) for a in trials.values())
    assert kinds == {"fail": 1, "kill": 1, "nan": 1, "ok": 1}, f"precondition: sampled {kinds}"
    by_kind = {_kind(a): a for a in trials.values()}
    parent = next(r for r in runs if r.data.tags[M.TAG_ROLE] == M.ROLE_SWEEP)
    return proc, client, by_kind, parent


@pytest.mark.slow
@pytest.mark.shared_sweep(FAULTY_SWEEP)
def test_pool_worker_killed_mid_trial_is_retried_and_the_sweep_finishes(faulty_sweep):
    """The pool worker running the width-96 trial SIGKILLs itself after its first epoch
    (first attempt only): that attempt's run ends FAILED saying the worker died, Train
    replaces the worker group, Tune retries the trial (--max-failures 1) on the pool, and
    the sweep exits 0 with every other trial as its own fault left it."""
    proc, client, by_kind, parent = faulty_sweep
    attempts = {r.data.tags[M.TAG_ATTEMPT]: r for r in by_kind["kill"]}
    assert sorted(attempts) == ["1", "2"]
    first, second = attempts["1"], attempts["2"]
    assert first.info.status == "FAILED"
    reason = Path(client.download_artifacts(first.info.run_id, "traceback.txt")).read_text()
    assert "PoolWorkerDied" in reason and "died while running trial" in reason, reason
    # The first attempt logged its first epoch before the worker died.
    assert [m.step for m in client.get_metric_history(first.info.run_id, M.TRAIN_LOSS)] == [1]
    assert second.info.status == "FINISHED" and M.PROBE_ACCURACY in second.data.metrics
    for kind in ("ok", "nan"):
        assert [r.info.status for r in by_kind[kind]] == ["FINISHED"], kind
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.shared_sweep(FAULTY_SWEEP)
def test_failing_trial_is_retried_then_failed_and_the_sweep_goes_on(faulty_sweep):
    proc, client, by_kind, parent = faulty_sweep
    failing = by_kind["fail"]
    # --max-failures 1: two attempts, each its own FAILED run with its traceback.
    assert sorted(r.data.tags[M.TAG_ATTEMPT] for r in failing) == ["1", "2"]
    for run in failing:
        assert run.info.status == "FAILED"
        path = client.download_artifacts(run.info.run_id, "traceback.txt")
        assert "InjectedFailure" in Path(path).read_text()
        _assert_steps_unique(client, run)
    for kind in ("ok", "nan"):
        assert [r.info.status for r in by_kind[kind]] == ["FINISHED"], kind
    assert parent.info.status == "FINISHED"
    # The killed trial's retry finished: only the injected failure counts as failed.
    assert parent.data.metrics["failed_trials"] == 1
    assert parent.data.metrics["finished_trials"] == 3
    assert re.search(r"3 trials finished \(\d collapsed, 1 diverged\), 1 failed", proc.stdout)
    table = proc.stdout[proc.stdout.index("probe_acc") :]
    assert "failed" in table and "traceback.txt" in table


@pytest.mark.slow
@pytest.mark.shared_sweep(FAULTY_SWEEP)
def test_nan_loss_ends_the_trial_early_tagged_diverged(faulty_sweep):
    proc, client, by_kind, parent = faulty_sweep
    (run,) = by_kind["nan"]
    assert run.info.status == "FINISHED"
    assert run.data.tags[M.TAG_STATUS] == STATUS_DIVERGED
    losses = client.get_metric_history(run.info.run_id, M.TRAIN_LOSS)
    assert [m.step for m in losses] == [1]  # stopped after the first epoch of 2
    assert math.isnan(losses[0].value)
    assert M.PROBE_ACCURACY not in run.data.metrics  # nothing to probe
    assert parent.data.metrics["diverged_trials"] == 1
    (normal,) = by_kind["ok"]
    assert normal.data.tags[M.TAG_STATUS] != STATUS_DIVERGED
    assert M.PROBE_ACCURACY in normal.data.metrics


@pytest.mark.slow
@pytest.mark.shared_sweep(EIGHT_AT_ONCE)
def test_eight_concurrent_trials_on_sqlite_lose_nothing(shared_sweep):
    """8 trials at once (the session's `eight-at-once` sweep, tests/shared_sweeps.py),
    their runs, metrics and artifacts written to one sqlite store at the same time."""
    proc, sweep_dirs = shared_sweep.proc, shared_sweep.dirs
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "database is locked" not in output
    assert re.search(r"8 trials finished \(\d collapsed, 0 diverged\), 0 failed", proc.stdout)
    client = MlflowClient(tracking_uri=sweep_dirs.tracking_uri)
    trials = [r for r in _experiment_runs(client) if r.data.tags[M.TAG_ROLE] == M.ROLE_TRIAL]
    assert len(trials) == 8
    assert len({r.data.tags[M.TAG_TRIAL_ID] for r in trials}) == 8
    for run in trials:
        assert run.info.status == "FINISHED"
        assert set(TRIAL_METRICS) <= set(run.data.metrics)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, M.TRAIN_LOSS)]
        assert steps == [1, 2]
        assert TRIAL_ARTIFACTS <= {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"predictor_width", "aug_strength"} <= set(run.data.params)
