"""One configuration without a sweep, no Ray: `python -m jepa.train` trains and logs one
run like a sweep's trial; `python -m jepa.evaluate` re-evaluates a run. Both hand their
process over to `python -m sweeps.single train|evaluate` (this module; `jepa/commands.py`).

`train` trains one `TrialConfig` in this process and logs it through `sweeps.lifecycle`,
as a sweep's trial is logged: tag `jepa.role=trial` (plus `jepa.single=true`, and no
parent run), the resolved config and the data's identity as params, the per-epoch
metrics, `probe_accuracy`, `probe_lift` against the raw backbone's probe on the same
splits, `jepa.status`, and the artifacts `tsne_embeddings.png`, `predictor.pt`,
`config.yaml`. A diverged run ends FINISHED, tagged diverged, as a trial does.

`evaluate --run-id ID` downloads a run's `predictor.pt`, embeds the run's data set with
the run's backbone again (checking both against the hashes the run logged) and
recomputes the probe, kNN, collapse metrics and the t-SNE picture.

Both exit 0 on success, 2 on bad input (one line on stderr), 1 on any other failure.
Light to import: torch, timm and scikit-learn come with the functions that compute, so
that `--help` and a bad flag answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jepa import metrics as M
from jepa.backbone_spec import DEMO, IJEPA, BackboneSpec
from jepa.config import DEFAULT_VIEWS, OBJECTIVES, TrialConfig
from jepa.dataset_spec import DatasetSpec
from jepa.errors import UserInputError, first_line
from sweeps import lifecycle, tracking
from sweeps.mlflow_conventions import DatasetRef
from sweeps.options import (
    DEFAULT_CACHE,
    DEFAULT_CHECKPOINT,
    DEFAULT_EXPERIMENT,
    TRACKING_URI_HELP,
    Parser,
    SourceOptions,
    add_cache_flags,
    add_source_flags,
    check_views,
    device,
    source_options,
)

if TYPE_CHECKING:
    from jepa.features import FeatureBank

# The commands as DESIGN.md documents them (and as --help and the hints print them).
TRAIN = "python -m jepa.train"
EVALUATE = "python -m jepa.evaluate"
# Params a single run logs besides the config, so that `jepa.evaluate` can rebuild the
# same data set without being told (sweep trials do not have them: then the defaults, or
# the flags, are used and checked against the logged manifest hash).
PARAM_IMAGES_PER_CLASS = "images_per_class"
PARAM_EVAL_PER_CLASS = "eval_per_class"
PARAM_VIEWS = "views"
DEFAULT_TOLERANCE = 0.01


# --- python -m sweeps.single train -------------------------------------------------------


def build_train_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=TRAIN,
        description=(
            "Train one predictor configuration without a sweep (no Ray) and log it to "
            "MLflow like a sweep's trial: params, per-epoch metrics, probe accuracy and "
            "its lift over the raw backbone, collapse status, t-SNE picture, weights. "
            "Without the I-JEPA checkpoint and Tiny-ImageNet it uses the embedded demo."
        ),
    )
    defaults = TrialConfig()
    cfg = p.add_argument_group("configuration (jepa/config.py; default: its defaults)")
    cfg.add_argument("--objective", choices=OBJECTIVES, default=None, help="training objective")
    for name, kind, text in (
        ("predictor_width", int, "hidden width w of the predictor's bottleneck"),
        ("depth", int, "residual blocks of the predictor"),
        ("lr", float, "AdamW learning rate"),
        ("weight_decay", float, "AdamW weight decay"),
        ("aug_strength", float, "augmentation strength in [0, 1]"),
        ("ema_momentum", float, "ema: BYOL's base target momentum (cosine to 1)"),
        ("expander_width", int, "vicreg: width of VICReg's expander"),
        ("batch_size", int, "training batch size"),
        ("max_epochs", int, "epochs (fewer when the run collapses or diverges)"),
        ("seed", int, "seed of the views, the predictor's initialisation and the probe"),
    ):
        cfg.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=None,
            help=f"{text} (config default {getattr(defaults, name)})",
        )
    add_source_flags(p)
    add_cache_flags(p.add_argument_group("embedding cache"))
    track = p.add_argument_group("tracking")
    track.add_argument("--tracking-uri", default=None, help=TRACKING_URI_HELP)
    track.add_argument(
        "--experiment",
        default=DEFAULT_EXPERIMENT,
        help="MLflow experiment name (default: %(default)s)",
    )
    track.add_argument("--run-name", default=None, help="MLflow run name (default: generated)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    return p


@dataclass(frozen=True)
class SingleOptions:
    """Everything one single run needs, checked."""

    config: TrialConfig
    source: SourceOptions
    tracking_uri: str
    views: int = DEFAULT_VIEWS
    cache_dir: str = str(DEFAULT_CACHE)
    experiment: str = DEFAULT_EXPERIMENT
    run_name: str | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class SingleResult:
    run_id: str
    status: str
    metrics: dict[str, float]


def single_options(args: argparse.Namespace) -> SingleOptions:
    """Validate every flag before anything is computed or logged."""
    overrides = {k: getattr(args, k) for k in TrialConfig.field_names()}
    config = TrialConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    return SingleOptions(
        config=config,
        source=source_options(args, seed=config.seed),
        views=check_views(args.views),
        cache_dir=args.cache_dir,
        tracking_uri=args.tracking_uri or tracking.default_tracking_uri(),
        experiment=args.experiment,
        run_name=args.run_name,
        device=device(args.device),
    )


def train_single(opts: SingleOptions) -> SingleResult:
    """Train and evaluate `opts.config` in this process, logged as one MLflow run."""
    from jepa.backbones import weights_hash
    from jepa.data import describe, load_dataset
    from jepa.evaluate import raw_probe_accuracy
    from jepa.train import EvalSet, train_predictor
    from jepa.views import CachedViewPairs

    cfg, spec = opts.config, opts.source
    dataset = load_dataset(spec.dataset)
    backbone_hash = weights_hash(spec.backbone)
    experiment_id = tracking.ensure_experiment(opts.tracking_uri, opts.experiment)
    if spec.demo_reasons:
        print("Using the embedded demo because: " + "; ".join(spec.demo_reasons) + ".")
    bank, embedded = _bank(opts, dataset, backbone_hash)
    client = tracking.client(opts.tracking_uri)
    tags = {
        M.TAG_SINGLE: "true",
        M.TAG_BACKBONE: spec.backbone.tag,
        M.TAG_DATASET: describe(spec.dataset),
    }
    params = {
        "backbone_sha256": backbone_hash,
        "dataset_manifest": dataset.manifest_hash,
        "train_images": len(dataset.train_images),
        "val_images": len(dataset.val_images),
        "eval_images": len(dataset.eval_images),
        PARAM_IMAGES_PER_CLASS: spec.dataset.images_per_class,
        PARAM_EVAL_PER_CLASS: spec.dataset.eval_per_class,
        PARAM_VIEWS: opts.views,
    }
    name = opts.run_name or f"single-{cfg.objective}-{time.strftime('%Y%m%d-%H%M%S')}"
    baseline = raw_probe_accuracy(bank, cfg.seed)
    dataset_ref = DatasetRef.of_loaded(dataset, spec.dataset)
    with lifecycle.trial_run(
        client, experiment_id, name, tags, params, cfg, dataset=dataset_ref, baseline=baseline
    ) as run_id:
        print(f"MLflow: experiment {opts.experiment!r}, run {run_id}")
        print(f"Baseline (raw backbone): probe_accuracy={baseline:.4f}")

        def on_epoch(row: dict[str, float]) -> None:
            lifecycle.log_epoch(client, run_id, row)
            values = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != M.EPOCH)
            print(f"epoch {int(row[M.EPOCH])}: {values}")

        # Epoch diagnostics on the validation split, as in a sweep's trials.
        evalset = EvalSet(bank.train_clean, bank.train_labels, bank.val_clean, bank.val_labels)
        result = train_predictor(
            cfg, CachedViewPairs(bank.views), evalset, on_epoch=on_epoch, device=opts.device
        )
        final = lifecycle.finish_trial(
            client, run_id, result, bank, cfg, baseline=baseline, backbone_images=embedded
        )
    status = str(final.pop(M.TAG_STATUS))
    return SingleResult(run_id=run_id, status=status, metrics=final)


def _bank(opts: SingleOptions, dataset: Any, backbone_hash: str) -> tuple[FeatureBank, int]:
    """(the bank, backbone forward passes spent on it): the same on-disk cache a sweep
    uses, so a run with a sweep's settings and seed reuses its embeddings."""
    from jepa.backbones import build_backbone
    from jepa.features import FeatureKey, FeatureStore, compute_bank, compute_mode

    cfg, store = opts.config, FeatureStore(opts.cache_dir)
    backbone = build_backbone(opts.source.backbone)
    key = FeatureKey(
        weights_hash=backbone_hash,
        encoder=opts.source.backbone.encoder,
        manifest_hash=dataset.manifest_hash,
        aug_strength=float(cfg.aug_strength),
        n_views=opts.views,
        image_size=backbone.image_size,
        seed=cfg.seed,
        compute=compute_mode(opts.device),
    )

    def compute() -> FeatureBank:
        print(f"embedding cache: computing {opts.views} views (aug_strength={key.aug_strength})")
        return compute_bank(
            backbone, dataset, key.aug_strength, key.n_views, key.seed, device=opts.device
        )

    bank, computed = FeatureStore(opts.cache_dir).get_or_compute(key, compute)
    if not computed:
        print(f"embedding cache: {store.paths(key)[0]}")
    return bank, bank.images_embedded if computed else 0


