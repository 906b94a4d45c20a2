"""Probe accuracy of the raw backbone and of each objective, mean and spread over seeds.

    python benchmarks/objectives_table.py              # the README's table (3 seeds)
    python benchmarks/objectives_table.py --seeds 0 --max-epochs 2 --views 2   # a quick look

Runs in this process with the library functions a sweep's trial uses (`compute_bank`,
`train_predictor`, `evaluate_representation`): no Ray, no MLflow. For each seed it embeds
the data set once (V augmented views + clean views, cached on disk like a sweep's
embeddings), probes the raw backbone (the baseline), then trains one predictor per
objective at the config defaults, with the sweep's collapse early stop, and probes it.
It prints a Markdown table. Accuracy, not timing: a busy machine gives the same numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from jepa import metrics as M  # noqa: E402
from jepa.backbones import BackboneSpec, build_backbone, weights_hash  # noqa: E402
from jepa.config import OBJECTIVES, TrialConfig  # noqa: E402
from jepa.data import DatasetSpec, load_dataset  # noqa: E402
from jepa.evaluate import evaluate_representation  # noqa: E402
from jepa.features import (  # noqa: E402
    DEFAULT_VIEWS,
    FeatureKey,
    FeatureStore,
    compute_bank,
    compute_mode,
)
from jepa.train import EvalSet, train_predictor  # noqa: E402
from jepa.views import CachedViewPairs  # noqa: E402

BASELINE = "baseline (raw backbone)"
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "embeddings"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    p.add_argument("--max-epochs", type=int, default=TrialConfig().max_epochs)
    p.add_argument("--views", type=int, default=DEFAULT_VIEWS)
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    p.add_argument(
        "--no-early-stop",
        action="store_true",
        help="train collapsed runs to the end too (tagged, not stopped)",
    )
    return p.parse_args(argv)


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, dict[str, float | str]]:
    spec = BackboneSpec()
    dataset = load_dataset(DatasetSpec(seed=seed))
    backbone = build_backbone(spec)
    cfg0 = TrialConfig(seed=seed, max_epochs=args.max_epochs)
    key = FeatureKey(
        weights_hash=weights_hash(spec),
        encoder=spec.encoder,
        manifest_hash=dataset.manifest_hash,
        aug_strength=cfg0.aug_strength,
        n_views=args.views,
        image_size=backbone.image_size,
        seed=seed,
        compute=compute_mode("cpu"),
    )
    store = FeatureStore(args.cache_dir)
    bank = store.load(key)
    if bank is None:
        bank = compute_bank(backbone, dataset, cfg0.aug_strength, args.views, seed)
        store.save(key, bank)
    rows: dict[str, dict[str, float | str]] = {}
    rows[BASELINE] = {**evaluate_representation(None, bank, seed=seed), "status": "-"}
    evalset = EvalSet(bank.train_clean, bank.train_labels, bank.eval_clean, bank.eval_labels)
    for name in args.objectives:
        cfg = cfg0.replace(objective=name)
        start = time.monotonic()
        result = train_predictor(
            cfg, CachedViewPairs(bank.views), evalset, stop_on_collapse=not args.no_early_stop
        )
        scores = evaluate_representation(result.predictor.eval(), bank, seed=seed)
        last = result.history[-1]
        rows[name] = {
            **scores,
            M.EMBEDDING_STD_RATIO: last[M.EMBEDDING_STD_RATIO],
            "epochs": len(result.history),
            "status": result.status,
        }
        print(
            f"seed {seed} {name}: probe={scores[M.PROBE_ACCURACY]:.4f} "
            f"knn={scores[M.KNN_ACCURACY]:.4f} std_ratio={last[M.EMBEDDING_STD_RATIO]:.3f} "
            f"rank={scores[M.EFFECTIVE_RANK]:.1f} {result.status} after {len(result.history)} "
            f"epochs ({time.monotonic() - start:.0f}s)",
            flush=True,
        )
    print(
        f"seed {seed} baseline: probe={rows[BASELINE][M.PROBE_ACCURACY]:.4f} "
        f"knn={rows[BASELINE][M.KNN_ACCURACY]:.4f}",
        flush=True,
    )
    return rows


def table(results: list[dict[str, dict[str, float | str]]], seeds: list[int]) -> str:
    def stats(values: list[float]) -> str:
        mean = statistics.fmean(values)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{mean:.3f} ± {spread:.3f} ({min(values):.3f}-{max(values):.3f})"

    lines = [
        f"| representation | probe accuracy, mean ± std (min-max), {len(seeds)} seeds "
        "| kNN accuracy (mean) | std ratio (mean) | status (epochs) |",
        "|---|---|---|---|---|",
    ]
    for name in results[0]:
        rows = [r[name] for r in results]
        probe = stats([float(r[M.PROBE_ACCURACY]) for r in rows])
        knn = statistics.fmean(float(r[M.KNN_ACCURACY]) for r in rows)
        if name == BASELINE:
            ratio, status = "1", "-"
        else:
            ratio = f"{statistics.fmean(float(r[M.EMBEDDING_STD_RATIO]) for r in rows):.3f}"
            status = ", ".join(f"{r['status']} ({r['epochs']})" for r in rows)
        lines.append(f"| {name} | {probe} | {knn:.3f} | {ratio} | {status} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = [run_seed(args, seed) for seed in args.seeds]
    print()
    print(
        f"digits + demo-vit, config defaults, {args.max_epochs} epochs max, {args.views} views, "
        f"seeds {' '.join(map(str, args.seeds))}"
        + (", no early stop" if args.no_early_stop else "")
        + f"; torch {torch.__version__}"
    )
    print(table(results, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
