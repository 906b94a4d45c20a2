"""Final evaluation of a representation: probe, kNN, collapse metrics, t-SNE picture."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from jepa import metrics as M
from jepa.features import FeatureBank
from jepa.plots import save_tsne_picture
from jepa.probe import collapse_metrics, knn_accuracy, linear_probe


@torch.no_grad()
def evaluate_representation(
    transform: Callable[[torch.Tensor], torch.Tensor] | None,
    bank: FeatureBank,
    tsne_path: str | Path | None = None,
    title: str = "",
    seed: int = 0,
) -> dict[str, float]:
    """Metrics of `transform` applied to the bank's clean embeddings.

    transform: [N, D] -> [N, D'] (a trained predictor), or None for the raw backbone.
    Probe and kNN train on the training split and score the evaluation split; the
    collapse metrics use the training split; the t-SNE picture shows the eval split.
    """
    f = transform or (lambda x: x)
    train_z, eval_z = f(bank.train_clean).float().cpu(), f(bank.eval_clean).float().cpu()
    probe = linear_probe(train_z, bank.train_labels, eval_z, bank.eval_labels, seed=seed)
    std, rank = collapse_metrics(train_z)
    out = {
        M.PROBE_ACCURACY: probe.accuracy,
        M.KNN_ACCURACY: knn_accuracy(train_z, bank.train_labels, eval_z, bank.eval_labels),
        M.EMBEDDING_STD: std,
        M.EFFECTIVE_RANK: rank,
        "probe_C": probe.C,
    }
    if tsne_path is not None:
        save_tsne_picture(
            eval_z.numpy(),
            bank.eval_labels.numpy(),
            tsne_path,
            title=f"{title}  probe={probe.accuracy:.3f}",
            seed=seed,
        )
    return out
