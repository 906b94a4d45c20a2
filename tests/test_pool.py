"""sweeps/pool.py: Tune trials run by long-lived Ray Train worker groups.

One local Ray cluster (3 logical CPUs) and one pool of two groups for the module, as a sweep
has one pool for all its trials (a group takes ~8 s to start here); each test runs a
small Tune experiment through it with a trivial body (a few sleeps and rows), so what is
checked is the pool's plumbing: rows in order, stopping, a killed worker (it replaces a
worker), a killed controller (last: it leaves the pool a group short). The unloadable
body gets a pool of its own.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

STEPS = 4


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray import cloudpickle

    from sweeps.cluster import start_local  # ray.init, again if Ray's 30 s start-up passed

    # The bodies below live in this test module, which the pool's workers cannot
    # import (pytest put tests/ on the path of this process only): ship them by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # 3 logical CPUs on the 2 cores: the module's pool holds 2 (one per group) for all the
    # tests, the unloadable body's pool of one group needs a third.
    start_local(num_cpus=3, include_dashboard=False, namespace="test-pool", log_to_driver=False)
    yield
    ray.shutdown()


def counting_body(config: dict, ctx) -> None:
    """Reports `steps` rows numbered 0..steps-1, with the worker's pid; stops when told
    (and leaves a file saying so); kills its own process once if `kill_in` names a
    folder without a marker in it (a pool worker SIGKILLed mid-trial)."""
    ctx.state["trials"] = ctx.state.get("trials", 0) + 1
    for step in range(config["steps"]):
        if ctx.should_stop():
            Path(config["flags"], f"stopped-{config['x']}").write_text(str(step))
            return
        ctx.report({"step": step, "x": config["x"], "worker_pid": os.getpid()})
        marker = Path(config["flags"], f"killed-{config['x']}")
        if config.get("kill") and step == 1 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(config.get("sleep", 0.05))
    ctx.report(
        {
            "step": config["steps"],
            "x": config["x"],
            "worker_pid": os.getpid(),
            "worker_trials": ctx.state["trials"],
        }
    )


def _refuse():
    raise RuntimeError("this body cannot be loaded on a worker")


class Unloadable:
    """A body whose unpickling raises, as one whose module a node lacks."""

    def __reduce__(self):
        return (_refuse, ())

    def __call__(self, config: dict, ctx) -> None:
        pass


def make_pool(tmp_path: Path, name: str, body=counting_body, **kwargs):
    from sweeps.pool import PoolTrials

    kwargs = {"groups": 2, "lease_s": 3.0, **kwargs}
    return PoolTrials(body, storage_path=str(tmp_path / "train"), name=name, **kwargs)


def with_defaults(flags: Path, **extra):
    return {"steps": STEPS, "flags": str(flags), **extra}


def grid(tmp_path: Path, xs, **extra):
    from ray import tune

    flags = tmp_path / "flags"
    flags.mkdir(exist_ok=True)
    return {"x": tune.grid_search(list(xs)), **with_defaults(flags, **extra)}


@pytest.fixture(scope="module")
def pool(cluster, tmp_path_factory):
    """The module's pool of two groups running `counting_body`, once both have started
    (so that a test counting restarts sees every first start before it begins)."""
    with make_pool(tmp_path_factory.mktemp("pool"), "shared") as started:
        assert started.wait_ready(300) == 2, f"the pool's groups did not start: {started.starts()}"
        assert len(started.starts()) == 2
        yield started


def tune_through_pool(tmp_path, pool, param_space, **run_kwargs):
    """Tune `param_space` through `pool`; returns the results and, after them, the
    pool's starts per group (cumulative over the module's tests)."""
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(pool.trainable(), {"cpu": 0, "memory": 64 * 1024**2}),
        param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0, **run_kwargs),
    )
    results = tuner.fit()
    return results, pool.starts()


def rows_of(result) -> list[dict]:
    df = result.metrics_dataframe
    return df.to_dict("records") if df is not None else []


def test_rows_arrive_in_order_and_workers_outlive_trials(pool, tmp_path):
    results, starts = tune_through_pool(tmp_path, pool, grid(tmp_path, range(6)))
    assert results.num_errors == 0 and len(results) == 6
    pids = set()
    for result in results:
        steps = [int(r["step"]) for r in rows_of(result)]
        assert steps == list(range(STEPS + 1)), steps  # every row, in order, once
        pids |= {int(r["worker_pid"]) for r in rows_of(result)}
    # Six trials, two groups of one worker each: two processes ran all of them (and the
    # trials of the tests before, which kill no worker).
    assert len(pids) == 2, pids
    assert starts == {0: 1, 1: 1}
    last = [rows_of(r)[-1]["worker_trials"] for r in results]
    assert sum(max(0, n - 1) for n in last) > 0  # some worker kept state between trials


def test_a_stopped_trial_stops_its_work(pool, tmp_path):
    from ray import tune

    def stop(trial_id: str, result: dict) -> bool:  # x=0 is stopped at its second row
        return result["x"] == 0 and result["step"] >= 1

    space = grid(tmp_path, [0, 1, 2])
    space["steps"] = tune.sample_from(lambda spec: 200 if spec.config.x == 0 else STEPS)
    results, _ = tune_through_pool(tmp_path, pool, space, stop=stop)
    assert results.num_errors == 0
    by_x = {int(r.config["x"]): r for r in results}
    assert int(rows_of(by_x[0])[-1]["step"]) < 10  # Tune stopped it early
    # ... and the body saw should_stop long before its 200 steps (10 s) were done.
    stopped_at = int((tmp_path / "flags" / "stopped-0").read_text())
    assert stopped_at < 150, stopped_at
    for x in (1, 2):  # the others ran to the end
        assert int(rows_of(by_x[x])[-1]["step"]) == STEPS


def test_a_killed_pool_worker_fails_its_trial_and_is_replaced(pool, tmp_path):
    from ray import tune

    space = grid(tmp_path, range(4))
    space["kill"] = tune.sample_from(lambda spec: spec.config.x == 2)
    before = pool.starts()
    results, starts = tune_through_pool(
        tmp_path, pool, space, failure_config=tune.FailureConfig(max_failures=1)
    )
    assert results.num_errors == 0 and len(results) == 4
    killed = int((tmp_path / "flags" / "killed-2").read_text())
    for result in results:
        steps = [int(r["step"]) for r in rows_of(result)]
        assert steps[-1] == STEPS
    # The retried trial ran on a new process; the dead one was replaced once.
    retried = next(r for r in results if int(r.config["x"]) == 2)
    assert int(rows_of(retried)[-1]["worker_pid"]) != killed
    assert sorted(starts[g] - before.get(g, 0) for g in starts) == [0, 1]


def _alive_actors(class_name: str) -> list[dict]:
    """The cluster's live actors of `class_name` (from the GCS: no dashboard needed)."""
    import ray._private.state

    table = ray._private.state.actors().values()
    return [a for a in table if a["ActorClassName"] == class_name and a["State"] == "ALIVE"]


