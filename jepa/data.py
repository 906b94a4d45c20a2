"""Image data sets in the one form the platform uses.

An `ImageDataset` holds uint8 images at their native size, [N, 3, h, w], in three
disjoint labelled splits: train (what the predictor and the probes fit), validation
(what the search selects on: Optuna's metric, ASHA, the best config) and test (reported
once, for the chosen config; called `eval_*` in the code, its historical name). Views
are resized to the backbone's input size later, so a 2,000-image subset of
Tiny-ImageNet stays ~25 MB instead of ~1.2 GB at 224x224.

Data sets:
- `digits`: scikit-learn's handwritten digits (1,797 8x8 greyscale images, 10 classes,
  shipped with scikit-learn), split 60/20/20 stratified: the embedded demo.
- a Tiny-ImageNet-200 folder in its official layout: see `jepa.tiny_imagenet`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

# Defined in jepa.splits (which jepa.tiny_imagenet imports without a loop), named here too.
from jepa.splits import DIGITS as DIGITS
from jepa.splits import DatasetSpec as DatasetSpec
from jepa.splits import ImageDataset as ImageDataset
from jepa.splits import balanced_subset as balanced_subset

# The demo's three-way split: test and validation fractions of the 1,797 images (360
# and 359 images), the rest (1,078) for training.
DIGITS_TEST_FRACTION = 0.2
DIGITS_VAL_FRACTION = 0.2


def load_dataset(spec: DatasetSpec) -> ImageDataset:
    """Load the data set `spec` names; a bad folder is a `UserInputError`."""
    if spec.is_demo:
        return load_digits(spec)
    from jepa.tiny_imagenet import load_tiny_imagenet

    return load_tiny_imagenet(spec)


def load_digits(spec: DatasetSpec) -> ImageDataset:
    """scikit-learn's digits as 3-channel uint8 8x8 images, split 60/20/20 stratified
    into train, validation and test (the same split whatever the seed: the seed picks
    subsets within it)."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    # Pixel values are 0..16; scale to 0..255 and repeat the grey channel three times.
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(images[:, None, :, :], 3, axis=1)
    labels = bunch.target.astype(np.int64)
    idx_rest, idx_eval = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=0
    )
    idx_train, idx_val = train_test_split(
        idx_rest,
        test_size=DIGITS_VAL_FRACTION / (1 - DIGITS_TEST_FRACTION),
        stratify=labels[idx_rest],
        random_state=0,
    )
    idx_train = balanced_subset(labels[idx_train], spec.images_per_class, spec.seed, idx_train)
    idx_val = balanced_subset(labels[idx_val], spec.val_per_class, spec.seed, idx_val)
    idx_eval = balanced_subset(labels[idx_eval], spec.eval_per_class, spec.seed, idx_eval)
    digest = hashlib.sha256()
    for idx in (idx_train, idx_val, idx_eval):
        digest.update(np.ascontiguousarray(images[idx]).tobytes())
        digest.update(np.ascontiguousarray(labels[idx]).tobytes())
    return ImageDataset(
        name=DIGITS,
        train_images=torch.from_numpy(images[idx_train]),
        train_labels=torch.from_numpy(labels[idx_train]),
        eval_images=torch.from_numpy(images[idx_eval]),
        eval_labels=torch.from_numpy(labels[idx_eval]),
        val_images=torch.from_numpy(images[idx_val]),
        val_labels=torch.from_numpy(labels[idx_val]),
        class_names=[str(d) for d in range(10)],
        manifest_hash=digest.hexdigest(),
    )


def describe(spec: DatasetSpec) -> str:
    """A short name for tags: `digits` or `tiny-imagenet-200:<folder>`."""
    return DIGITS if spec.is_demo else f"tiny-imagenet-200:{Path(spec.source).resolve()}"


if __name__ == "__main__":
    # `python -m jepa.data download tiny-imagenet` (see jepa.download).
    import sys

    from jepa.download import main

    sys.exit(main())
