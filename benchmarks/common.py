"""What every benchmark script shares: the repo on sys.path, one percentile rule, `ip` calls,
the daemon's environment and CPU time."""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from anywhere, no install needed
    sys.path.insert(0, str(REPO))


def compile_package() -> None:
    """Write the package's bytecode, as the image does (`compileall` in the Dockerfile).

    With PYTHONDONTWRITEBYTECODE set (it is on the shared test machine) every
    daemon start would otherwise compile netdp from source, which a node never does.
    """
    compileall.compile_dir(REPO / "deviceplugin", quiet=1)


def child_env() -> dict[str, str]:
    """The environment of a daemon started here: this checkout's package, not an installed one
    (`python -m` also puts the working directory first: start it with `cwd=REPO`)."""
    return {**os.environ, "PYTHONPATH": str(REPO)}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (every thread, live or ended), from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def quantile(values: list[float], q: float) -> float:
    """The nearest-rank q-quantile, the same rule in every table."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