def train_main(argv: list[str] | None = None) -> int:
    args = build_train_parser().parse_args(argv)
    try:
        result = train_single(single_options(args))
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = result.metrics
    if M.PROBE_ACCURACY not in m:  # diverged: nothing was probed
        print(f"Run {result.run_id}: status={result.status} after {m['epochs_run']:.0f} epochs")
        return 0
    print(
        f"Run {result.run_id}: status={result.status} "
        f"probe_accuracy={m[M.PROBE_ACCURACY]:.4f} (lift {m[M.PROBE_LIFT]:+.4f}) "
        f"knn_accuracy={m[M.KNN_ACCURACY]:.4f} embedding_std={m[M.EMBEDDING_STD]:.4g} "
        f"effective_rank={m[M.EFFECTIVE_RANK]:.2f}"
    )
    uri_flag = f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""
    print(f"Evaluate again: {EVALUATE} --run-id {result.run_id}{uri_flag}")
    return 0


# --- python -m sweeps.single evaluate ----------------------------------------------------


def build_evaluate_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=EVALUATE,
        description=(
            "Load the predictor.pt a run logged (a sweep's trial or a `python -m "
            "sweeps.single train` run), embed the run's data set with its backbone again and "
            "recompute the linear probe, kNN, collapse metrics and the t-SNE picture; "
            "compare the probe accuracy with the logged one."
        ),
    )
    p.add_argument("--run-id", required=True, help="MLflow run id of a trial")
    p.add_argument("--tracking-uri", default=None, help=TRACKING_URI_HELP)
    p.add_argument(
        "--output-dir",
        default=None,
        help="where to write tsne_embeddings.png (default: ./evaluate-<run id>)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="exit 1 when the recomputed probe accuracy differs from the logged one by more "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="the I-JEPA checkpoint the run used (checked against its logged SHA-256)",
    )
    p.add_argument(
        "--data", default=None, help="the run's data folder, when it moved (default: its tag)"
    )
    p.add_argument(
        "--images-per-class",
        type=int,
        default=None,
        help="the run's value (default: its logged param, else the data set's default)",
    )
    p.add_argument("--eval-per-class", type=int, default=None, help="as --images-per-class")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    return p


