"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import DaemonProcess, Node

from deviceplugin import logs
from deviceplugin.cni.forwarder_build import ensure_in_place
from deviceplugin.sim.fakesysfs import tmpfs_tempdir
from deviceplugin.sim.kubelet import KubeletStandIn

# What runs in the test process (the kubelet stand-in, the CNI executor) logs like
# netdp does: to stderr, which pytest shows with a failing test. Unconfigured,
# structlog would print to stdout.
logs.configure("info", "console")


@pytest.fixture
def tmpfs_path() -> Iterator[Path]:
    """A temp dir on tmpfs: fake sysfs trees are thousands of tiny files and links,
    which ext4 builds ~50x slower; the short path also keeps unix sockets legal."""
    with tmpfs_tempdir("ndpt-") as path:
        yield path


@pytest.fixture
def node(tmpfs_path: Path) -> Node:
    return Node(tmpfs_path)


@pytest.fixture
def kubelet(node: Node) -> Iterator[KubeletStandIn]:
    with KubeletStandIn(node.plugins) as k:
        yield k


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemon processes a test started; killed at the end, their logs shown on failure."""
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        d.kill()
        print(f"--- daemon log ({' '.join(d.command)}):\n{d.log_text()}")


@pytest.fixture(scope="session")
def forwarder() -> Path:
    """This checkout's ehost-device binary, rebuilt (warnings fatal) if its C source is newer."""
    return ensure_in_place(("-Werror",))
