"""Reading the kernel's PCI and netdev sysfs layout into `model` records.

The parsers of file contents live in `sysfs_values` (pure, tested without a
file system), single reads and their failure rules in `sysfs_read`. This
module walks the layout, a thin shell tuned for large SR-IOV nodes, where the
cost is syscalls: every device directory is opened once and its files are
read relative to that descriptor (no path walk through the `bus/pci/devices`
symlink per file), a function's class, ids and driver come from one read of
its `uevent` (the individual files where it lacks them), the node's netdevs
are placed from one listing of `class/net` (a readlink each, no `net/`
listing per function), a VF costs a fixed set of opens and readlinks, each
PF's `virtfnN` links are read once and give its VFs their PF (no `physfn`
read), and only what a decision uses is read (no MAC, MTU or operstate;
the IOMMU group of vfio-pci functions only). About 16 syscalls per VF with one
netdev (48 before issue 13).

sysfs is a moving target (hot-unplug, netdevs moving between namespaces while
we read), so nothing here raises. What goes wrong degrades one device:

- `class`, `vendor` or `device` (or the uevent's `PCI_CLASS`, `PCI_ID`)
  unreadable or malformed: the device is skipped with a message in
  `NodeDevices.warnings`. These ids are what pool selectors match on;
  guessing them could hand a pod the wrong hardware. A `uevent` that is
  missing, unreadable, malformed or names another function is not used (the
  files say the same); a key it lacks is read from its file.
- the device directory vanishes (dangling `bus/pci/devices` link, or gone
  by the end of the scan): skipped the same way; the next scan is right.
- any other attribute or link unreadable or malformed: that field falls back
  to "unknown" (None, 0 or empty) and `Device.warnings` says which and why.
- a netdev that vanishes while read has moved namespace: it is left out, and a
  `net/` directory left empty gives `NetdevState.ELSEWHERE`, as it should.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from deviceplugin.model import VFIO_DRIVER, VIRTIO_VENDOR, Device, NetDev, NetdevState, NodeDevices
from deviceplugin.sysfs_read import (
    DIR_FLAGS,
    Dir,
    Skip,
    list_dir,
    read_carrier,
    read_link,
    read_optional,
    read_required,
    read_uevent,
)
from deviceplugin.sysfs_values import (
    driver_of_link,
    iommu_group_of_link,
    is_virtio_child,
    netdev_home_of_link,
    netdev_state,
    parse_class,
    parse_driver_name,
    parse_hex_id,
    parse_int,
    parse_link_type,
    parse_numa_node,
    parse_pci_address,
    parse_uevent_class,
    parse_uevent_ids,
    pci_address_of_link,
    virtfn_index,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

NETWORK_CLASS_PREFIX = "02"  # PCI base class 0x02: network controller
PCI_DEVICES = "bus/pci/devices"

# Values that repeat across a node's functions (ids, MTU, NUMA node, link type, a VF's
# physfn link) parse once per distinct text: pure functions, so the same text gives the
# same answer; this caches parsing, never what a file says. Refusals are not cached.
_memo = functools.lru_cache(maxsize=256)
_class_of_uevent = _memo(parse_uevent_class)
_ids_of_uevent = _memo(parse_uevent_ids)
_numa_node = _memo(parse_numa_node)
_link_type = _memo(parse_link_type)
_pf_of_link = _memo(pci_address_of_link)

# --- the I/O shell ------------------------------------------------------------


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


def _read_netdev(dev: Dir, net_dir: str, name: str, warnings: list[str]) -> NetDev | None:
    base = f"{net_dir}/{name}/"
    fd = dev.fd
    w: list[str] = []
    link_type = read_optional(fd, base + "type", _link_type, w, None)
    if link_type is None and not w:
        # Every netdev has a type; gone means it moved to another netns just now.
        log.debug("sysfs_netdev_vanished", netdev=name)
        return None
    netdev = NetDev(name=name, carrier=read_carrier(fd, base + "carrier", w), link_type=link_type)
    if w:
        warnings.extend(f"netdev {name}: {msg.removeprefix(base)}" for msg in w)
    return netdev


def _net_dirs(entries: Iterable[str]) -> list[str]:
    """`net` and every `virtioN/net` the device directory may hold."""
    return ["net", *(f"{n}/net" for n in entries if is_virtio_child(n))]


def _netdev_listings(
    dev: Dir, net_dirs: Iterable[str], warnings: list[str]
) -> list[tuple[str, list[str]]]:
    """(net dir, netdev names) for each of `net_dirs` that exists."""
    found = []
    for net_dir in net_dirs:
        names = list_dir(f"{dev.path}/{net_dir}", warnings, net_dir)
        if names is not None:
            found.append((net_dir, names))
    return found


def _read_netdevs(
    dev: Dir, homes: Iterable[tuple[str, str]], net_dir_seen: bool, warnings: list[str]
) -> tuple[tuple[NetDev, ...], NetdevState]:
    """The netdevs at `homes` ((net dir, name) pairs), and what they say of the state."""
    netdevs = [nd for net_dir, name in homes if (nd := _read_netdev(dev, net_dir, name, warnings))]
    return tuple(netdevs), netdev_state(netdevs, net_dir_seen)


def _listed_netdevs(
    dev: Dir, net_dirs: Iterable[str], warnings: list[str]
) -> tuple[tuple[NetDev, ...], NetdevState]:
    """The netdevs found by listing `net_dirs`, for a function `class/net` placed none under."""
    listings = _netdev_listings(dev, net_dirs, warnings)
    homes = [(net_dir, name) for net_dir, names in listings for name in names]
    return _read_netdevs(dev, homes, bool(listings), warnings)


def _netdev_homes(sysfs_root: Path) -> dict[str, list[tuple[str, str]]]:
    """PCI function -> its (net dir, netdev name)s in this namespace, from `class/net`.

    One listing and a readlink per netdev of the namespace, instead of a
    listing of each function's `net/`: a VF's netdev costs one syscall
    instead of five. A function absent here is listed as before (its netdev
    may sit in a pod, or may have appeared since), so nothing is missed;
    unreadable `class/net` only costs the saving.
    """
    path = os.path.join(sysfs_root, "class/net")
    homes: dict[str, list[tuple[str, str]]] = {}
    try:
        names = os.listdir(path)
        fd = os.open(path, DIR_FLAGS)
    except OSError:
        return homes
    try:
        for name in sorted(names):
            try:
                home = netdev_home_of_link(os.readlink(name, dir_fd=fd), name)
            except OSError:  # gone since the listing, or not a link
                continue
            if home is not None:
                pci, net_dir = home
                homes.setdefault(pci, []).append((net_dir, name))
    finally:
        os.close(fd)
    for found in homes.values():  # `net` first, then virtioN/net, as the listings go
        found.sort(key=lambda home: (home[0] != "net", home))
    return homes


def _read_virtfns(dev: Dir, entries: Iterable[str], warnings: list[str]) -> dict[str, int]:
    virtfns: dict[str, int] = {}
    for name in entries:
        index = virtfn_index(name)
        if index is not None:
            vf = read_link(dev.fd, name, pci_address_of_link, warnings, None)
            if vf is not None:
                virtfns[vf] = index
    return virtfns


def _uevent_required(env: Mapping[str, str], key: str, parse: Callable[[str], T]) -> T:
    try:
        return parse(env[key])
    except ValueError as exc:
        raise Skip(f"uevent {key}: {exc}") from None


def _uevent_optional(
    env: Mapping[str, str], key: str, parse: Callable[[str], T], warnings: list[str], default: T
) -> T:
    try:
        return parse(env[key])
    except ValueError as exc:
        warnings.append(f"uevent {key}: {exc}")
    return default


def _identity(fd: int, env: Mapping[str, str]) -> tuple[str, str, str] | None:
    """(class, vendor, device) of a network function; None for any other class.

    Each from the uevent when it has the key, else from its own file.
    """
    if "PCI_CLASS" in env:
        class_code = _uevent_required(env, "PCI_CLASS", _class_of_uevent)
    else:
        class_code = read_required(fd, "class", parse_class)
    if not class_code.startswith(NETWORK_CLASS_PREFIX):
        return None
    if "PCI_ID" in env:
        vendor, device = _uevent_required(env, "PCI_ID", _ids_of_uevent)
    else:
        vendor = read_required(fd, "vendor", parse_hex_id)
        device = read_required(fd, "device", parse_hex_id)
    return class_code, vendor, device


def _subsystem(fd: int, env: Mapping[str, str], w: list[str]) -> tuple[str | None, str | None]:
    if "PCI_SUBSYS_ID" in env:
        return _uevent_optional(env, "PCI_SUBSYS_ID", _ids_of_uevent, w, (None, None))
    return (
        read_optional(fd, "subsystem_vendor", parse_hex_id, w, None),
        read_optional(fd, "subsystem_device", parse_hex_id, w, None),
    )


def _driver(fd: int, env: Mapping[str, str], w: list[str]) -> str | None:
    """A PCI uevent without `DRIVER=` is the kernel saying "unbound"."""
    if not env:
        return read_link(fd, "driver", driver_of_link, w, None)
    if "DRIVER" not in env:
        return None
    return _uevent_optional(env, "DRIVER", parse_driver_name, w, None)


def _probe_dir(
    dev: Dir, pci: str, homes: Sequence[tuple[str, str]] | None, known_pf: str | None
) -> _Probe | None:
    """Read one PCI function; None when it is not a network controller.

    The directory is only listed where a listing is the only way to know:
    PFs (their `virtfnN` links) and virtio functions without a netdev in
    `class/net` (their `virtioN` child; virtio-pci drives vendor 0x1af4
    only). A VF, the bulk of a big node, costs a fixed set of opens and
    readlinks. `homes`: its netdevs as `class/net` names them (None: list
    its net dirs). `known_pf`: the PF whose `virtfnN` link names this
    function, if already read (the kernel makes that link and the VF's
    `physfn` together; a scan meets every PF before its VFs, whose routing
    ids come after the PF's).
    """
    fd = dev.fd
    env = read_uevent(fd, pci)
    identity = _identity(fd, env)
    if identity is None:
        return None
    class_code, vendor, device = identity
    w: list[str] = []
    subsystem_vendor, subsystem_device = _subsystem(fd, env, w)
    fields: dict[str, Any] = {
        "vendor": vendor,
        "device": device,
        "class_code": class_code,
        "subsystem_vendor": subsystem_vendor,
        "subsystem_device": subsystem_device,
        "driver": _driver(fd, env, w),
        "numa_node": read_optional(fd, "numa_node", _numa_node, w, None),
    }
    if fields["driver"] == VFIO_DRIVER:  # the group matters only for /dev/vfio/<group>
        fields["iommu_group"] = read_link(fd, "iommu_group", iommu_group_of_link, w, None)
    probe = _Probe(fields=fields, warnings=w)
    entries: list[str] = []
    pf = known_pf or read_link(fd, "physfn", _pf_of_link, w, None)
    if pf is not None:
        fields["pf_address"] = pf
    else:
        total_vfs = read_optional(fd, "sriov_totalvfs", parse_int, w, None)
        if total_vfs is not None:
            entries = list_dir(dev.path, w, "device directory") or []
            fields["total_vfs"] = total_vfs
            fields["num_vfs"] = read_optional(fd, "sriov_numvfs", parse_int, w, 0)
            probe.virtfns = _read_virtfns(dev, entries, w)
            fields["vf_addresses"] = tuple(sorted(probe.virtfns, key=probe.virtfns.__getitem__))
    if homes:  # their net dirs existed when `class/net` was listed
        fields["netdevs"], fields["netdev_state"] = _read_netdevs(dev, homes, True, w)
        return probe
    if vendor == VIRTIO_VENDOR and not entries:
        entries = list_dir(dev.path, w, "device directory") or []
    fields["netdevs"], fields["netdev_state"] = _listed_netdevs(dev, _net_dirs(entries), w)
    return probe


def _open_device(bus: Dir, pci: str) -> Dir:
    try:
        return Dir(os.open(pci, DIR_FLAGS, dir_fd=bus.fd), f"{bus.path}/{pci}")
    except FileNotFoundError:
        raise Skip("vanished (dangling bus/pci/devices link)") from None
    except OSError as exc:
        raise Skip(f"cannot open: {exc.strerror}") from None


_VANISHED = "vanished during scan (hot-unplug)"


def _probe(
    bus: Dir,
    pci: str,
    homes: Sequence[tuple[str, str]] | None = None,
    known_pf: str | None = None,
) -> _Probe | None:
    """Read one function; whether it is still there afterwards is the caller's check."""
    dev = _open_device(bus, pci)
    try:
        return _probe_dir(dev, pci, homes, known_pf)
    finally:
        os.close(dev.fd)


def _read_pf_info(bus: Dir, pf: str) -> _PfInfo | None:
    """The PF side of a VF whose PF was not read as a network device in this pass."""
    ignored: list[str] = []
    try:
        dev = _open_device(bus, pf)
    except Skip:
        return None
    try:
        entries = list_dir(dev.path, ignored, "")
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


def _open_bus(sysfs_root: Path) -> Dir:
    path = os.path.join(sysfs_root, PCI_DEVICES)
    return Dir(os.open(path, DIR_FLAGS), path)


def _skipped(pci: str, reason: str) -> str:
    log.warning("sysfs_device_skipped", pci=pci, reason=reason)
    return f"{pci}: skipped: {reason}"


def _unreadable_bus(sysfs_root: Path, exc: OSError) -> NodeDevices:
    log.warning("sysfs_no_pci_bus", root=str(sysfs_root), error=exc.strerror)
    return NodeDevices(warnings=(f"{sysfs_root}/{PCI_DEVICES} unreadable: {exc.strerror}",))


def _scan_bus(bus: Dir, homes: Mapping[str, Sequence[tuple[str, str]]]) -> NodeDevices:
    node_warnings: list[str] = []
    probes: dict[str, _Probe] = {}
    entries: dict[str, str] = {}  # bus entry of each probe, as listed
    vf_of: dict[str, str] = {}  # VF -> PF, from the virtfn links of PFs read so far
    for entry in sorted(os.listdir(bus.path)):
        try:
            pci = parse_pci_address(entry)
        except ValueError as exc:
            node_warnings.append(_skipped(entry, str(exc)))
            continue
        try:
            probe = _probe(bus, entry, homes.get(pci), vf_of.get(pci))
        except Skip as exc:
            node_warnings.append(_skipped(pci, str(exc)))
            continue
        if probe is not None:
            probes[pci] = probe
            entries[pci] = entry
            vf_of.update(dict.fromkeys(probe.virtfns, pci))

    # Gone by the end of the scan: skipped, whatever was read. One listing of the bus
    # instead of a stat per device; the kernel drops a device's bus link first
    # (device_del: bus_remove_device, then kobject_del of its directory).
    present = set(os.listdir(bus.path))
    for pci, entry in entries.items():
        if entry not in present:
            del probes[pci]
            node_warnings.append(_skipped(pci, _VANISHED))

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
        return _scan_bus(bus, _netdev_homes(sysfs_root))
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
        except Skip as exc:
            _skipped(pci, str(exc))
            return None
        if probe is None:
            return None
        try:
            os.stat(pci, dir_fd=bus.fd)
        except FileNotFoundError:
            _skipped(pci, _VANISHED)
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
    home = netdev_home_of_link(target, name)
    return home[0] if home else None
