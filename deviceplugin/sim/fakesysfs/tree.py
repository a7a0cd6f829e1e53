"""Files and links under a fake sysfs root, written the way the kernel shows them.

Everything is addressed by its path relative to the root (`bus/pci/devices/...`),
as the kernel's own layout is documented, and symlinks are relative (`../../..`),
never absolute, so a tree stays valid wherever `--sysfs-root` points.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

SHM_DIR = "/dev/shm"
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def _up(rel_dir: str) -> str:
    """The `../` prefix that climbs from a root-relative directory to the root."""
    return "../" * (rel_dir.count("/") + 1)


class Tree:
    """Root-relative file operations: attribute files, directories and kernel-style links."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._root = os.fspath(self.root)

    def abs(self, rel: str) -> str:
        return f"{self._root}/{rel}"

    def mkdir(self, rel: str, *, parents: bool = False) -> None:
        """One new directory; with `parents`, also missing parents, and an existing one is fine."""
        if parents:
            os.makedirs(self.abs(rel), exist_ok=True)
        else:
            os.mkdir(self.abs(rel))

    def write(self, rel: str, data: str | bytes) -> None:
        """Create or overwrite a file with exactly `data`."""
        fd = os.open(self.abs(rel), _FILE_FLAGS, 0o644)
        try:
            os.write(fd, data.encode() if isinstance(data, str) else data)
        finally:
            os.close(fd)

    def write_attrs(self, rel_dir: str, attrs: Iterable[tuple[str, object]]) -> None:
        """One file per attribute in `rel_dir`, holding its value and a newline, as sysfs shows."""
        for name, value in attrs:
            self.write(f"{rel_dir}/{name}", f"{value}\n")

    def link(self, rel_link: str, rel_target: str) -> None:
        """A link to another root-relative path, relative as the kernel writes them."""
        self.symlink(_up(rel_link.rpartition("/")[0]) + rel_target, rel_link)

    def symlink(self, target: str, rel_link: str) -> None:
        """A link with a literal target (the kernel's own short forms, e.g. `../0000:05:00.0`)."""
        os.symlink(target, self.abs(rel_link))

    def unlink(self, rel: str) -> None:
        """Remove a file or link; already gone is fine."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.abs(rel))

    def rmtree(self, rel: str) -> None:
        shutil.rmtree(self.abs(rel))

    def isdir(self, rel: str) -> bool:
        return os.path.isdir(self.abs(rel))

    def is_empty(self, rel: str) -> bool:
        return not os.listdir(self.abs(rel))


@contextlib.contextmanager
def tmpfs_tempdir(prefix: str = "netdp-sysfs-") -> Iterator[Path]:
    """A temporary directory on tmpfs when the host has one, removed afterwards.

    A fake sysfs is thousands of tiny files and links: pure metadata work. On
    this project's host, ext4 under /tmp builds 512 VFs in about 5 s, tmpfs in
    0.1 s, so tests, benchmarks and `netdp demo` should build their trees here.
    """
    base = SHM_DIR if os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK) else None
    path = tempfile.mkdtemp(prefix=prefix, dir=base)
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)
