"""The kernel side of the CNI namespace port: pyroute2's rtnetlink messages on plain records.

`NetlinkNamespaces` is the real `ports.Namespaces`: each namespace it opens
is an fd (what a move targets) plus a netlink socket in it (`rtnetlink.py`:
pyroute2's messages on a plain socket), made on first use, so a namespace
that only receives a device costs no socket. A netlink socket belongs to the
namespace its thread was in when the socket was created, so a pod's socket is
opened after a thread-local `setns` and the thread switches back at once:
every later call runs on ordinary sockets, no forked helper. Moves between
namespaces carry the new name in the same message, so a device is never
visible under a clashing name and a failed move leaves it untouched.
pyroute2's `NetlinkError` becomes `ports.NetlinkRefused`, so the rules never
see netlink.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import ipaddress
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from pyroute2.iproute.linux import DEFAULT_TABLE as RT_TABLE_MAIN
from pyroute2.netlink import NLM_F_CREATE, NLM_F_EXCL
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWROUTE, RTM_SETLINK, rt_proto, rt_type
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD, ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import RT_SCOPE_UNIVERSE, rtmsg

from deviceplugin.cni import rtnetlink as rtnl
from deviceplugin.cni.ports import Link, NamespaceGone, NetlinkRefused, Netns
from deviceplugin.cni.types import IpConfig, Route
from deviceplugin.routes import default_route_ifindexes

_CLONE_NEWNET = 0x40000000
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


def _socket_in(ns_fd: int) -> rtnl.RtnlSocket:
    with inside_netns(ns_fd):
        return rtnl.RtnlSocket()


def _refusals(method: Callable[P, R]) -> Callable[P, R]:
    """pyroute2's `NetlinkError` (a kernel refusal) as the port's `NetlinkRefused`."""

    @functools.wraps(method)
    def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except NetlinkError as exc:
            raise NetlinkRefused(exc.code, str(exc)) from exc

    return translated


def broadcast_for(iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> str | None:
    """The broadcast address Go's host-device leaves on an address, None for none.

    Its netlink library (vishvananda/netlink `AddrAdd`) fills in the subnet's
    broadcast for IPv4 prefixes up to /30 when none is given; /31 and /32 have
    none (RFC 3021), nor has IPv6. The kernel would otherwise store 0.0.0.0.
    """
    if iface.version != 4 or iface.network.prefixlen >= 31:
        return None
    return str(iface.network.broadcast_address)


def link_change(
    index: int,
    *,
    up: bool | None = None,
    name: str | None = None,
    alias: str | None = None,
    mtu: int | None = None,
    netns_fd: int | None = None,
) -> ifinfmsg:
    """An RTM_SETLINK body that changes only what is given. `alias=""` clears the alias:
    pyroute2 sends it as a lone NUL, which the kernel keeps as an empty alias and
    reports as none (netlink, sysfs), as after `ip link set ... alias ""`."""
    msg = ifinfmsg()
    msg["index"] = index
    if up is not None:
        msg["flags"], msg["change"] = (IFF_UP if up else 0), IFF_UP
    attrs = [
        ("IFLA_NET_NS_FD", netns_fd),
        ("IFLA_IFNAME", name),
        ("IFLA_MTU", mtu),
        ("IFLA_IFALIAS", alias),
    ]
    msg["attrs"] = [(kind, value) for kind, value in attrs if value is not None]
    return msg


def address_add(index: int, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> ifaddrmsg:
    """An RTM_NEWADDR body: `iface` on link `index`, scope global, with Go's broadcast.
    IPv6 skips duplicate address detection, as Go's host-device does (the address
    is usable at once)."""
    msg = ifaddrmsg()
    msg["family"] = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
    msg["prefixlen"] = iface.network.prefixlen
    msg["flags"] = IFA_F_NODAD if iface.version == 6 else 0
    msg["scope"] = RT_SCOPE_UNIVERSE
    msg["index"] = index
    msg["attrs"] = [("IFA_LOCAL", str(iface.ip)), ("IFA_ADDRESS", str(iface.ip))]
    broadcast = broadcast_for(iface)
    if broadcast is not None:
        msg["attrs"].append(("IFA_BROADCAST", broadcast))
    return msg


def route_add(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network, oif: int, gateway: str | None
) -> rtmsg:
    """An RTM_NEWROUTE body in the main table, protocol boot (as `ip route add` and Go's
    netlink)."""
    msg = rtmsg()
    msg["family"] = socket.AF_INET6 if network.version == 6 else socket.AF_INET
    msg["dst_len"] = network.prefixlen
    msg["table"] = RT_TABLE_MAIN
    msg["proto"] = rt_proto["boot"]
    msg["scope"] = RT_SCOPE_UNIVERSE
    msg["type"] = rt_type["unicast"]
    msg["attrs"] = [("RTA_DST", str(network.network_address)), ("RTA_OIF", oif)]
    if gateway:
        msg["attrs"].append(("RTA_GATEWAY", gateway))
    return msg


class Namespace:
    """`ports.Netns` on one kernel namespace: its fd and a netlink socket in it."""

    def __init__(self, fd: int, make_socket: Callable[[], rtnl.RtnlSocket]) -> None:
        self.fd = fd
        self._make_socket = make_socket
        self._sock: rtnl.RtnlSocket | None = None

    def connect(self) -> None:
        """Make the netlink socket now rather than on first use."""
        if self._sock is None:
            self._sock = self._make_socket()

    @property
    def sock(self) -> rtnl.RtnlSocket:
        self.connect()
        assert self._sock is not None
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()

    @_refusals
    def links(self) -> list[Link]:
        return self.sock.links()

    @_refusals
    def link(self, name: str, with_addresses: bool = False) -> Link | None:
        link = self.sock.link(name=name)
        if link is None or not with_addresses:
            return link
        return dataclasses.replace(link, addresses=tuple(self.sock.addresses(link.index)))

    @_refusals
    def link_by_index(self, index: int) -> Link | None:
        return self.sock.link(index=index)

    @_refusals
    def set_up(self, index: int) -> None:
        self.sock.change(link_change(index, up=True), RTM_SETLINK)

    @_refusals
    def set_down(self, index: int) -> None:
        self.sock.change(link_change(index, up=False), RTM_SETLINK)

    @_refusals
    def restore(self, index: int, name: str, mtu: int | None, alias: str) -> None:
        self.sock.change(link_change(index, name=name, alias=alias, mtu=mtu), RTM_SETLINK)

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
        change = link_change(index, name=name, alias=alias, mtu=mtu, netns_fd=target.fd)
        self.sock.change(change, RTM_SETLINK)

    @_refusals
    def default_route_ifindexes(self) -> frozenset[int]:
        return default_route_ifindexes(self.sock.default_route_records())

    @_refusals
    def configure(
        self, index: int, mtu: int | None, ips: tuple[IpConfig, ...], routes: tuple[Route, ...]
    ) -> None:
        """MTU, up, addresses, then routes; routes without a gateway use the family's one."""
        self.sock.change(link_change(index, up=True, mtu=mtu), RTM_SETLINK)
        create = NLM_F_CREATE | NLM_F_EXCL
        for ip in ips:
            iface = ipaddress.ip_interface(ip.address)
            self.sock.change(address_add(index, iface), RTM_NEWADDR, create)
        gateways: dict[int, str] = {}
        for ip in ips:
            if ip.gateway:
                gateways.setdefault(ipaddress.ip_address(ip.gateway).version, ip.gateway)
        for route in routes:
            net = ipaddress.ip_network(route.dst, strict=False)
            gw = route.gw or gateways.get(net.version)
            self.sock.change(route_add(net, index, gw), RTM_NEWROUTE, create)


class NetlinkNamespaces:
    """`ports.Namespaces` on the kernel; thread-safe, each namespace opened has its own socket."""

    @contextmanager
    def host(self) -> Iterator[Namespace]:
        # The process's namespace (worker threads never stay in a pod's). Its socket
        # waits for a use: a DEL that only returns a device needs none.
        with _opened(os.open("/proc/self/ns/net", _NS_FLAGS), rtnl.RtnlSocket) as ns:
            yield ns

    @contextmanager
    def pod(self, path: str) -> Iterator[Namespace]:
        fd = _open_netns(path)
        with _opened(fd, functools.partial(_socket_in, fd)) as ns:
            ns.connect()  # now: a path that is no namespace fails before anything moves
            yield ns


@contextmanager
def _opened(fd: int, make_socket: Callable[[], rtnl.RtnlSocket]) -> Iterator[Namespace]:
    """A `Namespace` on `fd`, closed with its socket at the end; `fd` is ours to close."""
    ns = Namespace(fd, make_socket)
    try:
        yield ns
    finally:
        try:
            ns.close()
        finally:
            os.close(fd)
