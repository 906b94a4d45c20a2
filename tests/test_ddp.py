"""DDP: VICReg's statistics over the whole batch whatever the number of workers (a
2-process gloo group on CPU, no Ray), and `--workers-per-trial 2`: one trial trained by
two Ray Train workers with DDP, logged like any other trial."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from jepa import metrics as M
from jepa.config import TrialConfig
from jepa.objectives import build_objective
from jepa.predictor import HierarchicalPredictor

DIM, WIDTH, EXPANDER = 12, 8, 24
# Unequal halves: a ragged last batch gives ranks batches of different sizes.
BATCH, FIRST_HALF = 15, 8


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, DIM, generator=g)
    return x + 0.3 * torch.randn(BATCH, DIM, generator=g), x


def _objective(name: str) -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights in every process
    cfg = TrialConfig(objective=name, expander_width=EXPANDER)
    return build_objective(name, HierarchicalPredictor(DIM, WIDTH), cfg)


def _grads(objective: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: p.grad.detach().clone() for n, p in objective.named_parameters() if p.grad is not None
    }


def _worker(rank: int, world: int, port: int, name: str, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.set_num_threads(1)
        objective = _objective(name)
        model = DistributedDataParallel(objective)
        x1, x2 = _batch()
        part = slice(0, FIRST_HALF) if rank == 0 else slice(FIRST_HALF, BATCH)
        loss = model(x1[part], x2[part])
        loss.backward()
        torch.save({"loss": loss.detach(), "grads": _grads(objective)}, Path(out) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vicreg_gives_the_same_loss_and_gradients_on_1_and_2_workers(tmp_path):
    """1 worker on a batch of 15 and 2 workers (DDP, gloo) on its halves of 8 and 7: the
    same loss on every rank and the same averaged gradients, because VICReg's terms and
    the expander's BatchNorm see the batch gathered from both ranks."""
    objective = _objective("vicreg")
    x1, x2 = _batch()
    want = objective(x1, x2)
    want.backward()
    want_grads = _grads(objective)
    mp.spawn(_worker, args=(2, _free_port(), "vicreg", str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["loss"], want.detach(), rtol=1e-5, atol=1e-5)
        assert got["grads"].keys() == want_grads.keys()
        for name, grad in want_grads.items():
            torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


# One trial on one pool group of two ranks: the session's sweep of the learning_rate
# space (tests/shared_sweeps.py), which the space test reads too.
@pytest.mark.slow
@pytest.mark.shared_sweep("learning_rate")
def test_two_worker_ddp_trial_on_cpu(shared_sweep):
    # Imported here: the spawned workers above import this module, and need no MLflow.
    from mlflow.tracking import MlflowClient

    proc, sweep_dirs = shared_sweep.proc, shared_sweep.dirs
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # Ray Train's own lines (in the sweep's log file, whose path the console names): a
    # process group of two ranks, the model wrapped in DDP.
    (sweep_log,) = sweep_dirs.storage.glob("*/sweep.log")
    assert str(sweep_log) in proc.stdout
    train_lines = sweep_log.read_text()
    assert "world_size=2" in train_lines and "DistributedDataParallel" in train_lines
    assert "world_size=2" not in proc.stdout  # the console has the trial lines only
    assert "Traceback" not in log  # none on a successful run, shutdown included
    assert re.search(r"trial \S+ ended: \w+, val_probe_accuracy [0-9.]+", proc.stdout)
    client = MlflowClient(tracking_uri=sweep_dirs.tracking_uri)
    exp = client.get_experiment_by_name("jepa-sweeps")
    trials = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags[M.TAG_ROLE] == M.ROLE_TRIAL
    ]
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"
    run = trials[0]
    assert 0 <= run.data.metrics[M.PROBE_ACCURACY] <= 1
    # Only rank 0 logs: one train_loss point per epoch, not one per worker.
    steps = [m.step for m in client.get_metric_history(run.info.run_id, M.TRAIN_LOSS)]
    assert steps == [1, 2]


def test_every_rank_takes_the_same_number_of_steps():
    """A 1-image tail used to be dealt to one rank and skipped there: that rank took one
    step fewer, and DDP's all-reduce would have waited for it forever."""
    from jepa.train import steps_per_epoch

    for n in range(2, 700):
        for world in (2, 3, 4):
            steps = {steps_per_epoch(n, 128, world, rank) for rank in range(world)}
            assert len(steps) == 1, (n, world, steps)
