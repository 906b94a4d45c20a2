"""Frozen backbones behind one feature API: `FrozenBackbone.embed(images) -> [B, D]`.

Registry (`BACKBONES`):
- `demo-vit`: a small randomly initialised timm ViT (32x32 input, 4x4 patches, 192-d),
  the same weights on every machine (seeded), for the embedded demo.
- `ijepa`: an official I-JEPA checkpoint file loaded into the matching timm ViT
  (see `jepa.ijepa`).

Both compute features the way I-JEPA evaluates them: the final LayerNorm applied to the
patch tokens, then the mean over tokens (there is no CLS token).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

# Defined in jepa.backbone_spec and jepa.frozen (light, and no loop with jepa.ijepa),
# named here too.
from jepa.backbone_spec import DEMO as DEMO
from jepa.backbone_spec import DEMO_IMAGE_SIZE as DEMO_IMAGE_SIZE
from jepa.backbone_spec import IJEPA as IJEPA
from jepa.backbone_spec import BackboneSpec as BackboneSpec
from jepa.errors import UserInputError
from jepa.features import file_sha256 as file_sha256  # a checkpoint's hash, as a bank's
from jepa.frozen import FrozenBackbone as FrozenBackbone

DEMO_SEED = 0


def demo_vit() -> VisionTransformer:
    """The demo's architecture: ViT with 4 blocks, 192-d, 32x32 input, mean pooling."""
    return VisionTransformer(
        img_size=DEMO_IMAGE_SIZE,
        patch_size=4,
        embed_dim=192,
        depth=4,
        num_heads=3,
        class_token=False,
        global_pool="avg",
        fc_norm=False,
        num_classes=0,
    )


def _build_demo(spec: BackboneSpec) -> FrozenBackbone:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_SEED)
        vit = demo_vit()
    return FrozenBackbone(vit, DEMO_IMAGE_SIZE, "demo-vit (random init, seed 0)")


def _build_ijepa(spec: BackboneSpec) -> FrozenBackbone:
    from jepa.ijepa import load_ijepa_backbone

    return load_ijepa_backbone(spec)


BACKBONES: dict[str, Callable[[BackboneSpec], FrozenBackbone]] = {
    DEMO: _build_demo,
    IJEPA: _build_ijepa,
}


def build_backbone(spec: BackboneSpec) -> FrozenBackbone:
    """The frozen backbone `spec` names; unknown names list the known ones."""
    try:
        builder = BACKBONES[spec.name]
    except KeyError:
        raise UserInputError(
            f"unknown backbone {spec.name!r}; known: {', '.join(BACKBONES)}"
        ) from None
    return builder(spec)


def check_backbone(spec: BackboneSpec) -> str:
    """Validate `spec` cheaply, before a sweep creates anything; returns a one-line
    description. For `ijepa` the checkpoint is read memory-mapped and every key and
    shape checked against the architecture, without loading the weights."""
    if spec.name not in BACKBONES:
        build_backbone(spec)  # raises, listing the known names
    if spec.name == IJEPA:
        from jepa.ijepa import inspect_checkpoint

        return inspect_checkpoint(spec).describe()
    return "demo-vit (random init, seed 0)"


def state_dict_hash(module: nn.Module) -> str:
    """SHA-256 over a module's tensors in key order."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def weights_hash(spec: BackboneSpec) -> str:
    """The backbone weights' identity for cache keys and run params: the checkpoint
    file's SHA-256, or the demo weights' hash."""
    if spec.is_demo:
        return state_dict_hash(_build_demo(spec).vit)
    if spec.checkpoint is None:
        raise UserInputError(f"backbone {spec.name!r} needs --checkpoint PATH")
    return file_sha256(spec.checkpoint)
