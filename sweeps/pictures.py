"""The sweep's summary pictures: which value is best, by how much, and beyond noise or not.

Plain data in, PNG files out (no MLflow, no Ray), so that a test draws them from lists:

- `plot_accuracy_vs_param`: per swept parameter, validation and test probe accuracy
  against its value (a log axis where the space is loguniform): each seed a small dot,
  each config its mean over seeds with the t-based 95% interval (`sweeps.stats`), the
  baselines (raw backbone, untrained predictor) as labelled horizontal bands, the best
  config (chosen on validation) starred and its margin over the raw backbone written;
- `plot_curves`: every trial's per-epoch `knn_accuracy`, `embedding_std_ratio` and
  `train_loss`, coloured by one parameter with a colour bar, collapsed trials dashed;
- `plot_parallel_coordinates`: one line per trial over the swept parameters and its
  validation score, a colour bar for the score, a legend for the line styles, repeats of
  a config fanned out (jitter) and counted, the raw backbone's value written on its axis.

Sizes are for a 1200 px screen and for print: 10-12 inches wide at 150 dpi, no type
below 11 pt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib import cm as mcm
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from jepa import metrics as M
from sweeps.stats import Interval, mean_interval

# Figures use matplotlib's object API (`Figure`), never pyplot: no backend is chosen on
# import (see jepa/plots.py), and nothing global is left open after a picture is saved.

DPI = 150
FONT = {
    "font.size": 12,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 11,
    "figure.titlesize": 14,
}
CURVE_METRICS = (M.KNN_ACCURACY, M.EMBEDDING_STD_RATIO, M.TRAIN_LOSS)
"""The per-epoch metrics `plot_curves` overlays (logged at steps 1..epochs)."""
STATUS_FINISHED = "finished"
STATUS_COLLAPSED = "collapsed"
BASELINE_COLOURS = ("tab:red", "tab:gray", "tab:brown")
JITTER = 0.06
"""Half-width of the spread of a config's repeats, in axis units (parallel plot) or in
the fraction of a category slot (choice axes)."""

Space = Mapping[str, tuple[str, Sequence[Any]]]
"""`SearchSpace.params`: name -> (distribution, arguments)."""


@dataclass(frozen=True)
class TrialPoint:
    """One trial run, as the pictures need it."""

    params: Mapping[str, str]
    """The swept values as MLflow logged them (text), seed excluded."""
    status: str
    """`jepa.status`: finished, collapsed, diverged, or ''."""
    val: float | None
    """val_probe_accuracy; None when the trial was not scored."""
    test: float | None
    """probe_accuracy (the test split)."""
    lift: float | None = None
    """probe_lift: test minus the raw backbone's test score at the same seed."""
    curves: Mapping[str, Sequence[tuple[int, float]]] = field(default_factory=dict)
    """metric -> [(epoch, value)] for the `CURVE_METRICS` it logged."""


@dataclass(frozen=True)
class Baseline:
    """A baseline's scores over the sweep's seeds."""

    label: str
    """As the legend says it: 'raw backbone', 'untrained predictor'."""
    val: Interval | None
    test: Interval | None


def baseline_from_scores(label: str, by_seed: Mapping[int, Mapping[str, float]]) -> Baseline:
    """A baseline from its scores per seed (`sweeps.sweep.Baselines.scores[kind]`: seed
    -> {val_probe_accuracy, probe_accuracy, ...}): mean and t interval over the seeds."""
    return Baseline(
        label,
        val=mean_interval(v.get(M.VAL_PROBE_ACCURACY) for v in by_seed.values()),
        test=mean_interval(v.get(M.PROBE_ACCURACY) for v in by_seed.values()),
    )


