"""rtnetlink on a plain socket: the few link, address and route messages a CNI call needs.

Why not pyroute2 here (the daemon uses it everywhere else): a CNI ADD makes
about ten netlink requests, and pyroute2 0.9 spends 0.4-1.3 ms of Python on
each (its asyncio core, its full decoding of every attribute of every
message), which is most of what kept ehost-device behind Go's host-device.
The kernel answers the same requests in microseconds. This module encodes
exactly the requests the namespace port sends and decodes only the fields it
reads: the messages are the kernel's stable ABI (linux/rtnetlink.h,
linux/if_link.h, linux/if_addr.h).

The codec (`encode`, `parse`, `link_of`, ...) is pure; `RtnlSocket` does the
I/O: one request at a time, replies matched by sequence number, a kernel
refusal raised as `KernelRefused` with its errno and extended-ack text.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from deviceplugin.cni.ports import Link

# linux/netlink.h
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP, NLM_F_EXCL, NLM_F_CREATE = 0x300, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # on an NLMSG_ERROR: request cut, attributes follow
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 270, 10, 11
# linux/rtnetlink.h
RTM_NEWLINK, RTM_GETLINK, RTM_SETLINK = 16, 18, 19
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 9, 15
# linux/if_link.h, linux/if_addr.h, linux/if.h
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_IFALIAS, IFLA_NET_NS_FD = 1, 3, 4, 20, 28
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
IFA_F_NODAD = 0x02
IFF_UP = 0x1
IFNAMSIZ = 16

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBi")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst/src len, tos, table, proto, scope, type, flags
_RTATTR = struct.Struct("=HH")  # length, type
_RTNEXTHOP = struct.Struct("=HBBi")  # length, flags, hops, ifindex
_U32 = struct.Struct("=I")
_RECV_SIZE = 1 << 16


class KernelRefused(Exception):
    """The kernel answered a request with an error; `code` is its errno."""

    def __init__(self, code: int, detail: str = "") -> None:
        text = os.strerror(code) + (f": {detail}" if detail else "")
        super().__init__(f"({code}, {text!r})")
        self.code = code


class MalformedReply(Exception):
    """Bytes from the socket that are not rtnetlink messages (never seen from a kernel)."""


# ------------------------------------------------------------------ encoding


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    size = _RTATTR.size + len(payload)
    return (_RTATTR.pack(size, kind) + payload).ljust(_align(size), b"\0")


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, _U32.pack(value))


def attr_str(kind: int, value: str) -> bytes:
    """A NUL-terminated string attribute (interface names)."""
    return attr(kind, value.encode() + b"\0")


def encode(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    """One netlink message: header + family header + attributes (`body`)."""
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def ifinfomsg(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


def link_attrs(
    *,
    name: str | None = None,
    alias: str | None = None,
    mtu: int | None = None,
    netns_fd: int | None = None,
) -> bytes:
    """The attributes of a link change; `alias=""` clears the alias (an empty attribute)."""
    parts = []
    if netns_fd is not None:
        parts.append(attr_u32(IFLA_NET_NS_FD, netns_fd))
    if name is not None:
        parts.append(attr_str(IFLA_IFNAME, name))
    if mtu is not None:
        parts.append(attr_u32(IFLA_MTU, mtu))
    if alias is not None:
        parts.append(attr(IFLA_IFALIAS, alias.encode()))
    return b"".join(parts)


def addr_body(
    index: int,
    iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
    *,
    flags: int = 0,
    broadcast: str | None = None,
) -> bytes:
    """RTM_NEWADDR: `iface` on link `index`, scope global."""
    family = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
    packed = iface.ip.packed
    body = _IFADDRMSG.pack(family, iface.network.prefixlen, flags, RT_SCOPE_UNIVERSE, index)
    body += attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)
    if broadcast is not None:
        body += attr(IFA_BROADCAST, ipaddress.ip_address(broadcast).packed)
    return body


def route_body(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network, oif: int, gateway: str | None
) -> bytes:
    """RTM_NEWROUTE in the main table, protocol boot (as `ip route add` and Go's netlink)."""
    family = socket.AF_INET6 if network.version == 6 else socket.AF_INET
    body = _RTMSG.pack(
        family,
        network.prefixlen,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
        0,
    )
    body += attr(RTA_DST, network.network_address.packed) + attr_u32(RTA_OIF, oif)
    if gateway:
        body += attr(RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
    return body


# ------------------------------------------------------------------ decoding


@dataclass(frozen=True, slots=True)
class Message:
    type: int
    flags: int
    seq: int
    body: bytes


def parse(data: bytes) -> Iterator[Message]:
    """The messages in one datagram; `MalformedReply` if a length lies."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, flags, seq, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise MalformedReply(f"netlink message of length {length} at {offset}")
        yield Message(msg_type, flags, seq, data[offset + _NLMSGHDR.size : offset + length])
        offset += _align(length)


def attrs(data: bytes, offset: int) -> dict[int, bytes]:
    """Attribute type -> payload, from `offset` to the end (the last of a type wins)."""
    found = {}
    while offset + _RTATTR.size <= len(data):
        size, kind = _RTATTR.unpack_from(data, offset)
        if size < _RTATTR.size or offset + size > len(data):
            raise MalformedReply(f"attribute of length {size} at {offset}")
        found[kind & 0x3FFF] = data[offset + _RTATTR.size : offset + size]  # minus NLA_F_ flags
        offset += _align(size)
    return found


def _text(payload: bytes | None) -> str:
    return (payload or b"").split(b"\0", 1)[0].decode(errors="replace")


def _u32(payload: bytes | None) -> int | None:
    return _U32.unpack(payload[:4])[0] if payload and len(payload) >= 4 else None


def link_of(body: bytes) -> Link:
    """The fields of an RTM_NEWLINK the CNI port reads (no addresses: they are another dump)."""
    if len(body) < _IFINFOMSG.size:
        raise MalformedReply("short ifinfomsg")
    _, _, index, flags, _ = _IFINFOMSG.unpack_from(body)
    found = attrs(body, _IFINFOMSG.size)
    return Link(
        index=index,
        name=_text(found.get(IFLA_IFNAME)),
        mac=":".join(f"{b:02x}" for b in found.get(IFLA_ADDRESS, b"")),
        alias=_text(found.get(IFLA_IFALIAS)),
        up=bool(flags & IFF_UP),
        mtu=_u32(found.get(IFLA_MTU)) or 0,
    )


def address_of(body: bytes) -> tuple[int, int, str] | None:
    """(link index, scope, "address/prefix") of an RTM_NEWADDR; None without an address."""
    if len(body) < _IFADDRMSG.size:
        raise MalformedReply("short ifaddrmsg")
    _, prefixlen, _, scope, index = _IFADDRMSG.unpack_from(body)
    packed = attrs(body, _IFADDRMSG.size).get(IFA_ADDRESS)
    if packed is None or len(packed) not in (4, 16):
        return None
    return index, scope, f"{ipaddress.ip_address(packed)}/{prefixlen}"


def route_record(body: bytes) -> dict[str, object]:
    """An RTM_NEWROUTE in the plain form `routes.default_route_ifindexes` reads."""
    if len(body) < _RTMSG.size:
        raise MalformedReply("short rtmsg")
    _, dst_len, _, _, table, _, _, rtype, _ = _RTMSG.unpack_from(body)
    found = attrs(body, _RTMSG.size)
    hops, multipath = [], found.get(RTA_MULTIPATH, b"")
    offset = 0
    while offset + _RTNEXTHOP.size <= len(multipath):
        size, _, _, ifindex = _RTNEXTHOP.unpack_from(multipath, offset)
        if size < _RTNEXTHOP.size:
            raise MalformedReply(f"next hop of length {size}")
        hops.append(ifindex)
        offset += _align(size)
    return {
        "dst_len": dst_len,
        "table": _u32(found.get(RTA_TABLE)) or table,
        "type": rtype,
        "oif": _u32(found.get(RTA_OIF)),
        "multipath_oifs": hops,
    }


def error_of(body: bytes, flags: int) -> tuple[int, str]:
    """(errno, extended-ack text) of an NLMSG_ERROR with header `flags`; errno 0 is an
    acknowledgement. The request comes back after the errno (only its header when
    capped), then the extended-ack attributes."""
    if len(body) < 4 + _NLMSGHDR.size:
        raise MalformedReply("short nlmsgerr")
    (code,) = struct.unpack_from("=i", body)
    detail = ""
    if flags & NLM_F_ACK_TLVS:
        echoed = _NLMSGHDR.size if flags & NLM_F_CAPPED else _NLMSGHDR.unpack_from(body, 4)[0]
        try:
            detail = _text(attrs(body, 4 + _align(echoed)).get(NLMSGERR_ATTR_MSG))
        except MalformedReply:
            detail = ""
    return -code, detail


# ------------------------------------------------------------------ the socket


class RtnlSocket:
    """A NETLINK_ROUTE socket in the namespace of the thread that makes it.

    One request at a time (each `Namespace` of the port has its own socket);
    not thread-safe, and needs no lock for it.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        try:
            self.sock.bind((0, 0))
            for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
                # An old kernel without them: acks carry the request, errors no text.
                with contextlib.suppress(OSError):
                    self.sock.setsockopt(SOL_NETLINK, option, 1)
        except BaseException:
            self.sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, msg_type: int, flags: int, body: bytes) -> list[Message]:
        """Send one request; its replies (all parts of a dump), or `KernelRefused`.

        Requests that change something ask for an acknowledgement, so a
        refusal is never missed.
        """
        self._seq += 1
        seq = self._seq
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        self.sock.send(encode(msg_type, NLM_F_REQUEST | flags, seq, body))
        replies: list[Message] = []
        while True:
            for msg in parse(self.sock.recv(_RECV_SIZE)):
                if msg.seq != seq:
                    continue  # a late answer to an earlier request
                if msg.type == NLMSG_ERROR:
                    code, detail = error_of(msg.body, msg.flags)
                    if code:
                        raise KernelRefused(code, detail)
                    return replies  # the acknowledgement ends the exchange
                if msg.type == NLMSG_DONE:
                    return replies
                replies.append(msg)
                if not dump and not flags & NLM_F_ACK:
                    return replies  # a plain get: its one answer

    def change(self, msg_type: int, body: bytes, flags: int = 0) -> None:
        self.request(msg_type, NLM_F_ACK | flags, body)

    def link(self, *, index: int = 0, name: str | None = None) -> Link | None:
        """One link by index or name; None when there is none."""
        if name is not None and len(name.encode()) >= IFNAMSIZ:
            return None  # no link has it; the kernel would refuse the request (ERANGE)
        body = ifinfomsg(index) + (attr_str(IFLA_IFNAME, name) if name is not None else b"")
        try:
            replies = self.request(RTM_GETLINK, 0, body)
        except KernelRefused as exc:
            if exc.code in (errno_codes.ENODEV, errno_codes.ENOENT):
                return None
            raise
        return link_of(replies[0].body) if replies else None

    def links(self) -> list[Link]:
        return [link_of(m.body) for m in self.request(RTM_GETLINK, NLM_F_DUMP, ifinfomsg())]

    def addresses(self, index: int) -> list[str]:
        """Global-scope addresses of link `index`, as "address/prefix"."""
        body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        found = []
        for msg in self.request(RTM_GETADDR, NLM_F_DUMP, body):
            parsed = address_of(msg.body)
            if parsed is not None and parsed[0] == index and parsed[1] == RT_SCOPE_UNIVERSE:
                found.append(parsed[2])
        return found

    def route_records(self) -> list[dict[str, object]]:
        """Every IPv4 and IPv6 route, in `routes.default_route_ifindexes`' plain form."""
        records = []
        for family in (socket.AF_INET, socket.AF_INET6):
            body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
            records += [route_record(m.body) for m in self.request(RTM_GETROUTE, NLM_F_DUMP, body)]
        return records
