"""Scaling out, on one machine: a two-node Ray cluster (`ray start --head` plus `ray start
--address`, token authentication on), a PostgreSQL-backed MLflow team server started by
`mlflow/team-server.sh` (basic auth on), and a 4-trial sweep sent to both through
`--address ray://...`.

Each node has one CPU and each pool group's Ray Train worker needs one, so the sweep's two
groups cannot share a node; the trials start once both groups have (`PoolTrials.wait_ready`),
so the first two run one on each node. The nodes get neither the project on PYTHONPATH nor the
MLflow credentials: the sweep ships both in its runtime env. Everything started here is
stopped here, by process group, so other Ray clusters on the machine are left alone.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from jepa import metrics as M
from jepa.errors import UserInputError
from sweeps.cli import check_storage
from sweeps.cluster import describe_node, job_runtime_env, pool_groups
from sweeps.spaces import load_space
from sweeps.sweep import storage_path
from tests.conftest import ROOT, run_cli

BIN = Path(sys.executable).parent
VIEWS, IMAGES_PER_CLASS, EVAL_PER_CLASS = 2, 5, 3
EXPERIMENT = "jepa-multinode"
NODE_RESOURCES = ({"node_a": 1}, {"node_b": 1})
START_TIMEOUT = 300  # s; the machine is shared, `mlflow server` alone takes ~17 s idle


# Not beside the batch under `make test` (on its worker, before it; the fast tests run
# beside it): `ray start` gives a node 30 s (fixed in Ray) to register, and with
# PostgreSQL, the MLflow server's workers and the batch's two sweeps starting at once on 2
# cores it once took longer.
@pytest.mark.slow
@pytest.mark.before_the_batch
def test_sweep_spreads_over_nodes_and_logs_to_the_team_server(tmp_path, monkeypatch):
    with ExitStack() as stack:
        work = Path(stack.enter_context(_tempdir("jepa-mn-")))  # short: Ray's socket paths
        pg_uri, pg_password = stack.enter_context(_postgres())
        admin_password = secrets.token_urlsafe(16)
        artifacts = work / "artifacts"
        server = stack.enter_context(_team_server(work, pg_uri, pg_password, admin_password))
        token = work / "ray_token"
        token.write_text(secrets.token_hex(32))
        client_address = stack.enter_context(_ray_cluster(work, token))  # meanwhile MLflow starts
        server.wait_until_up()

        storage = work / "ray_results"
        proc = run_cli(
            [
                "--space",
                "aug_strength",
                "--num-samples",
                "4",
                "--max-epochs",
                "1",
                "--views",
                str(VIEWS),
                "--images-per-class",
                str(IMAGES_PER_CLASS),
                "--eval-per-class",
                str(EVAL_PER_CLASS),
                "--address",
                client_address,
                "--tracking-uri",
                server.url,
                "--experiment",
                EXPERIMENT,
                "--storage",
                storage.as_uri(),  # a file:// URI: the sweep's folder is its path
                "--cache-dir",
                str(work / "cache"),
            ],
            timeout=1500,
            env={
                **_ray_auth_env(token),
                "MLFLOW_TRACKING_USERNAME": "admin",
                "MLFLOW_TRACKING_PASSWORD": admin_password,
            },
        )
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

        # The sweep lists the nodes it connected to: "node ID12 IP CPU 1 GPU 0 node_a".
        listed = dict(re.findall(r"node ([0-9a-f]{12}) \S+ CPU 1 GPU 0 (node_[ab])", proc.stdout))
        assert sorted(listed.values()) == ["node_a", "node_b"], proc.stdout[:3000]
        # Tune's state and the sweep's own files (once in a local folder named "file:").
        for name in ("experiment_state-*.json", "sweep.json", "optuna_journal.log", "sweep.log"):
            assert any(storage.glob(f"aug_strength-*/{name}")), name

        _check_server_refuses_anonymous(server.url)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_password)
        runs = _check_runs(server.url, listed, artifacts)
        _check_postgres_holds(pg_uri, pg_password, runs)


def _check_server_refuses_anonymous(server: str) -> None:
    from mlflow.tracking import MlflowClient

    with pytest.raises(Exception, match="401"):
        MlflowClient(tracking_uri=server).search_experiments()


def _check_runs(server: str, listed: dict[str, str], artifacts: Path) -> dict:
    """Every run, metric and artifact of the sweep is in the server; trials ran on both
    nodes; the backbone ran once per embedding-cache key."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None
    by_role: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id]):
        by_role.setdefault(run.data.tags[M.TAG_ROLE], []).append(run)
    assert {r: len(v) for r, v in by_role.items()} == {
        M.ROLE_SWEEP: 1,
        M.ROLE_BASELINE: 2,  # raw backbone, untrained predictor
        M.ROLE_TRIAL: 4,
    }
    parent, trials = by_role[M.ROLE_SWEEP][0], by_role[M.ROLE_TRIAL]

    nodes = set()
    where = []  # (start, end, node) of each trial, for the message if they did not spread
    for run in trials:
        run_id, tags = run.info.run_id, run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        node_id = tags[M.TAG_NODE_ID]
        assert node_id[:12] in listed, (node_id, listed)
        assert tags[M.TAG_NODE] == f"{tags[M.TAG_HOST]} ({tags[M.TAG_NODE_IP]}) node {node_id[:12]}"
        nodes.add(listed[node_id[:12]])
        where.append((run.info.start_time, run.info.end_time, listed[node_id[:12]]))

        for metric in (M.PROBE_ACCURACY, M.KNN_ACCURACY, M.EMBEDDING_STD, M.EFFECTIVE_RANK):
            assert metric in run.data.metrics, metric
        assert [m.step for m in client.get_metric_history(run_id, M.TRAIN_LOSS)] == [1]
        # Proxied artifacts: stored by the server, under its --artifacts-destination.
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
        names = {a.path for a in client.list_artifacts(run_id)}
        assert {M.TSNE_ARTIFACT, M.PREDICTOR_ARTIFACT, M.CONFIG_ARTIFACT} <= names
        stored = artifacts / exp.experiment_id / run_id / "artifacts"
        assert (stored / M.PREDICTOR_ARTIFACT).stat().st_size > 0
        config = yaml.safe_load(
            Path(client.download_artifacts(run_id, M.CONFIG_ARTIFACT)).read_text()
        )
        assert float(config["aug_strength"]) == float(run.data.params["aug_strength"])
    first = min(start for start, _, _ in where)
    spans = [f"{(s - first) / 1e3:.1f}-{(e - first) / 1e3:.1f} s: {n}" for s, e, n in sorted(where)]
    assert nodes == {"node_a", "node_b"}, f"the trials did not spread over both nodes: {spans}"

    # One bank per key: V views of each training image plus one clean view of every image.
    # The keys: each trial's aug_strength, and the baseline's (the space's first level).
    params = parent.data.params
    n_train, n_eval = int(params["train_images"]), int(params["eval_images"])
    assert (n_train, n_eval) == (10 * IMAGES_PER_CLASS, 10 * EVAL_PER_CLASS)
    n_val = int(params["val_images"])  # the demo's validation split, all of it by default
    keys = {float(r.data.params["aug_strength"]) for r in trials}
    keys.add(float(load_space("aug_strength").levels("aug_strength")[0]))
    bank = VIEWS * n_train + n_train + n_val + n_eval
    assert parent.data.metrics["backbone_images"] == len(keys) * bank
    return {"experiment_id": exp.experiment_id, "run_ids": {r.info.run_id for r in trials}}


