"""The embedding cache as a Ray actor: one per sweep, computes each key once.

Trials ask the actor for the bank of their `aug_strength`; the actor's methods run one
at a time, so when several trials ask for the same key at once the first computes it
and the others get the same object. Banks travel through the Ray object store (a trial
on another node gets them from there) and persist on disk in `FeatureStore`.

torch, timm and `jepa.features` are imported inside the methods: a process that only
holds a handle (a Tune trial's trainable, `ray.get_actor`) loads this actor's class, and
Ray pickles a decorated class by value, with the globals its methods use. Imported at
the top, they cost each trainable ~5 s of CPU and ~0.75 GB (`test_layers` checks).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import ray

if TYPE_CHECKING:
    from jepa.backbones import BackboneSpec, FrozenBackbone
    from jepa.data import ImageDataset
    from jepa.features import FeatureBank, FeatureKey


CACHE_ENV = {
    # The cache computes on every core (`FeatureCacheActor.__init__`) while the pool's
    # groups start beside it: OpenMP threads that spin at each barrier waiting for a
    # thread that is not scheduled burn the CPU the others need. Passive, they sleep.
    # Measured on 2 cores, a bank of 2,874 images next to one busy process: 11.6 s wall
    # and 15.9 CPU-s spinning, 9.7 s and 9.9 CPU-s passive; alone, 5.4 vs 5.8 s.
    "OMP_WAIT_POLICY": "PASSIVE",
}
"""Environment of the cache actor's process (libgomp reads it when torch loads)."""


def image_size(spec: BackboneSpec) -> int:
    """The input size S ([B, 3, S, S]) of the backbone `spec` names, without building it
    or loading its weights: the demo's is fixed; a checkpoint's comes from its tensor
    shapes, read memory-mapped (`jepa.ijepa.inspect_checkpoint`)."""
    from jepa.backbone_spec import DEMO, DEMO_IMAGE_SIZE

    if spec.name == DEMO:
        return DEMO_IMAGE_SIZE
    from jepa.ijepa import inspect_checkpoint

    return inspect_checkpoint(spec).shape.img_size


# num_gpus in the decorator (the share actually used comes from `.options`), and
# max_calls=1: the worker process exits after each bank and hands back its CUDA context,
# PyTorch's cached GPU memory (the backbone's weights and more, which Ray no longer counts
# once the task ends) and its GPU mapping. Ray sets max_calls=1 by itself only when
# num_gpus is in the decorator (ray/remote_function.py, ray-project/ray#29624).
@ray.remote(num_cpus=0, num_gpus=1, max_calls=1)
def _compute_on_gpu(
    backbone: BackboneSpec, dataset: ImageDataset, aug_strength: float, n_views: int, seed: int
) -> FeatureBank:
    """One bank on a GPU that this task holds only while it computes. An actor holding
    a GPU for the whole sweep would starve the trials on a 1-GPU machine (Ray hides the
    GPUs from actors that reserve none). No deadlock: a trial asks for its bank before
    its Train workers take their GPU share."""
    from jepa.backbones import build_backbone
    from jepa.features import compute_bank

    return compute_bank(build_backbone(backbone), dataset, aug_strength, n_views, seed, "cuda")


