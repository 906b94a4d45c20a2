"""What names a data set: `DatasetSpec` and the demo's source name `DIGITS`. Light (no
torch, no numpy), so that parsing and checking a command line imports neither;
`jepa.data` loads the data set a spec names.
"""

from __future__ import annotations

from dataclasses import dataclass

DIGITS = "digits"


@dataclass(frozen=True)
class DatasetSpec:
    """What to load: `source` is `digits` or the path of a Tiny-ImageNet-200 folder."""

    source: str = DIGITS
    images_per_class: int | None = None
    """Training images per class; None = all (digits) or 10 (Tiny-ImageNet, the seed's 2,000)."""
    eval_per_class: int | None = None
    """Test images per class; None = all."""
    val_per_class: int | None = None
    """Validation images per class; None = all (digits) or 10 (Tiny-ImageNet)."""
    seed: int = 0
    skip_bad_images: bool = False

    @property
    def is_demo(self) -> bool:
        return self.source == DIGITS
