"""ADD on in-memory ports, no root: every step undone on failure, every refusal's code.

The same rules run against the kernel in `test_ehost_device.py`; here each
failure can be put at any step, which real veths cannot do on demand.
"""

from __future__ import annotations

import errno
import ipaddress
import json
from pathlib import Path

import pytest
from fakenet import HOST, FakeLink
from world import POD, World

from deviceplugin.cni.netlink import broadcast_for
from deviceplugin.cni.origin import Origin, parse_alias
from deviceplugin.cni.types import ERR_IPAM, CniError


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_add_moves_renames_and_addresses(world: World) -> None:
    pci, nic = world.nic(5, mtu=9000)
    devinfo = world.tmp / "devinfo" / "net1.json"
    conf = world.conf(deviceID=pci, mtu=1400, runtimeConfig={"CNIDeviceInfoFile": str(devinfo)})
    code, result = world.run("ADD", conf)
    assert code == 0, result
    assert result["interfaces"] == [{"name": "net1", "mac": nic.mac, "sandbox": POD}]
    assert result["ips"] == [{"address": "10.77.0.2/24", "gateway": "10.77.0.1", "interface": 0}]
    ns, name, mtu, up, alias, _ = world.kernel.state(pci)
    assert (ns, name, mtu, up) == (POD, "net1", 1400, True)
    assert parse_alias(alias) == Origin("ens5", pci, 9000)
    assert nic.addresses == ["10.77.0.2/24"] and nic.routes == [("10.78.0.0/16", None)]
    assert world.ipam.leases == {"c1": "10.77.0.2/24"}
    assert json.loads(devinfo.read_text()) == {
        "type": "pci",
        "version": "1.1.0",
        "pci": {"pci-address": pci},
    }
    assert world.locks() == ["0000_00_05.0.lock"]


def test_mtu_recorded_only_when_changed(world: World) -> None:
    pci, _ = world.nic(5, mtu=9000)
    assert world.run("ADD", world.conf(deviceID=pci, ipam=False))[0] == 0
    ns, _, mtu, _, alias, _ = world.kernel.state(pci)
    assert ns == POD and mtu == 9000 and parse_alias(alias) == Origin("ens5", pci, None)


@pytest.mark.parametrize("detached", [True, False], ids=["detached-ipam", "ipam-after-move"])
def test_ipam_starts_before_the_move_only_when_detached(world: World, detached: bool) -> None:
    world.ipam.is_detached = detached
    pci, _ = world.nic(5)
    assert world.run("ADD", world.conf(deviceID=pci))[0] == 0
    order = [c for c in world.kernel.calls if c in (("ipam", "ADD"), (HOST, "move"))]
    expected = [("ipam", "ADD"), (HOST, "move")]
    assert order == (expected if detached else expected[::-1])


# ------------------------------------------------------------------ rollback

# Where an ADD fails, and the code the runtime gets. Each leaves the NIC as it was.
STEPS = {
    "down": 105,  # taking it down
    "move": 105,  # moving it into the pod
    "ifname-taken": 7,  # the pod already has the name
    "vanished": 105,  # not in the pod after the move
    "ipam-missing": 104,
    "ipam-error": 104,
    "ipam-garbage": 104,
    "configure": 105,  # MTU, addresses, routes
    "devinfo": 199,  # the device-info file cannot be written
}


def _foreign(name: str) -> FakeLink:
    return FakeLink(99, name, "02:00:00:00:00:99")


def _fail_at(world: World, step: str) -> None:
    kernel, ipam = world.kernel, world.ipam
    if step == "down":
        kernel.fail("set_down", errno.EBUSY, HOST)
    elif step == "move":
        kernel.fail("move", errno.EPERM, HOST)
    elif step == "ifname-taken":
        kernel.pods[POD].links_by_index[99] = _foreign("net1")
    elif step == "vanished":
        kernel.fail("link", errno.ENODEV, POD)
    elif step == "ipam-missing":
        ipam.plugin = "another-ipam"
    elif step == "ipam-error":
        ipam.fail["ADD"] = CniError(ERR_IPAM, "range full")
    elif step == "ipam-garbage":
        ipam.answer = b"{not json"
    elif step == "configure":
        kernel.fail("configure", errno.ENETUNREACH, POD)
    elif step == "devinfo":
        (world.tmp / "file").write_text("")  # the file's directory is a file


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "attached"])
@pytest.mark.parametrize(
    ("step", "up"),
    [(step, up) for step in STEPS for up in (False, True) if up or step != "down"],
    ids=lambda v: {True: "up", False: "down"}.get(v, v) if isinstance(v, bool) else v,
)
def test_failure_at_each_step_puts_the_device_back(
    world: World, step: str, detached: bool, up: bool
) -> None:
    world.ipam.is_detached = detached
    pci, nic = world.nic(5, up=up, mtu=9000)
    before = world.kernel.state(pci)
    _fail_at(world, step)
    devinfo = world.tmp / ("file/x.json" if step == "devinfo" else "devinfo.json")
    conf = world.conf(deviceID=pci, mtu=1400, runtimeConfig={"CNIDeviceInfoFile": str(devinfo)})
    code, out = world.run("ADD", conf)
    assert (code, out["code"]) == (1, STEPS[step]), out
    assert world.kernel.state(pci) == before
    assert nic.addresses == [] and world.ipam.leases == {}
    assert not devinfo.exists()
    assert all(not parse_alias(lk.alias) for lk in world.kernel.pods[POD].links_by_index.values())


