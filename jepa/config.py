"""The one typed configuration of a trial, with every default in one place.

A search space is a set of overrides of `TrialConfig`; unknown keys are errors (a typo
in a space would otherwise make every trial identical).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from jepa.errors import UserInputError

OBJECTIVES = ("cross_view", "stopgrad", "ema", "vicreg")
DEFAULT_VIEWS = 8
"""Augmented views per training image in an embedding bank (`--views`)."""


@dataclass(frozen=True)
class TrialConfig:
    """Hyperparameters of one predictor training run (one Tune trial)."""

    predictor_width: int = 512
    """Hidden width w of the predictor's bottleneck (`Linear D->w, GELU, Linear w->D`)."""
    depth: int = 1
    """Number of residual bottleneck blocks before the output projection."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    aug_strength: float = 0.5
    """Augmentation strength in [0, 1]; see `jepa.augment` for the mapping."""
    objective: str = "cross_view"
    """Training objective, one of `OBJECTIVES`; see `jepa.objectives`."""
    ema_momentum: float = 0.9
    """`ema` only: BYOL's base target momentum tau_base; tau rises from it to 1 along a
    cosine over the run's steps (Grill et al. 2020, sec. 3.2). BYOL's 0.996 is meant for
    ~10^5 steps; 0.9 had the best validation probe of 0.9, 0.97, 0.99, 0.996 on the demo
    (README, "Collapse and objectives", `benchmarks/objectives_table.py --ema-momentum`)."""
    expander_width: int = 1024
    """`vicreg` only: width of VICReg's expander MLP (`Linear-BN-ReLU` x 2, `Linear`), on
    which the loss acts; the predictor's output before it is what is evaluated. The paper
    uses 8192-8192-8192 (Bardes et al. 2022, sec. 4.2)."""
    batch_size: int = 128
    max_epochs: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.predictor_width < 1:
            raise UserInputError(f"predictor_width must be >= 1, got {self.predictor_width}")
        if self.depth < 1:
            raise UserInputError(f"depth must be >= 1, got {self.depth}")
        if not self.lr > 0:
            raise UserInputError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.aug_strength <= 1.0:
            raise UserInputError(f"aug_strength must be in [0, 1], got {self.aug_strength}")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise UserInputError(f"ema_momentum must be in [0, 1), got {self.ema_momentum}")
        if self.expander_width < 1:
            raise UserInputError(f"expander_width must be >= 1, got {self.expander_width}")
        if self.objective not in OBJECTIVES:
            raise UserInputError(
                f"unknown objective {self.objective!r}; known: {', '.join(OBJECTIVES)}"
            )
        if self.batch_size < 2:
            raise UserInputError(f"batch_size must be >= 2, got {self.batch_size}")
        if self.max_epochs < 1:
            raise UserInputError(f"max_epochs must be >= 1, got {self.max_epochs}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        """Build a config from overrides; an unknown key is a `UserInputError`."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise UserInputError(
                f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(cls.field_names())}"
            )
        typed = {}
        for f in fields(cls):
            if f.name in values:
                typed[f.name] = _coerce(f.name, f.type, values[f.name])
        return cls(**typed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, type_name: Any, value: Any) -> Any:
    """Coerce a YAML/Tune value to the field's type (Optuna hands back numpy scalars)."""
    target = {"int": int, "float": float, "str": str}.get(str(type_name), None)
    if target is None:
        return value
    if target is int and isinstance(value, float) and not value.is_integer():
        raise UserInputError(f"{name} must be an integer, got {value}")
    try:
        return target(value)
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"{name} must be {target.__name__}, got {value!r}") from exc
