"""Event sources that keep the daemon's view of the node current, without polling.

Each source is a thin shell around one kernel interface, read from the asyncio
loop with `loop.add_reader` (no threads, no timers while nothing happens):

- `UeventMonitor`: kernel uevents for the `pci` and `net` subsystems through
  pyudev. NICs added or removed, drivers bound or unbound, VFs created or
  destroyed through `sriov_numvfs`, netdevs renamed or moved into pods. Where
  no udevd runs (a container, the test VMs) it listens to the kernel's own
  multicast group, else to udevd's, which comes after udev rules (renames) ran.
- `LinkMonitor`: rtnetlink link messages (RTM_NEWLINK/RTM_DELLINK) on a raw
  netlink socket, decoded with pyroute2's marshal into `LinkState` records and
  kept as a map of every interface in the daemon's namespace. A link flap does
  not need a sysfs scan, only new verdicts, so this path is kept short.
- `FileWatcher`: inotify on the config file's directory, so both an edited
  file and a ConfigMap update (an atomic swap of the `..data` symlink) count.
- `Coalescer`: turns a burst of triggers (256 VF uevents from one
  `sriov_numvfs` write) into one run of an async action, after a short quiet
  window but never later than a maximum delay.

The pure helpers (`uevent_relevant`, `parse_link_messages`, `link_changes`)
hold the decisions, so tests can check them on plain data.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from asyncinotify import Inotify, Mask
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_GETLINK, RTM_NEWLINK, RTMGRP_LINK
from pyroute2.netlink.rtnl.ifinfmsg import IFF_LOWER_UP, IFF_UP
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from deviceplugin.health import LinkState

log = structlog.get_logger(__name__)

UEVENT_SUBSYSTEMS = ("pci", "net")
UDEV_CONTROL = Path("/run/udev/control")  # exists while udevd runs (systemd-udevd's socket)
# A socket buffer that survives the uevent and link-message storm of thousands
# of VFs created at once; setting it needs CAP_NET_ADMIN, which the daemon has.
RECEIVE_BUFFER_BYTES = 8 << 20
MAX_EVENTS_PER_WAKEUP = 1024  # then yield to the loop; the reader fires again
DUMP_TIMEOUT_S = 5.0
_RECV_BYTES = 1 << 20  # one netlink datagram; a PF with many VFs sends large ones
_SO_RCVBUFFORCE = 33  # not in the socket module
_AF_UNSPEC = 0  # RTM_NEWLINK of family AF_BRIDGE describes a bridge port, not the link
_NETWORK_CLASS = 0x02
# Hot-plug: VFs of one `sriov_numvfs` write arrive milliseconds apart; a NIC
# hot-plug's events within a second. Config edits: editors write, then rename.
HOTPLUG_QUIET_S = 0.1
HOTPLUG_MAX_DELAY_S = 2.0
CONFIG_QUIET_S = 0.2


# --- uevents --------------------------------------------------------------------------


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


# --- link state -----------------------------------------------------------------------


def link_state_of(message: Any) -> LinkState | None:
    """A pyroute2 ifinfmsg as a `LinkState`; None for messages that are not about a link."""
    if message["family"] != _AF_UNSPEC:
        return None
    name = message.get_attr("IFLA_IFNAME")
    if not name:
        return None
    flags = message["flags"]
    carrier = message.get_attr("IFLA_CARRIER")
    operstate = message.get_attr("IFLA_OPERSTATE")
    return LinkState(
        ifname=name,
        ifindex=message["index"],
        admin_up=bool(flags & IFF_UP),
        carrier=bool(flags & IFF_LOWER_UP) if carrier is None else bool(carrier),
        operstate=operstate.lower() if isinstance(operstate, str) else None,
    )


@dataclass(frozen=True, slots=True)
class LinkMessage:
    """A decoded rtnetlink datagram entry: a link added/changed or deleted, or a dump end."""

    deleted: bool = False
    state: LinkState | None = None
    dump_done: int | None = None  # sequence number of the dump that ended (DONE or ERROR)


def parse_link_messages(data: bytes) -> Iterator[LinkMessage]:
    """Decode one netlink datagram; other message types are skipped."""
    for message in MarshalRtnl().parse(data):
        kind = message["header"]["type"]
        if kind in (NLMSG_DONE, NLMSG_ERROR):
            yield LinkMessage(dump_done=message["header"]["sequence_number"])
        elif kind in (RTM_NEWLINK, RTM_DELLINK):
            state = link_state_of(message)
            if state is not None:
                yield LinkMessage(deleted=kind == RTM_DELLINK, state=state)


def _health_key(state: LinkState | None) -> tuple[bool, bool | None] | None:
    return None if state is None else (state.admin_up, state.carrier)


def link_changes(links: dict[int, LinkState], messages: Iterable[LinkMessage]) -> frozenset[str]:
    """Apply messages to the map (ifindex → state); return names whose health inputs changed.

    A rename changes both names; a message that only moved counters or the MTU changes none.
    """
    changed: set[str] = set()
    for msg in messages:
        state = msg.state
        if state is None or state.ifindex is None:
            continue
        old = links.get(state.ifindex)
        if msg.deleted:
            if old is not None:
                del links[state.ifindex]
                changed.add(old.ifname)
            continue
        links[state.ifindex] = state
        if old is None or old.ifname != state.ifname:
            changed.add(state.ifname)
            if old is not None:
                changed.add(old.ifname)
        elif _health_key(old) != _health_key(state):
            changed.add(state.ifname)
    return frozenset(changed)


def _dump_request(seq: int) -> bytes:
    """RTM_GETLINK dump: nlmsghdr + an all-zero ifinfomsg (every family, every link)."""
    ifinfo = struct.pack("=BxHiII", _AF_UNSPEC, 0, 0, 0, 0)
    header = struct.pack(
        "=IHHII", 16 + len(ifinfo), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + ifinfo


class LinkMonitor:
    """Every link of the daemon's namespace, kept current by rtnetlink multicast.

    `open()` subscribes, then dumps the current links (subscribing first means
    no change falls between the dump and the first event). `on_change` gets the
    names whose admin state or carrier changed, once per socket wakeup, so a
    storm of messages costs one call. If the kernel drops messages (ENOBUFS)
    the map is rebuilt from a fresh dump.
    """

    def __init__(self, on_change: Callable[[frozenset[str]], None]) -> None:
        self._on_change = on_change
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._links: dict[int, LinkState] = {}
        self._buf = bytearray(_RECV_BYTES)
        self._seq = int(time.monotonic()) & 0xFFFF

    @property
    def links(self) -> dict[str, LinkState]:
        """Current state by interface name."""
        return {s.ifname: s for s in self._links.values()}

    def open(self) -> None:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            sock.bind((0, RTMGRP_LINK))
            self._sock = sock
            self._links = self._dump()
        except BaseException:
            sock.close()
            self._sock = None
            raise
        sock.setblocking(False)

    def _recv(self) -> bytes:
        assert self._sock is not None
        n = self._sock.recv_into(self._buf)
        return bytes(self._buf[:n])

    def _dump(self) -> dict[int, LinkState]:
        """A fresh map from an RTM_GETLINK dump, read synchronously (milliseconds).

        Events read while waiting for the dump's end are applied in order too.
        """
        assert self._sock is not None
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        links: dict[int, LinkState] = {}
        self._sock.settimeout(DUMP_TIMEOUT_S)
        try:
            self._sock.send(_dump_request(self._seq))
            while True:
                messages = list(parse_link_messages(self._recv()))
                link_changes(links, messages)
                if any(m.dump_done == self._seq for m in messages):
                    return links
        finally:
            self._sock.settimeout(None)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._sock is not None
        self._loop = loop
        self._sock.setblocking(False)
        loop.add_reader(self._sock.fileno(), self._read)

    def _read(self) -> None:
        assert self._sock is not None
        changed: set[str] = set()
        for _ in range(MAX_EVENTS_PER_WAKEUP):
            try:
                data = self._recv()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    log.warning("netlink_read_failed", error=str(exc))
                    break
                log.warning("netlink_overflow_resync")
                changed |= self._resync()
                break
            changed |= link_changes(self._links, parse_link_messages(data))
        if changed:
            self._on_change(frozenset(changed))

    def _resync(self) -> set[str]:
        old = self.links
        try:
            self._links = self._dump()
        except OSError as exc:
            log.warning("netlink_resync_failed", error=str(exc))
        finally:
            assert self._sock is not None
            self._sock.setblocking(False)
        new = self.links
        return {
            n for n in old.keys() | new.keys() if _health_key(old.get(n)) != _health_key(new.get(n))
        }

    def close(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None


# --- config file ----------------------------------------------------------------------

CONFIGMAP_DATA_LINK = "..data"  # kubelet swaps this symlink atomically on a ConfigMap update
_FILE_EVENTS = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.CREATE | Mask.DELETE | Mask.MOVED_FROM


class FileWatcher:
    """Calls `on_change` whenever `path` may now read differently.

    Watching the directory rather than the file survives editors that write a
    new file and rename it over the old one, and ConfigMap volumes, where the
    file is a symlink through `..data` and only `..data` changes.
    """

    def __init__(self, path: Path, on_change: Callable[[], None]) -> None:
        self.path = path
        self._on_change = on_change
        self._names = {path.name, CONFIGMAP_DATA_LINK}

    async def run(self) -> None:
        with Inotify() as inotify:
            inotify.add_watch(self.path.parent, _FILE_EVENTS)
            log.info("config_watch_started", directory=str(self.path.parent))
            async for event in inotify:
                if event.name is not None and str(event.name) in self._names:
                    log.debug("config_file_event", name=str(event.name), mask=str(event.mask))
                    self._on_change()


# --- coalescing -----------------------------------------------------------------------


class Coalescer:
    """Runs `action` once per burst of triggers, trailing edge.

    The run starts `quiet` seconds after the last trigger, but no later than
    `max_delay` after the first one of the burst, so a source that never goes
    quiet still gets served. Triggers that arrive while the action runs make
    one more run afterwards; runs never overlap. `action` receives how many
    triggers it covers. `quiet=0` runs on the next loop iteration, which still
    merges everything that arrived in the same wakeup.
    """

    def __init__(
        self,
        action: Callable[[int], Awaitable[None]],
        *,
        quiet: float,
        max_delay: float,
        name: str,
    ) -> None:
        self._action = action
        self.quiet = quiet
        self.max_delay = max(max_delay, quiet)
        self.name = name
        self.received = 0
        self.runs = 0
        self._pending = 0
        self._first = 0.0
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def coalesced(self) -> int:
        """Triggers that did not get a run of their own."""
        return self.received - self._pending - self.runs

    def trigger(self, count: int = 1) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self._pending:
            self._first = now
        self._pending += count
        self.received += count
        self._last = now
        if self._timer is None and self._task is None:
            self._timer = loop.call_at(self._deadline(), self._fire)

    def _deadline(self) -> float:
        return min(self._last + self.quiet, self._first + self.max_delay)

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._deadline()
        if loop.time() < deadline:  # more triggers came in meanwhile: wait for quiet
            self._timer = loop.call_at(deadline, self._fire)
            return
        self._timer = None
        self._task = loop.create_task(self._run(), name=f"coalesced-{self.name}")

    async def _run(self) -> None:
        batch, self._pending = self._pending, 0
        self.runs += 1
        try:
            await self._action(batch)
        except Exception:
            log.exception("coalesced_action_failed", source=self.name, events=batch)
        finally:
            self._task = None
            if self._pending:
                self._timer = asyncio.get_running_loop().call_at(self._deadline(), self._fire)

    async def aclose(self) -> None:
        """Drop pending triggers and cancel a running action (shutting down)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending = 0
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- which mode ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveMode:
    """How the daemon learns about changes, for its logs and `netdp list`.

    `rescan_interval_s` is set when periodic rescans stand in for a missing
    event source; `problems` says why a source is missing.
    """

    uevents: str | None  # "kernel" or "udev" when listening, else None
    netlink: bool
    rescan_interval_s: float | None
    problems: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = []
        if self.uevents:
            parts.append(f"hot-plug from {self.uevents} uevents")
        if self.netlink:
            parts.append("link state from netlink")
        if self.rescan_interval_s is not None:
            parts.append(f"periodic rescan every {self.rescan_interval_s:g} s")
        text = ", ".join(parts)
        if self.problems:
            text += f" ({'; '.join(self.problems)})"
        return text