def _check_postgres_holds(uri: str, password: str, runs: dict) -> None:
    """The runs are in PostgreSQL itself, not in some fallback store of the server."""
    import psycopg

    with psycopg.connect(uri, password=password) as conn:
        rows = conn.execute(
            "SELECT run_uuid FROM runs WHERE experiment_id = %s", (int(runs["experiment_id"]),)
        ).fetchall()
        probes = conn.execute(
            "SELECT count(*) FROM latest_metrics WHERE key = %s", (M.PROBE_ACCURACY,)
        ).fetchone()[0]
    # The sweep's parent run, its two baselines (raw backbone, untrained predictor) and
    # the four trials; each but the parent has a probe accuracy.
    assert runs["run_ids"] <= {r[0] for r in rows} and len(rows) == 7
    assert probes == 6


# --- the pieces, without a cluster ---------------------------------------------------------


def test_storage_is_a_folder_or_a_file_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_storage("results") == str(tmp_path / "results")
    assert check_storage((tmp_path / "a b").as_uri()) == str(tmp_path / "a b")
    with pytest.raises(UserInputError, match="--storage s3://bucket/sweeps: give a folder"):
        check_storage("s3://bucket/sweeps")
    assert list(tmp_path.iterdir()) == []  # nothing created, no folder named "s3:"
    assert storage_path("results") == str(tmp_path / "results")