@dataclass
class Reevaluation:
    run_id: str
    scores: dict[str, float]
    logged_probe_accuracy: float | None
    tsne_path: Path


def reevaluate_run(
    run_id: str,
    tracking_uri: str,
    output_dir: Path,
    checkpoint: str | None = None,
    data: str | None = None,
    images_per_class: int | None = None,
    eval_per_class: int | None = None,
    device: str = "cpu",
) -> Reevaluation:
    """Recompute a logged run's evaluation from its `predictor.pt`."""
    from jepa.backbones import build_backbone
    from jepa.data import load_dataset
    from jepa.evaluate import clean_bank, evaluate_representation, load_predictor

    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        if not db.is_file():  # MLflow would create an empty store there
            raise UserInputError(f"no MLflow store at {db}; check --tracking-uri")
    client = tracking.client(tracking_uri)
    run = _get_run(client, run_id, tracking_uri)
    params, tags = run.data.params, run.data.tags
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, M.PREDICTOR_ARTIFACT, tmp)
        except Exception as exc:  # MLflow raises several types for a missing artifact
            raise UserInputError(
                f"run {run_id} has no {M.PREDICTOR_ARTIFACT} artifact ({first_line(exc)}); "
                "only finished trial runs have one"
            ) from None
        predictor, cfg = load_predictor(path)
    backbone_spec = _run_backbone(tags, params, checkpoint)
    dataset = load_dataset(_run_dataset(tags, params, cfg, data, images_per_class, eval_per_class))
    logged_manifest = params.get("dataset_manifest")
    if logged_manifest and dataset.manifest_hash != logged_manifest:
        raise UserInputError(
            f"the data set differs from run {run_id}'s (manifest {dataset.manifest_hash[:12]} "
            f"!= {logged_manifest[:12]}); pass the run's --data, --images-per-class and "
            "--eval-per-class"
        )
    backbone = build_backbone(backbone_spec)
    bank = clean_bank(backbone, dataset, device=device)
    output_dir.mkdir(parents=True, exist_ok=True)
    tsne = output_dir / M.TSNE_ARTIFACT
    scores = evaluate_representation(
        predictor,
        bank,
        tsne_path=tsne,
        title=f"{lifecycle.picture_title(cfg)} (re-evaluated)",
        seed=cfg.seed,
    )
    return Reevaluation(run_id, scores, run.data.metrics.get(M.PROBE_ACCURACY), tsne)