def live_mode(
    uevents: str | None, netlink: bool, rescan_interval_s: float, problems: Iterable[str]
) -> LiveMode:
    """Periodic rescans exactly when an event source is missing."""
    complete = uevents is not None and netlink
    return LiveMode(uevents, netlink, None if complete else rescan_interval_s, tuple(problems))


def open_sources(
    on_uevent: Callable[[Uevent], None],
    on_links: Callable[[frozenset[str]], None],
    *,
    rescan_interval_s: float,
    periodic_only: bool = False,
) -> tuple[LiveMode, UeventMonitor | None, LinkMonitor | None]:
    """Open what can be opened; the mode says what stands in for the rest."""
    problems = []
    uevents: UeventMonitor | None = None
    links: LinkMonitor | None = None
    if periodic_only:
        problems.append("event sources disabled by --watch periodic")
    else:
        try:
            uevents = UeventMonitor(on_uevent)
            uevents.open()
        except Exception as exc:  # pyudev raises ImportError/OSError/its own on a bad libudev
            problems.append(f"no uevent socket: {exc}")
            uevents = None
        try:
            links = LinkMonitor(on_links)
            links.open()
        except OSError as exc:
            problems.append(f"no rtnetlink socket: {exc}")
            links = None
    mode = live_mode(
        uevents.source if uevents else None, links is not None, rescan_interval_s, problems
    )
    return mode, uevents, links


def probe(rescan_interval_s: float, periodic_only: bool = False) -> LiveMode:
    """The mode `netdp run` would use here and now (opens and closes the sources)."""
    mode, uevents, links = open_sources(
        lambda _: None,
        lambda _: None,
        rescan_interval_s=rescan_interval_s,
        periodic_only=periodic_only,
    )
    for source in (uevents, links):
        if source is not None:
            source.close()
    return mode
