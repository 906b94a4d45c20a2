"""What the embedding cache buys: the same sweep with the cache on and off.

Run by hand (not part of the test suite), from the project root:

    python benchmarks/cache_benchmark.py --repeats 3

Each repeat runs `sweeps/run.py` twice as a user would, in fresh temporary stores
(MLflow, Ray results, embedding cache): `--feature-cache on` (the backbone runs once
per augmentation level, before the trials) and `--feature-cache off` (the seed's way:
every trial augments and runs the backbone on every batch of every epoch). Both sweep
`--space` with `--objective` fixed (vicreg, as in every earlier run of this benchmark,
so that its figures compare across dates; it chose vicreg when the default cross_view
still stopped at its collapse). For each it reads back from MLflow:

- sweep wall time: the whole command, Ray start-up included;
- backbone forward passes: images through the backbone (the sweep run's
  `backbone_images`);
- per-trial overhead (median over trials): `time_overhead_s` = the trial's wall time
  (`time_trial_s`, from entering the trainable to the pool's last row for it) minus
  rank 0's training epochs (`time_train_s`), in-trial backbone work (`time_backbone_s`,
  cache off only) and final evaluation (`time_eval_s`): MLflow calls, waiting for a
  pool group, fetching the bank, reporting;
- probe + kNN + t-SNE: `time_eval_s` (median over trials);
- per-trial work: training + in-trial backbone + evaluation (median over trials). Its
  ratio off/on is the most the cache can buy on these trials, were the cached sweep's
  bank, start-up, orchestration and summary free;
- best probe accuracy.

It prints each run, the median over repeats, the ratio off/on and a summary block to
paste into the README. It also times the final evaluation alone on 2,000 points of
1,280 dimensions (200 classes), the size of the real data set's training split.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "sweeps" / "run.py"
sys.path.insert(0, str(ROOT))

from jepa.metrics import TIME_METRICS  # noqa: E402


@dataclass
class SweepRun:
    mode: str
    wall_s: float
    backbone_images: float
    best_probe_accuracy: float | None
    trials: list[dict[str, float]] = field(default_factory=list)
    load_before: float = 0.0
    load_after: float = 0.0

    def median(self, metric: str) -> float:
        values = [t[metric] for t in self.trials if metric in t]
        return statistics.median(values) if values else float("nan")

    def median_work(self) -> float:
        """Median over trials of the work a trial does: training epochs + in-trial
        backbone (cache off) + final evaluation, without start-up or overhead."""
        parts = ("time_train_s", "time_backbone_s", "time_eval_s")
        values = [sum(t.get(k, 0.0) for k in parts) for t in self.trials if "time_train_s" in t]
        return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(describe_machine())
    eval_s = None
    if not args.skip_eval_timing:
        eval_s = time_evaluation(args.repeats)
        print(
            "probe + kNN + t-SNE on 2,000 x 1,280 (200 classes): "
            f"{eval_s[0]:.2f} s wall, {eval_s[1]:.2f} s CPU (median)\n",
            flush=True,
        )
    runs: dict[str, list[SweepRun]] = {"on": [], "off": []}
    repeats = {"on": args.repeats, "off": args.repeats_off or args.repeats}
    for repeat in range(max(repeats[m] for m in args.modes)):
        for mode in args.modes:
            if repeat >= repeats[mode]:
                continue
            run = run_sweep(mode, args, repeat)
            runs[mode].append(run)
            print(format_run(run), flush=True)
    print()
    print(summary(runs, args, eval_s))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="predictor_width", help="search space (as --space)")
    p.add_argument(
        "--objective",
        default="vicreg",
        help="objective all trials use (default vicreg, as in every earlier run of this "
        "benchmark, so that its figures compare across dates)",
    )
    p.add_argument("--num-samples", type=int, default=8, help="trials per sweep")
    p.add_argument(
        "--max-epochs",
        type=int,
        default=20,
        help="epochs per trial; the uncached sweep runs the backbone on every batch of each",
    )
    p.add_argument("--views", type=int, default=8, help="cached views per training image")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once")
    p.add_argument("--images-per-class", type=int, default=None, help="as sweeps/run.py")
    p.add_argument("--repeats", type=int, default=1, help="runs of each sweep; medians printed")
    p.add_argument(
        "--repeats-off",
        type=int,
        default=None,
        help="runs of the uncached sweep, if not --repeats (it takes ~16 min on 2 cores)",
    )
    p.add_argument(
        "--modes",
        type=lambda text: text.split(","),
        default=["on", "off"],
        help="which sweeps: on,off (default both)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary stores")
    p.add_argument(
        "--skip-eval-timing", action="store_true", help="do not time the evaluation alone"
    )
    return p.parse_args(argv)


def run_sweep(mode: str, args: argparse.Namespace, repeat: int) -> SweepRun:
    """One sweep in fresh temporary stores; its figures read back from MLflow."""
    tmp = Path(tempfile.mkdtemp(prefix=f"cache-bench-{mode}-{repeat}-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cmd = [
        sys.executable,
        str(RUN),
        "--space",
        str(space_file(args.space, args.objective, tmp)),
        "--num-samples",
        str(args.num_samples),
        "--max-epochs",
        str(args.max_epochs),
        "--views",
        str(args.views),
        "--feature-cache",
        mode,
        "--tracking-uri",
        uri,
        "--storage",
        str(tmp / "ray_results"),
        "--cache-dir",
        str(tmp / "cache"),
    ]
    if args.max_concurrent:
        cmd += ["--max-concurrent", str(args.max_concurrent)]
    if args.images_per_class:
        cmd += ["--images-per-class", str(args.images_per_class)]
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    print(f"[{mode} #{repeat + 1}] {' '.join(cmd[1:])}", flush=True)
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.monotonic() - start
    (tmp / "output.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"sweep failed (exit {proc.returncode}); output in {tmp / 'output.txt'}")
    run = read_back(uri, mode, wall)
    run.load_before, run.load_after = load_before, os.getloadavg()[0]
    if not args.keep:
        _remove(tmp)
    return run


def space_file(name: str, objective: str, folder: Path) -> Path:
    """The named space with `objective` fixed for every trial, as a file for --space."""
    import yaml

    from sweeps.spaces import SPACES_DIR

    doc = yaml.safe_load((SPACES_DIR / f"{name}.yaml").read_text())
    doc["fixed"] = {**(doc.get("fixed") or {}), "objective": objective}
    path = folder / f"{name}-{objective}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def read_back(uri: str, mode: str, wall: float) -> SweepRun:
    from mlflow.tracking import MlflowClient

    from jepa import metrics as M

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("jepa-sweeps")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get(M.TAG_ROLE) == M.ROLE_SWEEP)
    trials = [r for r in runs if r.data.tags.get(M.TAG_ROLE) == M.ROLE_TRIAL]
    return SweepRun(
        mode=mode,
        wall_s=wall,
        backbone_images=parent.data.metrics.get("backbone_images", float("nan")),
        best_probe_accuracy=parent.data.metrics.get("test_probe_accuracy"),
        trials=[{k: v for k, v in t.data.metrics.items() if k in TIME_METRICS} for t in trials],
    )


def time_evaluation(repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds, medians, of `evaluate_representation` (probe, kNN, collapse
    metrics, t-SNE picture) on 2,000 train + 2,000 eval points of 1,280 dimensions, 200
    classes, on one CPU thread as in a trial's worker. It runs on one thread, so on a
    quiet machine wall = CPU; on a loaded one the CPU time is the better estimate."""
    import torch

    from jepa.evaluate import evaluate_representation
    from jepa.features import FeatureBank

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    classes, dim = 200, 1280
    centres = torch.randn(classes, dim, generator=g) * 0.15  # a probe scores ~25%

    def split(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(classes).repeat_interleave(per_class)
        return centres[y] + torch.randn(len(y), dim, generator=g), y

    bank = FeatureBank(torch.empty(0, 0, dim), *split(10), *split(10), *split(10))
    walls, cpus = [], []
    with tempfile.TemporaryDirectory() as tmp:
        # One untimed run first: a trial has imported everything (and built an
        # optimiser, which imports torch._dynamo) before it evaluates.
        for i in range(max(1, repeats) + 1):
            wall, cpu = time.perf_counter(), time.process_time()
            evaluate_representation(None, bank, tsne_path=Path(tmp) / "t.png", seed=0)
            if i > 0:
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def format_run(run: SweepRun) -> str:
    acc = run.best_probe_accuracy
    return (
        f"  cache {run.mode:3s}: wall {run.wall_s:7.1f} s, backbone {run.backbone_images:9.0f} "
        f"images, trials {len(run.trials)}, median trial {run.median('time_trial_s'):.1f} s "
        f"(start-up {run.median('time_startup_s'):.1f}, train {run.median('time_train_s'):.1f}, "
        f"backbone {run.median('time_backbone_s'):.1f}, eval {run.median('time_eval_s'):.1f}, "
        f"overhead {run.median('time_overhead_s'):.1f}), best probe "
        f"{'-' if acc is None else f'{acc:.4f}'}, load {run.load_before:.1f}->{run.load_after:.1f}"
    )


def summary(runs: dict[str, list[SweepRun]], args: argparse.Namespace, eval_s) -> str:
    """The block for the README: medians over repeats, ratio off/on, the goals."""

    def med(mode: str, value) -> float:
        values = [value(r) for r in runs[mode]]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else float("nan")

    rows = [
        ("sweep wall time (s)", lambda r: r.wall_s, "{:.1f}"),
        ("backbone forward passes (images)", lambda r: r.backbone_images, "{:.0f}"),
        ("median per-trial overhead (s)", lambda r: r.median("time_overhead_s"), "{:.2f}"),
        ("median per-trial probe + kNN + t-SNE (s)", lambda r: r.median("time_eval_s"), "{:.2f}"),
        ("median per-trial training epochs (s)", lambda r: r.median("time_train_s"), "{:.2f}"),
        ("median per-trial work, all but overhead (s)", lambda r: r.median_work(), "{:.2f}"),
        ("best probe accuracy", lambda r: r.best_probe_accuracy, "{:.4f}"),
    ]
    n = f"{len(runs['on'])} cached, {len(runs['off'])} uncached"
    lines = [
        "```",
        f"Embedding cache benchmark: {args.num_samples} trials of --space {args.space} "
        f"(objective {args.objective}), --max-epochs {args.max_epochs}, --views {args.views}"
        + (f", --max-concurrent {args.max_concurrent}" if args.max_concurrent else "")
        + f"; median of {n} run(s)",
        describe_machine(),
        f"{'':44s}{'cache on':>12s}{'cache off':>12s}{'off/on':>9s}",
    ]
    for label, value, fmt in rows:
        on, off = med("on", value), med("off", value)
        ratio = off / on if on and on == on and off == off else float("nan")
        lines.append(f"{label:44s}{fmt.format(on):>12s}{fmt.format(off):>12s}{ratio:>8.1f}x")
    speedup = med("off", lambda r: r.wall_s) / med("on", lambda r: r.wall_s)
    # The most the cache can buy on these trials: the ratio of their own work, as if the
    # cached sweep spent nothing on its bank, start-up, orchestration or summary.
    bound = med("off", lambda r: r.median_work()) / med("on", lambda r: r.median_work())
    gap = 100 * (
        med("off", lambda r: r.best_probe_accuracy) - med("on", lambda r: r.best_probe_accuracy)
    )
    loads = [x for mode in runs.values() for r in mode for x in (r.load_before, r.load_after)]
    lines += [
        f"speed-up with the cache: {speedup:.1f}x "
        f"(goal >= 10x: {'met' if speedup >= 10 else 'NOT met'})",
        f"at most {bound:.1f}x on these trials: their own work off/on (median per-trial "
        "work), before the bank, start-up and orchestration",
        f"best probe accuracy, uncached minus cached: {gap:+.1f} points "
        f"(goal within 2: {'met' if abs(gap) <= 2 else 'NOT met'})",
    ]
    if eval_s is not None:
        wall, cpu = eval_s
        lines.append(
            f"probe + kNN + t-SNE alone, 2,000 x 1,280, 200 classes: {wall:.2f} s wall, "
            f"{cpu:.2f} s CPU (goal <= 5 s: {'met' if wall <= 5 else 'NOT met'})"
        )
    if loads:
        lines.append(
            f"1-minute load average during the runs: {min(loads):.1f} to {max(loads):.1f} "
            f"on {os.cpu_count()} CPUs"
        )
    lines.append("```")
    return "\n".join(lines)


def describe_machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (
        f"machine: {os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}"
    )


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
