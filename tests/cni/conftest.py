"""Fixtures of the ehost-device tests: real namespaces in `cnilab`; the in-memory
ports of the no-root rule tests are in `fakenet` and `world`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cnilab import Daemon, Lab


@pytest.fixture
def lab(tmpfs_path: Path, forwarder: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("the CNI tests need root (network namespaces)")
    lab = Lab(tmpfs_path)
    strays: list[str] = []
    try:
        yield lab
    finally:
        strays = lab.cleanup()
    assert not strays, f"test links reached the root namespace: {strays}"


@pytest.fixture
def daemon(lab: Lab) -> Iterator[Daemon]:
    d = Daemon(lab)
    try:
        yield d
    finally:
        d.stop()
