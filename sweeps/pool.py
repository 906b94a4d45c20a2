"""A pool of long-lived Ray Train worker groups that run Tune trials' work (issue 15).

Each `TorchTrainer.fit` starts a controller and its workers, processes that import torch
and Ray Train (~10-20 s of CPU on 2 cores) and, on their first optimizer, torch._dynamo
(~1 s); a trial that trains for a second pays that every time. The pool pays it once per
group: `groups` TorchTrainers are started when the pool starts, and each group's train
loop takes trial configs from a broker actor, runs `body(config, ctx)` and streams the
rows `body` reports back to the Tune trial that asked. The Tune trial itself is a light
function trainable (`PoolTrials.trainable`) that submits its config and `tune.report`s
each row as it arrives, so the searcher, the scheduler and `max_failures` see an
ordinary trial.

- Stopping: Tune kills a stopped trial's actor without running its code, so the
  trainable keeps a lease on its work with a heartbeat thread; `ctx.should_stop()` turns
  true once the lease lapsed (or the trainable cancelled), and `body` returns early.
- Faults: each group runs with Ray Train's `FailureConfig(max_failures=restarts)`, so
  Train replaces a dead worker (SIGKILL, out of memory) with a fresh group. When the fresh
  group asks for work, the broker fails the trial the dead one held; the trainable
  raises and Tune retries it (`max_failures`) or marks it errored. A group that fails
  more often (e.g. `body` cannot be unpickled there, so it never starts) is given up;
  once every group is given up, queued and new trials fail at once instead of waiting.
- State: `ctx.state` is a dict each worker keeps between trials (e.g. fetched banks).

Rank 0 of a group takes trials from the broker; with `workers_per_group > 1` it
broadcasts each trial's id to the other ranks (torch.distributed, set up by Ray Train),
which fetch its config from the broker, so every rank runs `body` on the same config, as
DDP needs.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

# Ray Train V2 defaults suited to long-lived groups whose loop never reports: a dead
# worker is noticed within a health-check interval (default 2 s), and no preemption
# watcher actor is started per group. Given to the broker, which calls `fit`: Train
# passes that process's environment on to its controllers and workers.
TRAIN_ENV = {
    "RAY_TRAIN_V2_ENABLED": "1",  # the default in Ray 2.60; FailureConfig below is V2's
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}
_STOP = "__stop__"  # what the broker hands a group when the pool shuts down
HEARTBEAT_S = 0.5  # how often a trainable renews its lease


class PoolWorkerDied(RuntimeError):
    """The pool worker group running a trial died (killed, out of memory)."""


@dataclass
class _Trial:
    config: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    state: str = "queued"  # queued -> running -> done | error | lost (its group died)
    error: str | None = None
    group: int | None = None
    renewed: float = field(default_factory=time.monotonic)
    cancelled: bool = False


# Threads of their own for the groups' `fit` calls (one each for the whole sweep), so
# that they never take the threads the trainables' and workers' calls wait in.
_GROUP_THREADS = "groups"


@ray.remote(num_cpus=0, max_concurrency=64, concurrency_groups={_GROUP_THREADS: 256})
class Broker:
    """The pool's one piece of shared state: the queue of trial configs, which group
    runs which trial, and each trial's rows until its trainable collects them; and the
    process that drives every group's TorchTrainer (`run_group`). A threaded actor: the
    waiting calls (`next_trial`, `take`) block on one condition."""

    def __init__(self, lease_s: float) -> None:
        self._lease_s = lease_s
        self._trials: dict[str, _Trial] = {}
        self._queue: deque[str] = deque()
        self._running: dict[int, str] = {}  # group -> trial id it runs
        self._starts: dict[int, int] = {}  # group -> worker processes that asked
        self._placements: dict[int, Any] = {}  # group -> its workers' placement group
        self._closed = False
        self._groups = 0  # groups still running (set by `expect`)
        self._gave_up: str | None = None  # why the last group was given up
        self._cond = threading.Condition()

    def submit(self, trial_id: str, config: dict[str, Any]) -> None:
        """Queue a trial (again, when Tune retries it: its old rows are dropped)."""
        with self._cond:
            self._trials[trial_id] = _Trial(config)
            if self._gave_up is not None:
                self._trials[trial_id].state = "error"
                self._trials[trial_id].error = f"every pool group failed: {self._gave_up}"
                return
            self._queue.append(trial_id)
            self._cond.notify_all()

    def renew(self, trial_id: str) -> None:
        with self._cond:
            if trial_id in self._trials:
                self._trials[trial_id].renewed = time.monotonic()

    def cancel(self, trial_id: str) -> None:
        with self._cond:
            if trial_id in self._trials:
                self._trials[trial_id].cancelled = True
            self._cond.notify_all()

    def hello(self, group: int, placement: Any = None) -> None:
        """A group's rank 0 started (again), in `placement` (its placement group). A
        trial its previous process held died with it: fail the trial so that its
        trainable raises."""
        with self._cond:
            self._starts[group] = self._starts.get(group, 0) + 1
            self._placements[group] = placement
            held = self._running.pop(group, None)
            if held is not None and self._trials[held].state == "running":
                trial = self._trials[held]
                trial.state = "lost"
                trial.error = f"pool worker group {group} died while running trial {held}"
            self._cond.notify_all()

    @ray.method(concurrency_group=_GROUP_THREADS)
    def run_group(self, trainer_kwargs: dict[str, Any]) -> None:
        """Drive one group's TorchTrainer until the pool closes; if Train gives the
        group up, record that and remove what its controller may have left reserved.

        Here, in a thread of the broker, rather than in a task per group: a task's
        process imports Ray Train and torch (~3 s of CPU) to wait on `fit` for the whole
        sweep; one process waits for all the groups. Like a task it holds no CPU."""
        group = trainer_kwargs["loop"]["group"]
        try:
            _fit_group(trainer_kwargs)
        except Exception:
            self.group_failed(group, traceback.format_exc())
            _remove_left_placement(self.placement(group))
            raise

    def placement(self, group: int) -> Any:
        """The placement group `group`'s workers last started in, or None."""
        return self._placements.get(group)

    def next_trial(self, group: int, timeout: float) -> tuple[str, dict[str, Any]] | None:
        """The next live queued trial for `group`, `_STOP` once closed, None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    return (_STOP, {})
                while self._queue:
                    trial_id = self._queue.popleft()
                    trial = self._trials[trial_id]
                    if self._stopped(trial):
                        trial.state = "done"
                        continue
                    trial.state, trial.group = "running", group
                    self._running[group] = trial_id
                    return trial_id, trial.config
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def config(self, trial_id: str) -> dict[str, Any]:
        """The config of a trial (for a group's ranks other than 0)."""
        with self._cond:
            return self._trials[trial_id].config

    def put_row(self, trial_id: str, row: dict[str, Any]) -> None:
        with self._cond:
            self._trials[trial_id].rows.append(row)
            self._cond.notify_all()

    def should_stop(self, trial_id: str) -> bool:
        with self._cond:
            return self._stopped(self._trials[trial_id])

    def finish(self, trial_id: str, group: int, error: str | None) -> None:
        with self._cond:
            trial = self._trials[trial_id]
            trial.state, trial.error = ("error", error) if error else ("done", None)
            if self._running.get(group) == trial_id:
                del self._running[group]
            self._cond.notify_all()

    def take(
        self, trial_id: str, cursor: int, timeout: float
    ) -> tuple[list[dict[str, Any]], str, str | None]:
        """Rows from `cursor` on, waiting up to `timeout` s for one; (rows, state, error)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            trial = self._trials[trial_id]
            while len(trial.rows) <= cursor and trial.state not in ("done", "error", "lost"):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return trial.rows[cursor:], trial.state, trial.error

    def expect(self, groups: int) -> None:
        with self._cond:
            self._groups = groups

    def wait_ready(self, timeout: float) -> tuple[int, int]:
        """(groups started, groups not given up), once every group not given up has
        started or after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._starts) < self._groups:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return len(self._starts), self._groups

    def group_failed(self, group: int, error: str) -> None:
        """A group's TorchTrainer gave up (more failures than its restarts)."""
        with self._cond:
            self._groups -= 1
            held = self._running.pop(group, None)
            if held is not None:
                self._trials[held].state, self._trials[held].error = "lost", error
            if self._groups <= 0:
                self._gave_up = error
                while self._queue:
                    trial = self._trials[self._queue.popleft()]
                    trial.state, trial.error = "error", f"every pool group failed: {error}"
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def starts(self) -> dict[int, int]:
        """group -> how many times its rank 0 started (1 + the groups Train replaced)."""
        with self._cond:
            return dict(self._starts)

    def _stopped(self, trial: _Trial) -> bool:
        return trial.cancelled or time.monotonic() - trial.renewed > self._lease_s


