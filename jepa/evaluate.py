"""Final evaluation of a representation: probe, kNN, collapse metrics, t-SNE picture.

`python -m jepa.evaluate --run-id ID` (wired in `sweeps/single.py`) loads the predictor a
run logged and recomputes its probe and t-SNE picture with these functions.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # `python -m jepa.evaluate` (DESIGN.md) is `sweeps.single`'s command: hand over before the
    # imports below, which would load torch and scikit-learn (~3 s) only for the process
    # that replaces this one to load them again.
    from jepa.commands import hand_over

    hand_over("evaluate", sys.argv[1:])

import pickle
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
from jepa.probe import collapse_metrics, knn_accuracy, linear_probe, probe_accuracy_plain

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
    *,
    status: str | None = None,
    epochs: int | None = None,
) -> dict[str, float]:
    """Metrics of `transform` applied to the bank's clean embeddings.

    transform: [N, D] -> [N, D'] (a trained predictor), or None for the raw backbone.
    Every probe trains on the training split. The standardised probe (C chosen on a
    held-out slice of train drawn by `seed`) scores the validation split
    (`val_probe_accuracy`, what the search selects on) and the test split
    (`probe_accuracy`); the seed's plain probe scores the test split; kNN scores the
    validation split, as it does every epoch. The collapse metrics use the training
    split; the t-SNE picture shows the test split. Everything runs on the CPU, where
    the bank lives: a module `transform` trained on a GPU is moved there first.
    """
    if isinstance(transform, torch.nn.Module):
        transform = transform.cpu()
    f = transform or (lambda x: x)
    train_z, eval_z = f(bank.train_clean).float().cpu(), f(bank.eval_clean).float().cpu()
    val_z = f(bank.val_clean).float().cpu()
    probe = linear_probe(
        train_z,
        bank.train_labels,
        eval_z,
        bank.eval_labels,
        seed=seed,
        val_x=val_z,
        val_y=bank.val_labels,
    )
    std, rank = collapse_metrics(train_z)
    out = {
        M.VAL_PROBE_ACCURACY: probe.val_accuracy,
        M.PROBE_ACCURACY: probe.accuracy,
        M.PROBE_ACCURACY_PLAIN: probe_accuracy_plain(
            train_z, bank.train_labels, eval_z, bank.eval_labels
        ),
        M.KNN_ACCURACY: knn_accuracy(train_z, bank.train_labels, val_z, bank.val_labels),
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
            # The picture says what it shows: the test split, the epochs, the status.
            status=status,
            epochs=epochs,
            split="test",
        )
    return out


def untrained_predictor(dim: int, cfg: TrialConfig) -> HierarchicalPredictor:
    """The predictor a run of `cfg` starts from: its random initialisation under
    `cfg.seed`, drawn as `jepa.train.train_predictor` draws it (seed, then build),
    never trained. Maps [N, dim] -> [N, dim]; the sweep's second baseline."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return HierarchicalPredictor(dim, cfg.predictor_width, cfg.depth).eval()


def raw_probe_accuracy(bank: FeatureBank, seed: int) -> float:
    """The raw backbone's standardised probe on the test split at `seed` (the held-out
    slice that picks C is the seed's): what a trial of that seed is paired against."""
    return linear_probe(
        bank.train_clean, bank.train_labels, bank.eval_clean, bank.eval_labels, seed=seed
    ).accuracy


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
    """The clean embeddings of the three splits (no augmented views), [N, D], [K, D]
    and [M, D]:
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
        val_clean=embed_images(backbone, dataset.val_images, clean, device=device),
        val_labels=dataset.val_labels.clone(),
    )
