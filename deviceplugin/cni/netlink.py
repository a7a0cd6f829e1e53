"""The netlink side of the CNI executor: a thin pyroute2 layer on plain records.

A netlink socket belongs to the namespace its thread was in when the socket
was created, so the pod's socket is opened after a thread-local `setns` and the
thread switches back at once: every later call runs on ordinary sockets, no
forked helper (pyroute2's own `netns=` support forks one per socket, which
costs more than the whole CNI call should). Moves between namespaces carry the
new name in the same message, so a device is never visible under a clashing
name and a failed move leaves it untouched.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from deviceplugin.cni.types import IpConfig, Route
from deviceplugin.routes import default_route_ifindexes

_CLONE_NEWNET = 0x40000000
_IFF_UP = 0x1
_IFA_F_NODAD = 0x02
_RTPROT_BOOT = 3  # what `ip route add` and Go's netlink use when no protocol is given
_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceGone(Exception):
    """The pod's network namespace path does not exist (any more)."""


@dataclass(frozen=True, slots=True)
class Link:
    """A network interface as one namespace's netlink shows it."""

    index: int
    name: str
    mac: str
    alias: str
    up: bool
    mtu: int
    addresses: tuple[str, ...] = ()  # CIDR strings, global scope only


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_netns(path: str) -> int:
    """An fd on a namespace; `NamespaceGone` if the path is missing or not a namespace."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise NamespaceGone(path) from exc


@contextmanager
def netns_socket(ns_fd: int) -> Iterator[IPRoute]:
    """An IPRoute bound to the namespace `ns_fd`, created from the calling thread."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(ns_fd)
        try:
            ipr = IPRoute()
        finally:
            # A thread left in the pod's namespace would do later work there: never continue.
            try:
                _setns(own)
            except OSError:  # pragma: no cover - kernel refused to return us
                os.abort()
    finally:
        os.close(own)
    try:
        yield ipr
    finally:
        ipr.close()


def _to_link(ipr: IPRoute, msg: Any, with_addresses: bool) -> Link:
    index = msg["index"]
    addresses: tuple[str, ...] = ()
    if with_addresses:
        addresses = tuple(
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(index=index)
            if a["scope"] == 0
        )
    return Link(
        index=index,
        name=msg.get_attr("IFLA_IFNAME"),
        mac=(msg.get_attr("IFLA_ADDRESS") or "").lower(),
        alias=msg.get_attr("IFLA_IFALIAS") or "",
        up=bool(msg["flags"] & _IFF_UP),
        mtu=msg.get_attr("IFLA_MTU") or 0,
        addresses=addresses,
    )


class Namespace:
    """Link operations in one network namespace, through one netlink socket."""

    def __init__(self, ipr: IPRoute) -> None:
        self.ipr = ipr

    def links(self) -> list[Link]:
        return [_to_link(self.ipr, m, False) for m in self.ipr.get_links()]

    def link(self, name: str, with_addresses: bool = False) -> Link | None:
        try:
            msgs = self.ipr.get_links(ifname=name)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return _to_link(self.ipr, msgs[0], with_addresses) if msgs else None

    def link_by_index(self, index: int, with_addresses: bool = False) -> Link | None:
        try:
            msgs = self.ipr.get_links(index)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return _to_link(self.ipr, msgs[0], with_addresses) if msgs else None

    def set_up(self, index: int) -> None:
        self.ipr.link("set", index=index, state="up")

    def set_down(self, index: int) -> None:
        self.ipr.link("set", index=index, state="down")

    def restore(self, index: int, name: str, mtu: int | None, alias: str) -> None:
        """Name, MTU and alias in one message."""
        spec: dict[str, Any] = {"ifname": name, "ifalias": alias}
        if mtu is not None:
            spec["mtu"] = mtu
        self.ipr.link("set", index=index, **spec)

    def move(
        self,
        index: int,
        target_ns_fd: int,
        name: str,
        alias: str,
        mtu: int | None = None,
        up: bool = False,
    ) -> None:
        """Move to another namespace under `name`, alias (and MTU) set, in one message.

        The kernel applies the namespace change first, then the rest. A move
        closes the device, but closing it inside the move costs ~4 ms more than
        a separate "down" before it, so callers take running devices down
        first; `up` brings it up again on arrival.
        """
        spec: dict[str, Any] = {"net_ns_fd": target_ns_fd, "ifname": name, "ifalias": alias}
        if mtu is not None:
            spec["mtu"] = mtu
        if up:
            spec["state"] = "up"
        self.ipr.link("set", index=index, **spec)

    def default_route_ifindexes(self) -> frozenset[int]:
        """Interfaces carrying a default route here; routes only, no link dump."""
        plain = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self.ipr.route("dump", family=family):
                if msg["dst_len"] != 0:
                    continue
                plain.append(
                    {
                        "dst_len": 0,
                        "table": msg.get_attr("RTA_TABLE") or msg["table"],
                        "type": msg["type"],
                        "oif": msg.get_attr("RTA_OIF"),
                        "multipath_oifs": [h["oif"] for h in msg.get_attr("RTA_MULTIPATH") or []],
                    }
                )
        return default_route_ifindexes(plain)

    def configure(
        self, index: int, mtu: int | None, ips: tuple[IpConfig, ...], routes: tuple[Route, ...]
    ) -> None:
        """MTU, up, addresses, then routes; routes without a gateway use the family's one."""
        self.ipr.link("set", index=index, state="up", **({"mtu": mtu} if mtu is not None else {}))
        for ip in ips:
            iface = ipaddress.ip_interface(ip.address)
            extra = {"flags": _IFA_F_NODAD} if iface.version == 6 else {}
            self.ipr.addr(
                "add",
                index=index,
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                **extra,
            )
        gateways = {}
        for ip in ips:
            if ip.gateway:
                gateways.setdefault(ipaddress.ip_address(ip.gateway).version, ip.gateway)
        for route in routes:
            net = ipaddress.ip_network(route.dst, strict=False)
            gw = route.gw or gateways.get(net.version)
            spec: dict[str, Any] = {
                "dst": str(net.network_address),
                "dst_len": net.prefixlen,
                "oif": index,
                "proto": _RTPROT_BOOT,
                "family": socket.AF_INET6 if net.version == 6 else socket.AF_INET,
            }
            if gw:
                spec["gateway"] = gw
            self.ipr.route("add", **spec)
