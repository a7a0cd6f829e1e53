"""What every benchmark script shares: the repo on sys.path, one percentile rule, `ip` calls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from anywhere, no install needed
    sys.path.insert(0, str(REPO))


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def quantile(values: list[float], q: float) -> float:
    """The nearest-rank q-quantile, the same rule in every table."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
