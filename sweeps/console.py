"""What a researcher sees while the trials run: a line when a trial starts, one when it
ends (status and validation score), and a progress line (done/running/queued of N,
elapsed, an estimate of what is left).

Tune's status tables and the lines Ray's processes print (Ray Train's per-report INFO
lines, the trials' warnings and tracebacks) go to a log file instead (`quiet`), whose
path is printed; `--verbose` leaves them on the console.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ray.tune import Callback

from jepa import metrics as M

LOG_FILE = "sweep.log"  # in the sweep's Tune folder, <storage>/<sweep name>/
_console: IO[str] | None = None  # the real stdout while `quiet` sends the rest to a file


def out() -> IO[str]:
    """Where the trial lines go: the console, also while `quiet` is on."""
    return _console or sys.stdout


@contextlib.contextmanager
def quiet(log_path: Path, enabled: bool = True) -> Iterator[None]:
    """While the block runs, what this process prints (Tune's tables, the lines Ray
    forwards from its workers) goes to `log_path`, except `out()`'s lines."""
    global _console
    if not enabled:
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"Tune and Ray Train output: {log_path} (--verbose shows it here)", flush=True)
    with open(log_path, "a", buffering=1) as log:
        _console = sys.stdout
        ray_worker = _ray_worker()
        if ray_worker is not None:
            ray_worker.global_worker_stdstream_dispatcher.add_handler(
                _CACHE_HANDLER, _show_cache_lines
            )
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                try:
                    yield
                finally:
                    if ray_worker is not None:  # while the log is still where lines go
                        _stop_forwarding(ray_worker)
        finally:
            if ray_worker is not None:
                ray_worker.global_worker_stdstream_dispatcher.remove_handler(_CACHE_HANDLER)
            _console = None


# The embedding cache's lines (what it computes, its progress every 10 s) stay on the
# console: computing a bank of real images takes minutes, and they say why nothing moves.
_CACHE_SOURCES = ("FeatureCacheActor", "_compute_on_gpu")
_CACHE_HANDLER = "jepa_cache_lines"


def _show_cache_lines(data: dict[str, Any]) -> None:
    """A Ray stdstream handler: the cache's batches of lines, printed on the console."""
    source = data.get("actor_name") or data.get("task_name") or ""
    if _console is not None and not data.get("is_err") and source in _CACHE_SOURCES:
        for line in data.get("lines", []):
            print(line, file=_console, flush=True)


def _ray_worker() -> Any:
    """Ray's driver module that forwards what Ray's processes print: its dispatcher of
    line batches and its deduplicators (None where a Ray version lacks them)."""
    try:
        from ray._private import worker
    except ImportError:
        return None
    needed = ("global_worker_stdstream_dispatcher", "print_worker_logs")
    needed += ("stdout_deduplicator", "stderr_deduplicator")
    return worker if all(hasattr(worker, name) for name in needed) else None


def _stop_forwarding(worker: Any) -> None:
    """Stop printing what Ray's processes write: after the trials, only their shut-down
    is left (e.g. the trainables' `SystemExit` tracebacks when Ray stops them), which
    would reach the console once `quiet` ends. Ray's log folder keeps it all.

    Ray's deduplicator holds back lines that several processes printed alike (both pool
    groups' "Started training worker group") and `ray.shutdown` prints what it still
    holds straight to stdout, past the dispatcher: flushed here, into the log."""
    worker.global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")
    for deduplicator in (worker.stdout_deduplicator, worker.stderr_deduplicator):
        for batch in deduplicator.flush():
            worker.print_worker_logs(batch, sys.stdout)


class TrialLines(Callback):
    """A Tune callback printing one line per trial start and end, and progress."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.started = time.monotonic()
        self.running: set[str] = set()
        self.done = 0

    def setup(self, **info: Any) -> None:
        self.started = time.monotonic()  # also after a --resume restored this callback
        self.running, self.done = set(), 0

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._say(f"trial {trial.trial_id} started: {_config(trial.config)}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self._say(f"trial {trial.trial_id} raised; retrying it ({_error(trial)})")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        status = result.get(M.TAG_STATUS, "stopped")
        score = result.get(M.SEARCH_METRIC)
        scored = f", {M.SEARCH_METRIC} {score:.3f}" if isinstance(score, float) else ""
        self._end(trial, f"ended: {status}{scored}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, f"failed ({_error(trial)})")

    def _end(self, trial: Any, what: str) -> None:
        self.running.discard(trial.trial_id)
        self.done += 1
        self._say(f"trial {trial.trial_id} {what}")

    def _say(self, line: str) -> None:
        elapsed = time.monotonic() - self.started
        queued = max(0, self.total - self.done - len(self.running))
        left = ""
        if self.done:
            left = f", ~{elapsed / self.done * (self.total - self.done):.0f} s left"
        progress = (
            f"  [{self.done} done, {len(self.running)} running, {queued} queued of "
            f"{self.total}; {elapsed:.0f} s{left}]"
        )
        print(line + progress, file=out(), flush=True)


def _config(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in sorted(config.items()))


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _error(trial: Any) -> str:
    """The last line of the trial's error (its exception), else where Tune wrote it."""
    try:
        text = trial.get_error() or ""
    except Exception:  # noqa: BLE001 - a line on the console is not worth failing for
        text = ""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if lines:
        return lines[-1][:200]
    return f"see {trial.error_file or 'the log'}"