def test_the_pool_starts_no_more_groups_than_the_cluster_holds():
    gib = 2.0**30
    big = {"CPU": 16.0, "GPU": 2.0, "memory": 100 * gib}
    assert pool_groups(4, big, 1, 1.0, 0.0) == (4, None)
    # 3 CPUs hold 3 one-CPU groups, 6 groups of half a CPU, one 2-rank group of 1 CPU each.
    three = {"CPU": 3.0, "memory": 100 * gib}
    assert pool_groups(8, three, 1, 1.0, 0.0) == (3, "CPUs")
    assert pool_groups(8, three, 1, 0.5, 0.0) == (6, "CPUs")
    assert pool_groups(2, three, 2, 1.0, 0.0) == (1, "CPUs")
    # Two GPUs hold four trials of half a GPU; memory for 2.4 GiB groups holds 2.
    assert pool_groups(8, big, 1, 1.0, 0.5) == (4, "CPUs and GPUs")
    assert pool_groups(8, {"CPU": 16.0, "memory": 5 * gib}, 1, 1.0, 0.0) == (2, "memory")
    # At least one group, whatever the cluster: its trials wait rather than fail here.
    assert pool_groups(8, {"CPU": 0.5, "memory": 0.0}, 1, 1.0, 0.0) == (1, "CPUs")


