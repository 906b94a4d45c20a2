"""Means over seeds with t-based 95% intervals: what the sweep reports per config."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """Mean of n values with its two-sided t interval (Student, n - 1 degrees of
    freedom). With n = 1 there is no spread to estimate: std, low and high are NaN."""

    n: int
    mean: float
    std: float
    """Sample standard deviation (ddof 1)."""
    low: float
    high: float

    @property
    def has_interval(self) -> bool:
        return self.n >= 2

    def text(self, digits: int = 4, sign: bool = False) -> str:
        """`0.9012 [0.8950, 0.9074]`, or `0.9012 (n=1)` without an interval."""
        fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
        head = fmt.format(self.mean)
        if not self.has_interval:
            return f"{head} (n=1)"
        return f"{head} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


def mean_interval(values: Iterable[float], level: float = LEVEL) -> Interval | None:
    """The mean of `values` (finite ones) with its t interval; None when there are none.

    The t interval assumes the values (scores of one config over seeds) are independent
    draws of a normal variable: with a handful of seeds the t quantile (12.7 for n = 2,
    2.78 for n = 5) makes it honestly wide.
    """
    from scipy import stats

    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None
    n = len(xs)
    mean = sum(xs) / n
    if n == 1:
        nan = float("nan")
        return Interval(1, mean, nan, nan, nan)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)
