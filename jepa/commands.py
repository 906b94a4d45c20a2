"""`python -m jepa.train` and `python -m jepa.evaluate`: documented commands (DESIGN.md)
whose wiring (MLflow, the run lifecycle) lives in `sweeps/single.py`.

The library never imports `sweeps/` (that is the layering), so these commands do not
call into it: the process *becomes* `python -m sweeps.single <command>` with the same
flags (`os.execv`), so exit codes, signals and output are that command's own.
"""

from __future__ import annotations

import os
import sys


def hand_over(command: str, argv: list[str]) -> None:
    """Replace this process by `python -m sweeps.single COMMAND ARGV...`; never returns."""
    os.execv(sys.executable, [sys.executable, "-m", "sweeps.single", command, *argv])
