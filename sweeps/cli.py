"""Command-line interface of `sweeps/run.py`: flags, resolution, exit codes.

Exit 0 on success; 2 on bad input with one line on stderr that says what is wrong and
how to fix it; 1 on any other failure.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from jepa.backbones import BACKBONES, DEMO, IJEPA
from jepa.errors import UserInputError
from jepa.features import DEFAULT_VIEWS
from sweeps import tracking
from sweeps.resume import resume_command
from sweeps.spaces import SearchSpace, list_spaces, load_space, parse_space

PROJECT_ROOT = tracking.PROJECT_ROOT
DEFAULT_CHECKPOINT = PROJECT_ROOT / "IN1K-vit.h.14-300e.pth.tar"
DEFAULT_DATA = PROJECT_ROOT / "data" / "tiny-imagenet-200"
DEFAULT_STORAGE = PROJECT_ROOT / "ray_results"
DEFAULT_CACHE = PROJECT_ROOT / ".cache" / "embeddings"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python sweeps/run.py",
        description=(
            "Sweep hyperparameters of a hierarchical predictor on a frozen I-JEPA backbone "
            "with Ray Tune (Optuna sampler); each trial is trained by Ray Train workers and "
            "logged to MLflow. Without the I-JEPA checkpoint and Tiny-ImageNet it runs the "
            "embedded demo (scikit-learn digits, a small random ViT)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    what = p.add_argument_group("what to sweep")
    what.add_argument(
        "--space",
        help="search space: NAME for search_spaces/NAME.yaml, or the path of a .yaml file",
    )
    what.add_argument("--list-spaces", action="store_true", help="list the spaces and exit")
    what.add_argument(
        "--num-samples",
        type=_positive_int,
        default=8,
        help="configurations Optuna proposes (the sweep runs num-samples x seeds trials)",
    )
    what.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="seeds per configuration: each runs K times (seeds S..S+K-1 for a new one), "
        "reported as a mean with a 95%% interval; a config proposed again gets new seeds",
    )
    what.add_argument(
        "--max-epochs",
        type=_positive_int,
        default=None,
        help="epochs per trial (default: the config's, 10)",
    )
    what.add_argument(
        "--seed", type=int, default=0, help="seed of the sampler, the views and the trials"
    )
    what.add_argument(
        "--max-concurrent",
        type=_positive_int,
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
        type=_non_negative_int,
        default=0,
        help="retries of a trial that raises before it counts as failed (the sweep goes on)",
    )
    track = p.add_argument_group("tracking and storage")
    track.add_argument(
        "--experiment", default=tracking.DEFAULT_EXPERIMENT, help="MLflow experiment name"
    )
    track.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI, e.g. a team server http://HOST:5000 that every Ray node "
        "reaches (default: MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow/mlflow.db)",
    )
    track.add_argument(
        "--storage",
        default=str(DEFAULT_STORAGE),
        help="Ray Tune storage: results, checkpoints, state for --resume; on a cluster a "
        "folder every node shares, or a URI Ray Tune supports (s3://, gs://, file://)",
    )
    track.add_argument(
        "--resume",
        action="store_true",
        help="continue the last interrupted sweep of this space and experiment",
    )
    cluster = p.add_argument_group("cluster")
    cluster.add_argument(
        "--address",
        default=None,
        help="existing Ray cluster: auto (the one on this machine), HOST:6379 (its GCS), or "
        "ray://HOST:10001 (Ray Client) (default: RAY_ADDRESS, else a new local cluster)",
    )
    cluster.add_argument(
        "--workers-per-trial",
        type=_positive_int,
        default=1,
        help="Ray Train workers per trial (DDP when > 1)",
    )
    cluster.add_argument(
        "--gpus-per-trial",
        type=_non_negative_float,
        default=0.0,
        help="GPUs per trial, fractions allowed (0.25)",
    )
    cluster.add_argument(
        "--cpus-per-worker",
        type=_positive_float,
        default=1.0,
        help="CPUs each Ray Train worker reserves",
    )
    model = p.add_argument_group("backbone and data")
    model.add_argument(
        "--backbone",
        choices=("auto", *BACKBONES),
        default="auto",
        help=f"auto: {IJEPA} when the checkpoint is found, else {DEMO}",
    )
    model.add_argument(
        "--checkpoint",
        default=None,
        help=f"I-JEPA checkpoint (default: {DEFAULT_CHECKPOINT.name} at the project root)",
    )
    model.add_argument(
        "--encoder",
        choices=("target", "context"),
        default="target",
        help="which encoder of the checkpoint (the paper evaluates target)",
    )
    model.add_argument(
        "--arch",
        default=None,
        help="timm ViT name of the checkpoint's architecture, e.g. vit_huge_patch14_gap_224 "
        "(default: recognised from the checkpoint's tensor shapes)",
    )
    model.add_argument(
        "--data",
        default=None,
        help="Tiny-ImageNet-200 folder or 'digits' (default: "
        "data/tiny-imagenet-200 when present, else digits)",
    )
    model.add_argument(
        "--images-per-class",
        type=_positive_int,
        default=None,
        help="training images per class (default: 10 for Tiny-ImageNet, all for digits)",
    )
    model.add_argument(
        "--val-per-class",
        type=_positive_int,
        default=None,
        help="validation images per class, what the search selects on (default: 10 for "
        "Tiny-ImageNet, from the training folders outside the training subset; all of "
        "the demo's validation split)",
    )
    model.add_argument(
        "--eval-per-class",
        type=_positive_int,
        default=None,
        help="test images per class, reported for the chosen config (default: all)",
    )
    model.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip unreadable images (counted and logged) instead of failing",
    )
    cache = p.add_argument_group("embedding cache")
    cache.add_argument(
        "--feature-cache",
        choices=("on", "off"),
        default="on",
        help="off: augment and run the backbone on every batch (the seed's way)",
    )
    cache.add_argument(
        "--views",
        type=_at_least_two,
        default=DEFAULT_VIEWS,
        help="augmented views cached per training image",
    )
    cache.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="embedding cache folder")
    return p


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
        from sweeps.resume import SweepInterrupted
        from sweeps.sweep import options_from_args, run_sweep

        options = options_from_args(args)
        options.resume_command = resume_command(argv)
        summary = run_sweep(options)
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


def load_space_arg(text: str) -> SearchSpace:
    """`--space`: a name from search_spaces/, or the path of a space file."""
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise UserInputError(f"--space {text}: no such file; or give a name (--list-spaces)")
        return parse_space(path)
    return load_space(text)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"need at least 2 views to make pairs, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def resolve_paths(args: argparse.Namespace) -> tuple[str, Path | None, str, list[str]]:
    """(backbone name, checkpoint, data source, reasons for the demo) from the flags."""
    reasons = []
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if checkpoint is not None and not checkpoint.is_file():
        raise UserInputError(f"--checkpoint {checkpoint}: no such file")
    if checkpoint is None and DEFAULT_CHECKPOINT.is_file():
        checkpoint = DEFAULT_CHECKPOINT
    backbone = args.backbone
    if backbone == "auto":
        backbone = IJEPA if checkpoint is not None else DEMO
        if checkpoint is None:
            reasons.append(f"no {DEFAULT_CHECKPOINT.name} at the project root (or --checkpoint)")
    if backbone == IJEPA and checkpoint is None:
        raise UserInputError(
            f"--backbone {IJEPA} needs a checkpoint: put {DEFAULT_CHECKPOINT.name} at the "
            "project root or pass --checkpoint PATH"
        )
    data = args.data
    if data is None:
        if DEFAULT_DATA.is_dir():
            data = str(DEFAULT_DATA)
        else:
            data = "digits"
            reasons.append(f"no {DEFAULT_DATA.relative_to(PROJECT_ROOT)} folder (or --data)")
    elif data != "digits" and not Path(data).is_dir():
        raise UserInputError(
            f"--data {data}: no such folder; give a Tiny-ImageNet-200 folder or 'digits'"
        )
    return backbone, checkpoint, data, reasons


def check_cluster(address: str | None, gpus_per_trial: float, timeout_s: float = 5.0) -> None:
    """Before anything starts: the Ray address answers, and a local cluster has the GPUs.

    `ray.init` on an address where nothing listens retries for a long time; a TCP
    connection attempt answers within `timeout_s`.
    """
    if address and address != "auto":
        hostport = address.split("://", 1)[-1].rstrip("/")
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise UserInputError(
                f"--address {address}: expected HOST:PORT, ray://HOST:PORT or auto"
            )
        try:
            socket.create_connection((host, int(port)), timeout=timeout_s).close()
        except OSError as exc:
            raise UserInputError(
                f"--address {address}: cannot reach a Ray cluster there "
                f"({exc.strerror or exc}); start one (ray start --head) "
                "or fix --address / RAY_ADDRESS"
            ) from None
    if not address and gpus_per_trial > 0:
        import torch

        if not torch.cuda.is_available():
            raise UserInputError(
                f"--gpus-per-trial {gpus_per_trial:g} but this machine has no GPU that torch "
                "can use; use --gpus-per-trial 0 (or --address of a cluster with GPUs)"
            )
