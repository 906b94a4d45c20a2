"""Embeddings of the frozen backbone, computed once per key and kept on disk.

The backbone never changes during a sweep, so a trial needs only its outputs: V
augmented views of every training image plus one clean view of every image of the
three splits (train, validation, test). `compute_bank` makes them; `FeatureStore`
keeps them on disk under a key of everything they depend on, with a checksum so that a
damaged or partial file is recomputed, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from jepa.config import DEFAULT_VIEWS as DEFAULT_VIEWS  # defined there (light), named here too

if TYPE_CHECKING:  # imported where used: a trial reading a bank needs neither timm nor
    # torchvision, and importing them costs a trial's process seconds
    from jepa.batch_augment import BatchViews
    from jepa.data import ImageDataset
    from jepa.frozen import FrozenBackbone

log = logging.getLogger(__name__)

# 2: on the CPU, views are made a block at a time (`BatchViews`): same recipe, other draws.
# 3: the key names the compute mode (`compute_mode`); on a GPU the loader hands over uint8
#    crops, normalised on the GPU.
FORMAT_VERSION = 3
# Images per block of batched views on the CPU; a constant, so the views depend on the
# seed only.
VIEW_BLOCK = 256
# Batches each loader worker prepares ahead on a GPU (PyTorch's default is 2).
PREFETCH = 2
SHM = Path("/dev/shm")


def compute_mode(device: str | torch.device) -> str:
    """How `compute_bank` makes a bank on `device`: device kind, precision, view maker.

    The same seed gives other views, and other numbers, on each: on the CPU, views made
    a block of images at a time (`BatchViews`) through an fp32 forward; on a GPU, each
    image's view drawn under its own seed, handed over as uint8 and run in bf16 autocast.
    Part of `FeatureKey`, so that a CPU bank and a GPU bank never share a cache entry.
    """
    kind = torch.device(device).type
    if kind == "cpu":
        return "cpu/fp32/block-views"
    precision = "bf16" if kind == "cuda" else "fp32"
    return f"{kind}/{precision}/per-image-views-uint8"


@dataclass(frozen=True)
class FeatureKey:
    """Everything an embedding bank depends on."""

    weights_hash: str
    encoder: str
    manifest_hash: str
    aug_strength: float
    n_views: int
    image_size: int
    seed: int
    compute: str
    """`compute_mode` of the device the bank is computed on."""

    def digest(self) -> str:
        payload = json.dumps({"v": FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclass
class FeatureBank:
    """Backbone embeddings for one key. N = train images, V = views, K = validation
    images, M = test images.

    views: [N, V, D] float32, V augmented views of each training image.
    train_clean: [N, D]; train_labels: [N] int64.
    eval_clean: [M, D]; eval_labels: [M] int64: the test split.
    val_clean: [K, D]; val_labels: [K] int64: the validation split (the search's).
    """

    views: torch.Tensor
    train_clean: torch.Tensor
    train_labels: torch.Tensor
    eval_clean: torch.Tensor
    eval_labels: torch.Tensor
    val_clean: torch.Tensor
    val_labels: torch.Tensor

    @property
    def images_embedded(self) -> int:
        """Backbone forward passes (images) it took to make this bank."""
        n, v, _ = self.views.shape
        return n * v + len(self.train_clean) + len(self.val_clean) + len(self.eval_clean)

    def to_state(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in _BANK_FIELDS}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> FeatureBank:
        return cls(**{k: state[k] for k in _BANK_FIELDS})


_BANK_FIELDS = (
    "views",
    "train_clean",
    "train_labels",
    "eval_clean",
    "eval_labels",
    "val_clean",
    "val_labels",
)


class _TransformedImages(torch.utils.data.Dataset):
    """Item i = transform(images[i]) drawn under the seed `base_seed + i`, so a random
    view depends on the image and the caller's seed only, not on the number of loader
    workers or the batch size. With `as_uint8` the view (in [0, 1]) is rounded to
    uint8: a quarter of float32's bytes in shared and pinned memory."""

    def __init__(self, images: torch.Tensor, transform, base_seed: int, as_uint8: bool) -> None:
        self.images, self.transform, self.base_seed = images, transform, base_seed
        self.as_uint8 = as_uint8

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        # torchvision's random transforms draw from the global CPU generator.
        torch.random.default_generator.manual_seed(self.base_seed + i)
        view = self.transform(self.images[i])
        if self.as_uint8:
            view = view.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        return view


def _split_normalize(transform) -> tuple[Callable, tuple | None]:
    """(transform without its final `v2.Normalize`, (mean, std)), or (transform, None)
    when it does not end in one."""
    from torchvision.transforms import v2

    steps = list(getattr(transform, "transforms", []))
    if steps and isinstance(steps[-1], v2.Normalize):
        return v2.Compose(steps[:-1]), (steps[-1].mean, steps[-1].std)
    return transform, None


def loader_workers(
    requested: int | None, batch_bytes: int, prefetch: int = PREFETCH, shm: Path = SHM
) -> int:
    """Loader processes that fit in /dev/shm, where worker batches wait to be collected.

    Each worker holds up to `prefetch` batches of `batch_bytes` there. `requested` None:
    min(8, CPUs), fewer when they do not fit in half of /dev/shm's free space (0: load in
    this process; a line says so). An explicit `requested` that does not fit is an error
    naming /dev/shm's size: a container's default of 64 MB would end in a bus error.
    """
    wanted = min(8, os.cpu_count() or 1) if requested is None else requested
    if wanted == 0 or not shm.is_dir():
        return wanted
    free = shutil.disk_usage(shm).free
    need = wanted * prefetch * batch_bytes
    if requested is not None:
        if need > free:
            raise RuntimeError(
                f"{wanted} loader workers need {need / 1e6:.0f} MB of shared memory "
                f"({prefetch} batches of {batch_bytes / 1e6:.0f} MB each) but {shm} has "
                f"{free / 1e6:.0f} MB free; enlarge it (docker run --shm-size=8g) or use "
                "fewer workers or a smaller batch"
            )
        return wanted
    fits = min(wanted, int(free // 2 // max(1, prefetch * batch_bytes)))
    if fits < wanted:
        print(
            f"extraction: {shm} has {free / 1e6:.0f} MB free, room for {fits} of {wanted} "
            f"loader workers ({prefetch} x {batch_bytes / 1e6:.0f} MB batches each); "
            "enlarge it (docker run --shm-size=8g) for full speed",
            flush=True,
        )
    return fits


@torch.no_grad()
def embed_images(
    backbone: FrozenBackbone,
    images: torch.Tensor,
    transform,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    progress: str | None = None,
    num_workers: int | None = None,
) -> torch.Tensor:
    """Run the backbone on transformed images: uint8 [N, 3, h, w] -> float32 [N, D].

    `transform` maps one uint8 [3, h, w] image to a normalised [3, S, S] tensor; random
    transforms are seeded per image from the caller's global RNG (see
    `_TransformedImages`). On a GPU the forward runs in bf16 autocast on large batches
    (default 512) fed by `num_workers` loader processes (default min(8, CPUs), fewer
    when /dev/shm is small: `loader_workers`) into pinned memory, so the next batch is
    ready while the GPU works; the workers hand over uint8 views and the final
    normalisation runs on the GPU. On the CPU the transforms run in this process
    (workers would only compete with the forward for the cores) and stay float32. The
    output is float32 either way.
    """
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    backbone.to(device)
    if batch_size is None:
        batch_size = 512 if on_gpu else 256
    normalize = None
    if on_gpu:
        transform, normalize = _split_normalize(transform)
    if num_workers is None and not on_gpu:
        num_workers = 0
    if on_gpu or num_workers:
        item_bytes = 3 * backbone.image_size**2 * (1 if normalize else 4)
        num_workers = loader_workers(num_workers, batch_size * item_bytes)
    mean = std = None
    if normalize is not None:
        mean = torch.tensor(normalize[0], device=device).view(1, -1, 1, 1)
        std = torch.tensor(normalize[1], device=device).view(1, -1, 1, 1)
    base_seed = int(torch.randint(0, 2**62, ()).item())
    loader = torch.utils.data.DataLoader(
        _TransformedImages(images, transform, base_seed, as_uint8=normalize is not None),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=on_gpu,
        prefetch_factor=PREFETCH if num_workers > 0 else None,
    )
    out, done = [], 0
    last_print = time.monotonic()
    # Seeding per image moves the global generator: give the caller's back afterwards.
    with torch.random.fork_rng(devices=[]):
        for batch in loader:
            x = batch.to(device, non_blocking=True)
            if mean is not None:
                x = (x.float() / 255 - mean) / std
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
                # Kept on the device until the end: a .cpu() per batch would make the GPU
                # wait for the host every step.
                out.append(backbone.embed(x).float())
            done += len(batch)
            if progress and time.monotonic() - last_print > 10:
                last_print = time.monotonic()
                print(f"{progress}: {done}/{len(images)} images", flush=True)
    return torch.cat(out).cpu() if out else torch.empty(0, backbone.embed_dim)


def compute_bank(
    backbone: FrozenBackbone,
    dataset: ImageDataset,
    aug_strength: float,
    n_views: int,
    seed: int,
    device: str | torch.device = "cpu",
) -> FeatureBank:
    """Embed V views of each training image and one clean view of every image (V = 0:
    the clean views only).

    The views depend on `seed` only. On the CPU they are made a block of images at a
    time (`BatchViews`: `jepa.augment`'s recipe, ~5x faster than image by image); on a
    GPU, where the backbone dominates, by `embed_images`.
    """
    from jepa.augment import clean_transform, view_transform
    from jepa.batch_augment import BatchViews

    size = backbone.image_size
    batched = torch.device(device).type == "cpu"  # as `compute_mode` says: keep them in step
    clean = clean_transform(size)
    augment = view_transform(aug_strength, size)
    if batched:
        clean, augment = BatchViews(clean), BatchViews(augment)
    embed = embed_views if batched else embed_images
    views = []
    with torch.random.fork_rng(devices=[]):
        # The views depend on the seed only, not on what ran before in this process.
        torch.manual_seed(seed)
        for v in range(n_views):
            label = f"views (aug_strength={aug_strength}) {v + 1}/{n_views}"
            views.append(
                embed(backbone, dataset.train_images, augment, device=device, progress=label)
            )
    n, dim = len(dataset.train_images), backbone.embed_dim
    return FeatureBank(
        views=torch.stack(views, dim=1) if views else torch.empty(n, 0, dim),
        train_clean=embed(
            backbone, dataset.train_images, clean, device=device, progress="clean train"
        ),
        train_labels=dataset.train_labels.clone(),
        eval_clean=embed(
            backbone, dataset.eval_images, clean, device=device, progress="clean eval"
        ),
        eval_labels=dataset.eval_labels.clone(),
        val_clean=embed(backbone, dataset.val_images, clean, device=device, progress="clean val"),
        val_labels=dataset.val_labels.clone(),
    )


@torch.no_grad()
def embed_views(
    backbone: FrozenBackbone,
    images: torch.Tensor,
    views: BatchViews,
    device: str | torch.device = "cpu",
    progress: str | None = None,
) -> torch.Tensor:
    """Views of images uint8 [N, 3, h, w], made `VIEW_BLOCK` images at a time, through
    the backbone: float32 [N, D]. On a GPU the forward runs in bf16 autocast."""
    device = torch.device(device)
    backbone.to(device)
    out = []
    last_print = time.monotonic()
    for start in range(0, len(images), VIEW_BLOCK):
        batch = views(images[start : start + VIEW_BLOCK])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(backbone.embed(batch.to(device)).float().cpu())
        if progress and time.monotonic() - last_print > 10:
            last_print = time.monotonic()
            print(f"{progress}: {start + len(batch)}/{len(images)} images", flush=True)
    return torch.cat(out) if out else torch.empty(0, backbone.embed_dim)


class FeatureStore:
    """Banks on disk: `<root>/<digest>.pt` plus `<digest>.json` with its SHA-256."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def paths(self, key: FeatureKey) -> tuple[Path, Path]:
        digest = key.digest()
        return self.root / f"{digest}.pt", self.root / f"{digest}.json"

    def load(self, key: FeatureKey) -> FeatureBank | None:
        """The stored bank, or None when absent, partial or damaged (then it is removed)."""
        data_path, meta_path = self.paths(key)
        if not data_path.exists() or not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("sha256") != file_sha256(data_path) or meta.get("key") != asdict(key):
                raise ValueError("checksum or key mismatch")
            state = torch.load(data_path, map_location="cpu", weights_only=True)
            return FeatureBank.from_state(state)
        except Exception as exc:  # a damaged cache must never be used: drop and recompute
            log.warning("embedding cache %s is damaged (%s); recomputing", data_path, exc)
            print(f"embedding cache {data_path.name} is damaged ({exc}); recomputing", flush=True)
            data_path.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            return None

    def get_or_compute(
        self, key: FeatureKey, compute: Callable[[], FeatureBank]
    ) -> tuple[FeatureBank, bool]:
        """(bank, computed): the stored bank, or `compute()`'s, saved for next time."""
        bank = self.load(key)
        if bank is not None:
            return bank, False
        bank = compute()
        self.save(key, bank)
        return bank, True

    def save(self, key: FeatureKey, bank: FeatureBank) -> Path:
        """Write atomically: a reader sees the old state or the whole new file."""
        self.root.mkdir(parents=True, exist_ok=True)
        data_path, meta_path = self.paths(key)
        _atomic_write(data_path, lambda f: torch.save(bank.to_state(), f))
        meta = {"key": asdict(key), "sha256": file_sha256(data_path)}
        _atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
        return data_path


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read `chunk` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
