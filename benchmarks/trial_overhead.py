"""What a trial costs beyond its work: the same configs through the sweep, in one
process, and as single runs.

Run by hand (not part of the test suite), from the project root:

    python benchmarks/trial_overhead.py                 # 6 configs of predictor_width
    python benchmarks/trial_overhead.py --configs 8 --space learning_rate
    python benchmarks/trial_overhead.py --project /path/to/other/checkout   # compare code

In one run, with one embedding cache folder (temporary unless --cache-dir):

(a) the platform: `sweeps/run.py --space S --num-samples N` as a user runs it, into a
    temporary MLflow store and Ray results folder. Read back from MLflow: each trial
    run's wall (end_time - start_time) and its `time_*_s` metrics (`jepa.metrics`), and
    the search phase's wall: from the last baseline run's end to the last trial run's
    end (the sweep opens the trials only after the cache and the baselines).
(b) the in-process loop: the configs (a) ran, read back from the trial runs' params,
    one after another in this process with the library (`train_predictor` then
    `evaluate_representation` with its t-SNE picture) on the bank of the same cache,
    on --threads torch threads (1, as a Ray Train worker with one CPU).
(c) single runs: the same configs, each as `python -m jepa.train` (no Ray) into the
    temporary store, same cache, with OMP_NUM_THREADS=--threads. Read back: each run's
    MLflow wall (it includes the raw backbone's probe, which a trial gets from the sweep).

Prints the medians, the ratios (a)/(b) and (a)/(c) (issue 15's goal: (a)/(c) <= 2),
the search phase's wall and trials per minute. Only the demo backbone (digits) is
supported by (b); it reads the bank through `benchmarks/objectives_table.demo_bank`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jepa.metrics import TIME_METRICS  # noqa: E402

EXPERIMENT = "trial-overhead"


@dataclass
class Trial:
    """One config as the platform ran it."""

    config: dict[str, Any]
    wall_s: float
    """The trial's MLflow run: end_time - start_time."""
    times: dict[str, float] = field(default_factory=dict)
    """Its `time_*_s` metrics, those it logged."""


@dataclass
class Platform:
    trials: list[Trial]
    command_s: float
    """The whole `sweeps/run.py` command, Ray start-up and shut-down included."""
    search_s: float
    """Last baseline run's end -> last trial run's end."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="trial-overhead-"))
    cache_dir = Path(args.cache_dir) if args.cache_dir else tmp / "cache"
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    try:
        say(f"temporary stores in {tmp}; project {args.project}; cache {cache_dir}")
        platform = run_platform(args, tmp, uri, cache_dir)
        configs = [t.config for t in platform.trials]
        say(f"(a) {len(configs)} trials; search phase {platform.search_s:.1f} s")
        inproc = run_in_process(configs, cache_dir, args.threads)
        single = run_singles(configs, args, uri, cache_dir)
        print()
        print(report(platform, inproc, single))
    finally:
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--configs", type=int, default=6, help="configs (trials of the sweep)")
    p.add_argument("--space", default="predictor_width", help="search space (as --space)")
    p.add_argument(
        "--objective",
        default=None,
        help="fix the objective for every config (default: the space's)",
    )
    p.add_argument("--max-epochs", type=int, default=None, help="epochs (default: the config's)")
    p.add_argument("--max-concurrent", type=int, default=None, help="as sweeps/run.py")
    p.add_argument(
        "--threads", type=int, default=1, help="threads of (b) and (c) (a Ray worker's: 1)"
    )
    p.add_argument("--cache-dir", default=None, help="embedding cache (default: a temporary one)")
    p.add_argument(
        "--project",
        type=Path,
        default=ROOT,
        help="checkout whose sweeps/run.py and jepa.train (a) and (c) run (default: this one)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary stores")
    return p.parse_args(argv)


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def child_env(project: Path) -> dict[str, str]:
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(project)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def space_file(args: argparse.Namespace, folder: Path) -> str:
    """--space as given, or with `objective` fixed, as a file."""
    if args.objective is None:
        return args.space
    import yaml

    path = Path(args.space)
    if not path.suffix:
        path = args.project / "search_spaces" / f"{args.space}.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["fixed"] = {**(doc.get("fixed") or {}), "objective": args.objective}
    out = folder / f"{path.stem}-{args.objective}.yaml"
    out.write_text(yaml.safe_dump(doc))
    return str(out)


def run_platform(args: argparse.Namespace, tmp: Path, uri: str, cache_dir: Path) -> Platform:
    cmd = [sys.executable, str(args.project / "sweeps" / "run.py")]
    cmd += ["--space", space_file(args, tmp), "--num-samples", str(args.configs)]
    cmd += ["--experiment", EXPERIMENT, "--tracking-uri", uri]
    cmd += ["--storage", str(tmp / "ray_results"), "--cache-dir", str(cache_dir)]
    if args.max_epochs is not None:
        cmd += ["--max-epochs", str(args.max_epochs)]
    if args.max_concurrent is not None:
        cmd += ["--max-concurrent", str(args.max_concurrent)]
    say("(a) " + " ".join(cmd[1:]))
    start = time.perf_counter()
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=child_env(args.project), cwd=args.project
    )
    command_s = time.perf_counter() - start
    (tmp / "sweep.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(
            f"the sweep failed ({done.returncode}); its output: {tmp / 'sweep.log'}\n"
            + done.stderr[-2000:]
        )
    say(f"(a) sweep done in {command_s:.1f} s ({len(done.stdout.splitlines())} stdout lines)")
    return read_platform(uri, command_s)


def read_platform(uri: str, command_s: float) -> Platform:
    from mlflow.tracking import MlflowClient

    from jepa import metrics as M
    from jepa.config import TrialConfig

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=10_000)
    role = {r.info.run_id: r.data.tags.get(M.TAG_ROLE) for r in runs}
    trials = [r for r in runs if role[r.info.run_id] == M.ROLE_TRIAL and r.info.end_time]
    baselines = [r for r in runs if role[r.info.run_id] == M.ROLE_BASELINE and r.info.end_time]
    names = TrialConfig.field_names()
    out = []
    for run in sorted(trials, key=lambda r: r.info.start_time):
        params = {k: v for k, v in run.data.params.items() if k in names}
        config = TrialConfig.from_dict(
            {k: _typed(v, getattr(TrialConfig(), k)) for k, v in params.items()}
        ).to_dict()
        times = {k: v for k, v in run.data.metrics.items() if k in TIME_METRICS}
        wall = (run.info.end_time - run.info.start_time) / 1000
        out.append(Trial(config=config, wall_s=wall, times=times))
    search_start = max((r.info.end_time for r in baselines), default=None)
    if search_start is None:  # no baseline runs: the first trial's start
        search_start = min(r.info.start_time for r in trials)
    search_s = (max(r.info.end_time for r in trials) - search_start) / 1000
    return Platform(trials=out, command_s=command_s, search_s=search_s)


def _typed(text: str, default: Any) -> Any:
    """An MLflow param (a string) as the type of the config field's default."""
    if isinstance(default, bool):
        return text == "True"
    return type(default)(text)


