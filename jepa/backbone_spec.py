"""What names a backbone: `BackboneSpec` and the backbones' names. Light (no torch, no
timm), so that a process that only passes a spec on (a Tune trial's trainable) stays
small; `jepa.backbones` builds the backbone a spec names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEMO = "demo-vit"
IJEPA = "ijepa"
DEMO_IMAGE_SIZE = 32
NAMES = (DEMO, IJEPA)
"""Every backbone `jepa.backbones.BACKBONES` builds, by name."""


@dataclass(frozen=True)
class BackboneSpec:
    """Which backbone: `name` from `BACKBONES`; for `ijepa` the checkpoint and encoder."""

    name: str = DEMO
    checkpoint: str | None = None
    encoder: str = "target"
    """`target` (the paper evaluates the target encoder) or `context`."""
    arch: str | None = None
    """timm architecture name; None = recognised from the checkpoint's tensor shapes."""

    @property
    def is_demo(self) -> bool:
        return self.name == DEMO

    @property
    def tag(self) -> str:
        """A short name for tags: `demo-vit`, or `ijepa:<checkpoint file>:<encoder>`."""
        return (
            self.name
            if self.is_demo
            else f"{self.name}:{Path(self.checkpoint).name}:{self.encoder}"
        )