def test_kernel_that_moves_before_renaming(world: World) -> None:
    """On a name clash some kernels leave the NIC in the pod under its host name."""
    world.kernel.rename_after_move = True
    pci, _ = world.nic(5, up=True)
    before = world.kernel.state(pci)
    world.kernel.pods[POD].links_by_index[99] = _foreign("net1")
    code, out = world.run("ADD", world.conf(deviceID=pci))
    assert (code, out["code"]) == (1, 7)
    assert world.kernel.state(pci) == before
    assert world.kernel.pods[POD].by_name("net1").mac == "02:00:00:00:00:99"


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "attached"])
def test_every_undo_runs_even_when_one_fails(world: World, detached: bool) -> None:
    """IPAM's release fails during the rollback: the NIC still comes back, and the
    caller hears of the step that failed, not of the clean-up."""
    world.ipam.is_detached = detached
    pci, _ = world.nic(5, up=True)
    before = world.kernel.state(pci)
    world.kernel.fail("configure", errno.ENETUNREACH, POD)
    world.ipam.fail["DEL"] = CniError(ERR_IPAM, "store locked")
    code, out = world.run("ADD", world.conf(deviceID=pci))
    assert (code, out["code"]) == (1, 105)
    assert world.kernel.state(pci) == before
    assert world.ipam.calls == ["ADD", "DEL"]


def test_return_refused_leaves_a_marked_device_for_gc(world: World) -> None:
    """The way back under its own name is refused: the NIC comes home as netdpN with
    its marker, and GC gives it its name back."""
    pci, _ = world.nic(5, mtu=9000)
    world.kernel.fail("configure", errno.ENETUNREACH, POD)
    world.kernel.fail("move", errno.EEXIST, POD)
    assert world.run("ADD", world.conf(deviceID=pci, mtu=1400))[1]["code"] == 105
    ns, name, _, _, alias, _ = world.kernel.state(pci)
    assert (ns, name) == (HOST, "netdp0") and parse_alias(alias) == Origin("ens5", pci, 9000)
    assert world.run("GC", world.conf("1.1.0"), netns=None)[0] == 0
    assert world.kernel.state(pci)[:5] == (HOST, "ens5", 9000, False, "")


def test_return_impossible_keeps_the_marker_for_del(world: World) -> None:
    pci, _ = world.nic(5)
    world.kernel.fail("configure", errno.ENETUNREACH, POD)
    world.kernel.fail("move", errno.EPERM, POD, times=2)
    assert world.run("ADD", world.conf(deviceID=pci))[1]["code"] == 105
    ns, name, _, _, alias, _ = world.kernel.state(pci)
    assert (ns, name) == (POD, "net1") and parse_alias(alias) is not None
    assert world.run("DEL", world.conf(deviceID=pci))[0] == 0
    assert world.kernel.state(pci)[:2] == (HOST, "ens5")


# ------------------------------------------------------------------ refusals


