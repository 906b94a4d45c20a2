"""Final evaluation of a representation: probe, kNN, collapse metrics, t-SNE picture.

`python -m jepa.evaluate --run-id ID` loads the predictor a run logged and recomputes
its probe and t-SNE picture (the wiring is in `sweeps/single.py`).
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from jepa import metrics as M
from jepa.config import TrialConfig
from jepa.errors import UserInputError
from jepa.features import FeatureBank, embed_images
from jepa.plots import save_tsne_picture
from jepa.predictor import HierarchicalPredictor
from jepa.probe import collapse_metrics, knn_accuracy, linear_probe

if TYPE_CHECKING:  # a trial's worker evaluates cached embeddings: no timm, no torchvision
    from jepa.backbones import FrozenBackbone
    from jepa.data import ImageDataset


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
    Everything runs on the CPU, where the bank lives: a module `transform` trained on a
    GPU is moved there first.
    """
    if isinstance(transform, torch.nn.Module):
        transform = transform.cpu()
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


def load_predictor(path: str | Path) -> tuple[HierarchicalPredictor, TrialConfig]:
    """Read a `predictor.pt` written by `jepa.train.save_predictor`, safely
    (`torch.load(weights_only=True)`); a file of another form is a `UserInputError`."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        cfg = TrialConfig.from_dict(payload["config"])
        predictor = HierarchicalPredictor(int(payload["dim"]), cfg.predictor_width, cfg.depth)
        predictor.load_state_dict(payload["state_dict"])
    except (
        KeyError,
        TypeError,
        RuntimeError,
        OSError,
        ValueError,
        EOFError,
        pickle.UnpicklingError,
    ) as exc:
        raise UserInputError(
            f"{path} is not a predictor.pt written by this platform ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})"
        ) from None
    return predictor.eval(), cfg


def clean_bank(
    backbone: FrozenBackbone, dataset: ImageDataset, device: str | torch.device = "cpu"
) -> FeatureBank:
    """The clean embeddings of both splits (no augmented views), [N, D] and [M, D]:
    everything `evaluate_representation` needs. The clean transform is deterministic, so
    these equal the ones the run was evaluated on."""
    from jepa.augment import clean_transform

    clean = clean_transform(backbone.image_size)
    return FeatureBank(
        views=torch.empty(len(dataset.train_images), 0, backbone.embed_dim),
        train_clean=embed_images(backbone, dataset.train_images, clean, device=device),
        train_labels=dataset.train_labels.clone(),
        eval_clean=embed_images(backbone, dataset.eval_images, clean, device=device),
        eval_labels=dataset.eval_labels.clone(),
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m jepa.evaluate --run-id ID`: recompute a logged run's probe and t-SNE."""
    from sweeps.single import evaluate_main

    return evaluate_main(argv)


if __name__ == "__main__":
    sys.exit(main())
