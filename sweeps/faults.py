"""Fault injection for tests: make chosen trials fail for real, inside the Ray Train worker.

`JEPA_INJECT_FAILURE` (read by the sweep's driver, handed to every trial):

    trial-raise                  every trial's worker raises InjectedFailure
    trial-raise@predictor_width=64
                                 only trials whose config has predictor_width == 64
    worker-kill@predictor_width=64
                                 the pool worker running such a trial kills itself
                                 (SIGKILL) after its first epoch, on the trial's first
                                 attempt only: a worker lost mid-trial
    trial-raise@predictor_width=64,worker-kill@predictor_width=96
                                 several, comma-separated: each for its own trials

`trial-raise`'s error is raised in the pool worker after the trial's MLflow run started,
so it travels the path a real bug takes: the body fails, the trial's trainable marks the
MLflow run FAILED with traceback.txt, Tune retries it up to `--max-failures` and then
counts it failed. It is a test hook, not a user feature: unset it is inert.

A NaN loss needs no hook: a learning rate of 1e30 makes the loss non-finite in the first
epoch (see tests/test_reliability.py).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any

from jepa.errors import UserInputError

ENV = "JEPA_INJECT_FAILURE"
KINDS = ("trial-raise", "worker-kill")


class InjectedFailure(RuntimeError):
    """The failure `JEPA_INJECT_FAILURE` asked for."""


@dataclass(frozen=True)
class Fault:
    kind: str
    key: str | None = None
    value: str | None = None

    def applies(self, config: dict[str, Any]) -> bool:
        return self.key is None or str(config.get(self.key)) == self.value

    def maybe_raise(self, config: dict[str, Any], attempt: int = 1) -> None:
        """Fail the way the fault says when it applies to `config` (and `attempt`)."""
        if self.kind == "worker-kill" and self.applies(config) and attempt == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "trial-raise" and self.applies(config):
            where = f" ({self.key}={self.value})" if self.key else ""
            raise InjectedFailure(f"{ENV}={self.spec()}: injected trial failure{where}")

    def spec(self) -> str:
        return self.kind if self.key is None else f"{self.kind}@{self.key}={self.value}"


@dataclass(frozen=True)
class Faults:
    """The faults `JEPA_INJECT_FAILURE` names (one or more, comma-separated)."""

    parts: tuple[Fault, ...]

    def maybe_raise(self, config: dict[str, Any], attempt: int = 1) -> None:
        for fault in self.parts:
            fault.maybe_raise(config, attempt)

    def spec(self) -> str:
        return ",".join(fault.spec() for fault in self.parts)


def from_env() -> Faults | None:
    """The faults `JEPA_INJECT_FAILURE` names, or None; a malformed value is bad input."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None
    return Faults(tuple(_parse(part.strip()) for part in text.split(",")))


def _parse(text: str) -> Fault:
    kind, _, condition = text.partition("@")
    if kind not in KINDS:
        raise UserInputError(f"{ENV}={text}: unknown fault {kind!r}; known: {', '.join(KINDS)}")
    if not condition:
        return Fault(kind)
    key, sep, value = condition.partition("=")
    if not sep or not key:
        raise UserInputError(f"{ENV}={text}: expected {kind}@KEY=VALUE")
    return Fault(kind, key.strip(), value.strip())
