"""Bad input: one clear line on stderr, exit code 2, and no MLflow run in the store.

The cases call the CLI's `main` in this process (`sweeps/run.py` only passes its return
value to `sys.exit`; tests/test_cli.py runs the script itself): starting a Python that
imports torch, Ray and MLflow for each of a dozen cases would cost minutes. Every check
runs before Ray starts, so none of these starts a cluster.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from pathlib import Path

import pytest
import torch

VALID_SPACE = """\
description: valid
params:
  predictor_width:
    choice: [64, 128]
"""


@pytest.fixture
def call(sweep_dirs, main_in_process):
    """Run `main([...flags, *args])` into the test's store; returns (code, stderr lines,
    seconds)."""

    def run(*args: str, space: str | None = "predictor_width", flags: bool = True):
        argv = (["--space", space] if space else []) + list(args)
        if flags:
            argv += sweep_dirs.flags()
        start = time.monotonic()
        code, _, err = main_in_process(argv)
        return code, err, time.monotonic() - start

    return run


def _no_runs(sweep_dirs) -> None:
    db = sweep_dirs.root / "mlflow.db"
    if db.exists():
        conn = sqlite3.connect(db)
        try:
            count = conn.execute("select count(*) from runs").fetchone()[0]
        except sqlite3.OperationalError:  # no tables: nothing was ever logged
            count = 0
        finally:
            conn.close()
        assert count == 0, f"{count} MLflow run(s) left behind"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def _assert_one_line(code: int, err: list[str], *fragments: str) -> None:
    assert code == 2, err
    assert len(err) == 1, err
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])


def _space_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def test_unknown_space(call, sweep_dirs):
    code, err, _ = call(space="no_such_space")
    _assert_one_line(code, err, "unknown space 'no_such_space'", "predictor_width")
    _no_runs(sweep_dirs)


def test_space_file_that_does_not_exist(call, sweep_dirs, tmp_path):
    code, err, _ = call(space=str(tmp_path / "missing.yaml"))
    _assert_one_line(code, err, "missing.yaml: no such file")
    _no_runs(sweep_dirs)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("params: {predictor_width: {choice: [64, 128]}\n", "malformed YAML"),
        ("params:\n  predictor_widht:\n    choice: [64]\n", "unknown key params.predictor_widht"),
        ("params:\n  lr:\n    loguniform: []\n", "empty"),
        ("params:\n  lr:\n    loguniform: [1.0e-2, 1.0e-4]\n", "reversed range"),
        ("params:\n  lr:\n    uniform: [0.01, 0.01]\n", "empty or reversed range"),
        ("params:\n  lr: {choice: [0.1]}\nfixd: {max_epochs: 1}\n", "unknown key 'fixd'"),
    ],
    ids=["malformed-yaml", "unknown-key", "empty-list", "reversed", "empty-range", "top-key"],
)
def test_bad_space_file(call, sweep_dirs, tmp_path, text, fragment):
    path = _space_file(tmp_path, text)
    code, err, _ = call(space=path)
    _assert_one_line(code, err, path, fragment)
    _no_runs(sweep_dirs)


def test_missing_checkpoint(call, sweep_dirs, tmp_path):
    code, err, _ = call("--checkpoint", str(tmp_path / "IN1K-vit.h.14-300e.pth.tar"))
    _assert_one_line(code, err, "--checkpoint", "no such file")
    _no_runs(sweep_dirs)


def test_file_that_is_not_a_checkpoint(call, sweep_dirs, tmp_path):
    fake = tmp_path / "fake.pth.tar"
    fake.write_bytes(os.urandom(4096))
    code, err, _ = call("--checkpoint", str(fake))
    _assert_one_line(code, err, str(fake), "not a readable PyTorch file")
    _no_runs(sweep_dirs)


def test_zip_that_is_not_a_checkpoint(call, sweep_dirs, tmp_path):
    import zipfile

    fake = tmp_path / "fake.pth.tar"
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("readme.txt", "not a checkpoint")
    code, err, _ = call("--checkpoint", str(fake))
    _assert_one_line(code, err, str(fake), "a zip archive", "but not a checkpoint")
    _no_runs(sweep_dirs)


def test_missing_data_folder(call, sweep_dirs, tmp_path):
    code, err, _ = call("--data", str(tmp_path / "tiny-imagenet-200"))
    _assert_one_line(code, err, "--data", "no such folder")
    _no_runs(sweep_dirs)


def test_data_folder_in_the_wrong_layout(call, sweep_dirs, tmp_path):
    folder = tmp_path / "images"
    (folder / "n01443537").mkdir(parents=True)
    code, err, _ = call("--data", str(folder))
    _assert_one_line(code, err, "not a Tiny-ImageNet-200 folder", "wnids.txt")
    _no_runs(sweep_dirs)


def test_more_images_per_class_than_the_data_has(call, sweep_dirs):
    code, err, _ = call("--images-per-class", "1000")
    _assert_one_line(code, err, "--images-per-class 1000 is more than the data has")
    _no_runs(sweep_dirs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpus_per_trial_without_a_gpu(call, sweep_dirs):
    code, err, _ = call("--gpus-per-trial", "1")
    _assert_one_line(code, err, "--gpus-per-trial 1", "no GPU")
    _no_runs(sweep_dirs)


def test_gpu_sweep_of_an_unlisted_aug_strength(call, sweep_dirs, tmp_path):
    """Each level's bank is computed on the GPU before the trials take it: a range of
    levels cannot be (said before the missing GPU, which this machine lacks)."""
    path = _space_file(tmp_path, "params:\n  aug_strength:\n    uniform: [0.2, 0.8]\n")
    code, err, _ = call("--gpus-per-trial", "1", space=path)
    _assert_one_line(code, err, "aug_strength must be a choice of levels", "--feature-cache off")
    _no_runs(sweep_dirs)


def test_unreachable_ray_address_fails_fast(call, sweep_dirs):
    port = _closed_port()
    code, err, elapsed = call("--address", f"127.0.0.1:{port}")
    _assert_one_line(code, err, f"--address 127.0.0.1:{port}", "cannot reach a Ray cluster")
    assert elapsed < 30
    _no_runs(sweep_dirs)


def test_unreachable_tracking_uri_fails_fast(call, sweep_dirs):
    port = _closed_port()
    uri = f"http://127.0.0.1:{port}"
    code, err, elapsed = call(
        "--tracking-uri",
        uri,
        "--storage",
        str(sweep_dirs.storage),
        "--cache-dir",
        str(sweep_dirs.cache_dir),
        flags=False,
    )
    _assert_one_line(code, err, f"cannot reach the MLflow tracking store {uri}")
    assert elapsed < 60  # MLflow's own retries would take minutes
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the fast check is undone


def test_storage_that_cannot_be_written(call, sweep_dirs, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err, _ = call(
        "--tracking-uri",
        sweep_dirs.tracking_uri,
        "--storage",
        str(blocker / "ray_results"),
        "--cache-dir",
        str(sweep_dirs.cache_dir),
        flags=False,
    )
    _assert_one_line(code, err, "--storage", "is not writable")
    _no_runs(sweep_dirs)


def test_storage_in_an_object_store(call, sweep_dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err, _ = call(
        "--tracking-uri",
        sweep_dirs.tracking_uri,
        "--storage",
        "s3://bucket/sweeps",
        "--cache-dir",
        str(sweep_dirs.cache_dir),
        flags=False,
    )
    _assert_one_line(code, err, "--storage s3://bucket/sweeps: give a folder or a file:// URI")
    assert not (tmp_path / "s3:").exists()
    _no_runs(sweep_dirs)


def test_resume_without_an_interrupted_sweep(call, sweep_dirs):
    code, err, _ = call("--resume")
    _assert_one_line(code, err, "--resume: no interrupted sweep", "predictor_width")
    _no_runs(sweep_dirs)


def test_malformed_fault_injection(call, sweep_dirs, monkeypatch):
    monkeypatch.setenv("JEPA_INJECT_FAILURE", "trial-explode")
    code, err, _ = call()
    _assert_one_line(code, err, "JEPA_INJECT_FAILURE=trial-explode", "unknown fault")
    _no_runs(sweep_dirs)


def test_a_valid_space_file_passes_validation(tmp_path):
    """The other side of the space-file cases: a correct file loads (no sweep started)."""
    from sweeps.spaces import load_space_arg

    space = load_space_arg(_space_file(tmp_path, VALID_SPACE))
    assert space.name == "space" and space.levels("predictor_width") == [64, 128]
