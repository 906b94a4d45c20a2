"""Probe accuracy of each objective at its best learning rate, against the raw backbone
and the untrained predictor: means and 95% intervals over seeds, at equal epochs.

    python benchmarks/objectives_table.py          # 5 seeds, 4-12 min on the shared 2 cores
    python benchmarks/objectives_table.py --expander-width 256 1024   # the README's table
    python benchmarks/objectives_table.py --seeds 0 --max-epochs 2 --lrs 1e-3   # a look
    python benchmarks/objectives_table.py --objectives ema --ema-momentum 0.9 0.97 0.99 0.996

Runs in this process with the library functions a sweep's trial uses (`compute_bank`,
`train_predictor`, `evaluate_representation`): no Ray, no MLflow. The demo's three
disjoint splits, as a sweep uses them (`jepa.data`):

- train: the predictor trains on its views; the probes fit on its clean views;
- validation: the learning rate of each row is chosen on its probe accuracy, mean over
  the seeds; the per-epoch kNN and collapse verdicts use it too;
- test: reported for the chosen learning rate only (never read by a choice).

Every run trains `--max-epochs` epochs: the collapse verdict is recorded, never used to
stop (equal epochs for every objective). `--ema-momentum` / `--expander-width` with several
values give one row per value (the measurements behind the defaults). Accuracy, not
timing: a busy machine gives the same numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from scipy import stats  # noqa: E402

from jepa import metrics as M  # noqa: E402
from jepa.backbones import BackboneSpec, FrozenBackbone, build_backbone, weights_hash  # noqa: E402
from jepa.config import OBJECTIVES, TrialConfig  # noqa: E402
from jepa.data import DatasetSpec, ImageDataset, load_dataset  # noqa: E402
from jepa.evaluate import evaluate_representation  # noqa: E402
from jepa.features import (  # noqa: E402
    DEFAULT_VIEWS,
    FeatureBank,
    FeatureKey,
    FeatureStore,
    compute_bank,
    compute_mode,
)
from jepa.predictor import HierarchicalPredictor  # noqa: E402
from jepa.train import EvalSet, train_predictor  # noqa: E402
from jepa.views import CachedViewPairs  # noqa: E402

BACKBONE_ROW = "raw backbone"
UNTRAINED_ROW = "untrained predictor"
LR_GRID = (3e-4, 1e-3, 3e-3)
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "embeddings"


# --- helpers shared with benchmarks/view_bank.py ----------------------------------------


def interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of its 95% t-interval) of `values`; half-width 0 for one value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, float(half)


def fmt(values: list[float]) -> str:
    mean, half = interval(values)
    return f"{mean:.3f} ± {half:.3f}"


def validation_evalset(bank: FeatureBank) -> EvalSet:
    """Per-epoch diagnostics (kNN, collapse verdict) on train -> validation, never test."""
    return EvalSet(bank.train_clean, bank.train_labels, bank.val_clean, bank.val_labels)


def val_and_test(scores: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """`evaluate_representation`'s scores as (validation, test) rows, each keyed by
    `probe_accuracy`, so that a choice reads the first and the table the second."""
    val = {M.PROBE_ACCURACY: scores[M.VAL_PROBE_ACCURACY]}
    return val, scores


def demo_key(
    seed: int, views: int, aug_strength: float, backbone: FrozenBackbone
) -> tuple[FeatureKey, ImageDataset]:
    """The cache key of the demo's bank for `seed` (V=`views`) on the CPU, and its data."""
    spec = BackboneSpec()
    dataset = load_dataset(DatasetSpec(seed=seed))
    key = FeatureKey(
        weights_hash=weights_hash(spec),
        encoder=spec.encoder,
        manifest_hash=dataset.manifest_hash,
        aug_strength=aug_strength,
        n_views=views,
        image_size=backbone.image_size,
        seed=seed,
        compute=compute_mode("cpu"),
    )
    return key, dataset


def demo_bank(
    seed: int, views: int, cache_dir: str, aug_strength: float
) -> tuple[FeatureBank, ImageDataset]:
    """The demo's bank for `seed` (V=`views`), from the on-disk cache a sweep uses."""
    backbone = build_backbone(BackboneSpec())
    key, dataset = demo_key(seed, views, aug_strength, backbone)
    store = FeatureStore(cache_dir)
    bank = store.load(key)
    if bank is None:
        bank = compute_bank(backbone, dataset, aug_strength, views, seed)
        store.save(key, bank)
    return bank, dataset


# --- the table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One row: an objective and its config overrides (besides lr and seed)."""

    objective: str
    overrides: tuple[tuple[str, float | int], ...] = ()

    @property
    def name(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.overrides)
        return f"`{self.objective}`" + (f" ({extra})" if extra else "")


@dataclass
class Run:
    val: dict[str, float]
    predictor: HierarchicalPredictor
    collapse: str
    history: list[dict[str, float]]
    test: dict[str, float] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    p.add_argument("--lrs", type=float, nargs="+", default=list(LR_GRID))
    p.add_argument("--max-epochs", type=int, default=TrialConfig().max_epochs)
    p.add_argument("--views", type=int, default=DEFAULT_VIEWS)
    p.add_argument("--ema-momentum", type=float, nargs="+", default=None)
    p.add_argument("--expander-width", type=int, nargs="+", default=None)
    add_run_flags(p)
    return p.parse_args(argv)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """--cache-dir and --threads, shared with benchmarks/view_bank.py."""
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: the demo's tensors are small, and on a shared "
        "machine two threads per process ran a 10-epoch ema run in 155 s instead of 4 s)",
    )