def _created_placement_groups() -> set[str]:
    import ray

    return {k for k, pg in ray.util.placement_group_table().items() if pg["state"] == "CREATED"}


def test_a_killed_controller_leaves_no_placement_group_behind(pool):
    """The groups run without Ray Train's PlacementGroupCleaner (it removed live groups'
    placement groups on a busy machine: `sweeps.pool._pool_trainer_class`). What it was
    for still holds: a group whose controller is killed with SIGKILL does not keep its
    placement group reserved (Ray would until the job ends; `Broker.run_group` removes it).
    Last of the shared pool's tests: it leaves the pool one group short."""
    assert len(_alive_actors("TrainController")) == 2
    assert _alive_actors("PlacementGroupCleaner") == []
    assert _alive_actors("DatasetManager") == []  # the loop reads no Ray Data
    before = _created_placement_groups()
    assert len(before) == 2, before
    os.kill(_alive_actors("TrainController")[0]["Pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while len(_created_placement_groups()) != 1:
        assert time.monotonic() < deadline, f"placement groups left: {_created_placement_groups()}"
        time.sleep(0.5)
    assert _created_placement_groups() < before


def test_trials_fail_instead_of_waiting_when_no_group_can_start(cluster, tmp_path):
    with make_pool(tmp_path, "unloadable", body=Unloadable(), groups=1, restarts=1) as own:
        # Its group never starts: waiting for it ends at the timeout, with none ready ...
        started = time.monotonic()
        assert own.wait_ready(0.5) == 0
        assert 0.5 <= time.monotonic() - started < 30
        # ... or, sooner than the timeout, once Train gave the group up (two failed starts).
        started = time.monotonic()
        assert own.wait_ready(600) == 0
        assert time.monotonic() - started < 300
        results, starts = tune_through_pool(tmp_path, own, grid(tmp_path, range(2)))
    assert results.num_errors == 2
    for result in results:
        assert "every pool group failed" in str(result.error) or "cannot be loaded" in str(
            result.error
        )
    assert starts == {}  # no group's loop ever ran


def test_the_wait_for_groups_ends_when_one_waits_for_cpus_held_elsewhere(cluster, tmp_path):
    """Last: a pool of three groups where two CPUs are free (the shared pool holds the
    third): two groups start, the third's placement waits, and `wait_ready` returns
    once both started instead of at its timeout, so the trials start on the two (a first
    version returned when one was up: CI's load showed it)."""
    import ray

    assert ray.available_resources().get("CPU", 0) == 2.0, ray.available_resources()
    own = make_pool(tmp_path, "short", groups=3)
    try:
        started = time.monotonic()
        assert own.wait_ready(600) == 2
        assert time.monotonic() - started < 300
    finally:
        own.close(timeout=5)
