"""Named search spaces: `search_spaces/<name>.yaml`, validated, turned into Tune domains.

A space file:

    description: one line shown by --list-spaces
    params:            # swept: each key a TrialConfig field, one distribution each
      predictor_width:
        choice: [64, 128, 256]
      lr:
        loguniform: [1.0e-4, 1.0e-2]
    fixed:             # optional: overrides every trial shares
      max_epochs: 5

Distributions: `choice: [v, ...]`, `uniform: [low, high]`, `loguniform: [low, high]`
(0 < low), `int: [low, high]` (inclusive). Unknown keys, empty or reversed ranges and
unknown distributions are errors that name the file and the key.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jepa.config import TrialConfig
from jepa.errors import UserInputError, first_line

SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")
TOP_LEVEL_KEYS = ("description", "params", "fixed")


@dataclass(frozen=True)
class SearchSpace:
    name: str
    path: Path
    description: str
    params: dict[str, tuple[str, list[Any]]]
    """Swept parameters: name -> (distribution, arguments)."""
    fixed: dict[str, Any] = field(default_factory=dict)

    def tune_space(self) -> dict[str, Any]:
        """The Tune domains OptunaSearch samples from."""
        return {name: _domain(dist, args) for name, (dist, args) in self.params.items()}

    def coverage_points(self, limit: int) -> list[dict[str, Any]]:
        """First trials that try every level of every `choice` parameter at least once.

        Point i sets each choice parameter to its level i mod (number of levels). Without
        them a sweep of the 4 objectives with Optuna's seed 0 samples only 3 of them in 8
        trials. Ray's OptunaSearch wants every swept parameter in a point, so the others
        take `centre_value` (the default when it lies in the range). At most `limit`.
        """
        choices = {k: args for k, (dist, args) in self.params.items() if dist == "choice"}
        count = min(limit, max((len(v) for v in choices.values()), default=0))
        others = {k: self.centre_value(k) for k in self.params if k not in choices}
        return [
            {k: choices[k][i % len(choices[k])] if k in choices else others[k] for k in self.params}
            for i in range(count)
        ]

    def centre_value(self, key: str) -> Any:
        """A value of the continuous or int parameter `key` for the coverage points:
        TrialConfig's default when it lies in the range, else the range's centre
        (geometric for loguniform)."""
        dist, (low, high) = self.params[key]
        default = getattr(TrialConfig(), key)
        if low <= default <= high:
            return int(default) if dist == "int" else float(default)
        if dist == "int":
            return int((int(low) + int(high)) // 2)
        if dist == "loguniform":
            return float(math.sqrt(low * high))
        return float((low + high) / 2)

    def levels(self, key: str) -> list[Any] | None:
        """The values a `choice` parameter takes, or None when `key` is not a choice."""
        dist, args = self.params.get(key, (None, None))
        return list(args) if dist == "choice" else None


def list_spaces(directory: Path = SPACES_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_space(name: str, directory: Path = SPACES_DIR) -> SearchSpace:
    """Load and validate `search_spaces/<name>.yaml`, or the file `name` when it ends in
    .yaml or .yml (a space of one's own: `--space path/to/space.yaml`)."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise UserInputError(f"--space {name}: no such file; or give a name (--list-spaces)")
        return parse_space(path)
    path = directory / f"{name}.yaml"
    if not path.is_file():
        raise UserInputError(
            f"unknown space {name!r}: no {path}; known spaces: {', '.join(list_spaces(directory))}"
        )
    return parse_space(path)


def parse_space(path: Path) -> SearchSpace:
    where = str(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise UserInputError(f"{where}{at}: malformed YAML ({first_line(exc)})") from None
    if not isinstance(doc, dict):
        raise UserInputError(f"{where}: expected a mapping with 'params', got {type(doc).__name__}")
    unknown = sorted(set(doc) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise UserInputError(
            f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(TOP_LEVEL_KEYS)}"
        )
    raw_params = doc.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise UserInputError(
            f"{where}: 'params' must map at least one config key to a distribution"
        )
    known = TrialConfig.field_names()
    params: dict[str, tuple[str, list[Any]]] = {}
    for key, spec in raw_params.items():
        if key not in known:
            raise UserInputError(
                f"{where}: unknown key params.{key}; known config keys: {', '.join(known)}"
            )
        params[key] = _parse_distribution(where, key, spec)
    fixed = doc.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise UserInputError(f"{where}: 'fixed' must be a mapping of config keys to values")
    for key in fixed:
        if key not in known:
            raise UserInputError(
                f"{where}: unknown key fixed.{key}; known config keys: {', '.join(known)}"
            )
        if key in params:
            raise UserInputError(f"{where}: key {key!r} is both swept and fixed")
    try:
        TrialConfig.from_dict(fixed)
    except UserInputError as exc:
        raise UserInputError(f"{where}: fixed: {exc}") from None
    return SearchSpace(
        name=path.stem,
        path=path,
        description=str(doc.get("description", "")),
        params=params,
        fixed=dict(fixed),
    )


def _parse_distribution(where: str, key: str, spec: Any) -> tuple[str, list[Any]]:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise UserInputError(
            f"{where}: params.{key} must be one of {{{', '.join(DISTRIBUTIONS)}}}: [...]"
        )
    ((dist, args),) = spec.items()
    if dist not in DISTRIBUTIONS:
        raise UserInputError(
            f"{where}: params.{key}: unknown distribution {dist!r}; "
            f"known: {', '.join(DISTRIBUTIONS)}"
        )
    if not isinstance(args, list) or not args:
        raise UserInputError(f"{where}: params.{key}.{dist}: empty; give a non-empty list")
    if dist == "choice":
        for value in args:
            _check_value(where, key, value)
        return dist, list(args)
    if len(args) != 2 or not all(isinstance(a, int | float) for a in args):
        raise UserInputError(
            f"{where}: params.{key}.{dist} must be [low, high] numbers, got {args}"
        )
    low, high = args
    if low >= high:
        raise UserInputError(
            f"{where}: params.{key}.{dist}: empty or reversed range [{low}, {high}]; "
            "need low < high"
        )
    if dist == "loguniform" and low <= 0:
        raise UserInputError(f"{where}: params.{key}.loguniform needs low > 0, got {low}")
    if dist == "int" and not all(float(a).is_integer() for a in args):
        raise UserInputError(f"{where}: params.{key}.int needs integer bounds, got {args}")
    _check_value(where, key, low)
    _check_value(where, key, high)
    return dist, [low, high]


def _check_value(where: str, key: str, value: Any) -> None:
    """A value must make a valid TrialConfig (e.g. aug_strength within [0, 1])."""
    try:
        TrialConfig.from_dict({key: value})
    except UserInputError as exc:
        raise UserInputError(f"{where}: params.{key}: {exc}") from None


def _domain(dist: str, args: list[Any]) -> Any:
    from ray import tune  # here, not at import: the single run loads no Ray

    if dist == "choice":
        return tune.choice(args)
    if dist == "uniform":
        return tune.uniform(*args)
    if dist == "loguniform":
        return tune.loguniform(*args)
    return tune.randint(int(args[0]), int(args[1]) + 1)  # randint's upper bound is exclusive


def load_space_arg(text: str) -> SearchSpace:
    """`--space`: a name from search_spaces/, or the path of a space file."""
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise UserInputError(f"--space {text}: no such file; or give a name (--list-spaces)")
        return parse_space(path)
    return load_space(text)
