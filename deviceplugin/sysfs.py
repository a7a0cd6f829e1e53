"""Reading the kernel's PCI and netdev sysfs layout into `model` records.

The parsers of file contents live in `sysfs_values` (pure, tested without a
file system). This module is the reading, a thin shell tuned for large
SR-IOV nodes, where the cost is syscalls: every device directory is opened
once and its files are read relative to that descriptor (no path walk through
the `bus/pci/devices` symlink per file), a VF costs a fixed set of opens and
readlinks (no directory listing), and each PF's `virtfnN` links are read once
and shared by all its VFs. About 48 syscalls per VF with one netdev.

sysfs is a moving target (hot-unplug, netdevs moving between namespaces while
we read), so nothing here raises. What goes wrong degrades one device:

- `class`, `vendor` or `device` unreadable or malformed: the device is
  skipped with a message in `NodeDevices.warnings`. These ids are what pool
  selectors match on; guessing them could hand a pod the wrong hardware.
- the device directory vanishes (dangling `bus/pci/devices` link, or gone
  by the end of its read): skipped the same way; the next scan is right.
- any other attribute or link unreadable or malformed: that field falls back
  to "unknown" (None, 0 or empty) and `Device.warnings` says which and why.
- a netdev that vanishes while read has moved namespace: it is left out, and a
  `net/` directory left empty gives `NetdevState.ELSEWHERE`, as it should.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from deviceplugin.model import VIRTIO_VENDOR, Device, NetDev, NetdevState, NodeDevices
from deviceplugin.sysfs_values import (
    driver_of_link,
    iommu_group_of_link,
    is_virtio_child,
    netdev_state,
    parse_carrier,
    parse_class,
    parse_hex_id,
    parse_ifindex,
    parse_int,
    parse_link_type,
    parse_mac,
    parse_numa_node,
    parse_operstate,
    parse_pci_address,
    pci_address_of_link,
    pci_address_of_netdev_link,
    virtfn_index,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

NETWORK_CLASS_PREFIX = "02"  # PCI base class 0x02: network controller
PCI_DEVICES = "bus/pci/devices"

_READ_SIZE = 4096  # a sysfs attribute never exceeds one page
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted in a fake --sysfs-root must not hang the daemon.
_FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK


# --- the I/O shell ------------------------------------------------------------


class _Skip(Exception):
    """The device cannot be described at all; drop it from this scan."""


@dataclass(slots=True)
class _PfInfo:
    """What a VF needs from its PF: its own `virtfnN` index and the PF's netdev."""

    virtfns: Mapping[str, int]
    netdev: str | None


@dataclass(slots=True)
class _Probe:
    """One device as read in the first pass, before VFs are tied to their PFs."""

    fields: dict[str, Any]
    virtfns: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Dir:
    """An open device directory.

    Files are read relative to `fd` (no path walk through the bus symlink per
    file); listings go through `path`, because `os.listdir(fd)` costs a dup,
    three fcntls and a rewind on top of what a listing by path needs.
    """

    fd: int
    path: str


def _read_text(name: str, dir_fd: int) -> str:
    fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    try:
        data = os.read(fd, _READ_SIZE)
    finally:
        os.close(fd)
    return data.decode("ascii")


def _required(dir_fd: int, name: str, parse: Callable[[str], T]) -> T:
    try:
        return parse(_read_text(name, dir_fd))
    except FileNotFoundError:
        raise _Skip(f"{name} missing (device vanished?)") from None
    except OSError as exc:
        raise _Skip(f"{name} unreadable: {exc.strerror}") from None
    except ValueError as exc:
        raise _Skip(f"{name}: {exc}") from None


# `_optional` and `_link` are the scan's inner loop (a dozen calls per VF): each reads and
# judges in one function, no partial and no shared helper in between. Every file read
# goes through `_read_text` (the tests make devices vanish mid-scan there).
def _optional(
    dir_fd: int, name: str, parse: Callable[[str], T], warnings: list[str], default: T
) -> T:
    """Absent is normal (not every device has every file); broken is worth a warning."""
    try:
        return parse(_read_text(name, dir_fd))
    except FileNotFoundError:
        return default
    except OSError as exc:
        warnings.append(f"{name} unreadable: {exc.strerror}")
    except ValueError as exc:
        warnings.append(f"{name}: {exc}")
    return default


