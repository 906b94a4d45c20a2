"""The demo sweeps several test modules read, run once per session (`shared_sweeps` in
tests/conftest.py): one per shipped space, and one over a space mixing every kind of
distribution.

A tiny sweep costs ~45 CPU-s on 2 cores whatever it checks (a driver, a cache actor and
a pool group each import torch, Ray and MLflow), so a test that only reads what a sweep
logged reads the session's sweep of that space instead of running its own:

- `predictor_width` (7 trials): the end-to-end contract (tests/test_sweep_end_to_end.py),
  the MLflow UI in a browser (tests/test_browser.py), the space sweeps;
- `objective` (4 trials, every objective): tests/test_sweep_objective.py, the space sweeps;
- the other spaces and `mixed` (2 trials each): tests/test_sweep_spaces.py.

A test says which it reads with `@pytest.mark.shared_sweep(NAME)`; the session runs the
sweeps its selected tests name, `AT_ONCE` at a time, the first time one is asked for.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import SweepDirs, run_cli

MARKER = "shared_sweep"
MIXED = "mixed"

# A small demo: 10 training, 5 validation and 5 test digits of each class, 2 views, and
# one pool group (these trials take ~2 s, a second group ~15 s of CPU to start).
SMALL = ("--views", "2", "--images-per-class", "10", "--val-per-class", "5")
SMALL += ("--eval-per-class", "5", "--num-samples", "2", "--max-epochs", "1")
SMALL += ("--max-concurrent", "1")

MIXED_SPACE = """\
description: choice, uniform, loguniform and int in one space
params:
  predictor_width:
    choice: [64, 128]
  aug_strength:
    uniform: [0.2, 0.8]
  lr:
    loguniform: [1.0e-4, 1.0e-2]
  depth:
    int: [1, 2]
"""


@dataclass(frozen=True)
class SweepSpec:
    """One shared sweep: its space and the CLI flags besides the stores'."""

    space: str
    args: tuple[str, ...]
    trials: int


SPECS = {
    # 7 samples over 5 widths: the first 5 cover the widths; the last 2 repeat a width,
    # and must do so with a new seed (tests/test_sweep_end_to_end.py). Two pool groups:
    # two trials ask Optuna at once, as on any machine with 2 CPU slots.
    "predictor_width": SweepSpec(
        "predictor_width",
        ("--num-samples", "7", "--max-epochs", "2", "--views", "2")
        + ("--images-per-class", "30", "--max-concurrent", "2"),
        trials=7,
    ),
    # The four objectives over 4 epochs, on the same data as predictor_width's (the
    # session's cache has its bank): the verdicts are checked against the logged curves.
    "objective": SweepSpec(
        "objective",
        ("--num-samples", "4", "--max-epochs", "4", "--views", "2")
        + ("--images-per-class", "30", "--max-concurrent", "1"),
        trials=4,
    ),
}


def spec(name: str) -> SweepSpec:
    """The shared sweep `name`: from SPECS, else a SMALL sweep of that space."""
    return SPECS.get(name) or SweepSpec(name, SMALL, trials=2)


@dataclass
class SharedSweep:
    """What a shared sweep left: its process (output, exit code), stores and spec."""

    proc: subprocess.CompletedProcess
    dirs: SweepDirs
    spec: SweepSpec


# Two at a time on the session's 3 logical CPUs: a sweep alone keeps 2 cores ~70% busy
# (imports, process starts, waits); two at once fill the rest (measured: a tiny sweep took
# ~45 s alone, ~27 s each two at a time), and predictor_width's 2 pool groups fit beside
# another sweep's 1.
AT_ONCE = 2


def run_shared_sweeps(
    names: list[str], root: Path, embedding_cache: Path, cluster: list[str]
) -> dict[str, SharedSweep]:
    """Run the sweeps `names` (longest first, `AT_ONCE` at a time) on `cluster`, each into
    a store of its own under `root`, with the session's embedding cache."""

    def run(name: str) -> SharedSweep:
        dirs = SweepDirs.under(root / name, embedding_cache)
        dirs.root.mkdir(parents=True)
        sweep = spec(name)
        space = sweep.space
        if name == MIXED:
            space = str(dirs.root / "mixed.yaml")
            Path(space).write_text(MIXED_SPACE)
        args = ["--space", space, *sweep.args, *dirs.flags()]
        return SharedSweep(run_cli(args, timeout=900, cluster=cluster), dirs, sweep)

    ordered = sorted(names, key=lambda n: -spec(n).trials)
    with ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
        futures = {name: pool.submit(run, name) for name in ordered}
        return {name: future.result() for name, future in futures.items()}