@dataclass
class TrialContext:
    """What `body` gets besides the config: where its rows go and whether to stop."""

    trial_id: str
    rank: int
    world_size: int
    state: dict[str, Any]
    """Kept by this worker process between trials (banks it fetched, ...)."""
    _broker: Any

    def report(self, row: dict[str, Any]) -> None:
        """Send `row` to the Tune trial (rank 0's; other ranks' rows are dropped)."""
        if self.rank == 0:
            ray.get(self._broker.put_row.remote(self.trial_id, dict(row)))

    def should_stop(self) -> bool:
        """True once Tune stopped the trial. With several ranks every rank must call it
        at the same point (rank 0 asks the broker and broadcasts the answer)."""
        stop = ray.get(self._broker.should_stop.remote(self.trial_id)) if self.rank == 0 else False
        return bool(_broadcast(stop, self.world_size))


def _broadcast(value: Any, world_size: int) -> Any:
    if world_size == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _group_loop(config: dict[str, Any]) -> None:
    """Ray Train worker loop of one pool group: trials until the pool closes."""
    import ray.train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    broker = ray.get_actor(config["broker"], namespace=config["namespace"])
    group = config["group"]
    # Unpickled here, not as the task's argument: a body that cannot be loaded on this
    # node (its module missing) fails the group, which the broker hears of, instead of
    # the task that drives it.
    body = ray.cloudpickle.loads(config["body"])
    if rank == 0:
        ray.get(broker.hello.remote(group, ray.util.get_current_placement_group()))
    state: dict[str, Any] = {}
    while True:
        job = None
        if rank == 0:
            while job is None:
                job = ray.get(broker.next_trial.remote(group, 5.0))
        # Only the id goes through torch.distributed: a config holding Ray ObjectRefs
        # (the trial's bank) must be deserialized by Ray, or `ray.get` on it never returns.
        trial_id = _broadcast(job[0] if rank == 0 else None, world)
        if trial_id == _STOP:
            return
        trial_config = job[1] if rank == 0 else ray.get(broker.config.remote(trial_id))
        ctx = TrialContext(trial_id, rank, world, state, broker)
        error = None
        try:
            body(trial_config, ctx)
        except Exception:
            error = traceback.format_exc()
        if rank == 0:
            ray.get(broker.finish.remote(trial_id, group, error))


