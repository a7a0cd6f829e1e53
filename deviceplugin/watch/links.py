"""Link state from rtnetlink: every interface's admin state and carrier, kept current.

`LinkMonitor` reads RTM_NEWLINK/RTM_DELLINK messages on a raw netlink socket,
decoded with pyroute2's marshal into `LinkState` records, and keeps a map of
every interface in the daemon's namespace. A link flap does not need a sysfs
scan, only new health verdicts, so this path is kept short. The decoding
(`parse_link_messages`) and the change rule (`link_changes`) are pure.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_GETLINK, RTM_NEWLINK, RTMGRP_LINK
from pyroute2.netlink.rtnl.ifinfmsg import IFF_LOWER_UP, IFF_UP
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from deviceplugin.health import LinkState
from deviceplugin.watch.limits import MAX_EVENTS_PER_WAKEUP, RECEIVE_BUFFER_BYTES

log = structlog.get_logger(__name__)

DUMP_TIMEOUT_S = 5.0
_RECV_BYTES = 1 << 20  # one netlink datagram; a PF with many VFs sends large ones
_SO_RCVBUFFORCE = 33  # not in the socket module
_AF_UNSPEC = 0  # RTM_NEWLINK of family AF_BRIDGE describes a bridge port, not the link


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
