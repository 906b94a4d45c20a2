"""Feature extraction: the loader path gives the same views whatever its workers and
batch size, and the throughput benchmark runs (its CPU smoke mode)."""

from __future__ import annotations

import subprocess
import sys

import torch

from jepa.augment import view_transform
from jepa.backbones import BackboneSpec, build_backbone
from jepa.features import embed_images
from tests.conftest import ROOT


def test_random_views_do_not_depend_on_workers_or_batch_size():
    backbone = build_backbone(BackboneSpec())
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    augment = view_transform(1.0, backbone.image_size)

    def views(**kwargs) -> torch.Tensor:
        torch.manual_seed(7)
        return embed_images(backbone, images, augment, **kwargs)

    reference = views(batch_size=4)
    assert torch.allclose(views(batch_size=3, num_workers=2), reference, atol=1e-5)
    torch.manual_seed(8)
    assert not torch.allclose(embed_images(backbone, images, augment), reference, atol=1e-3)
    # The caller's generator moves by exactly one draw (the base seed), not per image.
    torch.manual_seed(7)
    embed_images(backbone, images, augment)
    after = torch.rand(1)
    torch.manual_seed(7)
    torch.randint(0, 2**62, ())
    assert torch.equal(after, torch.rand(1))


def test_benchmark_smoke_mode_on_cpu():
    proc = subprocess.run(
        [sys.executable, "benchmarks/extract_throughput.py", "--arch", "small"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "images/s" in proc.stdout and "GFLOPs/image" in proc.stdout
