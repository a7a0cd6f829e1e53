"""Default-route rules (pure part) and device-info documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import host_uplinks

from deviceplugin.devinfo import devinfo_filename, remove_devinfo, write_devinfo
from deviceplugin.model import Device
from deviceplugin.routes import default_route_ifindexes, default_route_interfaces


def route(**kw):
    base = {"dst_len": 0, "table": 254, "type": 1, "oif": None, "multipath_oifs": []}
    return base | kw


def test_default_route_rules() -> None:
    routes = [
        route(oif=2),  # IPv4 default
        route(oif=3, table=100),  # policy-routing table still counts
        route(oif=None, multipath_oifs=[4, 5]),  # ECMP default
        route(oif=6, dst_len=24),  # not a default route
        route(oif=7, table=255),  # local table
        route(oif=8, type=7),  # unreachable/blackhole-style types
    ]
    assert default_route_ifindexes(routes) == {2, 3, 4, 5}


def test_default_routes_of_this_host_as_iproute2_sees_them() -> None:
    """The host's facts come from iproute2 at run time, not from what one machine had."""
    expected = {u.name for u in host_uplinks()}
    if not expected:
        pytest.skip("this host has no default route: nothing to compare")
    assert default_route_interfaces() == expected


def test_devinfo_file_follows_spec(tmp_path: Path) -> None:
    vf = Device("0000:05:10.2", "8086", "10ca", driver="igbvf", pf_address="0000:05:00.0")
    nic = Device("0000:02:00.0", "1af4", "1041", driver="virtio-pci")
    p1 = write_devinfo(tmp_path, "intel.com/sriov", vf)
    p2 = write_devinfo(tmp_path, "kernel.org/virt", nic)
    assert p1.name == devinfo_filename("intel.com/sriov", vf.pci_address)
    assert p1.name == "intel.com-sriov-0000:05:10.2-device.json"
    assert json.loads(p1.read_text()) == {
        "type": "pci",
        "version": "1.1.0",
        "pci": {"pci-address": "0000:05:10.2", "pf-pci-address": "0000:05:00.0"},
    }
    assert json.loads(p2.read_text())["pci"] == {"pci-address": "0000:02:00.0"}
    remove_devinfo([p1, p2, p2])
    assert list(tmp_path.iterdir()) == []