@dataclass
class ConfigPoint:
    """The trials of one config (its swept values) with their mean over seeds."""

    key: tuple[str, ...]
    trials: list[TrialPoint]
    val: Interval | None
    test: Interval | None
    lift: Interval | None = None
    """The paired lift over the raw backbone (mean of the seeds' `probe_lift`)."""

    @property
    def eligible(self) -> bool:
        """Every seed finished (none collapsed or diverged) and was scored: the rule by
        which `sweeps.summary.choose_best` picks the best."""
        return all(t.status == STATUS_FINISHED for t in self.trials) and self.val is not None

    @property
    def collapsed(self) -> bool:
        return any(t.status == STATUS_COLLAPSED for t in self.trials)


def group(trials: Sequence[TrialPoint], keys: Sequence[str]) -> list[ConfigPoint]:
    """Trials grouped by their values of `keys`, with each group's mean and interval."""
    groups: dict[tuple[str, ...], list[TrialPoint]] = {}
    for t in trials:
        groups.setdefault(tuple(t.params.get(k, "") for k in keys), []).append(t)
    return [
        ConfigPoint(
            key=k,
            trials=ts,
            val=mean_interval(t.val for t in ts if t.val is not None),
            test=mean_interval(t.test for t in ts if t.test is not None),
            lift=mean_interval(t.lift for t in ts if t.lift is not None),
        )
        for k, ts in groups.items()
    ]


def best_config(configs: Sequence[ConfigPoint]) -> ConfigPoint | None:
    """The eligible config with the highest mean validation score."""
    return max((c for c in configs if c.eligible), key=lambda c: c.val.mean, default=None)


def summary_pictures(
    trials: Sequence[TrialPoint],
    space: Space,
    baselines: Sequence[Baseline],
    out_dir: Path,
) -> list[Path]:
    """Every summary picture for a sweep into `out_dir`: `accuracy_vs_<param>.png` and
    `curves_by_<param>.png` per swept parameter, and `parallel_coordinates.png`."""
    out_dir = Path(out_dir)
    paths = []
    for param in space:
        paths.append(
            plot_accuracy_vs_param(trials, space, param, baselines, out_dir / accuracy_png(param))
        )
        if any(t.curves for t in trials):
            paths.append(plot_curves(trials, space, param, out_dir / curves_png(param)))
    raw = baselines[0].val.mean if baselines and baselines[0].val else None
    paths.append(plot_parallel_coordinates(trials, space, raw, out_dir / PARALLEL_PNG))
    return paths


PARALLEL_PNG = "parallel_coordinates.png"


def accuracy_png(param: str) -> str:
    return f"accuracy_vs_{param}.png"


def curves_png(param: str) -> str:
    return f"curves_by_{param}.png"


# --- accuracy against one parameter -------------------------------------------------


def plot_accuracy_vs_param(
    trials: Sequence[TrialPoint],
    space: Space,
    param: str,
    baselines: Sequence[Baseline],
    path: Path,
) -> Path:
    """Two panels (validation, test) of probe accuracy against `param`.

    A config is all swept values; with several swept parameters, configs that share a
    value of `param` sit side by side around it. The best config (chosen on validation,
    as the sweep chooses) is starred in both panels and its test margin over the first
    baseline (the raw backbone) goes in the title: the answer, by how much, and whether
    the interval clears the band.
    """
    keys = list(space)
    configs = group(trials, keys)
    best = best_config(configs)
    dist, args = space[param]
    with matplotlib.rc_context(FONT):
        fig = Figure(figsize=(12, 5.5), dpi=DPI)
        axes = fig.subplots(1, 2, sharey=True)
        for ax, split, attr in ((axes[0], "validation", "val"), (axes[1], "test", "test")):
            _draw_bands(ax, baselines, attr)
            _draw_configs(ax, configs, keys, param, space, attr, best)
            ax.set_title(f"{split} split")
            ax.set_xlabel(param + (" (log scale)" if dist == "loguniform" else ""))
            ax.grid(axis="y", alpha=0.3)
            _set_param_axis(ax, param, dist, args)
        axes[0].set_ylabel("probe accuracy")
        handles = [
            Line2D(
                [],
                [],
                marker="o",
                color="tab:blue",
                linestyle="",
                label="config mean, 95% t interval",
            ),
            Line2D(
                [],
                [],
                marker="o",
                color="tab:blue",
                alpha=0.35,
                markersize=4,
                linestyle="",
                label="one seed",
            ),
            Line2D(
                [],
                [],
                marker="X",
                color="tab:orange",
                linestyle="",
                label="collapsed/diverged seed in config",
            ),
            Line2D(
                [],
                [],
                marker="*",
                color="gold",
                markeredgecolor="black",
                markersize=14,
                linestyle="",
                label="best (chosen on validation)",
            ),
        ]
        if len(keys) > 1:
            handles.append(
                Line2D([], [], linestyle="", label="configs sharing a value: side by side")
            )
        handles += [
            Rectangle((0, 0), 1, 1, color=BASELINE_COLOURS[i % 3], alpha=0.25, label=b.label)
            for i, b in enumerate(baselines)
        ]
        fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
        fig.suptitle(_verdict_title(param, _label(keys, param, best), best, baselines))
        fig.tight_layout(rect=(0, 0.13, 1, 1))
        fig.savefig(path)
    return Path(path)


