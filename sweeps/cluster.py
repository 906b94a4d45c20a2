"""The Ray cluster: connecting to one or starting one, the dashboard's token hint, the
runtime env a job on someone else's cluster gets, and one line per node.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from jepa.errors import UserInputError, first_line
from sweeps import tracking
from sweeps.paths import PROJECT_ROOT

NAMESPACE = "jepa-sweeps"
# Where Ray 2.5x+ keeps the token of a local cluster (RAY_AUTH_TOKEN_PATH overrides it).
TOKEN_PATH = Path.home() / ".ray" / "auth_token"
# Settings every process of the sweep needs. On a cluster the sweep did not start, the
# processes on other nodes do not inherit the driver's environment: they get these
# through the job's runtime env.
JOB_ENV = {
    # Rank 0 reports probe_accuracy only after the last epoch (see `_sweep`).
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    "RAY_TRAIN_V2_ENABLED": "1",
}
# Read by MlflowClient in the trials when the tracking server asks for credentials
# (`mlflow server --app-name basic-auth`) or uses TLS; forwarded when the driver has them.
FORWARDED_ENV = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
)


@contextlib.contextmanager
def driver_threads(n: int = 1) -> Iterator[None]:
    """The driver's torch and BLAS (numpy, scikit-learn) on `n` threads while it runs.

    The driver reserves no CPU: Ray counts the cache's, the pool's and the trials', and
    starts each worker with OMP_NUM_THREADS = its CPUs. Yet the driver scores the
    baselines and draws the summary while they run, and a process started by the user
    would use a thread per core: a thread pool wider than the free cores spins at every
    barrier for a thread that is not scheduled. Measured on 2 busy cores (2026-11-30,
    cProfile of a tiny sweep's driver): the baselines' probe (10 small L-BFGS fits) took
    11.8 s, 1.3 s on one thread (most of it torch's one-time import of torch._dynamo);
    the probe alone, 1.6 s on 2 threads beside a busy process vs 0.05 s on 1.
    """
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def init_ray(address: str | None, tracking_uri: str) -> bool:
    """Connect to `address` or start a local cluster; True when we called ray.init.
    Call it inside `scoped_environ(JOB_ENV)`: a local cluster's processes inherit it."""
    if ray.is_initialized():
        return False
    if address:
        connect(address)
        print(f"MLflow: {tracking.ui_command(tracking_uri)}")
        return True
    context = start_local(
        namespace=NAMESPACE,
        include_dashboard=True,
        dashboard_host="127.0.0.1",  # never a public interface by default
        log_to_driver=True,
    )
    url = context.dashboard_url
    if url:
        print(f"Ray dashboard: {url if url.startswith('http') else 'http://' + url}")
        print(f"  {token_hint()}")
    else:
        print("Ray dashboard: not running (ray[default] missing?)")
    session = context.address_info.get("session_dir")
    if session:  # the processes' own logs: where to look when a trial's worker died
        print(f"Ray logs: {session}/logs")
    print(f"MLflow UI: {tracking.ui_command(tracking_uri)}")
    return True


def token_hint() -> str:
    """How to get past the dashboard's "Authentication Token Required" dialog."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return f"token authentication is off (RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']})"
    if os.environ.get("RAY_AUTH_TOKEN"):
        where = "the RAY_AUTH_TOKEN environment variable"
    else:
        where = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(TOKEN_PATH)
    return (
        f"it asks for the token in {where}: paste it into the Authentication Token box "
        "(`ray get-auth-token` prints it)"
    )


def connect(address: str) -> None:
    """Join an existing cluster (`auto`, HOST:PORT, or ray://HOST:PORT through Ray Client)
    and say which nodes the trials can run on."""
    try:
        init_with_retries(address)
    except Exception as exc:
        # Ray sends its token only when told to, never on its own to a given address, and
        # a cluster that wants one answers a client without it by timing out.
        hint = ""
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = (
                "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and put "
                f"its token in {TOKEN_PATH} (or RAY_AUTH_TOKEN)"
            )
        raise UserInputError(
            f"cannot connect to the Ray cluster at {address}: "
            f"{first_line(exc)}; check --address / RAY_ADDRESS{hint}"
        ) from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    print(f"Ray: connected to {address}, {len(nodes)} node(s):")
    for node in nodes:
        print(f"  {describe_node(node)}")


CLIENT_INIT_TRIES = 3
LOCAL_START_TRIES = 2
# What Ray raises when a local node's raylet has not registered with the GCS within the
# 30 s `ray._private.node.Node` waits: a constant there, whatever its log line says
# about RAY_raylet_start_wait_time_s. Seen on the 2 busy cores of a CI run that started
# three clusters at once; a second start went through.
_LOCAL_START_TIMED_OUT = "timed out during startup"


def start_local(**init_kwargs: Any) -> Any:
    """`ray.init(**init_kwargs)` starting a local cluster, once more if Ray's start timed
    out. A failed start leaves its processes running (GCS, raylet, agents, idle
    workers: Ray raises before the driver holds them), so they are killed first, and
    after the last try too: nothing of a failed start outlives it."""
    for attempt in range(1, LOCAL_START_TRIES + 1):
        before = _descendants()
        try:
            return ray.init(**init_kwargs)
        except Exception as exc:
            _kill_started_since(before)
            ray.shutdown()
            if attempt == LOCAL_START_TRIES or _LOCAL_START_TIMED_OUT not in str(exc):
                raise
            print(
                f"Ray: the local cluster did not start within Ray's 30 s (try {attempt} of "
                f"{LOCAL_START_TRIES}; a busy machine?); starting it again",
                flush=True,
            )


def _descendants() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _kill_started_since(before: set[int], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s`, to this process's descendants not in
    `before` (a failed `ray.init`'s processes; the raylet has outlived 5 s of SIGTERM)."""
    import psutil

    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    for proc in started:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(started, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)  # reaps them: no zombie is left either


def init_with_retries(address: str) -> None:
    """`ray.init` on `address`, tried again when Ray Client's server fails to start the
    session's driver ("Initialization failure from server" with no reason: seen on a
    loaded machine, gone on the next try). Other errors are raised at once."""
    for attempt in range(1, CLIENT_INIT_TRIES + 1):
        try:
            ray.init(address=address, namespace=NAMESPACE, runtime_env=job_runtime_env())
            return
        except ConnectionAbortedError as exc:
            if attempt == CLIENT_INIT_TRIES or "Initialization failure" not in str(exc):
                raise
            print(f"Ray Client: the server could not start the session ({attempt}); again")
            ray.shutdown()
            time.sleep(2 * attempt)


def job_runtime_env() -> dict[str, Any]:
    """The runtime env of a sweep on a cluster it did not start.

    `py_modules` ships this checkout's `jepa/` and `sweeps/` to every node, so the
    trials run the code the driver runs (the nodes need only the dependencies); the
    env vars carry `JOB_ENV` and the MLflow credentials of `FORWARDED_ENV`. Anyone who
    can see the job's runtime env (the cluster's token holders) can read those.
    """
    env_vars = dict(JOB_ENV)
    env_vars.update({k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)})
    return {
        "py_modules": [str(PROJECT_ROOT / "jepa"), str(PROJECT_ROOT / "sweeps")],
        "env_vars": env_vars,
    }


def describe_node(node: dict[str, Any]) -> str:
    """One line for a `ray.nodes()` entry: id, IP, CPUs, GPUs and custom resources."""
    res = node.get("Resources", {})
    builtin = {"CPU", "GPU", "memory", "object_store_memory"}
    custom = sorted(
        k for k in res if k not in builtin and not k.startswith(("node:", "accelerator_type:"))
    )
    return (
        f"node {node['NodeID'][:12]} {node.get('NodeManagerAddress', '?')} "
        f"CPU {res.get('CPU', 0):g} GPU {res.get('GPU', 0):g}"
        + (f" {' '.join(custom)}" if custom else "")
    )


def check_gpus(gpus_per_trial: float) -> None:
    """On the running cluster: it has the GPUs one trial asks for."""
    if gpus_per_trial > 0:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < gpus_per_trial:
            raise UserInputError(
                f"--gpus-per-trial {gpus_per_trial} but the Ray cluster has {gpus:g} GPUs; "
                "use --gpus-per-trial 0 here"
            )


def default_concurrency(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """Trials at once when `--max-concurrent` is not given: as many as the cluster's
    CPUs (and GPUs) hold."""
    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 1) // cpus_per_trial)
    if gpus_per_trial > 0:
        slots = min(slots, int(resources.get("GPU", 0) // gpus_per_trial))
    return max(1, slots)


# What one pool group's processes hold (`sweeps.pool`): Train's controller (~1.5 GiB RSS
# together with the task that drove it and the helper actors, all since left out or
# merged into the broker: an upper bound now), and per rank a worker with torch and the
# banks it keeps (~0.9 GiB on the demo). Measured with `ps` during an 8-trial demo sweep.
GROUP_BASE_BYTES = 1.5 * 2**30
RANK_BYTES = 0.9 * 2**30


def pool_groups(
    wanted: int,
    resources: dict[str, float],
    workers_per_group: int,
    cpus_per_worker: float,
    gpus_per_trial: float,
) -> tuple[int, str | None]:
    """How many of `wanted` pool groups to start on a cluster with `resources` (Ray's
    `cluster_resources()`), at least one, and what held it below `wanted` (None if
    nothing did).

    - CPUs (and GPUs): a group more than they hold waits for a placement that the
      long-lived groups never free, its controller started for nothing;
    - memory (Ray's `memory` resource: what the nodes had free at start, less the object
      store): more groups than it holds and Ray's memory monitor kills workers mid-trial
      (a CI run of eight concurrent trials on 24 GB did).

    Fewer groups than trials only make trials wait their turn in the pool's queue."""
    slots = int(resources.get("CPU", 0) // (workers_per_group * cpus_per_worker))
    if gpus_per_trial > 0:
        slots = min(slots, int(resources.get("GPU", 0) // gpus_per_trial))
    per_group = GROUP_BASE_BYTES + RANK_BYTES * workers_per_group
    held = {
        "CPUs and GPUs" if gpus_per_trial > 0 else "CPUs": slots,
        "memory": int(resources.get("memory", 0.0) // per_group),
    }
    limit, groups = min(held.items(), key=lambda kv: kv[1])
    if groups >= wanted:
        return wanted, None
    return max(1, groups), limit


def check_cluster(address: str | None, gpus_per_trial: float, timeout_s: float = 5.0) -> None:
    """Before anything starts: the Ray address answers, and a local cluster has the GPUs.

    `ray.init` on an address where nothing listens retries for a long time; a TCP
    connection attempt answers within `timeout_s`.
    """
    if address and address != "auto":
        hostport = address.split("://", 1)[-1].rstrip("/")
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise UserInputError(
                f"--address {address}: expected HOST:PORT, ray://HOST:PORT or auto"
            )
        try:
            socket.create_connection((host, int(port)), timeout=timeout_s).close()
        except OSError as exc:
            raise UserInputError(
                f"--address {address}: cannot reach a Ray cluster there "
                f"({exc.strerror or exc}); start one (ray start --head) "
                "or fix --address / RAY_ADDRESS"
            ) from None
    if not address and gpus_per_trial > 0:
        import torch

        if not torch.cuda.is_available():
            raise UserInputError(
                f"--gpus-per-trial {gpus_per_trial:g} but this machine has no GPU that torch "
                "can use; use --gpus-per-trial 0 (or --address of a cluster with GPUs)"
            )
