"""Our netlink loop around pyroute2's messages: errors, sequence matching, dumps, queries.

pyroute2's codec is pyroute2's to test; these tests cover what `rtnetlink.py`
adds, against the kernel: a refusal's errno and extended-ack text, replies
matched by sequence number, a dump read over several datagrams, the queries
(links without statistics, global addresses, default routes only). The
requests that change links, addresses and routes run in the netns tests
(tests/cni/test_ehost_device.py), which compare the result with Go's
host-device field by field.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from helpers import Namespaces, in_netns, namespaces, sh
from pyroute2.netlink import NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_MULTI, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from deviceplugin.cni import rtnetlink as rtnl
from deviceplugin.cni.netlink import Namespace, address_add
from deviceplugin.cni.ports import NetlinkRefused


@contextmanager
def rtnl_socket() -> Iterator[rtnl.RtnlSocket]:
    sock = rtnl.RtnlSocket()
    try:
        yield sock
    finally:
        sock.close()


class CountingSocket:
    """The real socket, counting the datagrams read from it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reads = 0

    def send(self, data: bytes) -> int:
        return self.sock.send(data)

    def recv_into(self, buf: bytearray, nbytes: int, flags: int) -> int:
        self.reads += 1
        return self.sock.recv_into(buf, nbytes, flags)

    def close(self) -> None:
        self.sock.close()


def test_a_refusal_carries_the_errno_and_the_kernels_text() -> None:
    query = ifinfmsg()
    query["attrs"] = [("IFLA_IFNAME", "x" * 20)]  # longer than IFNAMSIZ: policy refuses
    with rtnl_socket() as sock:
        with pytest.raises(NetlinkError) as refused:
            sock.request(query, RTM_GETLINK)
        assert refused.value.code == errno.ERANGE
        text = refused.value.args[1]
        strerror, _, detail = text.partition(": ")
        assert strerror == os.strerror(errno.ERANGE) and detail, text
        # The socket is still in step: the next request gets its own answer.
        lo = sock.link(index=1)
        assert lo is not None and lo.name == "lo"


def test_a_refusal_reaches_the_port_as_netlink_refused() -> None:
    fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    ns = Namespace(fd, rtnl.RtnlSocket)
    try:
        with pytest.raises(NetlinkRefused) as refused:  # no such link (or, not root, no right)
            ns.set_up(0x7FFFFFF0)
        assert refused.value.code in (errno.ENODEV, errno.EPERM)
        assert os.strerror(refused.value.code) in str(refused.value)
        assert ns.link_by_index(0x7FFFFFF0) is None  # ENODEV on a query is "no such link"
    finally:
        ns.close()
        os.close(fd)


def test_answers_to_earlier_requests_are_skipped() -> None:
    with rtnl_socket() as sock:
        fresh = sock.links()
        # A dump nobody reads (its parts wait in the queue, and the kernel makes
        # more of them while the next request reads), then ordinary queries.
        stale = ifinfmsg()
        stale["header"]["type"] = RTM_GETLINK
        stale["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
        stale["header"]["sequence_number"] = 0x7FFF0000
        stale.encode()
        sock.sock.send(stale.data)
        lo = sock.link(name="lo")
        assert lo is not None and (lo.index, lo.name) == (1, "lo")
        assert sock.links() == fresh
        assert sock.link(index=1) == lo


def test_a_dump_over_several_datagrams(nss: Namespaces) -> None:
    ns = nss.add("dump")
    for i in range(8):  # 17 links of ~1.5 KiB: more than the kernel's first datagram (4 KiB) holds
        nss.veth(f"d{i}a", ns, f"d{i}b", ns)
    with in_netns(ns), rtnl_socket() as sock:
        counting = CountingSocket(sock.sock)
        sock.sock = counting  # type: ignore[assignment]
        links = sock.links()
        assert counting.reads > 1
        names = [link.name for link in links]
        expected = ["lo", *(f"d{i}{end}" for i in range(8) for end in "ab")]
        assert sorted(names) == sorted(expected)
        assert len({link.index for link in links}) == len(links)
        assert all(len(link.mac) == 17 and link.mtu == 1500 for link in links if link.name != "lo")


def test_queries_read_links_addresses_and_default_routes(nss: Namespaces) -> None:
    ns = nss.add("routes")
    nss.veth("ra", ns, "rb", ns)
    for cmd in (
        ["link", "set", "ra", "up", "mtu", "1400", "alias", "netdp:orig=ra"],
        ["link", "set", "rb", "up"],
        ["addr", "add", "10.77.0.2/24", "dev", "ra"],
        ["route", "add", "10.78.0.0/16", "via", "10.77.0.1"],
        ["route", "add", "default", "via", "10.77.0.1"],
        ["route", "add", "default", "table", "100", "nexthop", "dev", "ra", "nexthop", "dev", "rb"],
        ["-6", "route", "add", "default", "dev", "rb"],
    ):
        sh("ip", "-n", ns, *cmd)
    with in_netns(ns), rtnl_socket() as sock:
        ra, rb = sock.link(name="ra"), sock.link(name="rb")
        assert ra is not None and rb is not None
        assert (ra.alias, ra.mtu, ra.up, rb.alias) == ("netdp:orig=ra", 1400, True, "")
        assert sock.link(name="netdp-no-such-link") is None  # longer than any name can be
        assert sock.link(name="ndp-no-link") is None
        assert sock.addresses(ra.index) == ["10.77.0.2/24"]
        assert "127.0.0.1/8" not in sock.addresses(1)  # host scope, not global
        routes = sock.default_route_records()
        # Only default routes come back decoded; the /16, /24 and local ones are skipped.
        assert all(route["dst_len"] == 0 for route in routes)
        hops = sorted(hop for route in routes for hop in route["multipath_oifs"])
        assert hops == sorted([ra.index, rb.index])
        # IPv4's main table via ra, IPv6's via rb: both families are asked.
        assert sorted(route["oif"] for route in routes if route["oif"]) == hops
        again = address_add(ra.index, ipaddress.ip_interface("10.77.0.2/24"))
        with pytest.raises(NetlinkError) as exists:  # the address is there already
            sock.change(again, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)
        assert exists.value.code == errno.EEXIST


def test_a_cut_datagram_is_an_error_not_a_lost_end() -> None:
    class Oversized:
        def send(self, data: bytes) -> int:
            return len(data)

        def recv_into(self, buf: bytearray, nbytes: int, flags: int) -> int:
            assert flags & socket.MSG_TRUNC
            reply = ifinfmsg()
            reply["header"].update(type=RTM_NEWLINK, flags=NLM_F_MULTI, sequence_number=1)
            reply.encode()
            buf[: len(reply.data)] = reply.data
            return len(buf) + 1  # what MSG_TRUNC reports for a datagram larger than buf

    with rtnl_socket() as sock:
        real, sock.sock = sock.sock, Oversized()  # type: ignore[assignment]
        try:
            with pytest.raises(OSError) as cut:
                sock.links()
            assert cut.value.errno == errno.EMSGSIZE
        finally:
            sock.sock = real


@pytest.fixture
def nss() -> Iterator[Namespaces]:
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespaces)")
    with namespaces() as made:
        yield made