def _label(keys: Sequence[str], param: str, best: ConfigPoint | None) -> str:
    """`param=v (other=w, ...)`: the best config, this picture's parameter first."""
    if best is None:
        return ""
    values = dict(zip(keys, best.key, strict=True))
    others = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items() if k != param)
    return f"{param}={_fmt(values[param])}" + (f" ({others})" if others else "")


def _verdict_title(
    param: str, label: str, best: ConfigPoint | None, baselines: Sequence[Baseline]
) -> str:
    if best is None:
        return f"probe accuracy vs {param}: no config qualifies (every one collapsed or diverged)"
    head = f"best {label}: test {best.test.text(3) if best.test else '-'}"
    raw = baselines[0].label if baselines else "raw backbone"
    lift = best.lift
    if lift is None:
        return head
    if not lift.has_interval:
        return f"{head}\n{lift.mean:+.3f} over the {raw} (1 seed: no interval, noise unknown)"
    word = "beyond noise" if lift.low > 0 or lift.high < 0 else "within noise"
    return (
        f"{head}\n{lift.mean:+.3f} [{lift.low:+.3f}, {lift.high:+.3f}] over the {raw}, "
        f"paired by seed: {word}"
    )


def _draw_bands(ax, baselines: Sequence[Baseline], attr: str) -> None:
    for i, b in enumerate(baselines):
        interval: Interval | None = getattr(b, attr)
        if interval is None:
            continue
        colour = BASELINE_COLOURS[i % len(BASELINE_COLOURS)]
        ax.axhline(interval.mean, color=colour, linewidth=1.5)
        if interval.has_interval:
            ax.axhspan(interval.low, interval.high, color=colour, alpha=0.2, linewidth=0)
        ax.annotate(
            f"{b.label} {interval.text(3)}",
            (0.01, interval.mean),
            xycoords=("axes fraction", "data"),
            xytext=(0, 3),
            textcoords="offset points",
            color=colour,
            fontsize=11,
            bbox={"facecolor": "white", "alpha": 0.7, "linewidth": 0, "pad": 1},
        )


