"""Official I-JEPA checkpoint files as frozen timm ViTs.

The format is what I-JEPA's training code saves (`src/train.py`, `save_checkpoint`,
https://github.com/facebookresearch/ijepa): a dict

    {"encoder": ..., "predictor": ..., "target_encoder": ...,   # state dicts
     "opt": ..., "scaler": ..., "epoch": int, "loss": float, "batch_size": int,
     "world_size": int, "lr": float}

whose state dicts were taken from `DistributedDataParallel` wrappers, so every key starts
with `module.`. The encoders are I-JEPA's `VisionTransformer`
(`src/models/vision_transformer.py`): a conv patch embedding, a fixed 2-D sin-cos
`pos_embed` [1, N, D] stored in the state dict (no CLS token), pre-norm blocks with
`attn.qkv` / `attn.proj` / `mlp.fc1` / `mlp.fc2`, LayerNorm eps 1e-6 and a final `norm`.
Without the prefix these are exactly the names of timm's `VisionTransformer` built with
`class_token=False, global_pool="avg", fc_norm=False` (timm's `vit_*_gap_*` models), so
the load is a strict one-to-one copy: a missing, unexpected or misshapen key is an error
that names it.

The architecture is read from the tensors (embed dim, patch size, depth, MLP width,
pos_embed tokens); the head count is the one thing shapes cannot tell, so it comes from
I-JEPA's size presets by embed dim, or from a timm name given as `BackboneSpec.arch`.
"""

from __future__ import annotations

import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

from jepa.backbone_spec import BackboneSpec
from jepa.errors import UserInputError, first_line
from jepa.frozen import FrozenBackbone

ENCODER_KEYS = {"target": "target_encoder", "context": "encoder"}
"""`BackboneSpec.encoder` -> the checkpoint's key. The paper evaluates the target encoder."""
CHECKPOINT_KEYS = ("encoder", "predictor", "target_encoder")
DDP_PREFIX = "module."

# I-JEPA's size presets (`vit_tiny` ... `vit_giant` in src/models/vision_transformer.py):
# embed dim -> (size letter, attention heads).
IJEPA_PRESETS: dict[int, tuple[str, int]] = {
    192: ("Ti", 3),
    384: ("S", 6),
    768: ("B", 12),
    1024: ("L", 16),
    1280: ("H", 16),
    1408: ("g", 16),
}

