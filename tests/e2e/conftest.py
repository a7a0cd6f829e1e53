"""Fixtures of the e2e stage: prepare once, one VM per scenario, timings in the summary.

The stage runs by default (CI runs it); a developer may leave it out with
`NETDP_E2E=0`. It never skips itself otherwise: a missing vm-run.sh or QEMU
that cannot be installed is a failure, not a silent pass.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vmrig import (
    GuestRun,
    VmSpec,
    prepare,
    prepare_realnode,
    realnode_dir,
    run_scenario,
    summary_rows,
)

E2E_DIR = Path(__file__).resolve().parent
_RUNS: list[GuestRun] = []
_PREPARE: dict[str, float] = {}


def e2e_enabled() -> bool:
    return os.environ.get("NETDP_E2E", "1") != "0"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        boots_a_vm = "rig" in getattr(item, "fixturenames", ())
        if E2E_DIR in Path(str(item.path)).parents and boots_a_vm:
            item.add_marker(pytest.mark.e2e)
            if not e2e_enabled():
                item.add_marker(pytest.mark.skip(reason="NETDP_E2E=0: e2e stage left out"))


class Rig:
    """Runs scenarios in VMs and remembers each run for the timing summary."""

    def run(self, scenario: str, spec: VmSpec) -> GuestRun:
        result = run_scenario(scenario, spec)
        _RUNS.append(result)
        return result


@pytest.fixture(scope="session")
def rig() -> Iterator[Rig]:
    _PREPARE["seconds"] = prepare()
    yield Rig()


@pytest.fixture(scope="session")
def realnode(rig: Rig) -> Path:
    """The real kubelet, pause and images of ../shared/lab/kubelet/, built when missing."""
    _PREPARE["realnode"] = prepare_realnode()
    return realnode_dir()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RUNS:
        return
    terminalreporter.section("e2e VM timings")
    if "seconds" in _PREPARE:
        terminalreporter.write_line(
            f"prepare (vm-run --setup, compileall): {_PREPARE['seconds']:.1f} s"
        )
    if "realnode" in _PREPARE:
        terminalreporter.write_line(
            f"prepare real kubelet (lab scripts, only when missing): {_PREPARE['realnode']:.1f} s"
        )
    for row in summary_rows(_RUNS):
        terminalreporter.write_line(row)
    for run in _RUNS:
        steps = (run.result or {}).get("steps", [])
        text = ", ".join(f"{s['step'][:40]} {s['seconds']}s" for s in steps)
        terminalreporter.write_line(f"  {run.scenario}: {text}")