def _pool_trainer_class() -> type:
    """TorchTrainer without two of Ray Train's helper actors (Ray >= 2.5x, V2):

    - the PlacementGroupCleaner, a detached actor per run that asks the state API every
      second whether the run's controller is alive and removes the run's placement group
      when the answer is "not found", which it also is when the query misses a live
      controller: on 2 busy cores, two sweeps at once, it removed a live pool group's
      placement group, killing its worker mid-trial (twice in one sweep; the trials
      failed as `PoolWorkerDied`). A pool group runs for the whole sweep, so it would ask
      ~once a second for all of it. Without it nothing is left behind: the controller
      removes its placement group when it ends, and when it dies, `Broker.run_group` removes it
      (`_remove_left_placement`);
    - the DatasetsCallback's DatasetManager, an actor that serves Ray Data shards, which
      the pool's loop never asks for (trials fetch their banks from the cache actor).

    Each is a process per group that imports Ray (~2 s of CPU). Where a Ray has neither
    callback, the plain TorchTrainer."""
    from ray.train.torch import TorchTrainer

    left_out: list[type] = []
    with contextlib.suppress(ImportError):
        from ray.train.v2._internal.callbacks.placement_group_callback import (
            PlacementGroupCleanerCallback,
        )

        left_out.append(PlacementGroupCleanerCallback)
    with contextlib.suppress(ImportError):
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

        left_out.append(DatasetsCallback)
    if not left_out:
        return TorchTrainer

    class PoolTrainer(TorchTrainer):
        def _create_default_callbacks(self) -> list:
            callbacks = super()._create_default_callbacks()
            return [c for c in callbacks if not isinstance(c, tuple(left_out))]

    return PoolTrainer