# The model zoo's files under timm's names (timm lists them as `*.in1k_ijepa` /
# `*.in22k_ijepa`): (embed dim, patch, image size, depth) -> timm name.
TIMM_NAMES: dict[tuple[int, int, int, int], str] = {
    (1280, 14, 224, 32): "vit_huge_patch14_gap_224",
    (1280, 16, 448, 32): "vit_huge_patch16_gap_448",
    (1408, 16, 224, 40): "vit_giant_patch16_gap_224",
}

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class VitShape:
    """A ViT's architecture as far as I-JEPA's presets vary it."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    img_size: int
    mlp_hidden: int

    @property
    def timm_name(self) -> str | None:
        return TIMM_NAMES.get((self.embed_dim, self.patch_size, self.img_size, self.depth))

    def describe(self) -> str:
        size = IJEPA_PRESETS.get(self.embed_dim, (f"{self.embed_dim}d", 0))[0]
        return (
            f"ViT-{size}/{self.patch_size} {self.img_size}px "
            f"({self.embed_dim}-d, {self.depth} blocks, {self.num_heads} heads)"
        )

    def build(self) -> VisionTransformer:
        """The matching timm ViT, on the meta device (no memory, no init cost)."""
        with torch.device("meta"):
            return VisionTransformer(
                img_size=self.img_size,
                patch_size=self.patch_size,
                embed_dim=self.embed_dim,
                depth=self.depth,
                num_heads=self.num_heads,
                mlp_ratio=self.mlp_hidden / self.embed_dim,
                qkv_bias=True,
                class_token=False,
                global_pool="avg",
                fc_norm=False,
                num_classes=0,
                weight_init="skip",
            )


@dataclass(frozen=True)
class CheckpointInfo:
    """What `inspect_checkpoint` found: enough to describe the backbone in one line."""

    path: str
    encoder_key: str
    shape: VitShape
    arch: str | None
    epoch: int | None

    def describe(self) -> str:
        arch = f" = {self.arch}" if self.arch else ""
        epoch = f", epoch {self.epoch}" if self.epoch is not None else ""
        return (
            f"I-JEPA {self.encoder_key} of {Path(self.path).name}: "
            f"{self.shape.describe()}{arch}{epoch}"
        )


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, loaded with `weights_only=True` and memory-mapped when the
    file is in PyTorch's zip format (then only the tensors used are ever read).

    A missing, truncated or foreign file is a `UserInputError` saying what was found.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"checkpoint {path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise UserInputError(f"checkpoint {path} is empty (0 bytes); download it again")
    mmap = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise UserInputError(
            f"checkpoint {path} is not a readable PyTorch file: {_what_is(path, size, exc)}"
        ) from None
    if not isinstance(obj, dict):
        raise UserInputError(
            f"checkpoint {path} holds a {type(obj).__name__}, not I-JEPA's dict with "
            f"{', '.join(CHECKPOINT_KEYS)}"
        )
    return obj


def encoder_state_dict(checkpoint: dict, encoder: str, path: str | Path) -> dict:
    """The chosen encoder's state dict with the `module.` prefix removed."""
    if encoder not in ENCODER_KEYS:
        raise UserInputError(f"unknown encoder {encoder!r}; known: {', '.join(ENCODER_KEYS)}")
    key = ENCODER_KEYS[encoder]
    if key not in checkpoint:
        found = ", ".join(map(str, list(checkpoint)[:8])) or "nothing"
        more = ", ..." if len(checkpoint) > 8 else ""
        raise UserInputError(
            f"checkpoint {path} is not an I-JEPA checkpoint: no {key!r} entry (found keys: "
            f"{found}{more}; I-JEPA's have {', '.join(CHECKPOINT_KEYS)})"
        )
    state = checkpoint[key]
    if not isinstance(state, dict) or not state:
        raise UserInputError(
            f"checkpoint {path}: {key!r} is a {type(state).__name__}, not a state dict"
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserInputError(f"checkpoint {path}: {key!r} entry {bad[0]!r} is not a tensor")
    # DDP-wrapped encoders (every multi-GPU I-JEPA run) save `module.<name>`.
    if all(k.startswith(DDP_PREFIX) for k in state):
        state = {k.removeprefix(DDP_PREFIX): v for k, v in state.items()}
    return state


def infer_shape(state: dict, where: str) -> VitShape:
    """The architecture of an I-JEPA encoder state dict, from its tensors' shapes.

    patch_embed.proj.weight: [D, 3, p, p]; pos_embed: [1, (S/p)^2, D];
    blocks.<i>.mlp.fc1.weight: [hidden, D]; depth = number of blocks.
    """
    for key in ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight"):
        if key not in state:
            raise UserInputError(
                f"{where}: missing key {key!r}; not an I-JEPA ViT encoder "
                f"(found: {', '.join(list(state)[:5])}, ...)"
            )
    proj, pos = state["patch_embed.proj.weight"], state["pos_embed"]
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3] or pos.ndim != 3:
        raise UserInputError(
            f"{where}: patch_embed.proj.weight {tuple(proj.shape)} / pos_embed "
            f"{tuple(pos.shape)} are not the shapes of a ViT with square patches"
        )
    embed_dim, patch = proj.shape[0], proj.shape[2]
    grid = math.isqrt(pos.shape[1])
    if grid * grid != pos.shape[1] or pos.shape[2] != embed_dim:
        raise UserInputError(
            f"{where}: pos_embed {tuple(pos.shape)} is not a square grid of {embed_dim}-d "
            "tokens without a CLS token"
        )
    depth = 1 + max(
        (int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))),
        default=-1,
    )
    if embed_dim not in IJEPA_PRESETS:
        raise UserInputError(
            f"{where}: a {embed_dim}-d ViT is none of I-JEPA's sizes "
            f"({', '.join(map(str, IJEPA_PRESETS))}), so its head count is unknown; "
            "name the architecture with --arch (a timm ViT name)"
        )
    return VitShape(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=IJEPA_PRESETS[embed_dim][1],
        patch_size=patch,
        img_size=grid * patch,
        mlp_hidden=state["blocks.0.mlp.fc1.weight"].shape[0],
    )