def _get_run(client, run_id: str, uri: str):
    try:
        return client.get_run(run_id)
    except Exception as exc:  # MlflowException for an unknown id, others for a bad store
        raise UserInputError(
            f"no run {run_id!r} in {uri} ({first_line(exc)}); check --run-id and --tracking-uri"
        ) from None


def _run_backbone(tags: dict[str, str], params: dict[str, str], checkpoint: str | None):
    from jepa.backbones import weights_hash

    tag = tags.get(M.TAG_BACKBONE, "")
    if tag == DEMO:
        spec = BackboneSpec(name=DEMO)
    elif tag.startswith(IJEPA + ":"):
        _, name, encoder = tag.split(":", 2)
        path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
        if not path.is_file():
            raise UserInputError(
                f"the run used the I-JEPA checkpoint {name}: pass it with --checkpoint PATH"
            )
        spec = BackboneSpec(name=IJEPA, checkpoint=str(path), encoder=encoder)
    else:
        raise UserInputError(f"the run's backbone tag {M.TAG_BACKBONE}={tag!r} is not known here")
    logged = params.get("backbone_sha256")
    if logged and weights_hash(spec) != logged:
        raise UserInputError(
            f"backbone weights differ from the run's (SHA-256 {logged[:12]}...); "
            "pass the checkpoint the run used with --checkpoint"
        )
    return spec


def _run_dataset(tags, params, cfg: TrialConfig, data, images_per_class, eval_per_class):
    source = data
    if source is None:
        tag = tags.get(M.TAG_DATASET, "")
        source = tag.split(":", 1)[1] if ":" in tag else tag
    if not source:
        raise UserInputError("the run has no data set tag; pass --data")
    if source != "digits" and not Path(source).is_dir():
        raise UserInputError(f"the run's data folder {source} is not here; pass --data PATH")
    return DatasetSpec(
        source=source,
        images_per_class=images_per_class or _int_param(params, PARAM_IMAGES_PER_CLASS),
        eval_per_class=eval_per_class or _int_param(params, PARAM_EVAL_PER_CLASS),
        seed=cfg.seed,  # a sweep draws its subset with its seed, which is every trial's seed
    )


def _int_param(params: dict[str, str], key: str) -> int | None:
    value = params.get(key)
    return None if value in (None, "", "None") else int(value)


def evaluate_main(argv: list[str] | None = None) -> int:
    args = build_evaluate_parser().parse_args(argv)
    # MLflow draws a download progress bar on stderr, where errors go as one line.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = args.tracking_uri or tracking.default_tracking_uri()
    output_dir = Path(args.output_dir or f"evaluate-{args.run_id}")
    try:
        out = reevaluate_run(
            args.run_id,
            uri,
            output_dir,
            checkpoint=args.checkpoint,
            data=args.data,
            images_per_class=args.images_per_class,
            eval_per_class=args.eval_per_class,
            device=device(args.device),
        )
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = out.scores
    print(
        f"Run {out.run_id}: probe_accuracy={s[M.PROBE_ACCURACY]:.4f} "
        f"knn_accuracy={s[M.KNN_ACCURACY]:.4f} embedding_std={s[M.EMBEDDING_STD]:.4g} "
        f"effective_rank={s[M.EFFECTIVE_RANK]:.2f}"
    )
    print(f"t-SNE picture: {out.tsne_path}")
    if out.logged_probe_accuracy is None:
        print("The run logged no probe_accuracy to compare with.")
        return 0
    diff = s[M.PROBE_ACCURACY] - out.logged_probe_accuracy
    print(f"Logged probe_accuracy={out.logged_probe_accuracy:.4f}; difference {diff:+.4f}")
    if abs(diff) > args.tolerance:
        print(f"error: the difference exceeds --tolerance {args.tolerance}", file=sys.stderr)
        return 1
    return 0


# --- python -m sweeps.single train|evaluate ----------------------------------------------

COMMANDS = {"train": train_main, "evaluate": evaluate_main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        print(
            "usage: python -m sweeps.single {train,evaluate} ... (see "
            "python -m sweeps.single train --help)",
            file=sys.stderr,
        )
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
