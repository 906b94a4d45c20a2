"""Where a training batch's two views come from.

- `CachedViewPairs`: two different precomputed views of each image from a
  `FeatureBank` (the default: the backbone ran once, before the sweep).
- `LiveViewPairs`: the seed's way, augment the images and run the backbone on every
  batch (`--feature-cache off`), kept so that the two can be compared.

Both return backbone embeddings x1, x2: [B, D].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from jepa.backbones import FrozenBackbone


class CachedViewPairs:
    """views: [N, V, D] with V >= 2."""

    def __init__(self, views: torch.Tensor) -> None:
        if views.shape[1] < 2:
            raise ValueError(f"need at least 2 cached views per image, got {views.shape[1]}")
        self.views = views
        self.backbone_images = 0  # the backbone does not run here

    def __len__(self) -> int:
        return len(self.views)

    def pairs(self, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Two distinct views of each image in `index` [B]."""
        n_views = self.views.shape[1]
        a = torch.randint(0, n_views, (len(index),), generator=generator)
        b = (a + torch.randint(1, n_views, (len(index),), generator=generator)) % n_views
        return self.views[index, a], self.views[index, b]


class LiveViewPairs:
    """images: uint8 [N, 3, h, w]; augments twice and runs the backbone per batch.

    The views are made as the cache makes them (`BatchViews`), so that the two ways
    differ only in when the backbone runs.
    """

    def __init__(
        self,
        images: torch.Tensor,
        backbone: FrozenBackbone,
        aug_strength: float,
        device: torch.device,
    ) -> None:
        # Imported here: trials with the cache never import torchvision (seconds per trial).
        from jepa.augment import view_transform
        from jepa.batch_augment import BatchViews

        self.images = images
        self.backbone = backbone.to(device)
        self.views = BatchViews(view_transform(aug_strength, backbone.image_size))
        self.device = device
        self.backbone_images = 0

    def __len__(self) -> int:
        return len(self.images)

    def pairs(self, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        out = []
        for _ in range(2):
            batch = self.views(self.images[index])
            with torch.autocast(
                self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
            ):
                out.append(self.backbone.embed(batch.to(self.device)).float())
            self.backbone_images += len(index)
        return out[0], out[1]
