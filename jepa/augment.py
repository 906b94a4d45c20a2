"""Two-view augmentation with one knob, `aug_strength` s in [0, 1].

Mapping (SimCLR/BYOL's recipe scaled by s; s = 1 is the standard strong recipe,
Chen et al. 2020, appendix A):

- random resized crop, scale (1 - 0.92 s, 1): s = 1 gives (0.08, 1); s = 0 no crop
- horizontal flip with p = 0.5 s
- colour jitter with p = 0.8 s: brightness, contrast, saturation 0.4 s, hue 0.1 s
- greyscale with p = 0.2 s
- Gaussian blur (kernel ~10% of the side) with p = 0.5 s
- s = 0 is exactly the clean view: resize only.

Every view is then normalised with the ImageNet mean and std, as I-JEPA's own
evaluation does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# aug_strength levels the shipped spaces use: a few levels, so the embedding cache
# (one entry per level) is reused across trials.
STRENGTH_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)

Transform = Callable[[torch.Tensor], torch.Tensor]


def clean_transform(image_size: int) -> Transform:
    """uint8 [3, h, w] -> normalised float [3, S, S] with S = image_size; no randomness."""
    return v2.Compose(
        [
            v2.ToDtype(torch.float32, scale=True),
            v2.Resize((image_size, image_size), antialias=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def view_transform(strength: float, image_size: int) -> Transform:
    """A random view: uint8 [3, h, w] -> normalised float [3, S, S]; s = 0 is `clean_transform`."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"aug_strength must be in [0, 1], got {strength}")
    if strength == 0.0:
        return clean_transform(image_size)
    s = strength
    return v2.Compose(
        [
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomResizedCrop(image_size, scale=(1.0 - 0.92 * s, 1.0), antialias=True),
            v2.RandomHorizontalFlip(p=0.5 * s),
            v2.RandomApply([v2.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s)], p=0.8 * s),
            v2.RandomGrayscale(p=0.2 * s),
            v2.RandomApply([v2.GaussianBlur(kernel_size=_blur_kernel(image_size))], p=0.5 * s),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def _blur_kernel(image_size: int) -> int:
    """An odd kernel about 10% of the image side, as in SimCLR."""
    k = max(3, image_size // 10)
    return k if k % 2 == 1 else k + 1
