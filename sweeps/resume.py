"""Interrupted sweeps: what a sweep leaves behind so that `--resume` can continue it.

A sweep's Tune experiment folder, `<storage>/<space>-<timestamp>/`, holds Tune's own
state (the trials, the search generator and the pickled Optuna study, written by Tune
after every step) and `sweep.json`, written by the driver before the first trial
starts: the MLflow parent run, the baseline's scores, the options a resume must share,
and whether the sweep finished.

`--resume` picks the newest folder of the same space and MLflow experiment whose sweep
did not finish, restores Tune from it (`tune.Tuner.restore`, so the Optuna sampler keeps
its history and finished trials are not run again) and reuses the parent run. MLflow
runs that an interruption left RUNNING are closed as KILLED: by the driver on Ctrl-C,
and on resume for a driver that was killed outright (SIGKILL, a lost machine).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jepa import metrics as M
from jepa.errors import UserInputError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

SWEEP_FILE = "sweep.json"
RUNNING = "running"
INTERRUPTED = "interrupted"
FAILED = "failed"
FINISHED = "finished"
RUN_SCRIPT = Path(__file__).resolve().parent / "run.py"


@dataclass
class SweepState:
    """The contents of `sweep.json` (one per Tune experiment folder)."""

    sweep_name: str
    """Also the Tune experiment name: the folder is `<storage>/<sweep_name>`."""
    space: str
    experiment: str
    experiment_id: str
    tracking_uri: str
    parent_run_id: str
    fingerprint: dict[str, Any]
    """Options that must not change on resume (config, data, backbone, trial count)."""
    status: str = RUNNING
    baseline: dict[str, Any] | None = None
    """The baseline runs' ids and scores by seed once they finished (a resume does not
    redo them): `sweeps.sweep.Baselines.to_state`."""
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    """The driver that last ran the sweep; a live one must not be resumed twice."""
    updated: float = field(default_factory=time.time)

    def save(self, folder: Path) -> None:
        """Write `folder/sweep.json` atomically (a kill mid-write leaves the old one)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.host, self.pid, self.updated = socket.gethostname(), os.getpid(), time.time()
        tmp = folder / f".{SWEEP_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True, default=str))
        os.replace(tmp, folder / SWEEP_FILE)

    @classmethod
    def load(cls, path: Path) -> SweepState:
        return cls(**json.loads(path.read_text()))

    def driver_alive(self) -> bool:
        """Whether the process that last ran this sweep is still running here."""
        if self.host != socket.gethostname() or self.pid == os.getpid():
            return False
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return False
        return b"run.py" in cmdline or b"sweeps" in cmdline  # not a recycled pid


def experiment_dir(storage: str, sweep_name: str) -> Path:
    return Path(storage).resolve() / sweep_name


def find_resumable(
    storage: str, space_path: str | Path, experiment: str
) -> tuple[SweepState, Path]:
    """The newest unfinished sweep of the space in `space_path` in MLflow `experiment`.

    A `UserInputError` when there is none, or when its driver is still running.
    """
    space = space_id(space_path)
    candidates = []
    for path in Path(storage).glob(f"*/{SWEEP_FILE}"):
        try:
            state = SweepState.load(path)
        except (OSError, ValueError, TypeError):
            continue  # not ours, or half-written by an older version: not resumable
        if state.space == space and state.experiment == experiment and state.status != FINISHED:
            candidates.append((state.updated, state, path.parent))
    if not candidates:
        raise UserInputError(
            f"--resume: no interrupted sweep of space {Path(space).stem!r} and experiment "
            f"{experiment!r} under --storage {storage}; run without --resume to start one"
        )
    _, state, folder = max(candidates, key=lambda c: c[0])
    if state.driver_alive():
        raise UserInputError(
            f"--resume: sweep {state.sweep_name} is still running (pid {state.pid}); "
            "stop it first (Ctrl-C), then resume"
        )
    return state, folder


def check_same_options(state: SweepState, fingerprint: dict[str, Any]) -> None:
    """A resumed sweep must run the trials it has left with the options it started with."""
    old = json.loads(json.dumps(state.fingerprint, default=str))
    new = json.loads(json.dumps(fingerprint, default=str))
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise UserInputError(
                f"--resume: sweep {state.sweep_name} was started with {key}={old.get(key)}, "
                f"now {key}={new.get(key)}; resume with the flags it was started with"
            )


def resume_command(argv: list[str]) -> str:
    """The exact command that resumes the sweep started by `run.py argv`."""
    script = RUN_SCRIPT
    try:
        script = script.relative_to(Path.cwd())
    except ValueError:
        pass
    args = [a for a in argv if a != "--resume"]
    return shlex.join([sys.executable, str(script), *args, "--resume"])


def optuna_history(folder: Path) -> int | None:
    """How many trials the Optuna study saved in a Tune experiment folder has handed
    out (running or told; not the coverage points still queued as WAITING).

    Tune pickles the searcher (`searcher-state-*.pkl`) after each step and unpickles it
    itself on restore; the folder is the user's own `--storage`, as trusted as Tune's.
    None when there is no saved searcher.
    """
    files = sorted(folder.glob("searcher-state-*.pkl"))
    if not files:
        return None
    with open(files[-1], "rb") as f:
        state = pickle.load(f)
    study = state.get("_ot_study") if isinstance(state, dict) else None
    if study is None:
        return None
    from optuna.trial import TrialState

    return sum(1 for t in study.trials if t.state != TrialState.WAITING)