def _fit_group(kw: dict[str, Any]) -> None:
    """One group's TorchTrainer, run until its loop returns (the pool closed)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig

    trainer = _pool_trainer_class()(
        _group_loop,
        train_loop_config=kw["loop"],
        scaling_config=ScalingConfig(
            num_workers=kw["workers"], use_gpu=kw["use_gpu"], resources_per_worker=kw["resources"]
        ),
        run_config=RunConfig(
            name=kw["name"],
            storage_path=kw["storage_path"],
            failure_config=FailureConfig(max_failures=kw["restarts"]),
        ),
    )
    trainer.fit()


def _remove_left_placement(placement: Any) -> None:
    """Remove a failed group's placement group if it is still there: a controller that
    died (SIGKILL, out of memory) leaves it reserved until the sweep's job ends, which
    Ray Train's PlacementGroupCleaner would have removed (`_pool_trainer_class`). One
    that its controller removed on the way out is left alone."""
    from ray.util.placement_group import placement_group_table, remove_placement_group

    if placement is None:
        return
    with contextlib.suppress(Exception):  # removed meanwhile: nothing to do
        if placement_group_table(placement).get("state") == "CREATED":
            remove_placement_group(placement)


def pool_trainable(config: dict[str, Any], broker_name: str, namespace: str) -> None:
    """Tune function trainable: run `config` on the pool and report each row."""
    from ray import tune

    broker = ray.get_actor(broker_name, namespace=namespace)
    relay(broker, tune.get_context().get_trial_id(), dict(config), tune.report)


def relay(
    broker: Any,
    trial_id: str,
    config: dict[str, Any],
    report: Callable[[dict[str, Any]], None],
) -> None:
    """Submit `config` as `trial_id`, `report` each row the pool streams back, return
    when the body returned. Raises `PoolWorkerDied` when the group running it died, and
    RuntimeError (with the body's traceback) when the body raised. The lease on the work
    is renewed from a thread until this returns (or its process dies)."""
    ray.get(broker.submit.remote(trial_id, config))
    done = threading.Event()

    def heartbeat() -> None:  # dies with the actor when Tune stops the trial
        while not done.wait(HEARTBEAT_S):
            broker.renew.remote(trial_id)

    threading.Thread(target=heartbeat, daemon=True).start()
    cursor = 0
    try:
        while True:
            rows, state, error = ray.get(broker.take.remote(trial_id, cursor, 1.0))
            for row in rows:
                report(row)
            cursor += len(rows)
            if state == "lost":
                raise PoolWorkerDied(error)
            if state == "error":
                raise RuntimeError(f"the pool's body raised:\n{error}")
            if state == "done" and not rows:
                return
    finally:
        done.set()
        broker.cancel.remote(trial_id)


def _our_pending_placements() -> int:
    """This job's placement groups that wait for resources (PENDING). Before Tune starts
    they are the pool's groups' (Train's controllers, actors of this job, create them);
    a placement group's ID ends with its job's ID."""
    from ray.util import placement_group_table

    job = ray.get_runtime_context().get_job_id()
    return sum(
        1
        for pg_id, pg in placement_group_table().items()
        if pg.get("state") == "PENDING" and pg_id.endswith(job)
    )


def pool_broker_name(pool_name: str) -> str:
    """The name of the broker actor of the pool called `pool_name`."""
    return f"{pool_name}-broker"


class PoolTrials:
    """A started pool: `groups` TorchTrainers running `body` for Tune trials.

    Use as a context manager around `Tuner.fit()`, and give Tune `pool.trainable()`
    (with `max_concurrent_trials` = `groups`, or trials wait in the broker's queue),
    after `wait_ready` so that the first trials start on different groups.
    """

    def __init__(
        self,
        body: Callable[[dict[str, Any], TrialContext], None],
        groups: int,
        storage_path: str,
        workers_per_group: int = 1,
        resources_per_worker: dict[str, float] | None = None,
        use_gpu: bool = False,
        name: str = "jepa-pool",
        namespace: str = "jepa-sweeps",
        lease_s: float = 5.0,
        restarts: int = 10,
    ) -> None:
        self.name, self.namespace, self.groups = name, namespace, groups
        # TRAIN_ENV in the broker's environment: it calls `fit`, and Train passes that
        # process's environment on to the controllers and workers.
        self.broker = Broker.options(
            name=pool_broker_name(name),
            namespace=namespace,
            runtime_env={"env_vars": dict(TRAIN_ENV)},
        ).remote(lease_s)
        ray.get(self.broker.expect.remote(groups))
        loop = {
            "broker": pool_broker_name(name),
            "namespace": namespace,
            "body": ray.cloudpickle.dumps(body),
        }
        self._groups = [
            self.broker.run_group.remote(
                {
                    "loop": {**loop, "group": g},
                    "workers": workers_per_group,
                    "use_gpu": use_gpu,
                    "resources": resources_per_worker or {"CPU": 1},
                    "name": f"{name}-group{g}-{int(time.time())}",
                    "storage_path": storage_path,
                    "restarts": restarts,
                }
            )
            for g in range(groups)
        ]

    def trainable(self) -> Callable[[dict[str, Any]], None]:
        from ray import tune

        return tune.with_parameters(
            pool_trainable, broker_name=pool_broker_name(self.name), namespace=self.namespace
        )

    def starts(self) -> dict[int, int]:
        """group -> times its rank 0 started: 1 each, plus one per replaced group."""
        return ray.get(self.broker.starts.remote())

    def wait_ready(self, timeout: float, poll_s: float = 1.0) -> int:
        """Wait until every group has started (those Train gave up excepted), at most
        `timeout` s, and not for a group whose placement waits for resources that
        others hold; returns how many have started.

        Before the first trial: a group that is up takes every queued trial while the
        others still start, so trials would run one after another, all on the first
        node, even though Tune runs `groups` at once (the two-node test saw it on a
        loaded machine). But on a cluster shared with other sweeps a group may wait for
        their CPUs for minutes: once every group whose placement was granted has started
        (at least one), and the others' placement groups are PENDING, for two polls in a
        row, the trials start on the groups that are up."""
        deadline = time.monotonic() + timeout
        pending_polls = 0
        while True:
            left = deadline - time.monotonic()
            started, expected = ray.get(self.broker.wait_ready.remote(max(0.0, min(poll_s, left))))
            if started >= expected or left <= poll_s:
                return started
            # Every group but those whose placement waits has started (two polls in a row).
            settled = started and started >= expected - _our_pending_placements()
            pending_polls = pending_polls + 1 if settled else 0
            if pending_polls >= 2:
                return started

    def close(self, timeout: float = 60.0) -> None:
        """Let every group finish its loop and its TorchTrainer return."""
        ray.get(self.broker.close.remote())
        ray.wait(self._groups, num_returns=len(self._groups), timeout=timeout)
        ray.kill(self.broker)

    def __enter__(self) -> PoolTrials:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        # Ctrl-C or an error: the groups end with this driver (or when the caller stops
        # Ray); waiting here for a group to end its trial would only delay that.
        with contextlib.suppress(Exception):
            self.broker.close.remote()