@ray.remote(num_cpus=0)
class FeatureCacheActor:
    """Holds {aug_strength: ObjectRef[FeatureBank]} and the backbone work it did."""

    def __init__(
        self,
        cache_dir: str,
        backbone: BackboneSpec,
        dataset: ImageDataset,
        backbone_hash: str,
        n_views: int,
        seed: int,
        gpu_share: float = 0.0,
    ) -> None:
        # The actor reserves no CPU so that it never blocks trials, but it is the only
        # thing running while trials wait for it: let torch use every core.
        import torch

        from jepa.features import FeatureStore

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        self.store = FeatureStore(cache_dir)
        self.backbone_spec, self.dataset = backbone, dataset
        self.n_views, self.seed = n_views, seed
        # > 0: banks are computed by a task holding this much GPU only while it runs.
        self.gpu_share = gpu_share
        self.device = "cuda" if gpu_share > 0 else "cpu"
        self.weights_hash = backbone_hash
        self._backbone = None
        self._image_size: int | None = None
        self._banks: dict[tuple[float, int], ray.ObjectRef] = {}
        self._dataset_ref: ray.ObjectRef | None = None
        self.images_embedded = 0
        self.disk_hits = 0

    def _key(self, aug_strength: float, n_views: int) -> FeatureKey:
        from jepa.features import FeatureKey, compute_mode

        return FeatureKey(
            weights_hash=self.weights_hash,
            encoder=self.backbone_spec.encoder,
            manifest_hash=self.dataset.manifest_hash,
            aug_strength=float(aug_strength),
            n_views=n_views,
            image_size=self.image_size(),
            seed=self.seed,
            compute=compute_mode(self.device),
        )

    def image_size(self) -> int:
        """The backbone's input size, a part of every bank's key, without building the
        backbone: a sweep whose banks are all on disk never loads its weights (nor
        imports timm and torchvision, ~1.6 s of CPU; a ViT-H/14 checkpoint is 2.5 GB)."""
        if self._image_size is None:
            self._image_size = image_size(self.backbone_spec)
        return self._image_size

    def backbone(self) -> FrozenBackbone:
        """The backbone, built the first time a bank is computed here."""
        if self._backbone is None:
            from jepa.backbones import build_backbone

            backbone = build_backbone(self.backbone_spec)
            if backbone.image_size != self.image_size():  # the keys would name other banks
                raise RuntimeError(
                    f"{self.backbone_spec.name}: built with input size {backbone.image_size}, "
                    f"but its spec says {self.image_size()}"
                )
            self._backbone = backbone
        return self._backbone

    def bank(self, aug_strength: float) -> list[ray.ObjectRef]:
        """[ref] to the bank for `aug_strength` (wrapped in a list so Ray passes the
        reference instead of resolving it)."""
        return self._ref(float(aug_strength), self.n_views)

    def clean_bank(self) -> list[ray.ObjectRef]:
        """[ref] to a bank of the clean views only (no augmented views): all that the
        baseline needs when the trials run the backbone themselves (cache off)."""
        return self._ref(0.0, 0)

    def _ref(self, aug_strength: float, n_views: int) -> list[ray.ObjectRef]:
        if (aug_strength, n_views) not in self._banks:
            bank = self._load_or_compute(aug_strength, n_views)
            self._banks[aug_strength, n_views] = ray.put(bank)
        return [self._banks[aug_strength, n_views]]

    def _load_or_compute(self, aug_strength: float, n_views: int) -> FeatureBank:
        from jepa.features import compute_bank

        key = self._key(aug_strength, n_views)
        start = time.monotonic()

        def compute() -> FeatureBank:
            print(
                f"embedding cache: computing aug_strength={aug_strength} "
                f"({n_views} views x {len(self.dataset.train_images)} train images + "
                f"{len(self.dataset.train_images) + len(self.dataset.eval_images)} clean) "
                f"on {self.device}",
                flush=True,
            )
            if self.gpu_share > 0:
                # A short task holds the GPU share only while it embeds (see _compute_on_gpu).
                return ray.get(
                    _compute_on_gpu.options(num_gpus=self.gpu_share).remote(
                        self.backbone_spec, self.dataset, aug_strength, n_views, self.seed
                    )
                )
            return compute_bank(
                self.backbone(), self.dataset, aug_strength, n_views, self.seed, device="cpu"
            )

        bank, computed = self.store.get_or_compute(key, compute)
        if computed:
            self.images_embedded += bank.images_embedded
            print(
                f"embedding cache: aug_strength={aug_strength} done in "
                f"{time.monotonic() - start:.1f}s -> {self.store.paths(key)[0]}",
                flush=True,
            )
        else:
            self.disk_hits += 1
            print(
                f"embedding cache: aug_strength={aug_strength} from {self.store.root}", flush=True
            )
        return bank

    def dataset_ref(self) -> list[ray.ObjectRef]:
        """[ref] to the images, for trials that run the backbone themselves (cache off)."""
        if self._dataset_ref is None:
            self._dataset_ref = ray.put(self.dataset)
        return [self._dataset_ref]

    def stats(self) -> dict[str, int]:
        return {
            "images_embedded": self.images_embedded,
            "banks": len(self._banks),
            "disk_hits": self.disk_hits,
        }
