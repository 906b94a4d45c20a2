"""Flags -> typed, frozen options: the defaults, the flag types and the backbone/data
flags the sweep (`sweeps/run.py`) and the single run (`python -m sweeps.single`) share.

Imports neither Ray nor MLflow, so that the single run works where Ray is missing.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jepa.backbone_spec import DEMO, IJEPA, NAMES, BackboneSpec
from jepa.config import DEFAULT_VIEWS, TrialConfig
from jepa.dataset_spec import DatasetSpec
from jepa.errors import UserInputError
from sweeps.paths import (
    DEFAULT_CACHE,
    DEFAULT_CHECKPOINT,
    DEFAULT_DATA,
    DEFAULT_STORAGE,
    PROJECT_ROOT,
)
from sweeps.spaces import SearchSpace

DEFAULT_EXPERIMENT = "jepa-sweeps"
TRACKING_URI_HELP = (
    "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow/mlflow.db)"
)


class Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line on stderr and exit 2."""

    def error(self, message: str) -> None:  # argparse would print the usage too
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


@dataclass(frozen=True)
class SourceOptions:
    """The backbone and data set the flags name, checked; `demo_reasons` says why the
    embedded demo stands in for what is missing (empty when nothing is)."""

    backbone: BackboneSpec
    dataset: DatasetSpec
    demo_reasons: tuple[str, ...]


@dataclass(frozen=True)
class SweepOptions:
    """A whole sweep's options, checked (`sweeps.cli.options_from_args` makes them)."""

    space: SearchSpace
    backbone: BackboneSpec
    dataset: DatasetSpec
    demo_reasons: tuple[str, ...]
    num_samples: int = 8
    """Configurations Optuna proposes; the sweep runs num_samples x seeds trials."""
    seeds: int = 1
    """Seeds per proposed configuration (`--seeds K`)."""
    max_epochs: int | None = None
    seed: int = 0
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str = ""
    """Resolved by the CLI (`tracking.default_tracking_uri` when no flag)."""
    storage: str = str(DEFAULT_STORAGE)
    address: str | None = None
    workers_per_trial: int = 1
    gpus_per_trial: float = 0.0
    cpus_per_worker: float = 1.0
    max_concurrent: int | None = None
    scheduler: str = "none"
    feature_cache: bool = True
    views: int = DEFAULT_VIEWS
    cache_dir: str = str(DEFAULT_CACHE)
    resume: bool = False
    max_failures: int = 0
    resume_command: str = ""
    """The command that resumes this sweep (printed at the start and on Ctrl-C)."""
    verbose: bool = False
    """Tune's status tables and the Ray processes' lines on the console (`--verbose`);
    else in the sweep's log file (`sweeps.console`)."""

    def base_config(self) -> dict[str, Any]:
        base = {**TrialConfig().to_dict(), **self.space.fixed, "seed": self.seed}
        if self.max_epochs is not None:
            base["max_epochs"] = self.max_epochs
        return TrialConfig.from_dict(base).to_dict()

    @property
    def total_trials(self) -> int:
        return self.num_samples * self.seeds


def add_source_flags(p: argparse.ArgumentParser) -> None:
    """--backbone, --checkpoint, --encoder, --arch, --data, --*-per-class, --skip-bad-images."""
    model = p.add_argument_group("backbone and data")
    model.add_argument(
        "--backbone",
        choices=("auto", *NAMES),
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
        type=positive_int,
        default=None,
        help="training images per class (default: 10 for Tiny-ImageNet, all for digits)",
    )
    model.add_argument(
        "--val-per-class",
        type=positive_int,
        default=None,
        help="validation images per class, what the search selects on (default: 10 for "
        "Tiny-ImageNet, from the training folders outside the training subset; all of "
        "the demo's validation split)",
    )
    model.add_argument(
        "--eval-per-class",
        type=positive_int,
        default=None,
        help="test images per class, reported for the chosen config (default: all)",
    )
    model.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip unreadable images (counted and logged) instead of failing",
    )


def add_cache_flags(group: argparse._ArgumentGroup) -> None:
    """--views and --cache-dir."""
    group.add_argument(
        "--views",
        type=int,
        default=DEFAULT_VIEWS,
        help="augmented views cached per training image (default: %(default)s)",
    )
    group.add_argument(
        "--cache-dir",
        default=str(DEFAULT_CACHE),
        help="embedding cache folder (default: %(default)s)",
    )


def source_options(args: argparse.Namespace, seed: int) -> SourceOptions:
    """The flags of `add_source_flags` as specs; `seed` draws the data subsets."""
    backbone, checkpoint, data, reasons = resolve_paths(args)
    return SourceOptions(
        backbone=BackboneSpec(
            name=backbone,
            checkpoint=str(checkpoint) if checkpoint else None,
            encoder=args.encoder,
            arch=args.arch,
        ),
        dataset=DatasetSpec(
            source=data,
            images_per_class=args.images_per_class,
            eval_per_class=args.eval_per_class,
            val_per_class=args.val_per_class,
            seed=seed,
            skip_bad_images=args.skip_bad_images,
        ),
        demo_reasons=tuple(reasons),
    )


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


def check_views(views: int) -> int:
    """`--views`: a pair needs two views of an image."""
    if views < 2:
        raise UserInputError(f"--views {views}: need at least 2 views to make pairs")
    return views


def device(flag: str | None) -> str:
    """`--device`: the torch device named, checked; default cuda when available."""
    import torch  # not at import: `--help` should not wait for torch

    if flag:
        try:
            torch.device(flag)
        except RuntimeError as exc:
            raise UserInputError(f"--device {flag}: {exc}") from None
        return flag
    return "cuda" if torch.cuda.is_available() else "cpu"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value