def _draw_configs(ax, configs, keys, param, space, attr, best) -> None:
    dist, args = space[param]
    index = keys.index(param)
    # Configs sharing this parameter's value are fanned out around it, so that their
    # error bars do not overlap: in log space for a log axis, in slot units for choices.
    siblings: dict[str, list[ConfigPoint]] = {}
    for c in configs:
        siblings.setdefault(c.key[index], []).append(c)
    for value, group_ in siblings.items():
        for j, c in enumerate(sorted(group_, key=lambda c: c.key)):
            offset = (j - (len(group_) - 1) / 2) * JITTER * 2 if len(group_) > 1 else 0.0
            x = _x_position(value, dist, args, offset)
            if x is None:
                continue
            interval: Interval | None = getattr(c, attr)
            seeds = [getattr(t, attr) for t in c.trials if getattr(t, attr) is not None]
            ax.scatter([x] * len(seeds), seeds, s=14, color="tab:blue", alpha=0.35, zorder=2)
            if interval is None:
                continue
            colour = "tab:blue" if c.eligible else "tab:orange"
            err = None
            if interval.has_interval:
                err = [[interval.mean - interval.low], [interval.high - interval.mean]]
            ax.errorbar(
                [x],
                [interval.mean],
                yerr=err,
                fmt="o" if c.eligible else "X",
                color=colour,
                markersize=8,
                capsize=5,
                linewidth=2,
                zorder=3,
            )
            if c is best:
                ax.scatter(
                    [x],
                    [interval.mean],
                    marker="*",
                    s=320,
                    color="gold",
                    edgecolor="black",
                    zorder=4,
                )


def _x_position(value: str, dist: str, args: Sequence[Any], offset: float) -> float | None:
    if dist == "choice":
        slot = _choice_index(value, args)
        return None if slot is None else slot + offset
    try:
        x = float(value)
    except ValueError:
        return None
    if dist == "loguniform":
        return x * math.exp(offset * math.log(float(args[1]) / float(args[0])) / 2)
    return x + offset * (float(args[1]) - float(args[0])) / 2


def _choice_index(value: str, levels: Sequence[Any]) -> int | None:
    for i, level in enumerate(levels):
        if str(level) == value or _same_number(level, value):
            return i
    return None


def _same_number(level: Any, text: str) -> bool:
    """A YAML level `1` and a logged float param `1.0` are the same value."""
    if isinstance(level, bool) or not isinstance(level, int | float):
        return False
    try:
        return float(text) == float(level)
    except ValueError:
        return False


def _set_param_axis(ax, param: str, dist: str, args: Sequence[Any]) -> None:
    if dist == "choice":
        ax.set_xticks(range(len(args)), [str(a) for a in args])
        ax.set_xlim(-0.5, len(args) - 0.5)
    elif dist == "loguniform":
        ax.set_xscale("log")
        ax.set_xlim(float(args[0]) / 1.3, float(args[1]) * 1.3)
    else:
        lo, hi = float(args[0]), float(args[1])
        pad = (hi - lo) * 0.08 or 1.0
        ax.set_xlim(lo - pad, hi + pad)


# --- per-epoch curves -----------------------------------------------------------------


def plot_curves(trials: Sequence[TrialPoint], space: Space, param: str, path: Path) -> Path:
    """Three panels, one per `CURVE_METRICS` entry: every trial's curve over epochs,
    coloured by its value of `param` (colour bar; log-scaled for a loguniform space,
    one colour per level for a choice), collapsed trials dashed."""
    dist, args = space[param]
    norm, cmap, ticks = _colour_scale(dist, args)
    with matplotlib.rc_context(FONT):
        fig = Figure(figsize=(15, 5), dpi=DPI)
        axes = fig.subplots(1, 3)
        for ax, metric in zip(axes, CURVE_METRICS, strict=True):
            for t in trials:
                points = t.curves.get(metric) or []
                if not points:
                    continue
                c = _colour_value(t.params.get(param, ""), dist, args)
                if c is None:
                    continue
                steps, values = zip(*sorted(points), strict=True)
                ax.plot(
                    steps,
                    values,
                    color=cmap(norm(c)),
                    linestyle="--" if t.status == STATUS_COLLAPSED else "-",
                    linewidth=1.8,
                    alpha=0.85,
                    marker="o" if len(steps) < 12 else None,
                    markersize=4,
                )
            ax.set_title(metric)
            _log_scale_if_wide(ax)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
            if metric == M.EMBEDDING_STD_RATIO:
                ax.axhline(1.0, color="black", linewidth=0.8)
        mappable = mcm.ScalarMappable(norm=norm, cmap=cmap)
        bar = fig.colorbar(mappable, cax=fig.add_axes((0.895, 0.2, 0.012, 0.65)))
        bar.set_label(param + (" (log)" if dist == "loguniform" else ""))
        if ticks is not None:
            bar.set_ticks(range(len(ticks)), labels=ticks)
        style = [
            Line2D([], [], color="black", linestyle="-", label="finished"),
            Line2D(
                [],
                [],
                color="black",
                linestyle="--",
                label="collapsed (output spread or information lost)",
            ),
        ]
        fig.legend(handles=style, loc="lower center", ncol=2, frameon=False)
        fig.suptitle(f"{len(trials)} trials' per-epoch curves, coloured by {param}")
        fig.subplots_adjust(bottom=0.2, top=0.85, left=0.05, right=0.875, wspace=0.25)
        fig.savefig(path)
    return Path(path)


