"""DEL, CHECK, STATUS and GC on in-memory ports, no root.

DEL never fails on what is already gone: the namespace, the device in it, a
device the kernel already handed back. What it cannot finish now (a host
name taken) it leaves marked for a later DEL or GC.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from fakenet import HOST, FakeLink
from world import POD, World

from deviceplugin.cni.origin import Origin, parse_alias
from deviceplugin.cni.types import ERR_IPAM, CniError


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def added(world: World, slot: int = 5, **conf: object) -> tuple[str, FakeLink, tuple]:
    """A NIC put into the pod by a real ADD: (pci, link, its state before the ADD)."""
    pci, nic = world.nic(slot, mtu=9000)
    before = world.kernel.state(pci)
    code, out = world.run("ADD", world.conf(deviceID=pci, mtu=1400, **conf))
    assert code == 0, out
    return pci, nic, before


def test_del_returns_the_device_as_it_was(world: World) -> None:
    devinfo = world.tmp / "devinfo.json"
    conf = {"runtimeConfig": {"CNIDeviceInfoFile": str(devinfo)}}
    pci, _, before = added(world, **conf)
    assert devinfo.exists()
    code, out = world.run("DEL", world.conf(deviceID=pci, mtu=1400, **conf))
    assert (code, out) == (0, None)
    assert world.kernel.state(pci) == before
    assert world.ipam.leases == {} and not devinfo.exists()
    # Again: nothing left to do, still success, nothing touched.
    world.kernel.calls.clear()
    assert world.run("DEL", world.conf(deviceID=pci, mtu=1400))[0] == 0
    assert world.kernel.state(pci) == before
    assert not any(op in ("move", "restore") for _, op in world.kernel.calls)


@pytest.mark.parametrize("by", ["pci", "alias-scan"])
@pytest.mark.parametrize("host_name", ["free", "taken"])
def test_del_after_the_namespace_died(world: World, by: str, host_name: str) -> None:
    """The kernel handed the NIC back as `net1` (or `devN` when that was taken): DEL
    finds it by PCI address, or by its marker when the config names no PCI address."""
    pci, _, before = added(world)
    if host_name == "taken":
        world.kernel.nic(None, "net1")
    world.kernel.destroy_pod(POD)
    ns, name, mtu, _, alias, _ = world.kernel.state(pci)
    assert (ns, name, mtu) == (HOST, "net1" if host_name == "free" else "dev0", 1400)
    assert parse_alias(alias) == Origin("ens5", pci, 9000)
    conf = world.conf(deviceID=pci) if by == "pci" else world.conf(device="ens5")
    assert world.run("DEL", conf) == (0, None)
    assert world.kernel.state(pci) == before
    assert world.ipam.leases == {}


def test_del_without_netns(world: World) -> None:
    pci, _, before = added(world)
    world.kernel.destroy_pod(POD)
    assert world.run("DEL", world.conf(deviceID=pci), netns=None) == (0, None)
    assert world.kernel.state(pci) == before


def test_del_of_a_device_never_added(world: World) -> None:
    pci, _ = world.nic(5, up=True)
    before = world.kernel.state(pci)
    assert world.run("DEL", world.conf(deviceID=pci)) == (0, None)
    assert world.kernel.state(pci) == before


def test_del_leaves_a_foreign_interface_alone(world: World) -> None:
    """`net1` in the pod is not ours (no marker): DEL must not take it."""
    pod = world.kernel.pods[POD]
    pod.links_by_index[7] = FakeLink(7, "net1", "02:00:00:00:00:07", alias="mine", up=True)
    pci, _ = world.nic(5)
    assert world.run("DEL", world.conf(deviceID=pci)) == (0, None)
    assert pod.by_name("net1").alias == "mine" and pod.by_name("net1").up
    assert world.kernel.state(pci)[:2] == (HOST, "ens5")


def test_host_name_taken_at_del(world: World) -> None:
    """DEL cannot rename back while the name is taken; a later DEL finishes the job."""
    pci, _, before = added(world)
    blocker = world.kernel.nic(None, "ens5")
    assert world.run("DEL", world.conf(deviceID=pci)) == (0, None)
    ns, name, _, _, alias, _ = world.kernel.state(pci)
    assert (ns, name) == (HOST, "netdp0") and parse_alias(alias) == Origin("ens5", pci, 9000)
    del world.kernel.host_ns.links_by_index[blocker.index]
    assert world.run("DEL", world.conf(deviceID=pci)) == (0, None)
    assert world.kernel.state(pci) == before


def test_restore_refused_is_retried_later(world: World) -> None:
    pci, _, before = added(world)
    world.kernel.destroy_pod(POD)
    world.kernel.fail("restore", errno.EBUSY, HOST)
    assert world.run("DEL", world.conf(deviceID=pci)) == (0, None)
    assert world.kernel.state(pci)[1] == "net1"  # still marked
    assert world.run("DEL", world.conf(deviceID=pci)) == (0, None)
    assert world.kernel.state(pci) == before


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "attached"])
def test_del_ipam_failure_is_reported_after_the_device_is_back(
    world: World, detached: bool
) -> None:
    world.ipam.is_detached = detached
    pci, _, before = added(world)
    world.ipam.fail["DEL"] = CniError(ERR_IPAM, "store locked")
    code, out = world.run("DEL", world.conf(deviceID=pci, mtu=1400))
    assert (code, out["code"]) == (1, 104)
    assert world.kernel.state(pci) == before


def test_del_that_cannot_return_the_device_fails(world: World) -> None:
    """Both ways back refused: an internal error, the detached IPAM call reaped, the
    NIC still marked in the pod for the retry."""
    pci, _, _ = added(world)
    world.kernel.fail("move", errno.EPERM, POD, times=2)
    code, out = world.run("DEL", world.conf(deviceID=pci))
    assert (code, out["code"]) == (1, 199)
    assert world.kernel.state(pci)[:2] == (POD, "net1")
    assert world.run("DEL", world.conf(deviceID=pci)) == (0, None)
    assert world.kernel.state(pci)[:2] == (HOST, "ens5")


def test_del_locks_the_device_or_the_attachment(world: World) -> None:
    pci, _, _ = added(world)
    assert world.run("DEL", world.conf(deviceID=pci)) == (0, None)
    assert world.run("DEL", world.conf(device="ens5"), cid="c9", ifname="eth3") == (0, None)
    assert world.locks() == ["0000_00_05.0.lock", "attachment-c9-eth3.lock"]


# ------------------------------------------------------------------ GC


def test_gc_restores_every_returned_device_and_collects_leases(world: World) -> None:
    world.ipam.versions = ("1.0.0", "1.1.0")
    pci_a, _, before_a = added(world, 5)
    pci_b, _ = world.nic(6)
    before_b = world.kernel.state(pci_b)
    second = world.kernel.add_pod("/run/netns/pod2")
    assert world.run("ADD", world.conf(deviceID=pci_b), netns="/run/netns/pod2", cid="c2")[0] == 0
    assert second.by_name("net1") is not None
    world.kernel.destroy_pod(POD)
    world.kernel.destroy_pod("/run/netns/pod2")
    assert world.run("GC", world.conf("1.1.0"), netns=None) == (0, None)
    assert world.kernel.state(pci_a) == before_a and world.kernel.state(pci_b) == before_b
    assert world.ipam.calls[-1] == "GC" and world.ipam.leases == {}


def test_gc_skips_ipam_that_does_not_speak_1_1(world: World) -> None:
    world.ipam.versions = ("1.0.0",)
    assert world.run("GC", world.conf("1.1.0"), netns=None) == (0, None)
    assert "GC" not in world.ipam.calls


# ------------------------------------------------------------------ CHECK


def checked(world: World) -> dict:
    """The config of an ADD that went through, with its result as prevResult."""
    pci, _ = world.nic(5)
    conf = world.conf(deviceID=pci)
    code, result = world.run("ADD", conf)
    assert code == 0
    return {**conf, "prevResult": result}


def test_check_passes_on_what_add_built(world: World) -> None:
    conf = checked(world)
    assert world.run("CHECK", conf) == (0, None)
    assert world.ipam.calls[-1] == "CHECK"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("address-gone", 7),
        ("mac-changed", 7),
        ("malformed-prev", 7),
        ("no-such-interface-in-prev", 7),
        ("interface-gone", 100),
        ("not-ours", 100),
        ("netns-gone", 3),
        ("ipam-check-fails", 104),
    ],
)
def test_check_failures(world: World, case: str, expected: int) -> None:
    conf = checked(world)
    link = world.kernel.pods[POD].by_name("net1")
    kw: dict = {}
    if case == "address-gone":
        link.addresses.clear()
    elif case == "mac-changed":
        link.mac = "02:00:00:00:00:42"
    elif case == "malformed-prev":
        conf["prevResult"]["ips"][0]["address"] = "10.77.0.2/99"
    elif case == "no-such-interface-in-prev":
        kw["ifname"] = "net2"
    elif case == "interface-gone":
        link.name = "other"
    elif case == "not-ours":
        link.alias = ""
    elif case == "netns-gone":
        world.kernel.destroy_pod(POD)
    elif case == "ipam-check-fails":
        world.ipam.fail["CHECK"] = CniError(ERR_IPAM, "lease lost")
    code, out = world.run("CHECK", conf, **kw)
    assert (code, out["code"]) == (1, expected), out
    if case == "address-gone":
        assert "10.77.0.2/24" in out["msg"]


# ------------------------------------------------------------------ STATUS


@pytest.mark.parametrize(
    ("case", "expected", "calls"),
    [
        ("no-ipam", 0, []),
        ("ready", 0, ["STATUS"]),
        ("speaks-no-1.1", 0, []),
        ("plugin-missing", 50, []),
        ("plugin-not-ready", 50, ["STATUS"]),
    ],
)
def test_status(world: World, case: str, expected: int, calls: list[str]) -> None:
    conf = world.conf("1.1.0", ipam=case != "no-ipam")
    world.ipam.versions = ("1.0.0",) if case == "speaks-no-1.1" else ("1.0.0", "1.1.0")
    if case == "plugin-missing":
        world.ipam.plugin = "another-ipam"
    if case == "plugin-not-ready":
        world.ipam.fail["STATUS"] = CniError(ERR_IPAM, "no ranges")
    code, out = world.run("STATUS", conf, netns=None)
    assert code == (1 if expected else 0)
    assert (out["code"] if out else 0) == expected
    assert world.ipam.calls == calls
