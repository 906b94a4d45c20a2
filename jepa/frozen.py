"""The frozen ViT every backbone becomes (`FrozenBackbone`); `jepa.backbones` builds
them, `jepa.ijepa` loads checkpoints into them. What names one: `jepa.backbone_spec`.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class FrozenBackbone(nn.Module):
    """A ViT in eval mode with gradients off.

    `embed(images)`: normalised images [B, 3, S, S] -> embeddings [B, D], the mean of
    the final-LayerNorm patch tokens, where S = `image_size`, D = `embed_dim`.
    """

    def __init__(self, vit: VisionTransformer, image_size: int, description: str) -> None:
        super().__init__()
        if (
            vit.global_pool != "avg"
            or vit.has_class_token
            or not isinstance(vit.fc_norm, nn.Identity)
        ):
            raise ValueError("backbone must pool by mean over normed tokens, without CLS token")
        self.vit = vit.eval().requires_grad_(False)
        self.image_size = image_size
        self.embed_dim: int = vit.embed_dim
        self.description = description

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(images)  # [B, N, D], final norm applied
        return self.vit.forward_head(tokens, pre_logits=True)  # mean over tokens: [B, D]

    def train(self, mode: bool = True) -> FrozenBackbone:
        # Frozen: stays in eval mode whatever the caller asks.
        return super().train(False)
