"""The command line as a user meets it: --help, bad flags, unknown spaces."""

import sqlite3

from tests.conftest import run_cli

FLAGS = [
    "--space",
    "--num-samples",
    "--max-epochs",
    "--experiment",
    "--tracking-uri",
    "--storage",
    "--address",
    "--backbone",
    "--checkpoint",
    "--data",
    "--images-per-class",
    "--workers-per-trial",
    "--gpus-per-trial",
    "--resume",
    "--seed",
    "--list-spaces",
    "--encoder",
    "--arch",
    "--max-failures",
    "--feature-cache",
    "--views",
    "--cache-dir",
]


def test_help_documents_every_flag():
    proc = run_cli(["--help"], timeout=120)
    assert proc.returncode == 0
    for flag in FLAGS:
        assert flag in proc.stdout, flag


def test_list_spaces():
    proc = run_cli(["--list-spaces"], timeout=120)
    assert proc.returncode == 0
    for name in ("predictor_width", "learning_rate", "aug_strength", "full"):
        assert name in proc.stdout


def test_unknown_flag_exits_2_with_one_line():
    proc = run_cli(["--space", "predictor_width", "--num-sampels", "3"], timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--num-sampels" in lines[0]


def test_unknown_space_exits_2_and_creates_no_run(sweep_dirs):
    proc = run_cli(["--space", "nope", *sweep_dirs.flags()], timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown space 'nope'" in lines[0] and "predictor_width" in lines[0]
    db = sweep_dirs.root / "mlflow.db"
    if db.exists():
        assert sqlite3.connect(db).execute("select count(*) from runs").fetchone()[0] == 0


def test_ctrl_c_while_listing_spaces_exits_130(monkeypatch, capsys):
    """A Ctrl-C before any sweep started is an ordinary interruption (it used to raise
    UnboundLocalError: the handler named a class imported only on the sweep's path)."""
    from sweeps import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "list_spaces", interrupted)
    assert cli.main(["--list-spaces"]) == 130
    assert "nothing to resume" in capsys.readouterr().err
