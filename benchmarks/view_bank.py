"""What the embedding cache's finite bank of views costs: V=8, V=32 and live augmentation
(`--feature-cache off`) at equal epochs, probe accuracy over seeds with 95% intervals.

    python benchmarks/view_bank.py                 # the README's figures: 5 seeds
    python benchmarks/view_bank.py --seeds 0 --max-epochs 2      # a quick look

A bank of V views per image is a finite-augmentation approximation of the seed's fresh
augmentation: V (V - 1) / 2 view pairs per image, one realisation shared by every trial.
Live augmentation draws two fresh views of every image at every step and runs the
backbone on them (what `--feature-cache off` does in a trial, `jepa.views.LiveViewPairs`).

In this process, no Ray, no MLflow, on the demo, with its three splits as a sweep uses
them: the predictor trains on the training split, the choice of V reads the validation
split, the test split is reported beside it. The V=8 bank is the first 8 views of the
V=32 bank (the bank draws its views in order from one seeded generator; checked against
the V=8 bank when it is cached), so the three arms differ only in how many views, or
fresh ones, the predictor sees. A V=32 bank is 40,000 backbone passes (3-9 min each on
the shared 2 cores): a first run takes ~30 min there, a rerun with the banks cached ~5
min plus the live runs (~1 min each).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from objectives_table import (  # noqa: E402
    add_run_flags,
    demo_bank,
    demo_key,
    fmt,
    val_and_test,
    validation_evalset,
)

from jepa import metrics as M  # noqa: E402
from jepa.backbones import BackboneSpec, build_backbone  # noqa: E402
from jepa.config import OBJECTIVES, TrialConfig  # noqa: E402
from jepa.evaluate import evaluate_representation  # noqa: E402
from jepa.features import DEFAULT_VIEWS, FeatureBank  # noqa: E402
from jepa.train import train_predictor  # noqa: E402
from jepa.views import CachedViewPairs, LiveViewPairs  # noqa: E402

LIVE = "live"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--objective", choices=OBJECTIVES, default="vicreg")
    p.add_argument("--lr", type=float, default=TrialConfig().lr)
    p.add_argument("--max-epochs", type=int, default=TrialConfig().max_epochs)
    p.add_argument("--views", type=int, nargs="+", default=[DEFAULT_VIEWS, 32])
    add_run_flags(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    arms = [str(v) for v in sorted(args.views)] + [LIVE]
    scores: dict[str, dict[str, list[float]]] = {arm: {} for arm in arms}
    seconds: dict[str, list[float]] = {arm: [] for arm in arms}
    start = time.monotonic()
    backbone = build_backbone(BackboneSpec())
    for seed in args.seeds:
        cfg = TrialConfig(
            objective=args.objective, lr=args.lr, max_epochs=args.max_epochs, seed=seed
        )
        big, dataset = demo_bank(seed, max(args.views), args.cache_dir, cfg.aug_strength)
        small = demo_bank_if_cached(seed, DEFAULT_VIEWS, args.cache_dir, cfg.aug_strength)
        if small is not None and DEFAULT_VIEWS <= big.views.shape[1]:
            # The nesting this benchmark relies on: V=8 is the first 8 views of V=32.
            assert torch.equal(small.views, big.views[:, :DEFAULT_VIEWS]), "banks not nested"
        evalset = validation_evalset(big)
        for arm in arms:
            if arm == LIVE:
                views = LiveViewPairs(
                    dataset.train_images,
                    backbone,
                    cfg.aug_strength,
                    torch.device("cpu"),
                )
            else:
                views = CachedViewPairs(big.views[:, : int(arm)])
            t0 = time.monotonic()
            result = train_predictor(cfg, views, evalset, stop_on_collapse=False)
            seconds[arm].append(time.monotonic() - t0)
            predictor = result.predictor.eval()
            val, test = val_and_test(evaluate_representation(predictor, big, seed=seed))
            row = scores[arm]
            row.setdefault("val", []).append(val[M.PROBE_ACCURACY])
            row.setdefault("test", []).append(test[M.PROBE_ACCURACY])
            row.setdefault("knn", []).append(test[M.KNN_ACCURACY])  # on validation
            row.setdefault("std", []).append(result.history[-1][M.EMBEDDING_STD_RATIO])
            print(
                f"seed {seed} {arm}: val probe {val[M.PROBE_ACCURACY]:.3f} test probe "
                f"{test[M.PROBE_ACCURACY]:.3f} {result.collapse} ({seconds[arm][-1]:.0f}s "
                f"training; {time.monotonic() - start:.0f}s in all)",
                flush=True,
            )
    print()
    print(
        f"digits + demo-vit, {args.objective} lr {args.lr:g}, {args.max_epochs} epochs for "
        f"every arm, seeds {' '.join(map(str, args.seeds))}; mean ± 95% t-interval; "
        f"torch {torch.__version__}; {time.monotonic() - start:.0f}s"
    )
    n = len(args.seeds)
    print(
        f"| views | validation probe | test probe, {n} seeds | kNN (validation) | std ratio "
        "| training s (median) |"
    )
    print("|---|---|---|---|---|---|")
    for arm in arms:
        row = scores[arm]
        label = "live augmentation (`--feature-cache off`)" if arm == LIVE else f"bank, V={arm}"
        median = sorted(seconds[arm])[len(seconds[arm]) // 2]
        print(
            f"| {label} | {fmt(row['val'])} | {fmt(row['test'])} | {fmt(row['knn'])} "
            f"| {sum(row['std']) / n:.3f} | {median:.0f} |"
        )
    return 0


def demo_bank_if_cached(
    seed: int, views: int, cache_dir: str, aug_strength: float
) -> FeatureBank | None:
    """The V=`views` bank if the cache has it (never computed here)."""
    from jepa.features import FeatureStore

    key, _ = demo_key(seed, views, aug_strength, build_backbone(BackboneSpec()))
    return FeatureStore(cache_dir).load(key)


if __name__ == "__main__":
    sys.exit(main())
