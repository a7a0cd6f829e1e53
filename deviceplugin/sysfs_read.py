"""One sysfs read, and what its failure costs: the device (`Skip`) or one field (a warning).

`sysfs` walks the layout; this is the part that touches files. Every file read
goes through `read_text` (the tests make devices vanish mid-scan there), and
each `read_*` reads and judges in one function, no partial and no shared
helper in between: they are the scan's inner loop, a dozen calls per VF.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from deviceplugin.sysfs_values import parse_carrier, parse_uevent

T = TypeVar("T")

_READ_SIZE = 4096  # a sysfs attribute never exceeds one page
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted in a fake --sysfs-root must not hang the daemon.
_FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK


class Skip(Exception):
    """The device cannot be described at all; drop it from this scan."""


@dataclass(frozen=True, slots=True)
class Dir:
    """An open device directory.

    Files are read relative to `fd` (no path walk through the bus symlink per
    file); listings go through `path`, because `os.listdir(fd)` costs a dup,
    three fcntls and a rewind on top of what a listing by path needs.
    """

    fd: int
    path: str


def read_text(name: str, dir_fd: int, _open=os.open, _read=os.read, _close=os.close) -> str:
    # os.* bound once: a few thousand calls per scan.
    fd = _open(name, _FILE_FLAGS, dir_fd=dir_fd)
    try:
        data = _read(fd, _READ_SIZE)
    finally:
        _close(fd)
    return data.decode("ascii")


def read_required(dir_fd: int, name: str, parse: Callable[[str], T]) -> T:
    try:
        return parse(read_text(name, dir_fd))
    except FileNotFoundError:
        raise Skip(f"{name} missing (device vanished?)") from None
    except OSError as exc:
        raise Skip(f"{name} unreadable: {exc.strerror}") from None
    except ValueError as exc:
        raise Skip(f"{name}: {exc}") from None


def read_optional(
    dir_fd: int, name: str, parse: Callable[[str], T], warnings: list[str], default: T
) -> T:
    """Absent is normal (not every device has every file); broken is worth a warning."""
    try:
        return parse(read_text(name, dir_fd))
    except FileNotFoundError:
        return default
    except OSError as exc:
        warnings.append(f"{name} unreadable: {exc.strerror}")
    except ValueError as exc:
        warnings.append(f"{name}: {exc}")
    return default


def read_link(
    dir_fd: int, name: str, parse: Callable[[str], T], warnings: list[str], default: T
) -> T:
    """As `read_optional`, for a symlink's target."""
    try:
        return parse(os.readlink(name, dir_fd=dir_fd))
    except FileNotFoundError:
        return default
    except OSError as exc:
        warnings.append(f"{name} link unreadable: {exc.strerror}")
    except ValueError as exc:
        warnings.append(f"{name} link: {exc}")
    return default


def read_carrier(dir_fd: int, path: str, warnings: list[str]) -> bool | None:
    try:
        return parse_carrier(read_text(path, dir_fd))
    except OSError as exc:
        # EINVAL is how the kernel says "administratively down, carrier unknown".
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            warnings.append(f"carrier unreadable: {exc.strerror}")
    except ValueError as exc:
        warnings.append(f"carrier: {exc}")
    return None


def list_dir(path: str, warnings: list[str], what: str) -> list[str] | None:
    """Sorted entries; None (and no warning) when the directory does not exist."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        warnings.append(f"{what} unreadable: {exc.strerror}")
        return None


def read_uevent(dir_fd: int, pci: str) -> Mapping[str, str]:
    """The function's `uevent`, if it is this PCI function's; else empty (read the files).

    Only a uevent naming this address (`PCI_SLOT_NAME`) is trusted, so that a
    missing `DRIVER=` can mean "unbound". Missing, unreadable or malformed: the
    individual files say the same, and a real problem shows up there.
    """
    try:
        env = parse_uevent(read_text("uevent", dir_fd))
    except (OSError, ValueError):
        return {}
    return env if env.get("PCI_SLOT_NAME") == pci else {}