def build_named(arch: str) -> VisionTransformer:
    """timm model `arch` as a mean-pooled ViT without CLS token, on the meta device."""
    import timm

    if not timm.is_model(arch):
        known = ", ".join(sorted(set(TIMM_NAMES.values())))
        raise UserInputError(f"--arch {arch}: not a timm model name; I-JEPA's are: {known}")
    try:
        with torch.device("meta"):
            vit = timm.create_model(
                arch,
                pretrained=False,
                num_classes=0,
                class_token=False,
                global_pool="avg",
                fc_norm=False,
            )
    except TypeError as exc:
        raise UserInputError(f"--arch {arch}: not a ViT ({_first_line(exc)})") from None
    if not isinstance(vit, VisionTransformer):
        raise UserInputError(f"--arch {arch}: {type(vit).__name__} is not a timm ViT")
    return vit


def shape_of(vit: VisionTransformer) -> VitShape:
    proj = vit.patch_embed.proj.weight
    return VitShape(
        embed_dim=vit.embed_dim,
        depth=len(vit.blocks),
        num_heads=vit.blocks[0].attn.num_heads,
        patch_size=proj.shape[2],
        img_size=vit.patch_embed.img_size[0],
        mlp_hidden=vit.blocks[0].mlp.fc1.weight.shape[0],
    )


def check_keys(vit: VisionTransformer, state: dict, where: str) -> None:
    """A strict match of names and shapes; the error names the first offending keys."""
    expected = {k: v.shape for k, v in vit.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(s)}"
        for k, s in expected.items()
        if k in state and state[k].shape != s
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_some(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {_some(wrong)}")
    if problems:
        raise UserInputError(f"{where} does not load strictly: {'; '.join(problems)}")


def _prepare(spec: BackboneSpec) -> tuple[VisionTransformer, dict, CheckpointInfo]:
    """Read the file, pick the encoder, build the (meta) ViT and check every key."""
    if spec.checkpoint is None:
        raise UserInputError("the ijepa backbone needs --checkpoint PATH")
    checkpoint = read_checkpoint(spec.checkpoint)
    state = encoder_state_dict(checkpoint, spec.encoder, spec.checkpoint)
    key = ENCODER_KEYS[spec.encoder]
    where = f"checkpoint {spec.checkpoint} ({key})"
    if spec.arch:
        vit = build_named(spec.arch)
        shape, arch = shape_of(vit), spec.arch
    else:
        shape = infer_shape(state, where)
        vit, arch = shape.build(), shape.timm_name
    check_keys(vit, state, where)
    epoch = checkpoint.get("epoch")
    info = CheckpointInfo(
        path=str(spec.checkpoint),
        encoder_key=key,
        shape=shape,
        arch=arch,
        epoch=epoch if isinstance(epoch, int) else None,
    )
    return vit, state, info


def inspect_checkpoint(spec: BackboneSpec) -> CheckpointInfo:
    """Validate `spec`'s checkpoint without loading its weights (memory-mapped, meta
    model): cheap enough to run before a sweep creates anything."""
    return _prepare(spec)[2]


def load_ijepa_backbone(spec: BackboneSpec) -> FrozenBackbone:
    """The checkpoint's encoder (target by default) as a frozen timm ViT in float32.

    `embed(images)`: [B, 3, S, S] normalised with ImageNet mean/std -> [B, D], the mean
    of the final-LayerNorm tokens, as I-JEPA evaluates it.
    """
    vit, state, info = _prepare(spec)
    # assign=True puts the checkpoint's tensors into the meta model as they are:
    # no random init, no second copy of the weights.
    vit.load_state_dict(state, strict=True, assign=True)
    vit = vit.float()
    return FrozenBackbone(vit, info.shape.img_size, info.describe())


def _what_is(path: Path, size: int, exc: BaseException) -> str:
    """What a file that torch cannot load looks like, for the error line."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path):
        return (
            f"a zip archive cut short ({_size(size)}, no central directory), i.e. a "
            "truncated download; download it again"
        )
    if head.startswith(b"PK\x03\x04"):
        return f"a zip archive ({_size(size)}) but not a checkpoint ({_first_line(exc)})"
    text = head.decode("utf-8", errors="replace")
    if text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"a text file ({_size(size)}) starting {text.strip()[:40]!r}"
    if head[:1] == b"\x80":  # a pickle: PyTorch's legacy format or a plain pickle
        return f"a pickle ({_size(size)}) torch refuses ({_first_line(exc)})"
    return f"{_size(size)} starting with bytes {head[:8].hex(' ')} ({_first_line(exc)})"


def _some(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # A weights-only refusal's first line is boilerplate; the offending global says more.
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return f"it holds a Python object a weights-only load refuses: {refused.group(1)}"
    return first_line(exc)
