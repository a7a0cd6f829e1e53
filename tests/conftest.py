"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deviceplugin.sim.fakesysfs import tmpfs_tempdir


@pytest.fixture
def tmpfs_path() -> Iterator[Path]:
    """A temp dir on tmpfs: fake sysfs trees are thousands of tiny files and links,
    which ext4 builds ~50x slower; the short path also keeps unix sockets legal."""
    with tmpfs_tempdir("ndpt-") as path:
        yield path