def _log_scale_if_wide(ax) -> None:
    """A log y-axis when the positive values drawn span more than 20x (losses of
    different objectives differ by orders of magnitude; each keeps its shape)."""
    ys = [y for line in ax.get_lines() for y in line.get_ydata() if np.isfinite(y)]
    if ys and min(ys) > 0 and max(ys) / min(ys) > 20:
        ax.set_yscale("log")


def _colour_scale(dist: str, args: Sequence[Any]):
    """(norm, colormap, tick labels or None) for a parameter's colour bar."""
    if dist == "choice":
        n = len(args)
        cmap = matplotlib.colormaps["tab10"].resampled(max(n, 2))
        norm = mcolors.BoundaryNorm(np.arange(-0.5, n + 0.5), cmap.N)
        return norm, cmap, [str(a) for a in args]
    lo, hi = float(args[0]), float(args[1])
    norm = mcolors.LogNorm(lo, hi) if dist == "loguniform" else mcolors.Normalize(lo, hi)
    return norm, matplotlib.colormaps["viridis"], None


def _colour_value(value: str, dist: str, args: Sequence[Any]) -> float | None:
    if dist == "choice":
        return _choice_index(value, args)
    try:
        return float(value)
    except ValueError:
        return None


# --- parallel coordinates -------------------------------------------------------------


