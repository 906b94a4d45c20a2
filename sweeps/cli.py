"""Command line of `sweeps/run.py`: its flags, checked into `SweepOptions`; exit codes.

Exit 0 on success; 2 on bad input with one line on stderr that says what is wrong and
how to fix it; 1 on any other failure.

Light to import: torch, timm, Ray and MLflow are imported once the flags are parsed and
only by the checks that need them, so that `--help`, `--list-spaces` and a mistyped flag
or space answer in well under a second instead of ~6 s (a test checks).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

from jepa.errors import UserInputError
from sweeps import tracking
from sweeps.gpus import check_gpu_banks, check_gpu_sharing
from sweeps.options import (
    DEFAULT_EXPERIMENT,
    DEFAULT_STORAGE,
    Parser,
    SweepOptions,
    add_cache_flags,
    add_source_flags,
    check_views,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    source_options,
)
from sweeps.resume import SweepInterrupted, resume_command
from sweeps.spaces import list_spaces, load_space, load_space_arg


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python sweeps/run.py",
        description=(
            "Sweep hyperparameters of a hierarchical predictor on a frozen I-JEPA backbone "
            "with Ray Tune (Optuna sampler); each trial is trained by Ray Train workers and "
            "logged to MLflow. Without the I-JEPA checkpoint and Tiny-ImageNet it runs the "
            "embedded demo (scikit-learn digits, a small random ViT)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_what_flags(p)
    _add_tracking_flags(p)
    _add_cluster_flags(p)
    add_source_flags(p)
    cache = p.add_argument_group("embedding cache")
    cache.add_argument(
        "--feature-cache",
        choices=("on", "off"),
        default="on",
        help="off: augment and run the backbone on every batch (the seed's way)",
    )
    add_cache_flags(cache)
    return p


def _add_what_flags(p: argparse.ArgumentParser) -> None:
    """--space, --list-spaces, --num-samples, --seeds, --max-epochs, --seed, ..."""
    what = p.add_argument_group("what to sweep")
    what.add_argument(
        "--space",
        help="search space: NAME for search_spaces/NAME.yaml, or the path of a .yaml file",
    )
    what.add_argument("--list-spaces", action="store_true", help="list the spaces and exit")
    what.add_argument(
        "--num-samples",
        type=positive_int,
        default=8,
        help="configurations Optuna proposes (the sweep runs num-samples x seeds trials)",
    )
    what.add_argument(
        "--seeds",
        type=positive_int,
        default=1,
        help="seeds per configuration: each runs K times (seeds S..S+K-1 for a new one), "
        "reported as a mean with a 95%% interval; a config proposed again gets new seeds",
    )
    what.add_argument(
        "--max-epochs",
        type=positive_int,
        default=None,
        help="epochs per trial (default: the config's, 10)",
    )
    what.add_argument(
        "--seed", type=int, default=0, help="seed of the sampler, the views and the trials"
    )
    what.add_argument(
        "--max-concurrent",
        type=positive_int,
        default=None,
        help="trials at once (default: as many as the cluster's CPUs/GPUs hold)",
    )
    what.add_argument(
        "--scheduler",
        choices=("none", "asha"),
        default="none",
        help="early stopping of poor trials (ASHA on the validation split's knn_accuracy)",
    )
    what.add_argument(
        "--max-failures",
        type=non_negative_int,
        default=0,
        help="retries of a trial that raises before it counts as failed (the sweep goes on)",
    )


def _add_tracking_flags(p: argparse.ArgumentParser) -> None:
    """--experiment, --tracking-uri, --storage, --resume, --verbose."""
    track = p.add_argument_group("tracking and storage")
    track.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name")
    track.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI, e.g. a team server http://HOST:5000 that every Ray node "
        "reaches (default: MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow/mlflow.db)",
    )
    track.add_argument(
        "--storage",
        default=str(DEFAULT_STORAGE),
        help="folder (or file:// URI) for Ray Tune's results and the sweep's state for "
        "--resume (sweep.json, the Optuna journal, sweep.log); on a cluster a folder "
        "every node mounts",
    )
    track.add_argument(
        "--resume",
        action="store_true",
        help="continue the last interrupted sweep of this space and experiment",
    )
    track.add_argument(
        "--verbose",
        action="store_true",
        help="show Tune's status tables and the Ray processes' output (Ray Train's "
        "per-report lines, trial tracebacks) on the console; by default they go to "
        "<storage>/<sweep>/sweep.log and the console gets a line per trial start and end "
        "and a progress line",
    )


def _add_cluster_flags(p: argparse.ArgumentParser) -> None:
    """--address, --workers-per-trial, --gpus-per-trial, --cpus-per-worker."""
    cluster = p.add_argument_group("cluster")
    cluster.add_argument(
        "--address",
        default=None,
        help="existing Ray cluster: auto (the one on this machine), HOST:6379 (its GCS), or "
        "ray://HOST:10001 (Ray Client) (default: RAY_ADDRESS, else a new local cluster)",
    )
    cluster.add_argument(
        "--workers-per-trial",
        type=positive_int,
        default=1,
        help="Ray Train workers per trial (DDP when > 1)",
    )
    cluster.add_argument(
        "--gpus-per-trial",
        type=non_negative_float,
        default=0.0,
        help="GPUs per trial, fractions allowed (0.25)",
    )
    cluster.add_argument(
        "--cpus-per-worker",
        type=positive_float,
        default=1.0,
        help="CPUs each Ray Train worker reserves",
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        if args.list_spaces:
            for name in list_spaces():
                print(f"{name:20s} {load_space(name).description}")
            return 0
        if not args.space:
            raise UserInputError("--space NAME is required; see --list-spaces")
        opts = options_from_args(args, argv)
        from sweeps.sweep import run_sweep  # torch, Ray Tune, MLflow: once the flags are good

        summary = run_sweep(opts)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if isinstance(exc, SweepInterrupted):
            print(
                f"interrupted: Ray stopped, MLflow runs closed as KILLED; continue with: "
                f"{resume_command(argv)}",
                file=sys.stderr,
            )
        else:
            print("interrupted before the sweep started; nothing to resume", file=sys.stderr)
        return 130
    print("\n".join(summary.verdict))
    return 0 if summary.finished > 0 else 1


def check_storage(storage: str) -> str:
    """`--storage` as an absolute folder: a path, or a file:// URI's path. Other URIs
    (s3://, gs://) are refused: the driver writes the sweep's own state there as plain
    files (sweep.json, the Optuna journal, sweep.log), which `Path` would put in a local
    folder named "s3:" instead."""
    scheme, sep, _ = storage.partition("://")
    if not sep:
        return str(Path(storage).resolve())
    if scheme == "file":
        return str(Path(unquote(urlparse(storage).path)).resolve())
    raise UserInputError(
        f"--storage {storage}: give a folder or a file:// URI (on a cluster a folder every "
        "node mounts); the sweep writes its journal and sweep.json there as files"
    )


def options_from_args(args: argparse.Namespace, argv: list[str]) -> SweepOptions:
    """Validate every flag before anything is started or written."""
    space = load_space_arg(args.space)
    source = source_options(args, seed=args.seed)
    views = check_views(args.views)
    from jepa.backbones import check_backbone  # torch and timm, to load the checkpoint
    from sweeps.cluster import check_cluster  # Ray

    print(f"Backbone: {check_backbone(source.backbone)}")
    address = args.address or os.environ.get("RAY_ADDRESS")
    check_gpu_sharing(args.workers_per_trial, args.gpus_per_trial)
    check_gpu_banks(space, args.gpus_per_trial, args.feature_cache == "on")
    check_cluster(address, args.gpus_per_trial)
    return SweepOptions(
        space=space,
        backbone=source.backbone,
        dataset=source.dataset,
        demo_reasons=source.demo_reasons,
        num_samples=args.num_samples,
        seeds=args.seeds,
        max_epochs=args.max_epochs,
        seed=args.seed,
        experiment=args.experiment,
        tracking_uri=args.tracking_uri or tracking.default_tracking_uri(),
        storage=check_storage(args.storage),
        address=address,
        workers_per_trial=args.workers_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_worker=args.cpus_per_worker,
        max_concurrent=args.max_concurrent,
        scheduler=args.scheduler,
        feature_cache=args.feature_cache == "on",
        views=views,
        # Absolute: the cache actor's working directory is not the user's.
        cache_dir=str(Path(args.cache_dir).resolve()),
        resume=args.resume,
        max_failures=args.max_failures,
        resume_command=resume_command(argv),
        verbose=args.verbose,
    )