def run_in_process(configs: list[dict[str, Any]], cache_dir: Path, threads: int) -> list[float]:
    """(b): seconds of `train_predictor` + `evaluate_representation` for each config."""
    import torch
    from threadpoolctl import threadpool_limits

    from benchmarks.objectives_table import demo_bank, validation_evalset
    from jepa.config import TrialConfig
    from jepa.evaluate import evaluate_representation
    from jepa.features import DEFAULT_VIEWS  # the sweep's --views: its bank's key
    from jepa.train import train_predictor
    from jepa.views import CachedViewPairs

    # As in a Ray Train worker with one CPU, where Ray sets OMP_NUM_THREADS=1: torch and
    # the BLAS under numpy/scikit-learn (the probe) on `threads` threads. On a busy
    # 2-core machine the probe alone took 13 s instead of 1 s with BLAS unlimited.
    torch.set_num_threads(threads)
    out = []
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(limits=threads):
        for i, values in enumerate(configs):
            cfg = TrialConfig.from_dict(values)
            bank, _ = demo_bank(cfg.seed, DEFAULT_VIEWS, str(cache_dir), cfg.aug_strength)
            start = time.perf_counter()
            result = train_predictor(cfg, CachedViewPairs(bank.views), validation_evalset(bank))
            trained = time.perf_counter() - start
            evaluate_representation(
                result.predictor.eval(), bank, tsne_path=Path(tmp) / "t.png", seed=cfg.seed
            )
            out.append(time.perf_counter() - start)
            say(
                f"(b) {i + 1}/{len(configs)} {_short(values)}: {out[-1]:.2f} s "
                f"(training {trained:.2f} s, {len(result.history)} epochs)"
            )
    return out


def run_singles(
    configs: list[dict[str, Any]], args: argparse.Namespace, uri: str, cache_dir: Path
) -> list[float]:
    """(c): each config as `python -m jepa.train`; the MLflow wall of each run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    walls = []
    for i, values in enumerate(configs):
        name = f"single-{i}"
        cmd = [sys.executable, "-m", "jepa.train", "--device", "cpu"]
        cmd += ["--tracking-uri", uri, "--experiment", EXPERIMENT, "--run-name", name]
        cmd += ["--cache-dir", str(cache_dir)]
        for key, value in values.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        # On --threads threads, as a sweep's Ray Train worker with one CPU (Ray sets
        # OMP_NUM_THREADS=1 there): unlimited, torch and the probe's BLAS took 31-35 s a
        # run on a busy 2-core machine, which would flatter the sweep's ratio.
        env = {**child_env(args.project), "OMP_NUM_THREADS": str(args.threads)}
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=args.project)
        command_s = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"single run {i} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        exp = client.get_experiment_by_name(EXPERIMENT)
        run = client.search_runs(
            [exp.experiment_id], filter_string=f"attributes.run_name = '{name}'"
        )[0]
        walls.append((run.info.end_time - run.info.start_time) / 1000)
        say(
            f"(c) {i + 1}/{len(configs)} {_short(values)}: run {walls[-1]:.2f} s, "
            f"command {command_s:.1f} s"
        )
    return walls


def _short(values: dict[str, Any]) -> str:
    return f"w={values['predictor_width']} lr={values['lr']:.2g} {values['objective']}"


def report(platform: Platform, inproc: list[float], single: list[float]) -> str:
    med = statistics.median
    trial = med(t.wall_s for t in platform.trials)
    work, one = med(inproc), med(single)
    lines = [
        f"configs: {len(platform.trials)}; sweep command {platform.command_s:.1f} s",
        f"(a) median trial wall (MLflow run):   {trial:6.2f} s",
    ]
    for name in TIME_METRICS:
        values = [t.times[name] for t in platform.trials if name in t.times]
        if values:
            lines.append(f"      median {name:<17}       {med(values):6.2f} s")
    lines += [
        f"(b) median in-process work:           {work:6.2f} s",
        f"(c) median single-run wall (MLflow):  {one:6.2f} s",
        f"(a)/(b) {trial / work:5.1f}x   (a)/(c) {trial / one:5.1f}x   (goal (a)/(c) <= 2)",
        f"search phase (after cache and baselines): {platform.search_s:.1f} s, "
        f"{len(platform.trials) / platform.search_s * 60:.1f} trials per minute",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
