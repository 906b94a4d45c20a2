"""Where the project's files are by default (checkpoint, data, Ray results, embedding
cache). Imports nothing heavy: `sweeps.tracking` and a Tune trial's trainable read it.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = PROJECT_ROOT / "IN1K-vit.h.14-300e.pth.tar"
DEFAULT_DATA = PROJECT_ROOT / "data" / "tiny-imagenet-200"
DEFAULT_STORAGE = PROJECT_ROOT / "ray_results"
DEFAULT_CACHE = PROJECT_ROOT / ".cache" / "embeddings"