def test_runtime_env_ships_the_code_and_the_mlflow_credentials(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    env = job_runtime_env()
    assert env["env_vars"]["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert env["env_vars"]["MLFLOW_TRACKING_PASSWORD"] == "s3cret"
    assert "MLFLOW_TRACKING_TOKEN" not in env["env_vars"]
    assert env["env_vars"]["TUNE_DISABLE_STRICT_METRIC_CHECKING"] == "1"
    assert sorted(Path(p).name for p in env["py_modules"]) == ["jepa", "sweeps"]
    assert all((Path(p) / "__init__.py").is_file() for p in env["py_modules"])


def test_describe_node_names_its_custom_resources():
    node = {
        "NodeID": "ab" * 28,
        "NodeManagerAddress": "10.0.0.7",
        "Resources": {
            "CPU": 8.0,
            "GPU": 1.0,
            "memory": 1e9,
            "object_store_memory": 1e8,
            "node:10.0.0.7": 1.0,
            "accelerator_type:H100": 1.0,
            "big_disk": 1.0,
        },
    }
    assert describe_node(node) == "node abababababab 10.0.0.7 CPU 8 GPU 1 big_disk"


@pytest.mark.parametrize(
    "settings, message",
    [
        ({}, "set STORE_URI"),
        ({"STORE_URI": "sqlite:///m.db", "ARTIFACTS": "a"}, "must be a postgresql:// URI"),
        ({"STORE_URI": "postgresql://u@db/m", "HOST": "0.0.0.0"}, "set AUTH=basic"),
        ({"STORE_URI": "postgresql://u@db/m", "AUTH": "basic"}, "MLFLOW_FLASK_SERVER_SECRET_KEY"),
    ],
)
def test_team_server_refuses_unsafe_or_incomplete_settings(tmp_path, settings, message):
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "AUTH", "STORE_URI")}
    env.pop("MLFLOW_FLASK_SERVER_SECRET_KEY", None)
    env.update({"ARTIFACTS": str(tmp_path / "artifacts"), "MLFLOW": str(BIN / "mlflow")})
    env.update({"STATE_DIR": str(tmp_path), **settings})
    proc = subprocess.run(
        ["bash", str(ROOT / "mlflow" / "team-server.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


# --- PostgreSQL -------------------------------------------------------------------------


def _postgres_bin() -> Path:
    """Debian's PostgreSQL server programs (.ci/run installs the package)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent
    message = "PostgreSQL is not installed (apt-get install -y postgresql; .ci/run does it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", path))


@contextmanager
def _postgres() -> Iterator[tuple[str, str]]:
    """A private PostgreSQL cluster on a free port of 127.0.0.1, with a database `mlflow`
    owned by user `mlflow`; yields (URI without the password, password)."""
    pg_bin = _postgres_bin()
    as_user: list[str] = []
    with _tempdir("jepa-pg-") as root:
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(root, "postgres")
            as_user = ["runuser", "-u", "postgres", "--"]
        password = secrets.token_urlsafe(16)
        pwfile = Path(root) / "password"
        pwfile.write_text(password)
        if as_user:
            shutil.chown(pwfile, "postgres")
        data, port = Path(root) / "data", _free_ports(1)[0]
        _check_call(
            [
                *as_user,
                str(pg_bin / "initdb"),
                "-D",
                str(data),
                "-U",
                "mlflow",
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
            ]
        )
        options = f"-p {port} -c listen_addresses=127.0.0.1 -k {root}"
        ctl = [*as_user, str(pg_bin / "pg_ctl"), "-D", str(data)]
        _check_call([*ctl, "-l", f"{root}/postgres.log", "-w", "-t", "120", "-o", options, "start"])
        try:
            import psycopg

            admin = f"postgresql://mlflow@127.0.0.1:{port}/postgres"
            with psycopg.connect(admin, password=password, autocommit=True) as conn:
                conn.execute("CREATE DATABASE mlflow")
            yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow", password
        finally:
            subprocess.run([*ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)


# --- MLflow team server -------------------------------------------------------------------


@dataclass
class _Server:
    url: str
    proc: subprocess.Popen
    log: Path

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the MLflow team server exited:\n{_tail(self.log)}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        pytest.fail(f"the MLflow team server did not answer {self.url}:\n{_tail(self.log)}")


@contextmanager
def _team_server(
    work: Path, pg_uri: str, pg_password: str, admin_password: str
) -> Iterator[_Server]:
    """`mlflow/team-server.sh` with basic auth, in the background (the caller waits for
    it to answer, so that the Ray cluster starts meanwhile)."""
    port = _free_ports(1)[0]
    env = {
        **os.environ,
        "STORE_URI": pg_uri,
        "PGPASSWORD": pg_password,  # libpq reads it: the URI carries no password
        "ARTIFACTS": str(work / "artifacts"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": "1",
        "AUTH": "basic",
        "STATE_DIR": str(work / "mlflow-state"),
        "MLFLOW": str(BIN / "mlflow"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
    }
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    log = work / "team-server.log"
    with _process_group(["bash", str(ROOT / "mlflow" / "team-server.sh")], env, log, work) as p:
        yield _Server(f"http://127.0.0.1:{port}", p, log)


# --- Ray cluster --------------------------------------------------------------------------


def _ray_auth_env(token: Path) -> dict[str, str]:
    # `ray start --address` and a driver given an address send a token only when told to.
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


@contextmanager
def _ray_cluster(work: Path, token: Path) -> Iterator[str]:
    """A head and a worker node, one CPU and one custom resource each, their own ports
    and temp dirs; yields the Ray Client address ray://127.0.0.1:PORT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env.pop("PYTHONPATH", None)  # the sweep ships the project's code to the nodes
    env.update(_ray_auth_env(token))
    gcs, client, dashboard = _free_ports(3)
    head_only = (
        f"--head --port {gcs} --ray-client-server-port {client} "
        f"--include-dashboard false --dashboard-port {dashboard}"
    ).split()
    with ExitStack() as stack:
        for i, resources in enumerate(NODE_RESOURCES):
            name = "head" if i == 0 else f"worker{i}"
            where = head_only if i == 0 else ["--address", f"127.0.0.1:{gcs}"]
            log = work / f"ray-{name}.log"
            cmd = [str(BIN / "ray"), "start", "--block", *where, *_node_flags(work / name)]
            cmd += ["--num-cpus", "1", "--num-gpus", "0", "--resources", json.dumps(resources)]
            proc = stack.enter_context(_process_group(cmd, env, log, work, grace=2))
            _wait_for_line(proc, log, "Ray runtime started")
        yield f"ray://127.0.0.1:{client}"


def _node_flags(temp_dir: Path) -> list[str]:
    """Ports of its own for everything a node listens on (Ray's fixed defaults would
    collide between the two nodes and with other clusters on this machine)."""
    ports = _free_ports(6)
    names = (
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-grpc-port",
        "--dashboard-agent-listen-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    )
    flags = [x for name, port in zip(names, ports, strict=True) for x in (name, str(port))]
    return [
        *flags,
        "--temp-dir",
        str(temp_dir),
        "--object-store-memory",
        str(200 * 1024**2),
        "--disable-usage-stats",
    ]


def _wait_for_line(proc: subprocess.Popen, log: Path, line: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if line in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"`ray start` exited ({proc.returncode}):\n{_tail(log)}")
        time.sleep(1)
    pytest.fail(f"`ray start` did not say {line!r}:\n{_tail(log)}")


# --- processes, ports, folders --------------------------------------------------------------


@contextmanager
def _process_group(
    cmd: list[str], env: dict, log: Path, cwd: Path, grace: float = 20
) -> Iterator[subprocess.Popen]:
    """Run `cmd` as the leader of a new session; on exit stop it and everything it
    started: SIGTERM to the group, SIGKILL after `grace` seconds. Descendants that left
    the group (Ray's workers start sessions of their own) are collected first."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        family = _descendants(proc.pid)
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc.pid, signal.SIGKILL)
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (PPID is the 4th field of /proc/N/stat)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextmanager
def _tempdir(prefix: str) -> Iterator[str]:
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _check_call(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"