def _allocate(world: World, *pcis: str) -> str:
    world.allocated[("default", "web", "netdp.io/virtio")] = list(pcis)
    return "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("netns-missing", 3),
        ("resource-without-pod", 4),
        ("unknown-pci", 100),
        ("vfio", 100),
        ("netdev-missing", 100),
        ("mac-missing", 100),
        ("nothing-free", 100),
        ("in-another-namespace", 101),
        ("sysfs-name-not-on-host", 101),
        ("default-route", 102),
        ("not-allocated", 103),
        ("podresources-down", 106),
    ],
)
def test_refusals_touch_nothing(world: World, case: str, expected: int) -> None:
    pci, nic = world.nic(5, up=True)
    before = world.kernel.state(pci)
    conf = world.conf(deviceID=pci)
    kw: dict = {}
    if case == "netns-missing":
        kw["netns"] = "/run/netns/gone"
    elif case == "resource-without-pod":
        conf["resourceName"] = "netdp.io/virtio"
    elif case == "unknown-pci":
        conf["deviceID"] = "0000:00:1f.0"
    elif case == "vfio":
        world.node.vfio.add("0000:00:1e.0")
        conf["deviceID"] = "0000:00:1e.0"
    elif case == "netdev-missing":
        conf = world.conf(device="ens9")
    elif case == "mac-missing":
        conf = world.conf(hwaddr="02:00:00:00:00:01")
    elif case == "nothing-free":
        kw["args"] = _allocate(world, "0000:00:1f.0")
        conf = world.conf(resourceName="netdp.io/virtio")
    elif case == "in-another-namespace":
        world.node.pcis.add("0000:00:06.0")  # its netdev is in no namespace sysfs shows
        conf["deviceID"] = "0000:00:06.0"
    elif case == "sysfs-name-not-on-host":
        world.node.stale[pci] = "ens-old"
    elif case == "default-route":
        world.kernel.host_ns.default_routes.add(nic.index)
    elif case == "not-allocated":
        kw["args"] = _allocate(world, "0000:00:06.0")
        conf["resourceName"] = "netdp.io/virtio"
    elif case == "podresources-down":
        world.lookups_fail = True
        kw["args"] = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"
        conf["resourceName"] = "netdp.io/virtio"
    code, out = world.run("ADD", conf, **kw)
    assert (code, out["code"]) == (1, expected), out
    assert {"code", "msg"} <= set(out)
    assert world.kernel.state(pci) == before
    assert world.ipam.calls == []
    assert not any(op in ("set_down", "move") for _, op in world.kernel.calls)


# ------------------------------------------------------------------ selectors and locks


@pytest.mark.parametrize("selector", ["deviceID", "device", "hwaddr", "pciBusID", "resourceName"])
def test_selectors_find_the_device_and_lock_its_pci(world: World, selector: str) -> None:
    world.nic(4)
    pci, nic = world.nic(5)
    kw: dict = {}
    extra = {
        "deviceID": {"deviceID": pci},
        "device": {"device": "ens5"},
        "hwaddr": {"hwaddr": nic.mac.upper()},
        "pciBusID": {"pciBusID": pci},
        "resourceName": {"resourceName": "netdp.io/virtio"},
    }[selector]
    if selector == "resourceName":
        world.node.pcis.add("0000:00:06.0")  # allocated too, but its netdev is in a pod
        kw["args"] = _allocate(world, "0000:00:06.0", pci)
    code, result = world.run("ADD", world.conf(ipam=False, **extra), **kw)
    assert code == 0, result
    assert world.kernel.state(pci)[:2] == (POD, "net1")
    assert world.locks() == ["0000_00_05.0.lock"]


def test_netdev_without_pci_function(world: World) -> None:
    """A link sysfs knows no PCI function for still moves; it is locked by name."""
    link = world.kernel.nic(None, "veth7")
    devinfo = world.tmp / "d.json"
    conf = world.conf(device="veth7", runtimeConfig={"CNIDeviceInfoFile": str(devinfo)})
    assert world.run("ADD", conf)[0] == 0
    assert world.kernel.pods[POD].by_name("net1") is link
    assert parse_alias(link.alias) == Origin("veth7")
    assert world.locks() == ["netdev-veth7.lock"]
    assert not devinfo.exists()  # no PCI address to describe


def test_device_still_named_as_in_a_dead_pod(world: World) -> None:
    """The kernel returned it as `net1`: ADD first gives it its host name back, so the
    new marker records `ens5`, and DEL brings back `ens5`."""
    pci, nic = world.nic(5, mtu=9000)
    nic.name, nic.mtu, nic.alias = "net1", 1400, Origin("ens5", pci, 9000).to_alias()
    assert world.run("ADD", world.conf(deviceID=pci, mtu=1300), cid="c2")[0] == 0
    assert parse_alias(nic.alias) == Origin("ens5", pci, 9000)
    assert world.run("DEL", world.conf(deviceID=pci, mtu=1300), cid="c2")[0] == 0
    assert world.kernel.state(pci)[:5] == (HOST, "ens5", 9000, False, "")


@pytest.mark.parametrize(
    ("address", "broadcast"),
    [
        ("198.18.0.2/24", "198.18.0.255"),
        ("10.1.2.3/8", "10.255.255.255"),
        ("198.19.0.1/30", "198.19.0.3"),
        ("198.19.1.0/31", None),  # RFC 3021: no broadcast on a point-to-point /31
        ("198.19.2.7/32", None),
        ("fd00::2/64", None),  # IPv6 has none
    ],
)
def test_ipv4_broadcast_as_go_host_device_sets_it(address: str, broadcast: str | None) -> None:
    """vishvananda/netlink's AddrAdd fills in the broadcast below /31; so does the real port."""
    assert broadcast_for(ipaddress.ip_interface(address)) == broadcast
