"""The GPU path, checked without a GPU where that can be done honestly.

`tests.fake_cuda` gives the CPU a second device that refuses mixed-device operations as
PyTorch does on a GPU, so the training loop, the probes and the evaluation run here with
`device="cuda"` and fail where they would mix devices on a real GPU. What needs a real
GPU (bf16 autocast, loader workers into pinned memory, Ray's GPU placement) is
`benchmarks/gpu_check.sh`'s.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jepa.config import OBJECTIVES, TrialConfig
from jepa.evaluate import evaluate_representation
from jepa.features import FeatureBank
from jepa.probe import knn_accuracy, linear_probe
from jepa.train import EvalSet, epoch_metrics, train_predictor
from jepa.views import CachedViewPairs
from tests.conftest import ROOT
from tests.fake_cuda import fake_cuda, on_fake_cuda
from tests.shared_sweeps import Scenario

N, M, D, CLASSES = 48, 24, 16, 4


def clustered(seed: int = 0) -> FeatureBank:
    """Embeddings in CLASSES clusters, so that probes and kNN score well above chance."""
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(CLASSES, D, generator=g)
    train_y, eval_y = torch.arange(N) % CLASSES, torch.arange(M) % CLASSES
    train = centres[train_y] + torch.randn(N, D, generator=g)
    return FeatureBank(
        views=train[:, None] + 0.3 * torch.randn(N, 4, D, generator=g),
        train_clean=train,
        train_labels=train_y,
        eval_clean=centres[eval_y] + torch.randn(M, D, generator=g),
        eval_labels=eval_y,
        val_clean=centres[eval_y] + torch.randn(M, D, generator=g),
        val_labels=eval_y,
    )


# The imports of what the fixes added stay inside their tests, so that the others run
# (and fail) on the code before the fixes.


# --- the simulated device itself ------------------------------------------------------------


def test_fake_cuda_refuses_what_a_gpu_refuses():
    with fake_cuda():
        x = torch.randn(4).cuda()
        assert x.device.type == "cuda" and (x * 2).device.type == "cuda"
        assert x.cpu().device.type == "cpu" and on_fake_cuda(x)  # .cpu() copies
        with pytest.raises(RuntimeError, match="same device"):
            x + torch.randn(4)
        with pytest.raises(RuntimeError, match="same device"):
            torch.zeros(2, 3).scatter_add_(
                1, torch.zeros(2, 1, dtype=torch.long).cuda(), x[:2, None]
            )
        with pytest.raises(TypeError, match="numpy"):
            np.asarray(x)
        assert torch.equal((x + torch.tensor(1.0)).cpu(), x.cpu() + 1)  # a CPU scalar may join
        assert x[torch.tensor([0, 1])].device.type == "cuda"  # CPU indices into a GPU tensor
        module = torch.nn.Linear(4, 2).to("cuda")
        assert module.weight.device.type == "cuda"
        with pytest.raises(RuntimeError, match="same device"):
            module(torch.randn(3, 4))
        assert module.cpu()(torch.randn(3, 4)).device.type == "cpu"


# --- item 1: diagnostics, probes and evaluation with tensors from two devices --------------


@pytest.mark.parametrize("where", ["labels", "embeddings", "eval"])
def test_knn_accuracy_with_inputs_on_two_devices(where):
    bank = clustered()
    args = [bank.train_clean, bank.train_labels, bank.eval_clean, bank.eval_labels]
    expected = knn_accuracy(*args)
    assert expected > 0.9
    with fake_cuda():
        moved = {"labels": (1, 3), "embeddings": (0, 2), "eval": (2, 3)}[where]
        for i in moved:
            args[i] = args[i].to("cuda")
        assert knn_accuracy(*args) == pytest.approx(expected)


def test_linear_probe_takes_tensors_from_a_gpu():
    bank = clustered()
    expected = linear_probe(bank.train_clean, bank.train_labels, bank.eval_clean, bank.eval_labels)
    with fake_cuda():
        got = linear_probe(
            bank.train_clean.cuda(),
            bank.train_labels.cuda(),
            bank.eval_clean.cuda(),
            bank.eval_labels.cuda(),
        )
    assert got == expected and got.accuracy > 0.9


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_training_on_a_gpu_runs_its_per_epoch_diagnostics(objective):
    """Before the fix the labels went to the GPU with the embeddings and the kNN of the
    first epoch met CPU embeddings with GPU labels: every GPU trial crashed there."""
    bank = clustered()
    cfg = TrialConfig(objective=objective, max_epochs=2, batch_size=16, seed=0)
    evalset = EvalSet(bank.train_clean, bank.train_labels, bank.eval_clean, bank.eval_labels)
    on_cpu = train_predictor(cfg, CachedViewPairs(bank.views), evalset, stop_on_collapse=False)
    with fake_cuda():
        result = train_predictor(
            cfg, CachedViewPairs(bank.views), evalset, device="cuda", stop_on_collapse=False
        )
        assert next(result.predictor.parameters()).device.type == "cuda"
        scores = evaluate_representation(result.predictor, bank)
    assert len(result.history) == 2
    # The same arithmetic on the same device memory: the same curves.
    for got, want in zip(result.history, on_cpu.history, strict=True):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert 0.0 <= scores["probe_accuracy"] <= 1.0


def test_epoch_metrics_with_gpu_embeddings_and_cpu_labels():
    bank = clustered()
    predictor = torch.nn.Identity()
    with fake_cuda():
        evalset = EvalSet(
            bank.train_clean.cuda(), bank.train_labels, bank.eval_clean.cuda(), bank.eval_labels
        )
        row = epoch_metrics(predictor, evalset)
    assert row["knn_accuracy"] > 0.9


def test_evaluating_a_predictor_left_on_the_gpu():
    """A predictor trained on a GPU meets the bank, which lives on the CPU."""
    bank = clustered()
    predictor = torch.nn.Linear(D, D)
    expected = evaluate_representation(predictor, bank)
    with fake_cuda():
        got = evaluate_representation(predictor.to("cuda"), bank)
    assert got == pytest.approx(expected)


# --- item 2: several DDP ranks on one GPU --------------------------------------------------


@pytest.mark.parametrize(
    "workers, gpus, ok",
    [(2, 0.5, False), (2, 1, False), (4, 2, False), (3, 4.5, False), (2, 2, True), (1, 0.25, True)],
)
def test_several_workers_sharing_a_gpu_is_bad_input(
    monkeypatch, capsys, tmp_path, workers, gpus, ok
):
    from jepa.errors import UserInputError
    from sweeps.cli import main
    from sweeps.gpus import check_gpu_sharing

    if ok:
        check_gpu_sharing(workers, gpus)
        return
    with pytest.raises(UserInputError, match="Duplicate GPU"):
        check_gpu_sharing(workers, gpus)
    # Through the CLI: exit 2, one line, before anything starts (also on a machine
    # without a GPU, where the GPU count would otherwise be the complaint).
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code = main(
        [
            "--space",
            "predictor_width",
            "--workers-per-trial",
            str(workers),
            "--gpus-per-trial",
            f"{gpus:g}",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--storage",
            str(tmp_path / "ray"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "--workers-per-trial 1" in err[0] and "NCCL" in err[0]
    assert not (tmp_path / "mlflow.db").exists() or _runs(tmp_path / "mlflow.db") == 0


def _runs(db: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        return conn.execute("select count(*) from runs").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


# --- item 3: the cache's GPU task gives its process back -----------------------------------


def test_gpu_embedding_task_does_not_keep_its_worker():
    from sweeps.feature_cache import _compute_on_gpu

    options = _compute_on_gpu._default_options
    assert options["max_calls"] == 1 and options["num_gpus"] > 0


# --- item 4: a CPU bank and a GPU bank are two cache entries -------------------------------


def test_cpu_and_gpu_banks_do_not_share_a_cache_key(tmp_path):
    from jepa.features import FORMAT_VERSION, FeatureKey, FeatureStore, compute_mode

    assert FORMAT_VERSION >= 3
    modes = {compute_mode(d) for d in ("cpu", "cuda", "cuda:1", "mps")}
    assert compute_mode("cuda:0") == compute_mode("cuda:1")  # the same GPU kind
    assert len(modes) == 3
    assert "bf16" in compute_mode("cuda") and "fp32" in compute_mode("cpu")
    key = FeatureKey("w" * 64, "target", "m" * 64, 0.5, 2, 32, 0, compute_mode("cpu"))
    gpu = dataclasses.replace(key, compute=compute_mode("cuda"))
    store = FeatureStore(tmp_path)
    store.save(key, clustered())
    assert store.load(gpu) is None and store.load(key) is not None


def test_callers_key_their_banks_by_the_device_that_computes_them():
    """Each place that builds a FeatureKey names the compute mode of its device."""
    for path in ("sweeps/single.py", "sweeps/feature_cache.py", "benchmarks/objectives_table.py"):
        text = (ROOT / path).read_text()
        assert text.count("FeatureKey(") == text.count("compute=compute_mode("), path


# --- item 5: the loader fits in /dev/shm --------------------------------------------------


def test_loader_workers_fit_in_shared_memory(tmp_path, capsys):
    """A container's 64 MB /dev/shm: the default loader falls back to fewer workers (none
    here) and says why; workers asked for explicitly get an error naming /dev/shm."""
    from jepa.features import loader_workers

    free = shutil.disk_usage(tmp_path).free
    batch = free // 3  # one worker's 2 prefetched batches would take 2/3 of the free space
    assert loader_workers(None, batch, shm=tmp_path) == 0
    assert f"{tmp_path} has" in capsys.readouterr().out
    assert loader_workers(None, 1, shm=tmp_path) == min(8, os.cpu_count() or 1)
    assert loader_workers(1, free // 10, shm=tmp_path) == 1
    with pytest.raises(RuntimeError, match=f"{tmp_path} has .* MB free"):
        loader_workers(2, batch, shm=tmp_path)
    assert loader_workers(0, batch, shm=tmp_path) == 0
    assert loader_workers(8, 1, shm=tmp_path / "absent") == 8  # no /dev/shm: not Linux


def _gpu_check_without_a_gpu(folder: Path, cache: Path, cluster: list[str]):
    """`benchmarks/gpu_check.sh` as on a machine without a GPU (it starts what it needs:
    `folder`, `cache` and `cluster` unused)."""
    return subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable},
    )


# A demo run, `sweeps.single train`, the rest small: run with the session's shared
# sweeps (tests/shared_sweeps.py), one process at a time on one core most of its time.
GPU_CHECK = Scenario("gpu-check-cpu-parts", _gpu_check_without_a_gpu, weight=3)


@pytest.mark.slow
@pytest.mark.shared_sweep(GPU_CHECK)
def test_gpu_check_runs_its_cpu_parts_here(shared_sweeps):
    """`benchmarks/gpu_check.sh` on a machine without a GPU: exit 0, the rest skipped."""
    proc = shared_sweeps[GPU_CHECK.name]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no GPU: skipped" in proc.stdout


def test_gpu_check_counts_a_bare_folder_as_not_installed(tmp_path, monkeypatch):
    """A folder without `__init__.py` on the path is a namespace package to `find_spec`:
    the project's own `mlflow/` (server scripts) made MLflow look installed on the H200,
    where it is not. `have` counts real modules only."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    (tmp_path / "bare_folder_xyz").mkdir()
    (tmp_path / "real_module_xyz.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not gpu_check.have("bare_folder_xyz")
    assert gpu_check.have("real_module_xyz")
    assert gpu_check.have("json") and not gpu_check.have("no_such_module_xyz")