def plot_parallel_coordinates(
    trials: Sequence[TrialPoint], space: Space, baseline: float | None, path: Path
) -> Path:
    """One polyline per scored trial over the swept parameters and its validation score
    (last axis), coloured by that score (colour bar).

    Each axis is scaled to [0, 1]: choice levels evenly spaced in their listed order,
    uniform/int linearly, loguniform on a log scale between the space's bounds. Trials
    of one config (its seeds, or Optuna's repeats) would lie on one another: they are
    fanned out vertically on the parameter axes and the config's count is written at
    its first axis. The raw backbone's validation score is a labelled red tick.
    """
    keys = list(space)
    scored = [t for t in trials if t.val is not None]
    values = [t.val for t in scored] + ([baseline] if baseline is not None else [])
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    span = (high - low) or 1.0
    norm = mcolors.Normalize(low, high)
    cmap = matplotlib.colormaps["viridis"]
    counts: dict[tuple[str, ...], int] = {}
    for t in scored:
        key = tuple(t.params.get(k, "") for k in keys)
        counts[key] = counts.get(key, 0) + 1
    seen: dict[tuple[str, ...], int] = {}
    xs = list(range(len(keys) + 1))
    with matplotlib.rc_context(FONT):
        fig = Figure(figsize=(max(10.0, 2.6 * len(xs) + 2), 6), dpi=DPI)
        ax = fig.subplots()
        for t in sorted(scored, key=lambda t: t.val):
            key = tuple(t.params.get(k, "") for k in keys)
            n, j = counts[key], seen.get(key, 0)
            seen[key] = j + 1
            shift = (j - (n - 1) / 2) * (JITTER / max(n - 1, 1)) if n > 1 else 0.0
            ys = [_axis_position(space, k, t.params.get(k)) + shift for k in keys]
            ys.append((t.val - low) / span)
            ax.plot(
                xs,
                ys,
                color=cmap(norm(t.val)),
                linestyle="--" if t.status == STATUS_COLLAPSED else "-",
                marker="o",
                markersize=5,
                linewidth=2,
                alpha=0.9,
            )
            if j == 0 and n > 1:
                ax.annotate(
                    f"×{n}",
                    (xs[0], ys[0] - shift),
                    xytext=(-30, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=11,
                )
        if baseline is not None:
            y = (baseline - low) / span
            ax.plot([xs[-1] - 0.12, xs[-1] + 0.12], [y, y], color="red", linewidth=3)
            ax.annotate(
                f"raw backbone {baseline:.3f}",
                (xs[-1] + 0.14, y),
                color="red",
                va="center",
                fontsize=11,
            )
        for i, k in enumerate(keys):
            ax.axvline(i, color="grey", linewidth=0.8)
            for label, y in _axis_ticks(space, k):
                ax.annotate(
                    label,
                    (i, y),
                    xytext=(5, 0),
                    textcoords="offset points",
                    fontsize=11,
                    va="center",
                )
        ax.axvline(xs[-1], color="grey", linewidth=0.8)
        marked = (baseline - low) / span if baseline is not None else None
        for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
            if marked is not None and abs(frac - marked) < 0.05:
                continue  # the baseline's own label says this value
            ax.annotate(
                f"{low + frac * span:.3f}",
                (xs[-1], frac),
                xytext=(-45, 0),
                textcoords="offset points",
                fontsize=11,
                va="center",
            )
        labels = [f"{k}\n(log)" if space[k][0] == "loguniform" else k for k in keys]
        ax.set_xticks(xs, [*labels, M.VAL_PROBE_ACCURACY])
        ax.set_yticks([])
        ax.set_ylim(-0.1, 1.1)
        ax.set_xlim(-0.5, xs[-1] + 0.9)
        bar = fig.colorbar(mcm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.03, pad=0.01)
        bar.set_label(M.VAL_PROBE_ACCURACY)
        style = [
            Line2D([], [], color="black", linestyle="-", label="finished"),
            Line2D([], [], color="black", linestyle="--", label="collapsed"),
            Line2D([], [], color="red", linewidth=3, label="raw backbone (validation)"),
        ]
        ax.legend(
            handles=style, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False
        )
        configs = len(counts)
        repeats = " (×n: repeats of a config, fanned out)" if configs < len(scored) else ""
        ax.set_title(f"{len(scored)} scored trials in {configs} configs{repeats}")
        fig.tight_layout()
        fig.savefig(path)
    return Path(path)


def _axis_position(space: Space, key: str, text: str | None) -> float:
    dist, args = space[key]
    if text is None:
        return float("nan")
    if dist == "choice":
        index = _choice_index(text, args)
        if index is None:
            return float("nan")
        return index / (len(args) - 1) if len(args) > 1 else 0.5
    try:
        value = float(text)
    except ValueError:
        return float("nan")
    lo, hi = float(args[0]), float(args[1])
    if dist == "loguniform":
        return (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (value - lo) / (hi - lo)


def _axis_ticks(space: Space, key: str) -> list[tuple[str, float]]:
    dist, args = space[key]
    if dist == "choice":
        return [(str(level), _axis_position(space, key, str(level))) for level in args]
    lo, hi = float(args[0]), float(args[1])
    if dist == "loguniform":  # the bounds and every power of ten between them
        inner = [10.0**e for e in range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)]
        values = sorted({lo, hi, *inner})
    else:
        values = [lo, (lo + hi) / 2, hi]
    ticks = [(f"{v:g}", _axis_position(space, key, repr(v))) for v in values]
    # Drop a power of ten that would sit on top of a bound's label.
    return [t for t in ticks if t[1] in (0.0, 1.0) or 0.06 < t[1] < 0.94]


def _fmt(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() else f"{number:.3g}"
