"""Shared fixtures: a temporary MLflow store, Ray storage and embedding cache per test,
and a way to run the real CLI as a subprocess (as a user would)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "sweeps" / "run.py"


@dataclass
class SweepDirs:
    root: Path
    tracking_uri: str
    storage: Path
    cache_dir: Path

    def flags(self) -> list[str]:
        return [
            "--tracking-uri",
            self.tracking_uri,
            "--storage",
            str(self.storage),
            "--cache-dir",
            str(self.cache_dir),
        ]


@pytest.fixture
def sweep_dirs(tmp_path: Path) -> SweepDirs:
    return SweepDirs(
        root=tmp_path,
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        storage=tmp_path / "ray_results",
        cache_dir=tmp_path / "cache",
    )


def run_cli(
    args: list[str], timeout: float = 1200, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run `python sweeps/run.py ARGS` in a fresh process; returns the completed process."""
    full_env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, str(RUN), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd or ROOT,
    )
