"""Feature-extraction throughput of the frozen backbone, and how close it gets to the GPU.

    python benchmarks/extract_throughput.py              # ViT-H/14 224 on the GPU
    python benchmarks/extract_throughput.py --arch small  # CPU smoke mode (seconds)
    python benchmarks/extract_throughput.py --checkpoint IN1K-vit.h.14-300e.pth.tar

Random weights in the real architecture (the same timm ViT the I-JEPA checkpoint loads
into; speed does not depend on the values), or with `--checkpoint` an I-JEPA file
loaded as a sweep loads it (`benchmarks/gpu_check.sh` writes one of random weights).
Two figures, and the GPU's peak memory:
- model only: normalised batches already on the device through `FrozenBackbone.embed`
  (bf16 autocast on a GPU): images/s, achieved TFLOP/s and the fraction of the GPU's
  dense bf16 peak;
- pipeline: `jepa.features.embed_images` on uint8 64x64 images (Tiny-ImageNet's size)
  with a random augmentation, loader workers and pinned memory included: shows whether
  the data loader keeps the GPU busy (the loader hands uint8 views to the GPU).

FLOPs per image are counted from the architecture (2 FLOPs per multiply-add: patch
embedding, qkv, attention scores and values, projection, MLP).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jepa.augment import view_transform  # noqa: E402
from jepa.backbones import IJEPA, BackboneSpec, FrozenBackbone, build_backbone  # noqa: E402
from jepa.features import embed_images  # noqa: E402
from jepa.ijepa import VitShape, shape_of  # noqa: E402

ARCHS = {
    # I-JEPA's model zoo
    "huge": VitShape(1280, 32, 16, 14, 224, 5120),  # ViT-H/14 224: IN1K-vit.h.14-300e
    "huge448": VitShape(1280, 32, 16, 16, 448, 5120),  # ViT-H/16 448
    "giant": VitShape(1408, 40, 16, 16, 224, 6144),  # ViT-g/16 224
    # CPU smoke mode: I-JEPA's vit_tiny width, 4 blocks
    "small": VitShape(192, 4, 3, 16, 224, 768),
}

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s, matched
# against torch.cuda.get_device_name() in this order (first match wins).
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM, e.g. "NVIDIA H100 80GB HBM3"
    ("H200", 989.4),
    ("H800", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
)


def flops_per_image(shape: VitShape) -> float:
    """Forward FLOPs of one image (2 per multiply-add), N tokens, D dims, H MLP width."""
    n = (shape.img_size // shape.patch_size) ** 2
    d, h = shape.embed_dim, shape.mlp_hidden
    patch = n * 3 * shape.patch_size**2 * d
    per_block = 3 * n * d * d + 2 * n * n * d + n * d * d + 2 * n * d * h
    return 2.0 * (patch + shape.depth * per_block)


def peak_tflops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "CPU", None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_TFLOPS:
        if key in name:
            return name, peak
    return name, None


def random_backbone(shape: VitShape, device: torch.device) -> FrozenBackbone:
    vit = shape.build().to_empty(device=device)  # meta -> device, then random init
    vit.init_weights()
    return FrozenBackbone(vit, shape.img_size, shape.describe())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def model_only(backbone: FrozenBackbone, device, batch: int, batches: int) -> float:
    """images/s of `embed` on normalised batches already on the device."""
    x = torch.randn(batch, 3, backbone.image_size, backbone.image_size, device=device)
    on_gpu = device.type == "cuda"
    for _ in range(2):  # warm-up: kernel selection, allocator
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
            backbone.embed(x)
    sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
            backbone.embed(x)
    sync(device)
    return batch * batches / (time.perf_counter() - start)


def pipeline(backbone: FrozenBackbone, device, batch: int, images: int, workers) -> float:
    """images/s of `embed_images` from uint8 64x64 images with a random augmentation."""
    data = torch.randint(0, 256, (images, 3, 64, 64), dtype=torch.uint8)
    augment = view_transform(0.5, backbone.image_size)
    embed_images(backbone, data[:batch], augment, batch, device, num_workers=workers)  # warm
    sync(device)
    start = time.perf_counter()
    embed_images(backbone, data, augment, batch, device, num_workers=workers)
    sync(device)
    return images / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=sorted(ARCHS), default="huge")
    p.add_argument(
        "--checkpoint", default=None, help="an I-JEPA checkpoint to load instead of --arch"
    )
    p.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    p.add_argument("--batch-size", type=int, default=None, help="default: 512 GPU, 16 CPU")
    p.add_argument("--batches", type=int, default=None, help="timed batches (20 GPU, 3 CPU)")
    p.add_argument("--pipeline-images", type=int, default=None, help="default: 8192 GPU, 48 CPU")
    p.add_argument("--workers", type=int, default=None, help="loader workers (embed_images')")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the peak table")
    args = p.parse_args(argv)

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    on_gpu = device.type == "cuda"
    if args.arch != "small" and not args.checkpoint and not on_gpu:
        print(
            f"--arch {args.arch} needs a GPU (ViT-H/14 runs ~0.65 images/s on 2 CPU cores); "
            "use --arch small for the CPU smoke mode",
            file=sys.stderr,
        )
        return 2
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batch = args.batch_size or (512 if on_gpu else 16)
    batches = args.batches or (20 if on_gpu else 3)
    n_images = args.pipeline_images or (8192 if on_gpu else 48)
    name, peak = peak_tflops(device)
    peak = args.peak_tflops or peak
    if args.checkpoint:
        start = time.perf_counter()
        backbone = build_backbone(BackboneSpec(name=IJEPA, checkpoint=args.checkpoint)).to(device)
        shape = shape_of(backbone.vit)
        print(f"checkpoint {args.checkpoint} loaded in {time.perf_counter() - start:.1f}s")
    else:
        shape = ARCHS[args.arch]
        backbone = random_backbone(shape, device)
    flops = flops_per_image(shape)
    params = sum(t.numel() for t in backbone.parameters()) / 1e6
    print(f"device: {name}" + (f" (dense bf16 peak {peak:g} TFLOP/s)" if peak else ""))
    print(f"arch: {shape.describe()}, {params:.1f}M params, {flops / 1e9:.1f} GFLOPs/image")
    print(f"torch {torch.__version__}, batch {batch}, {'bf16 autocast' if on_gpu else 'fp32'}")

    rate = model_only(backbone, device, batch, batches)
    achieved = rate * flops / 1e12
    share = f" = {100 * achieved / peak:.1f}% of peak" if peak else ""
    if on_gpu and not peak:
        share = " (peak unknown for this GPU: pass --peak-tflops)"
    print(f"model only: {rate:.1f} images/s, {achieved:.2f} TFLOP/s{share}")

    rate_pipe = pipeline(backbone, device, batch, n_images, args.workers)
    print(
        f"pipeline (embed_images, uint8 64x64 -> aug 0.5 -> {shape.img_size}px): "
        f"{rate_pipe:.1f} images/s = {100 * rate_pipe / rate:.0f}% of model only"
    )
    if on_gpu:
        gib = torch.cuda.max_memory_allocated(device) / 2**30
        reserved = torch.cuda.max_memory_reserved(device) / 2**30
        print(f"peak GPU memory: {gib:.1f} GiB allocated, {reserved:.1f} GiB reserved by torch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
