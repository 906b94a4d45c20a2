"""MLflow: where the store is, and the runs a sweep writes (see DESIGN.md, "MLflow").

All calls go through `MlflowClient` with an explicit tracking URI, so that a trial on
any node logs to the same store and nothing depends on global MLflow state.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import shlex
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from jepa import metrics as M
from jepa.errors import UserInputError, first_line
from sweeps.paths import PROJECT_ROOT

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

STORE_DIR = PROJECT_ROOT / "mlflow"
DEFAULT_DB = STORE_DIR / "mlflow.db"
DEFAULT_ARTIFACTS = STORE_DIR / "artifacts"
SERVE_SCRIPT = STORE_DIR / "serve.sh"
# One log_batch call takes at most this many metrics (MLflow's own limit is 1000).
BATCH = 900
# How long a call keeps retrying while the sqlite store is locked.
LOCK_RETRY_S = 300.0
# For the first contact with an HTTP store: no retries, a short timeout.
FAST_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

log = logging.getLogger(__name__)
T = TypeVar("T")


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the embedded sqlite store at the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def ui_command(uri: str) -> str:
    """The one command that serves the MLflow UI over this store on 127.0.0.1.

    It is `mlflow/serve.sh start` (README, "Compare trials"): the script passes the store
    and its artifact folder to `mlflow server` and can stop all its processes again.
    """
    if uri.startswith("http"):
        return f"open {uri}"
    script = SERVE_SCRIPT.relative_to(PROJECT_ROOT) if Path.cwd() == PROJECT_ROOT else SERVE_SCRIPT
    if uri == f"sqlite:///{DEFAULT_DB}":
        return f"{script} start"
    # Another local store: the script takes its URI; a sqlite store's artifacts are the
    # "artifacts" folder beside the file, as ensure_experiment creates them.
    return f"MLFLOW_UI_STORE={shlex.quote(uri)} {script} start"


def client(uri: str) -> RetryingClient:
    """An `MlflowClient` for `uri` whose calls wait out a locked sqlite store."""
    from mlflow.tracking import MlflowClient

    return RetryingClient(MlflowClient(tracking_uri=uri))


class RetryingClient:
    """Proxy of an `MlflowClient`: a call that fails because the store is locked is retried.

    SQLite admits one writer at a time; a writer that waits more than pysqlite's 5 s for
    the lock gets "database is locked". When many trials end at once on a loaded machine
    (each logging metrics, tags and its status) the wait can exceed that. MLflow rolls
    the failed transaction back, so calling again is safe, creating a run included.
    """

    def __init__(self, inner: Any, deadline_s: float = LOCK_RETRY_S) -> None:
        self._inner = inner
        self._deadline_s = deadline_s

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return retry_while_locked(attr, *args, deadline_s=self._deadline_s, **kwargs)

        return call


def retry_while_locked(fn: Callable[..., T], *args: Any, deadline_s: float, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, called again with jittered backoff while the store is locked."""
    start, delay = time.monotonic(), 0.05
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_locked_error(exc) or time.monotonic() - start > deadline_s:
                raise
            log.warning("MLflow store locked; retrying %s in %.2fs", fn.__name__, delay)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)


def is_locked_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


@contextlib.contextmanager
def scoped_environ(values: dict[str, str]) -> Iterator[None]:
    """`os.environ` with `values` set while the block runs, as it was afterwards.

    For settings MLflow and Ray read from the environment of the process that starts
    something (a request, a cluster, a Tuner, a Train run): they reach what is started
    inside the block and do not outlive it in this process (a test, the next sweep).
    """
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _fail_fast_http() -> contextlib.AbstractContextManager[None]:
    """MLflow retries an unreachable HTTP store for minutes by default; a first contact
    should answer within seconds."""
    return scoped_environ(FAST_HTTP)


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment `name`, created (artifacts next to the sqlite store) if new.

    Also the check that the store is reachable: an unreachable one is a `UserInputError`
    within seconds.
    """
    c = client(uri)
    try:
        with _fail_fast_http():
            exp = c.get_experiment_by_name(name)
    except Exception as exc:  # MLflow raises many types for "cannot reach the store"
        raise UserInputError(
            f"cannot reach the MLflow tracking store {uri}: {first_line(exc, 300)}; "
            "check --tracking-uri / MLFLOW_TRACKING_URI"
        ) from None
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):
        # MLflow's default for a sqlite store is ./mlartifacts relative to the working
        # directory; keep artifacts beside the store whatever the working directory.
        db = Path(uri.removeprefix("sqlite:///"))
        artifact_location = (db.parent / "artifacts").resolve().as_uri()
    return c.create_experiment(name, artifact_location=artifact_location)


def log_params(c: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for start in range(0, len(items), 100):  # log_batch takes at most 100 params
        c.log_batch(run_id, params=items[start : start + 100])


def log_metrics(
    c: MlflowClient,
    run_id: str,
    values: dict[str, float],
    step: int = 0,
    timestamp_ms: int | None = None,
) -> None:
    """Log many metrics in one HTTP call (one call each costs ~90 ms over HTTP)."""
    log_metric_rows(c, run_id, [(step, values)], timestamp_ms)


def log_metric_rows(
    c: MlflowClient,
    run_id: str,
    rows: Iterable[tuple[int, dict[str, float]]],
    timestamp_ms: int | None = None,
) -> None:
    from mlflow.entities import Metric

    ts = timestamp_ms or int(time.time() * 1000)
    items = [
        Metric(k, float(v), ts, int(step))
        for step, values in rows
        for k, v in values.items()
        if isinstance(v, int | float)
    ]
    for start in range(0, len(items), BATCH):
        c.log_batch(run_id, metrics=items[start : start + BATCH])


def set_tags(c: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    c.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_config_yaml(c: MlflowClient, run_id: str, config: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / M.CONFIG_ARTIFACT
        path.write_text(yaml.safe_dump(config, sort_keys=True))
        c.log_artifact(run_id, str(path))


def log_traceback(c: MlflowClient, run_id: str, exc: BaseException) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "traceback.txt"
        path.write_text("".join(traceback.format_exception(exc)))
        c.log_artifact(run_id, str(path))
