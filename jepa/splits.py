"""What to load (`DatasetSpec`, defined in `jepa.dataset_spec`), the loaded splits
(`ImageDataset`) and balanced subsets: the types `jepa.data` and `jepa.tiny_imagenet`
share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Defined in jepa.dataset_spec (light: a command line is checked without torch), named
# here too.
from jepa.dataset_spec import DIGITS as DIGITS
from jepa.dataset_spec import DatasetSpec as DatasetSpec
from jepa.errors import UserInputError


@dataclass
class ImageDataset:
    """Three disjoint labelled splits of uint8 images.

    train_images: [N, 3, h, w] uint8; train_labels: [N] int64; the same for val_*
    (validation, [V, ...]) and eval_* (test, [M, ...]).
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    eval_images: torch.Tensor
    eval_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    class_names: list[str]
    manifest_hash: str
    """SHA-256 over what was loaded (files and labels), part of the embedding-cache key."""
    skipped_images: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def balanced_subset(
    labels: np.ndarray, per_class: int | None, seed: int, index: np.ndarray | None = None
) -> np.ndarray:
    """`per_class` items of every class, chosen by `seed`, in a stable order.

    labels: [N] class of each item; index: [N] what to return for each item (default
    0..N-1). Returns the chosen entries of `index`, sorted. A class with fewer than
    `per_class` items is a `UserInputError`.
    """
    index = np.arange(len(labels)) if index is None else np.asarray(index)
    if per_class is None:
        return np.sort(index)
    if per_class < 1:
        raise UserInputError(f"images per class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < per_class:
            raise UserInputError(
                f"--images-per-class {per_class} is more than the data has: class {cls} "
                f"has {len(members)}; use at most {min(np.bincount(labels)[np.unique(labels)])}"
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(index[np.concatenate(chosen)])
