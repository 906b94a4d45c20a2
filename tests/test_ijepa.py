"""I-JEPA checkpoint files: the platform's embeddings equal the saved network's.

The reference network below is a minimal re-implementation of I-JEPA's
`VisionTransformer` (src/models/vision_transformer.py of facebookresearch/ijepa: conv
patch embedding, fixed sin-cos pos_embed kept in the state dict, pre-norm blocks with a
fused qkv projection, LayerNorm eps 1e-6, final norm, no CLS token), and the file is
written the way I-JEPA's `save_checkpoint` writes it: encoder, predictor and target
encoder state dicts of DDP-wrapped modules (keys `module.*`) plus optimizer state,
scaler, epoch, loss, batch size, world size and lr.
"""

from __future__ import annotations

import argparse
import math
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from jepa.augment import clean_transform
from jepa.backbones import BackboneSpec
from jepa.errors import UserInputError
from jepa.features import embed_images
from jepa.ijepa import inspect_checkpoint, load_ijepa_backbone

# --- a minimal I-JEPA-style ViT: the network a checkpoint is saved from ---------------


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding [grid*grid, dim]: half the channels encode
    the row, half the column, each as [sin, cos] of position * 10000^(-2i/(dim/2))."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")

    def encode(pos: np.ndarray) -> np.ndarray:
        angles = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return torch.from_numpy(np.concatenate([encode(rows), encode(cols)], axis=1)).float()


class RefAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, N, D]
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = ((q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class RefMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RefBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = RefMLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, S, S] -> [B, N, D]
        return self.proj(x).flatten(2).transpose(1, 2)


class RefViT(nn.Module):
    """I-JEPA's encoder: tokens [B, N, D] after the final LayerNorm."""

    def __init__(
        self, img: int, patch: int, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        grid = img // patch
        self.pos_embed = nn.Parameter(sincos_pos_embed(dim, grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList(RefBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.normal_(module.bias, std=0.02)
            elif isinstance(module, nn.LayerNorm):  # not 1/0, so a wrong mapping shows
                nn.init.normal_(module.weight, 1.0, 0.1)
                nn.init.normal_(module.bias, 0.0, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """I-JEPA's evaluation feature: mean over the normed tokens, [B, D]."""
        return self.forward(x).mean(dim=1)


class RefPredictor(nn.Module):
    """Key layout of I-JEPA's `VisionTransformerPredictor` (only its state dict is used)."""

    def __init__(self, dim: int, pred_dim: int, tokens: int, depth: int, heads: int) -> None:
        super().__init__()
        self.predictor_embed = nn.Linear(dim, pred_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pred_dim))
        self.predictor_pos_embed = nn.Parameter(torch.zeros(1, tokens, pred_dim), False)
        self.predictor_blocks = nn.ModuleList(RefBlock(pred_dim, heads, 4.0) for _ in range(depth))
        self.predictor_norm = nn.LayerNorm(pred_dim, eps=1e-6)
        self.predictor_proj = nn.Linear(pred_dim, dim)


class DDPWrapped(nn.Module):
    """What `DistributedDataParallel(m).state_dict()` looks like: keys `module.<name>`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def write_ijepa_checkpoint(
    path: Path,
    encoder: RefViT,
    target: RefViT,
    predictor: nn.Module,
    ddp: bool = True,
    optimizer_step: bool = True,
) -> Path:
    """Save the dict I-JEPA's `save_checkpoint` saves."""
    params = [p for m in (encoder, predictor) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    if optimizer_step:  # one step, so the optimizer state holds moments like a real one
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def wrap(m: nn.Module) -> nn.Module:
        return DDPWrapped(m) if ddp else m

    torch.save(
        {
            "encoder": wrap(encoder).state_dict(),
            "predictor": wrap(predictor).state_dict(),
            "target_encoder": wrap(target).state_dict(),
            "opt": opt.state_dict(),
            "scaler": None,
            "epoch": 3,
            "loss": 0.4321,
            "batch_size": 8,
            "world_size": 2 if ddp else 1,
            "lr": 1e-3,
        },
        path,
    )
    return path


def small_pair(seed: int = 0) -> tuple[RefViT, RefViT, RefPredictor]:
    """A tiny I-JEPA ViT (I-JEPA's vit_tiny width, 2 blocks, 32px, 8px patches), its
    target encoder (a different set of weights, as after EMA updates) and a predictor."""
    torch.manual_seed(seed)
    encoder = RefViT(img=32, patch=8, dim=192, depth=2, heads=3).eval()
    target = RefViT(img=32, patch=8, dim=192, depth=2, heads=3).eval()
    predictor = RefPredictor(192, 96, tokens=16, depth=1, heads=3)
    return encoder, target, predictor


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> tuple[Path, RefViT, RefViT]:
    encoder, target, predictor = small_pair()
    path = tmp_path_factory.mktemp("ckpt") / "IN1K-vit.t.8-test.pth.tar"
    write_ijepa_checkpoint(path, encoder, target, predictor)
    return path, encoder, target


@pytest.mark.parametrize("encoder", ["target", "context"])
def test_embeddings_match_the_saved_network(small_checkpoint, encoder):
    path, context_net, target_net = small_checkpoint
    chosen, other = (target_net, context_net) if encoder == "target" else (context_net, target_net)
    backbone = load_ijepa_backbone(
        BackboneSpec(name="ijepa", checkpoint=str(path), encoder=encoder)
    )
    assert backbone.image_size == 32 and backbone.embed_dim == 192

    torch.manual_seed(1)
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = chosen.embedding(images)
        wrong = other.embedding(images)
    got = backbone.embed(images)
    assert got.shape == (5, 192)
    assert (got - expected).abs().max().item() < 1e-4
    # The two encoders really differ, so the check above tells which one was loaded.
    assert (got - wrong).abs().max().item() > 1e-2

    # Through the platform's extraction path too: uint8 64x64 images, resized to 32 and
    # normalised with ImageNet mean/std, then embedded.
    uint8 = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    transform = clean_transform(backbone.image_size)
    with torch.no_grad():
        expected = chosen.embedding(torch.stack([transform(img) for img in uint8]))
    got = embed_images(backbone, uint8, transform, batch_size=4)
    assert (got - expected).abs().max().item() < 1e-4


def test_architecture_is_recognised_from_the_tensors(small_checkpoint):
    path, _, _ = small_checkpoint
    info = inspect_checkpoint(BackboneSpec(name="ijepa", checkpoint=str(path)))
    shape = info.shape
    assert (shape.embed_dim, shape.depth, shape.num_heads) == (192, 2, 3)
    assert (shape.patch_size, shape.img_size, shape.mlp_hidden) == (8, 32, 768)
    assert info.encoder_key == "target_encoder" and info.epoch == 3
    assert "ViT-Ti/8 32px" in info.describe()


def test_single_gpu_checkpoint_without_module_prefix_loads(tmp_path):
    encoder, target, predictor = small_pair(seed=2)
    path = write_ijepa_checkpoint(tmp_path / "single.pth.tar", encoder, target, predictor, False)
    backbone = load_ijepa_backbone(BackboneSpec(name="ijepa", checkpoint=str(path)))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (backbone.embed(images) - target.embedding(images)).abs().max() < 1e-4


def test_named_arch_must_match_strictly(small_checkpoint):
    path, _, _ = small_checkpoint
    spec = BackboneSpec(name="ijepa", checkpoint=str(path), arch="vit_tiny_patch16_224")
    with pytest.raises(UserInputError) as err:
        inspect_checkpoint(spec)
    message = str(err.value)
    assert "does not load strictly" in message and "missing keys blocks.2." in message
    assert "patch_embed.proj.weight (192, 3, 8, 8) != (192, 3, 16, 16)" in message


def test_unknown_width_asks_for_arch(tmp_path):
    torch.manual_seed(0)
    odd = RefViT(img=32, patch=8, dim=80, depth=1, heads=4)
    predictor = RefPredictor(80, 40, 16, 1, 4)
    path = write_ijepa_checkpoint(tmp_path / "odd.pth.tar", odd, odd, predictor)
    with pytest.raises(UserInputError, match="80-d ViT is none of I-JEPA's sizes.*--arch"):
        inspect_checkpoint(BackboneSpec(name="ijepa", checkpoint=str(path)))


def test_pickled_objects_are_refused_by_the_weights_only_load(tmp_path):
    path = tmp_path / "objects.pth.tar"
    torch.save({"target_encoder": {}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(UserInputError, match="weights-only load refuses: argparse.Namespace"):
        inspect_checkpoint(BackboneSpec(name="ijepa", checkpoint=str(path)))


# --- bad files through the CLI: exit 2, one line, no MLflow run ---------------------


def _bad_checkpoint(kind: str, tmp_path: Path, good: Path) -> tuple[Path, str]:
    """A bad file of `kind` and a piece of the one line the CLI must print."""
    path = tmp_path / f"{kind}.pth.tar"
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "not a readable PyTorch file: a zip archive cut short"
    if kind == "not_a_checkpoint":
        path.write_text("<html>404 Not Found</html>\n")
        return path, "not a readable PyTorch file: a text file (27 B) starting '<html>404"
    checkpoint = torch.load(good, weights_only=True)
    if kind == "missing_key":
        del checkpoint["target_encoder"]["module.blocks.1.mlp.fc2.weight"]
        torch.save(checkpoint, path)
        return path, "missing keys blocks.1.mlp.fc2.weight"
    if kind == "foreign_dict":  # e.g. a supervised timm/torchvision training checkpoint
        state = {k.removeprefix("module."): v for k, v in checkpoint["encoder"].items()}
        torch.save({"model": state, "optimizer": {}, "epoch": 1}, path)
        return path, "not an I-JEPA checkpoint: no 'target_encoder' entry (found keys: model"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["truncated", "not_a_checkpoint", "missing_key", "foreign_dict"])
def test_bad_checkpoint_exits_2_with_one_line_and_no_run(
    kind, small_checkpoint, sweep_dirs, tmp_path, main_in_process
):
    path, expected = _bad_checkpoint(kind, tmp_path, small_checkpoint[0])
    argv = ["--space", "predictor_width", "--checkpoint", str(path), "--data", "digits"]
    argv += sweep_dirs.flags()
    # One kind as a user runs it (a new process); the others call the CLI's main in this
    # process (~4 s less each).
    code, out, lines = main_in_process(argv, new_process=kind == "truncated")
    assert code == 2, out[-2000:] + "\n".join(lines)[-2000:]
    assert len(lines) == 1, lines
    assert expected in lines[0] and str(path) in lines[0], lines[0]
    assert "Ray dashboard" not in out  # rejected before anything started
    db = sweep_dirs.root / "mlflow.db"
    if db.exists():
        assert sqlite3.connect(db).execute("select count(*) from runs").fetchone()[0] == 0


# --- opt-in: the real ViT-H/14 size ---------------------------------------------------


@pytest.mark.full_size
@pytest.mark.skipif(
    os.environ.get("JEPA_FULL_SIZE") != "1", reason="opt-in: JEPA_FULL_SIZE=1 (ViT-H/14, ~6 GB)"
)
def test_full_size_vit_h14(tmp_path):
    torch.manual_seed(0)
    encoder = RefViT(img=224, patch=14, dim=1280, depth=32, heads=16).eval()
    predictor = RefPredictor(1280, 384, tokens=256, depth=1, heads=12)
    # The target encoder shares the encoder's tensors and the optimizer has no moments
    # yet: torch.save stores the weights once, which keeps the file at ~2.6 GB.
    path = write_ijepa_checkpoint(
        tmp_path / "IN1K-vit.h.14-300e.pth.tar", encoder, encoder, predictor, optimizer_step=False
    )
    spec = BackboneSpec(name="ijepa", checkpoint=str(path))
    info = inspect_checkpoint(spec)
    assert info.arch == "vit_huge_patch14_gap_224"
    backbone = load_ijepa_backbone(spec)
    assert backbone.image_size == 224 and backbone.embed_dim == 1280
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = encoder.embedding(images)
    assert (backbone.embed(images) - expected).abs().max().item() < 1e-4
