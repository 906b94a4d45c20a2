"""`python -m jepa.train` and `python -m jepa.evaluate` (wired in `sweeps/single.py`) as a
user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from jepa import metrics as M
from sweeps import tracking
from sweeps.single import evaluate_main, train_main
from tests.conftest import ROOT

# A small slice of the demo so that a run takes seconds of compute.
SMALL = ["--images-per-class", "30", "--eval-per-class", "20", "--views", "2"]


# Makes `import ray` raise ImportError, as on a machine without Ray: the single-run
# commands must not need it. A `sitecustomize` on PYTHONPATH, so that it also holds in the
# process `python -m jepa.train` hands itself over to (`jepa/commands.py`).
NO_RAY = """
import sys

class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"{name} is hidden by the test (no Ray here)")
        return None

sys.meta_path.insert(0, NoRay())
"""


def run_module(
    module: str,
    args: list[str],
    timeout: float = 600,
    without_ray: bool = False,
    tmp_path: Path | None = None,
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if without_ray:
        assert tmp_path is not None, "without_ray needs a folder for its sitecustomize"
        site = tmp_path / "no_ray_site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(NO_RAY)
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def test_the_no_ray_harness_hides_ray(tmp_path):
    """The harness must really hide Ray, or the tests below prove nothing."""
    proc = run_module("ray", ["--version"], timeout=120, without_ray=True, tmp_path=tmp_path)
    assert proc.returncode != 0 and "hidden by the test" in proc.stderr


def test_train_logs_a_trial_and_evaluate_reproduces_its_probe(sweep_dirs, tmp_path):
    uri = sweep_dirs.tracking_uri
    train = run_module(
        "jepa.train",
        [
            "--objective",
            "vicreg",
            "--max-epochs",
            "2",
            *SMALL,
            "--tracking-uri",
            uri,
            "--cache-dir",
            str(sweep_dirs.cache_dir),
        ],
        without_ray=True,
        tmp_path=tmp_path,
    )
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "Running" not in train.stdout and "Using the embedded demo" in train.stdout

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("jepa-sweeps").experiment_id])
    run_id = run.info.run_id
    assert f"python -m jepa.evaluate --run-id {run_id}" in train.stdout
    assert run.info.status == "FINISHED"
    assert run.data.tags[M.TAG_ROLE] == M.ROLE_TRIAL and run.data.tags[M.TAG_SINGLE] == "true"
    assert run.data.tags[M.TAG_STATUS] == "finished"
    assert run.data.tags[M.TAG_BACKBONE] == "demo-vit" and run.data.tags[M.TAG_DATASET] == "digits"
    for key in ("predictor_width", "depth", "lr", "aug_strength", "objective", "backbone_sha256"):
        assert key in run.data.params, key
    assert run.data.params["objective"] == "vicreg"
    metrics = run.data.metrics
    for key in (M.PROBE_ACCURACY, M.PROBE_LIFT, M.KNN_ACCURACY, M.EMBEDDING_STD):
        assert key in metrics, key
    assert metrics[M.PROBE_LIFT] == pytest.approx(
        metrics[M.PROBE_ACCURACY] - metrics["baseline_probe_accuracy"]
    )
    for key in (M.TRAIN_LOSS, M.EMBEDDING_STD, M.EFFECTIVE_RANK, M.EMBEDDING_STD_RATIO):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert steps[:2] == [1, 2], (key, steps)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {M.TSNE_ARTIFACT, M.PREDICTOR_ARTIFACT, M.CONFIG_ARTIFACT} <= artifacts

    out_dir = tmp_path / "reeval"
    evaluate = run_module(
        "jepa.evaluate",
        ["--run-id", run_id, "--tracking-uri", uri, "--output-dir", str(out_dir)],
        without_ray=True,
        tmp_path=tmp_path,
    )
    assert evaluate.returncode == 0, evaluate.stdout[-3000:] + evaluate.stderr[-3000:]
    recomputed = _value(evaluate.stdout, f"Run {run_id}: probe_accuracy=")
    assert abs(recomputed - metrics[M.PROBE_ACCURACY]) <= 0.01
    assert (out_dir / M.TSNE_ARTIFACT).read_bytes()[:4] == b"\x89PNG"


def test_a_diverged_run_ends_finished_tagged_diverged_like_a_trial(sweep_dirs, tmp_path):
    """lr=1e30 blows the weights up: nothing to probe, so (as a sweep's trial) the run
    skips the evaluation and ends FINISHED with jepa.status=diverged and no weights.
    The command is the issue's, `python -m jepa.train --objective cross_view --lr 1e30`."""
    uri = sweep_dirs.tracking_uri
    train = run_module(
        "jepa.train",
        ["--objective", "cross_view", "--lr", "1e30", "--max-epochs", "2", *SMALL]
        + ["--tracking-uri", uri, "--cache-dir", str(sweep_dirs.cache_dir)],
        without_ray=True,
        tmp_path=tmp_path,
    )
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "status=diverged" in train.stdout
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("jepa-sweeps").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags[M.TAG_STATUS] == "diverged"
    assert run.data.tags[M.TAG_SINGLE] == "true"
    assert M.PROBE_ACCURACY not in run.data.metrics and "epochs_run" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert M.CONFIG_ARTIFACT in artifacts and M.PREDICTOR_ARTIFACT not in artifacts


@pytest.mark.parametrize("module", ["jepa.train", "jepa.evaluate"])
def test_the_documented_commands_are_the_single_run(module):
    """DESIGN.md's `python -m jepa.train|evaluate` hand over to `sweeps.single` (the library
    imports no wiring): same parser, same exit codes."""
    proc = run_module(module, ["--help"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: python -m {module}") and "--tracking-uri" in proc.stdout
    bad = run_module(module, ["--no-such-flag"], timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "(see --help)" in bad.stderr


def test_without_a_command_exits_2(capsys):
    from sweeps.single import main

    assert main([]) == 2 and main(["fit"]) == 2
    assert "{train,evaluate}" in capsys.readouterr().err


def _value(text: str, prefix: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(prefix))
    return float(line[len(prefix) :].split()[0])


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("train", ["--objective", "--depth", "--max-epochs", "--tracking-uri", "--arch"]),
        ("train", ["--skip-bad-images", "--val-per-class", "--seed"]),
        ("evaluate", ["--run-id", "--tracking-uri", "--output-dir", "--checkpoint"]),
    ],
)
def test_help(command, flags):
    proc = run_module("sweeps.single", [command, "--help"], timeout=300)
    assert proc.returncode == 0
    for flag in flags:
        assert flag in proc.stdout, flag


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--objective", "simclr"], "invalid choice: 'simclr'"),
        (["--lr", "-1"], "lr must be > 0"),
        (["--aug-strength", "2"], "aug_strength must be in [0, 1]"),
        (["--max-epochs", "0"], "max_epochs must be >= 1"),
        (["--views", "1"], "--views 1"),
        (["--data", "/no/such/folder"], "no such folder"),
        (["--lr", "fast"], "invalid float value"),
    ],
)
def test_train_bad_input_exits_2_with_one_line(sweep_dirs, capsys, argv, needle):
    code = _exit_code(train_main, [*argv, "--tracking-uri", sweep_dirs.tracking_uri])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (sweep_dirs.root / "mlflow.db").exists()  # nothing was logged


def test_evaluate_bad_input_exits_2_with_one_line(sweep_dirs, capsys):
    uri = sweep_dirs.tracking_uri
    assert _exit_code(evaluate_main, ["--run-id", "0123abcd", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MLflow store at" in err[0], err
    assert not (sweep_dirs.root / "mlflow.db").exists()

    experiment_id = tracking.ensure_experiment(uri, "jepa-sweeps")
    capsys.readouterr()  # MLflow's own log lines from creating the store
    assert _exit_code(evaluate_main, ["--run-id", "0123abcd", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run '0123abcd'" in err[0], err

    bare = tracking.client(uri).create_run(experiment_id).info.run_id
    assert _exit_code(evaluate_main, ["--run-id", bare, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no predictor.pt" in err[0], err

    assert _exit_code(evaluate_main, ["--tracking-uri", uri]) == 2  # --run-id is required


def _exit_code(main, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse errors exit from inside parse_args
        return int(exc.code)


def test_load_predictor_rejects_a_foreign_file(tmp_path):
    from jepa.errors import UserInputError
    from jepa.evaluate import load_predictor

    path = Path(tmp_path / "predictor.pt")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserInputError, match="not a predictor.pt"):
        load_predictor(path)
