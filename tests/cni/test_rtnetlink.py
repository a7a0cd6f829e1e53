"""The rtnetlink codec on plain bytes, and its socket against this machine's kernel (reads only).

The requests that change links, addresses and routes run in the netns tests
(tests/cni/test_ehost_device.py), which compare the result with Go's
host-device field by field.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deviceplugin.cni import rtnetlink as rtnl
from deviceplugin.cni.ports import Link
from deviceplugin.routes import default_route_ifindexes


def test_attributes_are_padded_and_alias_clears_with_an_empty_one() -> None:
    assert rtnl.attr(3, b"ab") == struct.pack("=HH", 6, 3) + b"ab\0\0"
    assert rtnl.attr_str(3, "eth0") == struct.pack("=HH", 9, 3) + b"eth0\0\0\0\0"
    assert rtnl.link_attrs(alias="") == struct.pack("=HH", 4, rtnl.IFLA_IFALIAS)
    move = rtnl.link_attrs(name="net1", alias="netdp:orig=x", mtu=1400, netns_fd=7)
    found = rtnl.attrs(move, 0)
    assert found == {
        rtnl.IFLA_NET_NS_FD: struct.pack("=I", 7),
        rtnl.IFLA_IFNAME: b"net1\0",
        rtnl.IFLA_MTU: struct.pack("=I", 1400),
        rtnl.IFLA_IFALIAS: b"netdp:orig=x",
    }


def test_link_round_trip() -> None:
    body = rtnl.ifinfomsg(42, rtnl.IFF_UP, 0) + b"".join(
        [
            rtnl.attr_str(rtnl.IFLA_IFNAME, "ens5"),
            rtnl.attr(rtnl.IFLA_ADDRESS, bytes.fromhex("5254000000aB")),
            rtnl.attr(rtnl.IFLA_IFALIAS, b"netdp:orig=ens5"),
            rtnl.attr_u32(rtnl.IFLA_MTU, 9000),
            rtnl.attr(0x8000 | 99, b"nested flag set, unknown: skipped"),
        ]
    )
    assert rtnl.link_of(body) == Link(42, "ens5", "52:54:00:00:00:ab", "netdp:orig=ens5",
                                      True, 9000)  # fmt: skip


def test_address_and_route_bodies_decode_as_the_kernel_would_send_them() -> None:
    iface = ipaddress.ip_interface("10.77.0.2/24")
    body = rtnl.addr_body(5, iface, broadcast="10.77.0.255")
    assert rtnl.address_of(body) == (5, rtnl.RT_SCOPE_UNIVERSE, "10.77.0.2/24")
    assert rtnl.attrs(body, 8)[rtnl.IFA_BROADCAST] == bytes([10, 77, 0, 255])
    v6 = rtnl.addr_body(5, ipaddress.ip_interface("fd00:77::2/64"), flags=rtnl.IFA_F_NODAD)
    assert rtnl.address_of(v6) == (5, 0, "fd00:77::2/64")
    route = rtnl.route_body(ipaddress.ip_network("0.0.0.0/0"), 5, "10.77.0.1")
    assert rtnl.route_record(route) == {
        "dst_len": 0, "table": 254, "type": 1, "oif": 5, "multipath_oifs": [],
    }  # fmt: skip


def test_multipath_default_route() -> None:
    hops = b"".join(struct.pack("=HBBi", 8, 0, 0, i) for i in (3, 4))
    body = struct.pack("=BBBBBBBBI", socket.AF_INET6, 0, 0, 0, 254, 3, 0, 1, 0)
    body += rtnl.attr(rtnl.RTA_MULTIPATH, hops)
    record = rtnl.route_record(body)
    assert record["multipath_oifs"] == [3, 4]
    assert default_route_ifindexes([record]) == {3, 4}


def test_errors_carry_errno_and_extended_ack_text() -> None:
    request = rtnl.encode(rtnl.RTM_SETLINK, 5, 1, rtnl.ifinfomsg(9))
    capped = struct.pack("=i", -errno.EEXIST) + request[:16]
    text = rtnl.attr(rtnl.NLMSGERR_ATTR_MSG, b"Name already in use\0")
    flags = rtnl.NLM_F_CAPPED | rtnl.NLM_F_ACK_TLVS
    assert rtnl.error_of(capped + text, flags) == (errno.EEXIST, "Name already in use")
    assert rtnl.error_of(capped, 0) == (errno.EEXIST, "")
    whole = struct.pack("=i", 0) + request  # an acknowledgement, request echoed
    assert rtnl.error_of(whole, 0) == (0, "")
    assert str(rtnl.KernelRefused(errno.EEXIST, "x")) == "(17, 'File exists: x')"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_decoders_raise_only_malformed_reply(data: bytes) -> None:
    for decode in (
        lambda d: list(rtnl.parse(d)),
        rtnl.link_of,
        rtnl.address_of,
        rtnl.route_record,
        lambda d: rtnl.error_of(d, rtnl.NLM_F_ACK_TLVS),
    ):
        with contextlib.suppress(rtnl.MalformedReply):
            decode(data)


def test_socket_reads_this_namespace() -> None:
    sock = rtnl.RtnlSocket()
    try:
        lo = sock.link(name="lo")
        assert lo is not None and (lo.index, lo.name) == (1, "lo")
        assert sock.link(index=1) == lo
        assert lo in sock.links()
        assert sock.link(name="ndp-no-link") is None
        assert sock.link(name="netdp-no-such-link") is None  # longer than any name can be
        assert "127.0.0.1/8" not in sock.addresses(1)  # host scope, not global
        assert all(isinstance(r["dst_len"], int) for r in sock.route_records())
        with pytest.raises(rtnl.KernelRefused) as refused:  # no such link (or no right)
            sock.change(rtnl.RTM_SETLINK, rtnl.ifinfomsg(0x7FFFFFF0, rtnl.IFF_UP, rtnl.IFF_UP))
        assert refused.value.code in (errno.ENODEV, errno.EPERM)
    finally:
        sock.close()
