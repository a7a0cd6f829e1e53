"""Kernel uevents for the `pci` and `net` subsystems: hot-plug as it happens.

NICs added or removed, drivers bound or unbound, VFs created or destroyed
through `sriov_numvfs`, netdevs renamed or moved into pods: each is a uevent.
`UeventMonitor` reads them through pyudev on the asyncio loop. Where no udevd
runs (a container, the test VMs) it listens to the kernel's own multicast
group, else to udevd's, which comes after udev rules (renames) ran.
`uevent_relevant` is the pure decision whether an event may change what the
daemon advertises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from deviceplugin.watch.limits import MAX_EVENTS_PER_WAKEUP, RECEIVE_BUFFER_BYTES

log = structlog.get_logger(__name__)

UEVENT_SUBSYSTEMS = ("pci", "net")
UDEV_CONTROL = Path("/run/udev/control")  # exists while udevd runs (systemd-udevd's socket)
_NETWORK_CLASS = 0x02
# VFs of one `sriov_numvfs` write arrive milliseconds apart; a NIC hot-plug's
# events within a second: how long the daemon lets a burst settle before a rescan.
HOTPLUG_QUIET_S = 0.1
HOTPLUG_MAX_DELAY_S = 2.0


@dataclass(frozen=True, slots=True)
class Uevent:
    """One kernel or udev event, as plain data: `add@/devices/.../net/eth1` and its keys."""

    action: str
    subsystem: str
    devpath: str
    properties: Mapping[str, str] = field(default_factory=dict)


# What the monitor reports when the kernel dropped events (ENOBUFS): anything may have changed.
OVERFLOW = Uevent("overflow", "", "")


def uevent_source(udev_control: Path = UDEV_CONTROL) -> str:
    """Listen to udevd when it runs (it re-broadcasts after its rules), else to the kernel.

    Asking libudev for "udev" events where no udevd runs yields a silent socket.
    """
    return "udev" if udev_control.exists() else "kernel"


def uevent_relevant(event: Uevent, netdevs: Collection[str]) -> bool:
    """Whether an event can change what the daemon advertises.

    PCI events count unless their class says the function is not a network
    controller. Net events count for netdevs of physical devices, and for
    any interface the last scan saw (a fake sysfs can name virtual ones); the
    veths and bridges that pod networking creates by the hundred do not.
    Lost events (`OVERFLOW`) count: only a rescan can tell what they were.
    """
    if event == OVERFLOW:
        return True
    if event.subsystem == "pci":
        pci_class = event.properties.get("PCI_CLASS")
        if pci_class is None:
            return True
        try:
            return int(pci_class, 16) >> 16 == _NETWORK_CLASS
        except ValueError:
            return True
    if event.subsystem == "net":
        if not event.devpath.startswith("/devices/virtual/"):
            return True
        names = (
            event.properties.get("INTERFACE") or _last_part(event.devpath),
            _last_part(event.properties.get("DEVPATH_OLD")),
        )
        return any(n in netdevs for n in names if n)
    return False


def _last_part(devpath: str | None) -> str | None:
    return devpath.rpartition("/")[2] if devpath else None


class UeventMonitor:
    """Kernel uevents for PCI and net devices, delivered on the asyncio loop.

    `open()` raises OSError (or pyudev's errors) when no uevent socket can be
    had, which the daemon answers with periodic rescans.
    """

    def __init__(self, on_event: Callable[[Uevent], None], source: str | None = None) -> None:
        self.source = source or uevent_source()
        self._on_event = on_event
        self._monitor: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        import pyudev  # libudev via ctypes: only loaded where the daemon runs

        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=self.source)
        for subsystem in UEVENT_SUBSYSTEMS:
            monitor.filter_by(subsystem)
        try:
            monitor.set_receive_buffer_size(RECEIVE_BUFFER_BYTES)
        except OSError as exc:
            log.warning("uevent_buffer_not_enlarged", error=str(exc))
        monitor.start()
        self._monitor = monitor

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self._monitor.fileno(), self._read)

    def _read(self) -> None:
        for _ in range(MAX_EVENTS_PER_WAKEUP):
            try:
                device = self._monitor.poll(timeout=0)
            except OSError as exc:
                # ENOBUFS: the kernel dropped events; any event means "rescan", so say so.
                log.warning("uevent_read_failed", error=str(exc))
                self._on_event(OVERFLOW)
                return
            if device is None:
                return
            properties = dict(device.properties)
            self._on_event(
                Uevent(
                    action=device.action or "",
                    subsystem=device.subsystem or "",
                    devpath=properties.get("DEVPATH", ""),
                    properties=properties,
                )
            )

    def close(self) -> None:
        if self._monitor is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._monitor.fileno())
        self._monitor = None