def _link(dir_fd: int, name: str, parse: Callable[[str], T], warnings: list[str], default: T) -> T:
    """As `_optional`, for a symlink's target."""
    try:
        return parse(os.readlink(name, dir_fd=dir_fd))
    except FileNotFoundError:
        return default
    except OSError as exc:
        warnings.append(f"{name} link unreadable: {exc.strerror}")
    except ValueError as exc:
        warnings.append(f"{name} link: {exc}")
    return default


def _carrier(dir_fd: int, path: str, warnings: list[str]) -> bool | None:
    try:
        return parse_carrier(_read_text(path, dir_fd))
    except OSError as exc:
        # EINVAL is how the kernel says "administratively down, carrier unknown".
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            warnings.append(f"carrier unreadable: {exc.strerror}")
    except ValueError as exc:
        warnings.append(f"carrier: {exc}")
    return None


def _listdir(path: str, warnings: list[str], what: str) -> list[str] | None:
    """Sorted entries; None (and no warning) when the directory does not exist."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        warnings.append(f"{what} unreadable: {exc.strerror}")
        return None


def _read_netdev(dev: _Dir, net_dir: str, name: str, warnings: list[str]) -> NetDev | None:
    base = f"{net_dir}/{name}/"
    fd = dev.fd
    w: list[str] = []
    ifindex = _optional(fd, base + "ifindex", parse_ifindex, w, None)
    if ifindex is None and not w:
        # Every netdev has an ifindex; gone means it moved to another netns just now.
        log.debug("sysfs_netdev_vanished", netdev=name)
        return None
    netdev = NetDev(
        name=name,
        mac=_optional(fd, base + "address", parse_mac, w, None),
        mtu=_optional(fd, base + "mtu", parse_int, w, None),
        operstate=_optional(fd, base + "operstate", parse_operstate, w, None),
        carrier=_carrier(fd, base + "carrier", w),
        link_type=_optional(fd, base + "type", parse_link_type, w, None),
        ifindex=ifindex,
    )
    warnings.extend(f"netdev {name}: {msg.removeprefix(base)}" for msg in w)
    return netdev


def _net_dirs(entries: Iterable[str]) -> list[str]:
    """`net` and every `virtioN/net` the device directory may hold."""
    return ["net", *(f"{n}/net" for n in entries if is_virtio_child(n))]


def _netdev_listings(
    dev: _Dir, net_dirs: Iterable[str], warnings: list[str]
) -> list[tuple[str, list[str]]]:
    """(net dir, netdev names) for each of `net_dirs` that exists."""
    found = []
    for net_dir in net_dirs:
        names = _listdir(f"{dev.path}/{net_dir}", warnings, net_dir)
        if names is not None:
            found.append((net_dir, names))
    return found


def _read_netdevs(
    dev: _Dir, net_dirs: Iterable[str], warnings: list[str]
) -> tuple[tuple[NetDev, ...], NetdevState]:
    netdevs: list[NetDev] = []
    listings = _netdev_listings(dev, net_dirs, warnings)
    for net_dir, names in listings:
        for name in names:
            netdev = _read_netdev(dev, net_dir, name, warnings)
            if netdev is not None:
                netdevs.append(netdev)
    return tuple(netdevs), netdev_state(netdevs, bool(listings))


def _read_virtfns(dev: _Dir, entries: Iterable[str], warnings: list[str]) -> dict[str, int]:
    virtfns: dict[str, int] = {}
    for name in entries:
        index = virtfn_index(name)
        if index is not None:
            vf = _link(dev.fd, name, pci_address_of_link, warnings, None)
            if vf is not None:
                virtfns[vf] = index
    return virtfns


def _probe_dir(dev: _Dir) -> _Probe | None:
    """Read one PCI function; None when it is not a network controller.

    The directory is only listed where a listing is the only way to know:
    PFs (their `virtfnN` links) and virtio functions (their `virtioN`
    child; virtio-pci drives vendor 0x1af4 only). A VF, the bulk of a big
    node, costs a fixed set of opens and readlinks.
    """
    fd = dev.fd
    class_code = _required(fd, "class", parse_class)
    if not class_code.startswith(NETWORK_CLASS_PREFIX):
        return None
    vendor = _required(fd, "vendor", parse_hex_id)
    device = _required(fd, "device", parse_hex_id)
    w: list[str] = []
    fields: dict[str, Any] = {
        "vendor": vendor,
        "device": device,
        "class_code": class_code,
        "subsystem_vendor": _optional(fd, "subsystem_vendor", parse_hex_id, w, None),
        "subsystem_device": _optional(fd, "subsystem_device", parse_hex_id, w, None),
        "driver": _link(fd, "driver", driver_of_link, w, None),
        "numa_node": _optional(fd, "numa_node", parse_numa_node, w, None),
        "iommu_group": _link(fd, "iommu_group", iommu_group_of_link, w, None),
    }
    probe = _Probe(fields=fields, warnings=w)
    entries: list[str] = []
    pf = _link(fd, "physfn", pci_address_of_link, w, None)
    if pf is not None:
        fields["pf_address"] = pf
    else:
        total_vfs = _optional(fd, "sriov_totalvfs", parse_int, w, None)
        if total_vfs is not None:
            entries = _listdir(dev.path, w, "device directory") or []
            fields["total_vfs"] = total_vfs
            fields["num_vfs"] = _optional(fd, "sriov_numvfs", parse_int, w, 0)
            probe.virtfns = _read_virtfns(dev, entries, w)
            fields["vf_addresses"] = tuple(sorted(probe.virtfns, key=probe.virtfns.__getitem__))
    if vendor == VIRTIO_VENDOR and not entries:
        entries = _listdir(dev.path, w, "device directory") or []
    fields["netdevs"], fields["netdev_state"] = _read_netdevs(dev, _net_dirs(entries), w)
    return probe


def _open_device(bus: _Dir, pci: str) -> _Dir:
    try:
        return _Dir(os.open(pci, _DIR_FLAGS, dir_fd=bus.fd), f"{bus.path}/{pci}")
    except FileNotFoundError:
        raise _Skip("vanished (dangling bus/pci/devices link)") from None
    except OSError as exc:
        raise _Skip(f"cannot open: {exc.strerror}") from None


def _probe(bus: _Dir, pci: str) -> _Probe | None:
    dev = _open_device(bus, pci)
    try:
        probe = _probe_dir(dev)
    finally:
        os.close(dev.fd)
    if probe is not None:
        try:
            os.stat(pci, dir_fd=bus.fd)
        except FileNotFoundError:
            raise _Skip("vanished during scan (hot-unplug)") from None
    return probe


def _read_pf_info(bus: _Dir, pf: str) -> _PfInfo | None:
    """The PF side of a VF whose PF was not read as a network device in this pass."""
    ignored: list[str] = []
    try:
        dev = _open_device(bus, pf)
    except _Skip:
        return None
    try:
        entries = _listdir(dev.path, ignored, "")
        if entries is None:
            return None
        virtfns = _read_virtfns(dev, entries, ignored)
        listings = _netdev_listings(dev, _net_dirs(entries), ignored)
    finally:
        os.close(dev.fd)
    netdevs = [name for _, names in listings for name in names]
    return _PfInfo(virtfns=virtfns, netdev=netdevs[0] if netdevs else None)


def _finish(pci: str, probe: _Probe, pf_info: Callable[[str], _PfInfo | None]) -> Device:
    """Tie a VF to its PF, then freeze the record (one construction per device)."""
    fields = probe.fields
    pf = fields.get("pf_address")
    if pf is not None:
        info = pf_info(pf)
        if info is None:
            probe.warnings.append(f"PF {pf} unreadable: VF index and PF netdev unknown")
        else:
            fields["pf_netdev"] = info.netdev
            fields["vf_index"] = info.virtfns.get(pci)
            if fields["vf_index"] is None:
                probe.warnings.append(f"PF {pf} has no virtfn link to this VF")
    if probe.warnings:
        log.warning("sysfs_device_degraded", pci=pci, problems=probe.warnings)
    return Device(pci_address=pci, warnings=tuple(probe.warnings), **fields)


def _first_netdev(probe: _Probe) -> str | None:
    netdevs = probe.fields["netdevs"]
    return netdevs[0].name if netdevs else None


def _open_bus(sysfs_root: Path) -> _Dir:
    path = os.path.join(sysfs_root, PCI_DEVICES)
    return _Dir(os.open(path, _DIR_FLAGS), path)


def _skipped(pci: str, reason: str) -> str:
    log.warning("sysfs_device_skipped", pci=pci, reason=reason)
    return f"{pci}: skipped: {reason}"


def _unreadable_bus(sysfs_root: Path, exc: OSError) -> NodeDevices:
    log.warning("sysfs_no_pci_bus", root=str(sysfs_root), error=exc.strerror)
    return NodeDevices(warnings=(f"{sysfs_root}/{PCI_DEVICES} unreadable: {exc.strerror}",))


def _scan_bus(bus: _Dir) -> NodeDevices:
    node_warnings: list[str] = []
    probes: dict[str, _Probe] = {}
    for entry in sorted(os.listdir(bus.path)):
        try:
            pci = parse_pci_address(entry)
        except ValueError as exc:
            node_warnings.append(_skipped(entry, str(exc)))
            continue
        try:
            probe = _probe(bus, entry)
        except _Skip as exc:
            node_warnings.append(_skipped(pci, str(exc)))
            continue
        if probe is not None:
            probes[pci] = probe

    # Each PF's virtfn links were read once in the first pass; its VFs share them.
    pf_cache: dict[str, _PfInfo | None] = {
        pci: _PfInfo(p.virtfns, _first_netdev(p))
        for pci, p in probes.items()
        if "total_vfs" in p.fields
    }

    def pf_info(pf: str) -> _PfInfo | None:
        if pf not in pf_cache:
            pf_cache[pf] = _read_pf_info(bus, pf)
        return pf_cache[pf]

    devices = {pci: _finish(pci, probe, pf_info) for pci, probe in probes.items()}
    return NodeDevices(devices=devices, warnings=tuple(node_warnings))


def scan(sysfs_root: Path = Path("/sys")) -> NodeDevices:
    """Every PCI network function (class 0x02xxxx) of the node, keyed by PCI address."""
    try:
        bus = _open_bus(sysfs_root)
    except OSError as exc:
        return _unreadable_bus(sysfs_root, exc)
    try:
        return _scan_bus(bus)
    except OSError as exc:  # listing the bus directory itself; per-device errors never escape
        return _unreadable_bus(sysfs_root, exc)
    finally:
        os.close(bus.fd)


def read_device(sysfs_root: Path, pci_address: str) -> Device | None:
    """One device, as `scan` would report it; None if absent or not a network function."""
    try:
        pci = parse_pci_address(pci_address)
        bus = _open_bus(sysfs_root)
    except (ValueError, OSError) as exc:
        log.warning("sysfs_read_device_failed", pci=pci_address, error=str(exc))
        return None
    try:
        try:
            probe = _probe(bus, pci)
        except _Skip as exc:
            _skipped(pci, str(exc))
            return None
        if probe is None:
            return None
        return _finish(pci, probe, lambda pf: _read_pf_info(bus, pf))
    finally:
        os.close(bus.fd)


# --- netdev -> PCI function, one readlink -------------------------------------


def netdev_pci_address(sysfs_root: Path, name: str) -> str | None:
    """The PCI address of netdev `name` in this namespace, from one readlink; None if the
    name is no netdev here or has no PCI function of its own."""
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        return None
    try:
        target = os.readlink(os.path.join(sysfs_root, "class/net", name))
    except OSError:
        return None
    return pci_address_of_netdev_link(target, name)