def iter_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> Iterator[Any]:
    """Every run matching `filter_string`, page by page."""
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        yield from page
        token = page.token
        if not token:
            return


def close_running_children(
    client: MlflowClient, experiment_id: str, parent_run_id: str, status: str
) -> int:
    """Mark the sweep's runs still RUNNING (trials, baseline) as `status`; returns how many.

    Runs are RUNNING after an interruption because their processes died without closing
    them; nothing can still be writing to them when this is called.
    """
    stale = list(
        iter_runs(
            client,
            experiment_id,
            f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'",
        )
    )
    for run in stale:
        client.set_terminated(run.info.run_id, status)
    return len(stale)


@dataclass
class EarlierAttempts:
    """The MLflow runs earlier attempts of one Tune trial left."""

    count: int
    finished_run: Any | None
    """A FINISHED run of this trial, when one exists (the trial then need not run again)."""


def close_earlier_attempts(
    client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str
) -> EarlierAttempts:
    """Before a trial (re)starts: close its earlier runs left RUNNING as KILLED.

    A trial starts again after a failure (`--max-failures`) or when a resumed sweep
    restarts the trials the interruption cut off; each attempt gets its own run, so no
    run holds two copies of an epoch.
    """
    runs = list(
        iter_runs(
            client,
            experiment_id,
            f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`{M.TAG_TRIAL_ID}` = "
            f"'{trial_id}'",
        )
    )
    finished = None
    for run in runs:
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
        elif run.info.status == "FINISHED":
            finished = run
    return EarlierAttempts(count=len(runs), finished_run=finished)


class SweepInterrupted(KeyboardInterrupt):
    """The sweep stopped early (Ctrl-C); Ray is stopped and its MLflow runs are closed."""


@dataclass
class SweepRecord:
    """A sweep's `sweep.json` and the Tune experiment folder it lives in."""

    state: SweepState
    folder: Path
    resumed: bool = False

    def save(self) -> None:
        self.state.save(self.folder)

    def close(self, client: MlflowClient, run_status: str, sweep_status: str) -> None:
        """End the parent run with `run_status`; runs of trials cut off (by Ctrl-C, a
        failure of the sweep, or a scheduler's early stop) end KILLED."""
        close_running_children(client, self.state.experiment_id, self.state.parent_run_id, "KILLED")
        client.set_terminated(self.state.parent_run_id, run_status)
        self.state.status = sweep_status
        self.save()


def reopen(client: MlflowClient, state: SweepState, folder: Path) -> SweepRecord:
    """Take up an interrupted sweep: its runs left RUNNING are KILLED, its parent reused."""
    closed = close_running_children(client, state.experiment_id, state.parent_run_id, "KILLED")
    client.update_run(state.parent_run_id, status="RUNNING")
    state.status = RUNNING
    record = SweepRecord(state, folder, resumed=True)
    record.save()
    print(
        f"Resuming sweep {state.sweep_name} from {folder}; "
        f"{closed} MLflow run(s) the interruption left RUNNING are now KILLED"
    )
    return record


def space_id(space_path: str | Path) -> str:
    """Which space a sweep ran: its file, so that a path and a name of the same file agree."""
    return str(Path(space_path).resolve())


def fingerprint(
    opts: Any, base_config: dict[str, Any], backbone_hash: str, dataset: Any
) -> dict[str, Any]:
    """The options (`SweepOptions`) a resumed sweep must share with the one it continues."""
    return {
        "space_sha256": hashlib.sha256(Path(opts.space.path).read_bytes()).hexdigest()[:16],
        "base_config": base_config,
        "num_samples": opts.num_samples,
        "seeds": opts.seeds,
        "max_concurrent": opts.max_concurrent,
        "max_failures": opts.max_failures,
        "scheduler": opts.scheduler,
        "views": opts.views,
        "feature_cache": opts.feature_cache,
        "backbone_sha256": backbone_hash,
        "dataset_manifest": dataset.manifest_hash,
        "tracking_uri": opts.tracking_uri,
        "workers_per_trial": opts.workers_per_trial,
    }


@contextlib.contextmanager
def watch_interrupt() -> Iterator[Callable[[], bool]]:
    """Yields a function that says whether Tune caught a Ctrl-C.

    Tune handles the first SIGINT itself: it stops the trials, saves its state and
    returns normally, with the stopped trials marked TERMINATED like finished ones. Its
    handler then puts back the handler it found, so a marker installed here tells.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False  # no signal handling off the main thread (nor in Tune)
        return

    def marker(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, marker)
    try:
        yield lambda: signal.getsignal(signal.SIGINT) is marker
    finally:
        signal.signal(signal.SIGINT, previous)


def restore_tuner(record: SweepRecord, trainable: Any) -> Any:
    """Tune's own restore: finished trials stay finished, the trials cut off run again,
    the search generator and the Optuna study (with its history) are unpickled."""
    from ray import tune

    from sweeps import console

    history = optuna_history(record.folder)
    line = f"Tune: restoring {record.folder}; the Optuna sampler's history: {history} trials"
    print(line, file=console.out())  # the console, also while Tune's output goes to the log
    return tune.Tuner.restore(
        str(record.folder), trainable=trainable, resume_unfinished=True, resume_errored=False
    )