def variants(args: argparse.Namespace) -> list[Variant]:
    out = []
    for name in args.objectives:
        if name == "ema" and args.ema_momentum:
            out += [Variant(name, (("ema_momentum", m),)) for m in args.ema_momentum]
        elif name == "vicreg" and args.expander_width:
            out += [Variant(name, (("expander_width", w),)) for w in args.expander_width]
        else:
            out.append(Variant(name))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = variants(args)
    start = time.monotonic()
    fixed: dict[str, list[dict[str, float]]] = {BACKBONE_ROW: [], UNTRAINED_ROW: []}
    runs: dict[tuple[Variant, float], list[Run]] = {}
    dim = 0
    for seed in args.seeds:
        base = TrialConfig(seed=seed, max_epochs=args.max_epochs)
        bank, _ = demo_bank(seed, args.views, args.cache_dir, base.aug_strength)
        dim = bank.train_clean.shape[1]
        fixed[BACKBONE_ROW].append(evaluate_representation(None, bank, seed=seed))
        torch.manual_seed(seed)  # the initialisation train_predictor starts from
        untrained = HierarchicalPredictor(dim, base.predictor_width, base.depth).eval()
        fixed[UNTRAINED_ROW].append(evaluate_representation(untrained, bank, seed=seed))
        evalset = validation_evalset(bank)
        views = CachedViewPairs(bank.views)
        for variant in rows:
            for lr in args.lrs:
                cfg = dataclasses.replace(
                    base, objective=variant.objective, lr=lr, **dict(variant.overrides)
                )
                result = train_predictor(cfg, views, evalset, stop_on_collapse=False)
                predictor = result.predictor.eval()
                finite = all(bool(torch.isfinite(p).all()) for p in predictor.parameters())
                val, test = (
                    val_and_test(evaluate_representation(predictor, bank, seed=seed))
                    if finite
                    else ({M.PROBE_ACCURACY: 0.0}, {})
                )
                collapse = result.collapse if finite else "diverged"
                runs.setdefault((variant, lr), []).append(
                    Run(val, predictor, collapse, result.history, test)
                )
                print(
                    f"seed {seed} {variant.name} lr={lr:g}: val probe "
                    f"{val[M.PROBE_ACCURACY]:.3f}, {collapse} ({time.monotonic() - start:.0f}s)",
                    flush=True,
                )
    # Choose each row's learning rate on validation (mean over seeds); the table shows the
    # chosen runs' test scores.
    chosen: dict[Variant, float] = {}
    for variant in rows:
        chosen[variant] = max(args.lrs, key=lambda lr, v=variant: mean_val(runs[(v, lr)]))
    print()
    print(
        f"digits + demo-vit, {args.max_epochs} epochs for every run (collapse recorded, not "
        f"stopped), {args.views} cached views, seeds {' '.join(map(str, args.seeds))}, "
        f"lr grid {' '.join(f'{lr:g}' for lr in args.lrs)} chosen on validation; "
        f"mean ± 95% t-interval; torch {torch.__version__}; {time.monotonic() - start:.0f}s"
    )
    print(table(rows, args, fixed, runs, chosen))
    return 0


def mean_val(runs: list[Run]) -> float:
    """A row's validation probe accuracy at one lr, mean over the seeds."""
    return statistics.fmean(r.val[M.PROBE_ACCURACY] for r in runs)


def table(rows, args, fixed, runs, chosen) -> str:
    n = len(args.seeds)
    lines = [
        f"| representation | lr (chosen on validation) | validation probe | test probe, {n} seeds "
        "| kNN (validation) | std ratio | centred rank ratio | `jepa.collapse` |",
        "|---|---|---|---|---|---|---|---|",
    ]
    backbone = fixed[BACKBONE_ROW]
    for name, scores in fixed.items():
        ratio = [
            s[M.EFFECTIVE_RANK] / b[M.EFFECTIVE_RANK] for s, b in zip(scores, backbone, strict=True)
        ]
        std = [
            s[M.EMBEDDING_STD] / b[M.EMBEDDING_STD] for s, b in zip(scores, backbone, strict=True)
        ]
        lines.append(
            f"| {name} | - | - | {fmt([s[M.PROBE_ACCURACY] for s in scores])} "
            f"| {fmt([s[M.KNN_ACCURACY] for s in scores])} | {statistics.fmean(std):.3f} "
            f"| {statistics.fmean(ratio):.2f} | - |"
        )
    for variant in rows:
        lr = chosen[variant]
        picked = runs[(variant, lr)]
        val = [r.val[M.PROBE_ACCURACY] for r in picked]
        test = [r.test[M.PROBE_ACCURACY] for r in picked]
        knn = [r.test[M.KNN_ACCURACY] for r in picked]
        std = [r.history[-1][M.EMBEDDING_STD_RATIO] for r in picked]
        rank = [
            r.test[M.EFFECTIVE_RANK] / b[M.EFFECTIVE_RANK]
            for r, b in zip(picked, backbone, strict=True)
        ]
        verdicts = ", ".join(
            f"{v} x{sum(r.collapse == v for r in picked)}"
            for v in dict.fromkeys(r.collapse for r in picked)
        )
        others = ", ".join(
            f"{other:g}: {mean_val(runs[(variant, other)]):.3f}"
            for other in args.lrs
            if other != lr
        )
        lines.append(
            f"| {variant.name} | {lr:g} (others {others}) | {fmt(val)} | {fmt(test)} "
            f"| {fmt(knn)} | {statistics.fmean(std):.3f} | {statistics.fmean(rank):.2f} "
            f"| {verdicts} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
