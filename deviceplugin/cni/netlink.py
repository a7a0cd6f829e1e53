"""The kernel side of the CNI namespace port: pyroute2 on plain records.

`NetlinkNamespaces` is the real `ports.Namespaces`: each namespace it opens
is an fd (what a move targets) plus a netlink socket in it, made on first
use, so a namespace that only receives a device costs no socket. A netlink
socket belongs to the namespace its thread was in when the socket was
created, so a pod's socket is opened after a thread-local `setns` and the
thread switches back at once: every later call runs on ordinary sockets, no
forked helper (pyroute2's own `netns=` support forks one per socket, which
costs more than the whole CNI call should). Moves between namespaces carry the
new name in the same message, so a device is never visible under a clashing
name and a failed move leaves it untouched. pyroute2's `NetlinkError` becomes
`ports.NetlinkRefused`, so the rules never see pyroute2.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import ipaddress
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from deviceplugin.cni.ports import Link, NamespaceGone, NetlinkRefused, Netns
from deviceplugin.cni.types import IpConfig, Route
from deviceplugin.routes import read_default_route_ifindexes

_CLONE_NEWNET = 0x40000000
_IFF_UP = 0x1
_IFA_F_NODAD = 0x02
_RTPROT_BOOT = 3  # what `ip route add` and Go's netlink use when no protocol is given
_NS_FLAGS = os.O_RDONLY | os.O_CLOEXEC
_libc = ctypes.CDLL(None, use_errno=True)

P = ParamSpec("P")
R = TypeVar("R")


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def inside_netns(ns_fd: int) -> Iterator[None]:
    """The calling thread in namespace `ns_fd` for the block, then back in its own.

    `setns` moves only the calling thread; sockets made inside stay bound to
    `ns_fd`. A thread left in the other namespace would do later work there,
    so if the kernel refuses the way back the process aborts rather than go on.
    """
    own = os.open("/proc/thread-self/ns/net", _NS_FLAGS)
    try:
        _setns(ns_fd)
        try:
            yield
        finally:
            try:
                _setns(own)
            except OSError:  # pragma: no cover - kernel refused to return us
                os.abort()
    finally:
        os.close(own)


def _open_netns(path: str) -> int:
    """An fd on a namespace; `NamespaceGone` if the path is missing or not a namespace."""
    try:
        return os.open(path, _NS_FLAGS)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise NamespaceGone(path) from exc


def _socket_in(ns_fd: int) -> IPRoute:
    with inside_netns(ns_fd):
        return IPRoute()


def _refusals(method: Callable[P, R]) -> Callable[P, R]:
    """pyroute2's `NetlinkError` as the port's `NetlinkRefused`."""

    @functools.wraps(method)
    def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except NetlinkError as exc:
            raise NetlinkRefused(exc.code, str(exc)) from exc

    return translated


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
    """`ports.Netns` on one kernel namespace: its fd and a netlink socket in it."""

    def __init__(self, fd: int, make_socket: Callable[[], IPRoute]) -> None:
        self.fd = fd
        self._make_socket = make_socket
        self._ipr: IPRoute | None = None

    def connect(self) -> None:
        """Make the netlink socket now rather than on first use."""
        if self._ipr is None:
            self._ipr = self._make_socket()

    @property
    def ipr(self) -> IPRoute:
        self.connect()
        assert self._ipr is not None
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()

    @_refusals
    def links(self) -> list[Link]:
        return [_to_link(self.ipr, m, False) for m in self.ipr.get_links()]

    @_refusals
    def link(self, name: str, with_addresses: bool = False) -> Link | None:
        return self._one(with_addresses, ifname=name)

    @_refusals
    def link_by_index(self, index: int) -> Link | None:
        return self._one(False, index)

    def _one(self, with_addresses: bool, *query: Any, **by: Any) -> Link | None:
        """The link a `get_links` query names; None when there is none."""
        try:
            msgs = self.ipr.get_links(*query, **by)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return _to_link(self.ipr, msgs[0], with_addresses) if msgs else None

    @_refusals
    def set_up(self, index: int) -> None:
        self.ipr.link("set", index=index, state="up")

    @_refusals
    def set_down(self, index: int) -> None:
        self.ipr.link("set", index=index, state="down")

    @_refusals
    def restore(self, index: int, name: str, mtu: int | None, alias: str) -> None:
        self._set(index, name, alias, mtu)

    @_refusals
    def move(
        self, index: int, target: Netns, name: str, alias: str, mtu: int | None = None
    ) -> None:
        """The kernel applies the namespace change first, then the rest. A move
        closes the device, but closing it inside the move costs ~4 ms more than
        a separate "down" before it, so callers take running devices down first.
        """
        if not isinstance(target, Namespace):
            raise TypeError(f"a kernel link moves only into a kernel namespace, not {target!r}")
        self._set(index, name, alias, mtu, net_ns_fd=target.fd)

    def _set(self, index: int, name: str, alias: str, mtu: int | None, **extra: Any) -> None:
        """Name, alias, MTU if given, and `extra`, in one message."""
        spec: dict[str, Any] = {**extra, "ifname": name, "ifalias": alias}
        if mtu is not None:
            spec["mtu"] = mtu
        self.ipr.link("set", index=index, **spec)

    @_refusals
    def default_route_ifindexes(self) -> frozenset[int]:
        return read_default_route_ifindexes(self.ipr)

    @_refusals
    def configure(
        self, index: int, mtu: int | None, ips: tuple[IpConfig, ...], routes: tuple[Route, ...]
    ) -> None:
        """MTU, up, addresses, then routes; routes without a gateway use the family's one."""
        self.ipr.link("set", index=index, state="up", **({"mtu": mtu} if mtu is not None else {}))
        for ip in ips:
            iface = ipaddress.ip_interface(ip.address)
            extra: dict[str, Any] = {"flags": _IFA_F_NODAD} if iface.version == 6 else {}
            brd = broadcast_for(iface)
            if brd is not None:
                extra["broadcast"] = brd
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


def broadcast_for(iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> str | None:
    """The broadcast address Go's host-device leaves on an address, None for none.

    Its netlink library (vishvananda/netlink `AddrAdd`) fills in the subnet's
    broadcast for IPv4 prefixes up to /30 when none is given; /31 and /32 have
    none (RFC 3021), nor has IPv6. The kernel would otherwise store 0.0.0.0.
    """
    if iface.version != 4 or iface.network.prefixlen >= 31:
        return None
    return str(iface.network.broadcast_address)


class NetlinkNamespaces:
    """`ports.Namespaces` on the kernel; thread-safe, each namespace opened has its own socket."""

    @contextmanager
    def host(self) -> Iterator[Namespace]:
        # The process's namespace (worker threads never stay in a pod's). Its socket
        # waits for a use: a DEL that only returns a device needs none.
        with _opened(os.open("/proc/self/ns/net", _NS_FLAGS), IPRoute) as ns:
            yield ns

    @contextmanager
    def pod(self, path: str) -> Iterator[Namespace]:
        fd = _open_netns(path)
        with _opened(fd, functools.partial(_socket_in, fd)) as ns:
            ns.connect()  # now: a path that is no namespace fails before anything moves
            yield ns


@contextmanager
def _opened(fd: int, make_socket: Callable[[], IPRoute]) -> Iterator[Namespace]:
    """A `Namespace` on `fd`, closed with its socket at the end; `fd` is ours to close."""
    ns = Namespace(fd, make_socket)
    try:
        yield ns
    finally:
        try:
            ns.close()
        finally:
            os.close(fd)
