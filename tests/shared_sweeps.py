"""The session's slow runs, run together two at a time (`shared_sweeps` in
tests/conftest.py): the demo sweeps several test modules read, and the sweeps and
scenarios single tests give it.

A tiny sweep costs ~36-45 CPU-s on 2 cores whatever it checks (a driver, a cache actor and
a pool group each import torch, Ray and MLflow), and alone it keeps the 2 cores ~70%
busy. So a test that only reads what a sweep logged reads the session's sweep of that
space instead of running its own:

- `predictor_width` (7 trials): the end-to-end contract (tests/test_sweep_end_to_end.py),
  the MLflow UI in a browser (tests/test_browser.py), the space sweeps;
- `objective` (4 trials, every objective): tests/test_sweep_objective.py, the space sweeps;
- `learning_rate` (1 trial on a group of two ranks): tests/test_ddp.py, the space sweeps;
- `aug_strength` (6 trials, one at a time, from an empty cache): tests/test_feature_cache.py,
  the space sweeps;
- the other spaces and `mixed` (2 trials each): tests/test_sweep_spaces.py;
- `eight-at-once` (8 trials at once): tests/test_feature_cache.py, tests/test_reliability.py;

and a test whose slow run is its own gives it here to run beside the others: a
`SweepSpec` (a sweep on the session's cluster with a space, data or environment of its
own: tests/test_sweep_selection.py, tests/test_feature_cache.py,
tests/test_reliability.py) or a `Scenario` (anything else, e.g. a sweep cut off with
Ctrl-C and resumed on clusters of its own: tests/test_reliability.py,
tests/test_tiny_imagenet.py, tests/test_gpu_path.py). The scenario records what it saw;
the test checks it.

A test names what it reads with `@pytest.mark.shared_sweep(NAME or spec)`; the session
runs everything its selected tests name, `AT_ONCE` at a time, the first time one is asked
for, and every test then reads its run's result.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import SweepDirs, run_cli

MARKER = "shared_sweep"
MIXED = "mixed"

# A small demo: 10 training, 5 validation and 5 test digits of each class, 2 views, and
# one pool group (these trials take ~2 s, a second group ~15 s of CPU to start).
SMALL = ("--views", "2", "--images-per-class", "10", "--val-per-class", "5")
SMALL += ("--eval-per-class", "5", "--num-samples", "2", "--max-epochs", "1")
SMALL += ("--max-concurrent", "1")
# The data of the sweeps that read their bank from the session's embedding cache (which
# the first of them computes): 30 training digits of each class, 2 views.
BANKED = ("--views", "2", "--images-per-class", "30")

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
    """One shared sweep: the CLI flags besides the stores' (`prepare(folder)` may make
    inputs in the sweep's folder and returns more flags), its environment, and the
    trials it runs. `fresh_cache`: an empty embedding cache of its own (a test that
    counts the backbone's work), else the session's."""

    name: str
    args: tuple[str, ...]
    trials: int
    prepare: Callable[[Path], list[str]] | None = None
    env: dict[str, str] = field(default_factory=dict)
    fresh_cache: bool = False
    first: bool = False
    """Start it before the other sweeps (beside the longest scenario, which runs on
    clusters of its own): it takes every CPU of the session's cluster."""

    @property
    def weight(self) -> int:
        """About how long it runs, to start the longest first."""
        return 100 if self.first else self.trials


# Two augmentation levels x two widths: the eight concurrent trials ask for both banks.
TWO_LEVELS_SPACE = """\
description: Two augmentation levels (test).
params:
  aug_strength:
    choice: [0.25, 0.75]
  predictor_width:
    choice: [16, 32]
fixed:
  batch_size: 25
"""


def two_levels(folder: Path) -> list[str]:
    space = folder / "two_levels.yaml"
    space.write_text(TWO_LEVELS_SPACE)
    return ["--space", str(space)]


EIGHT_AT_ONCE = "eight-at-once"
EIGHT_DATA = {"views": 2, "images_per_class": 20, "eval_per_class": 10}
AUG_STRENGTH = "aug_strength"
ONE_AT_A_TIME_DATA = {"views": 2, "images_per_class": 5, "eval_per_class": 2}


def _mixed(folder: Path) -> list[str]:
    space = folder / "mixed.yaml"
    space.write_text(MIXED_SPACE)
    return ["--space", str(space)]


SPECS = {
    spec.name: spec
    for spec in (
        # 7 samples over 5 widths: the first 5 cover the widths; the last 2 repeat a
        # width, and must do so with a new seed (tests/test_sweep_end_to_end.py). Two pool
        # groups: two trials ask Optuna at once, as on any machine with 2 CPU slots.
        SweepSpec(
            "predictor_width",
            ("--space", "predictor_width", "--num-samples", "7", "--max-epochs", "2")
            + (*BANKED, "--max-concurrent", "2"),
            trials=7,
        ),
        # The four objectives over 4 epochs, on the same data as predictor_width's (the
        # session's cache has its bank): the verdicts are checked against the logged curves.
        SweepSpec(
            "objective",
            ("--space", "objective", "--num-samples", "4", "--max-epochs", "4")
            + (*BANKED, "--max-concurrent", "1"),
            trials=4,
        ),
        SweepSpec(MIXED, SMALL, trials=2, prepare=_mixed),
        # The aug_strength space one trial at a time from an empty embedding cache of its
        # own: its first 4 trials cover the 4 levels, the last 2 come back to levels
        # whose banks are on disk, so tests/test_feature_cache.py can count the
        # backbone's work (once per level), besides the space sweeping.
        SweepSpec(
            AUG_STRENGTH,
            ("--space", AUG_STRENGTH, "--num-samples", "6", "--max-epochs", "1")
            + ("--views", str(ONE_AT_A_TIME_DATA["views"]))
            + ("--images-per-class", str(ONE_AT_A_TIME_DATA["images_per_class"]))
            + ("--eval-per-class", str(ONE_AT_A_TIME_DATA["eval_per_class"]))
            + ("--val-per-class", str(ONE_AT_A_TIME_DATA["eval_per_class"]))
            + ("--max-concurrent", "1"),
            trials=6,
            fresh_cache=True,
        ),
        # One trial on one pool group of two ranks (tests/test_ddp.py), on the
        # end-to-end sweep's data (one bank in the session's cache).
        SweepSpec(
            "learning_rate",
            ("--space", "learning_rate", "--num-samples", "1", "--max-epochs", "2")
            + (*BANKED, "--workers-per-trial", "2"),
            trials=1,
        ),
        # 8 trials at once over two aug_strength levels, 2 epochs each, from an empty
        # embedding cache of its own: concurrent logging to sqlite
        # (tests/test_reliability.py) and the backbone running once per level while
        # eight trials ask for the banks at once (tests/test_feature_cache.py). Eight
        # trainables run at once (each opens its MLflow run and asks the cache for its
        # bank); the cluster's 3 CPUs hold 3 pool groups of 1 CPU, which train them 3 at
        # a time (the others wait in the pool's queue, RUNNING for Tune) and log epochs.
        SweepSpec(
            EIGHT_AT_ONCE,
            ("--num-samples", "8", "--max-concurrent", "8", "--max-epochs", "2")
            + ("--views", str(EIGHT_DATA["views"]))
            + ("--images-per-class", str(EIGHT_DATA["images_per_class"]))
            + ("--eval-per-class", str(EIGHT_DATA["eval_per_class"]))
            + ("--val-per-class", str(EIGHT_DATA["eval_per_class"])),
            trials=8,
            prepare=two_levels,
            fresh_cache=True,
            first=True,
        ),
    )
}


@dataclass(frozen=True)
class Scenario:
    """A test's slow run that is more than one sweep on the session's cluster (Ctrl-C,
    then resume; a sweep in a copied project): `run(folder, embedding_cache, cluster)`
    does it in its own `folder` and returns what the test checks. What it raises, the
    test that reads it raises."""

    name: str
    run: Callable[[Path, Path, list[str]], Any]
    weight: int
    """About how long it runs, in the trials of a small sweep."""


def spec_of(named: str | SweepSpec | Scenario) -> SweepSpec | Scenario:
    """A spec given in a test module, or the shared sweep named `named`: from SPECS, else
    a SMALL sweep of the shipped space of that name."""
    if isinstance(named, SweepSpec | Scenario):
        return named
    return SPECS.get(named) or SweepSpec(named, ("--space", named, *SMALL), trials=2)


@dataclass
class SharedSweep:
    """What a shared sweep left: its process (output, exit code), stores and spec."""

    proc: subprocess.CompletedProcess
    dirs: SweepDirs
    spec: SweepSpec


class SharedRuns(Mapping[str, Any]):
    """{name: what the run left}, every run done: a `SharedSweep`, or a scenario's value.
    Reading a run that raised raises that, in the test that reads it. `walls`: each
    run's (start, seconds) from the batch's start, for the session's summary."""

    def __init__(self, futures: dict[str, Future], walls: dict[str, tuple[float, float]]):
        self._futures = futures
        self.walls = walls

    def __getitem__(self, name: str) -> Any:
        return self._futures[name].result()

    def __iter__(self) -> Iterator[str]:
        return iter(self._futures)

    def __len__(self) -> int:
        return len(self._futures)


# Two at a time on the session's 3 logical CPUs: a sweep alone keeps 2 cores ~70% busy
# (imports, process starts, waits); two at once fill the rest (measured: a tiny sweep took
# ~45 s alone, ~27 s each two at a time), and a sweep with 2 pool groups (or a 2-rank
# group) fits beside another sweep's 1.
AT_ONCE = 2


def run_shared_sweeps(
    specs: list[SweepSpec | Scenario], root: Path, embedding_cache: Path, cluster: list[str]
) -> SharedRuns:
    """Run `specs` (the longest first, `AT_ONCE` at a time) each in a folder of its own,
    `root/<name>`: sweeps on `cluster` with the session's embedding cache (or an empty one
    of their own), scenarios as they say. Returns once every one is done."""

    began = time.monotonic()
    walls: dict[str, tuple[float, float]] = {}

    def run(spec: SweepSpec | Scenario) -> Any:
        start = time.monotonic()
        try:
            return run_one(spec)
        finally:
            walls[spec.name] = (start - began, time.monotonic() - start)

    def run_one(spec: SweepSpec | Scenario) -> Any:
        folder = root / spec.name
        folder.mkdir(parents=True)
        if isinstance(spec, Scenario):
            return spec.run(folder, embedding_cache, cluster)
        dirs = SweepDirs.under(folder, None if spec.fresh_cache else embedding_cache)
        args = [*spec.args, *(spec.prepare(folder) if spec.prepare else []), *dirs.flags()]
        proc = run_cli(args, timeout=900, env=spec.env or None, cluster=cluster)
        return SharedSweep(proc, dirs, spec)

    ordered = sorted(specs, key=lambda spec: -spec.weight)
    with ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
        futures = {spec.name: pool.submit(run, spec) for spec in ordered}
    return SharedRuns(futures, walls)  # leaving the `with` waited for all of them


def summary_lines(runs: SharedRuns) -> list[str]:
    """The batch's runs, longest first: pytest's durations show the batch as one setup."""
    lines = [f"{len(runs.walls)} shared slow runs, {AT_ONCE} at a time (start, wall):"]
    for name, (start, wall) in sorted(runs.walls.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"{wall:7.1f}s  from {start:6.1f}s  {name}")
    return lines
