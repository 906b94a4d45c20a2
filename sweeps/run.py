"""Entry point: `python sweeps/run.py --space predictor_width` (see --help)."""

import sys
from pathlib import Path

# Run as a script, sys.path[0] is sweeps/; the packages live one level up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweeps.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
