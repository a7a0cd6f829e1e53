"""rtnetlink for the CNI namespace port: pyroute2's messages on a plain synchronous socket.

The wire format is pyroute2's: requests are its message classes (`ifinfmsg`,
`ifaddrmsg`, `rtmsg`) encoded by it, and replies are decoded by its
`MarshalRtnl`, as in the daemon's link monitor (`watch/links.py`). What this
module adds is the loop `IPRoute` would run, without the rest of `IPRoute`:
one request at a time, replies read until the acknowledgement, the answer or
the end of the dump, matched by sequence number, and a kernel refusal raised
as pyroute2's `NetlinkError` with the errno and the kernel's extended-ack text.

Why not `IPRoute` itself: a CNI ADD makes about ten requests, and `IPRoute`
(pyroute2 0.9) spends 0.4-1.3 ms of Python on each in its asyncio core, plus
0.5 ms per socket, which kept ehost-device behind Go's host-device. pyroute2's
encoding and decoding alone cost 0.1-0.3 ms a message, so a query decodes
only what it needs: of a route dump only the default routes are decoded
(pyroute2's own `default_routes` parser), not every route of a busy node.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable
from typing import Any

from pyroute2.iproute.parsers import default_routes, get_header
from pyroute2.netlink import (
    NETLINK_EXT_ACK,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOL_NETLINK,
    nlmsg,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import IFNAMSIZ, RTM_GETADDR, RTM_GETLINK, RTM_GETROUTE, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import RT_SCOPE_UNIVERSE, rtmsg

from deviceplugin.cni.ports import Link
from deviceplugin.routes import route_record

_RECV_SIZE = 1 << 16  # a dump datagram is at most 32 KiB; a link without VF info ~1.5 KiB

Parser = Callable[[bytes, int, int], Any]


def refusal(reply: nlmsg) -> NetlinkError:
    """The `NetlinkError` for an NLMSG_ERROR with a non-zero errno, with the
    kernel's extended-ack text after the errno's own (pyroute2 gives one or the
    other)."""
    code = -reply["error"]
    detail = reply.get_attr("NLMSGERR_ATTR_MSG")
    return NetlinkError(code, f"{os.strerror(code)}: {detail}" if detail else None)


def link_of(msg: ifinfmsg) -> Link:
    """The fields of an RTM_NEWLINK the CNI port reads (no addresses: they are another dump)."""
    return Link(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME") or "",
        mac=(msg.get_attr("IFLA_ADDRESS") or "").lower(),
        alias=msg.get_attr("IFLA_IFALIAS") or "",
        up=bool(msg["flags"] & IFF_UP),
        mtu=msg.get_attr("IFLA_MTU") or 0,
    )


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
            # Refusals carry the kernel's text. Not NETLINK_CAP_ACK: pyroute2 finds
            # the text only behind the whole echoed request, as its own sockets get it.
            with contextlib.suppress(OSError):  # before 4.12: refusals carry only the errno
                self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        except BaseException:
            self.sock.close()
            raise
        self._marshal = MarshalRtnl()
        self._buf = bytearray(_RECV_SIZE)
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def _recv(self) -> bytes:
        # MSG_TRUNC: the datagram's real length, so a cut one is an error, not a lost end.
        n = self.sock.recv_into(self._buf, 0, socket.MSG_TRUNC)
        if n > len(self._buf):
            raise OSError(errno.EMSGSIZE, f"netlink datagram of {n} bytes cut to {len(self._buf)}")
        return bytes(self._buf[:n])

    def request(
        self, msg: nlmsg, msg_type: int, flags: int = 0, parser: Parser | None = None
    ) -> list[nlmsg]:
        """Send `msg` as one request; its replies (all parts of a dump), or `NetlinkError`.

        `parser`, if given, decodes this request's replies in place of the
        marshal's (pyroute2's per-request parser: it returns a message, or None
        to skip one). Requests that change something ask for an acknowledgement
        (`change`), so a refusal is never missed.
        """
        self._seq += 1
        seq = self._seq
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = NLM_F_REQUEST | flags
        msg["header"]["sequence_number"] = seq
        msg.encode()
        if parser is not None:
            self._marshal.seq_map[seq] = parser
        try:
            self.sock.send(msg.data)
            return self._replies(seq, flags)
        finally:
            self._marshal.seq_map.pop(seq, None)

    def _replies(self, seq: int, flags: int) -> list[nlmsg]:
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        replies: list[nlmsg] = []
        while True:
            for reply in self._marshal.parse(self._recv()):
                header = reply["header"]
                if header.get("sequence_number") != seq:
                    continue  # a late answer to an earlier request
                if header["type"] == NLMSG_ERROR:
                    if reply["error"]:
                        raise refusal(reply)
                    return replies  # the acknowledgement ends the exchange
                if header["type"] == NLMSG_DONE:
                    return replies
                replies.append(reply)
                if not dump and not flags & NLM_F_ACK:
                    return replies  # a plain get: its one answer

    def change(self, msg: nlmsg, msg_type: int, flags: int = 0) -> None:
        self.request(msg, msg_type, NLM_F_ACK | flags)

    def link(self, *, index: int = 0, name: str | None = None) -> Link | None:
        """One link by index or name; None when there is none."""
        if name is not None and len(name.encode()) >= IFNAMSIZ:
            return None  # no link has it; the kernel would refuse the request (ERANGE)
        query = ifinfmsg()
        query["index"] = index
        if name is not None:
            query["attrs"].append(("IFLA_IFNAME", name))
        try:
            replies = self.request(query, RTM_GETLINK)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return link_of(replies[0]) if replies else None

    def links(self) -> list[Link]:
        return [link_of(m) for m in self.request(ifinfmsg(), RTM_GETLINK, NLM_F_DUMP)]

    def addresses(self, index: int) -> list[str]:
        """Global-scope addresses of link `index`, as "address/prefix"."""
        return [
            f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"
            for msg in self.request(ifaddrmsg(), RTM_GETADDR, NLM_F_DUMP)
            if msg["index"] == index
            and msg["scope"] == RT_SCOPE_UNIVERSE
            and msg.get_attr("IFA_ADDRESS")
        ]

    def default_route_records(self) -> list[dict[str, Any]]:
        """The IPv4 and IPv6 default routes, in `routes.default_route_ifindexes`' plain form.

        One dump per family (an AF_UNSPEC dump brings only IPv4 routes on
        Linux 6.18); of each, only default routes (no destination) are
        decoded, the rest is skipped on its attribute types.
        """

        def only_default(data: bytes, offset: int, length: int) -> Any:
            header = get_header(data, offset)
            if header["type"] == RTM_NEWROUTE:
                return default_routes(data, offset, length)
            return self._marshal.parse_one_message(
                header["type"], header["flags"], header["sequence_number"], data, offset, length
            )

        records = []
        for family in (socket.AF_INET, socket.AF_INET6):
            query = rtmsg()
            query["family"] = family
            routes = self.request(query, RTM_GETROUTE, NLM_F_DUMP, parser=only_default)
            records += [route_record(m) for m in routes]
        return records
