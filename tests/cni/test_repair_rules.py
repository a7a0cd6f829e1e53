"""Node repair on in-memory ports, no root: what a lost DEL left marked on the host goes home.

A marked link in the host namespace is in no pod; unless a CNI call holds
its device lock, it is stranded, and the repair restores its name and MTU
and clears the marker, in one message, after looking again under that lock.
"""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest
from fakenet import HOST
from world import POD, World

from deviceplugin.cni.origin import Origin, parse_alias


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def stranded(world: World, slot: int = 5) -> tuple[str, tuple]:
    """A NIC ADDed into the pod whose namespace then died without a DEL: (pci, before)."""
    pci, _ = world.nic(slot, mtu=9000)
    before = world.kernel.state(pci)
    assert world.run("ADD", world.conf(deviceID=pci, mtu=1400))[0] == 0
    world.kernel.destroy_pod(POD)
    return pci, before


def test_stranded_nic_goes_home_under_the_device_lock(world: World) -> None:
    pci, before = stranded(world)
    ns, name, mtu, _, alias, _ = world.kernel.state(pci)
    assert (ns, name, mtu, parse_alias(alias)) == (HOST, "net1", 1400, Origin("ens5", pci, 9000))
    world.kernel.calls.clear()
    assert world.executor.repair() == [(pci, "ens5")]
    assert world.kernel.state(pci) == before
    assert [op for _, op in world.kernel.calls].count("restore") == 1  # one message
    assert world.locks() == ["0000_00_05.0.lock"]
    assert world.kernel.open == 0
    assert world.executor.repair() == []  # nothing left to do


def test_every_stranded_nic_and_only_those(world: World) -> None:
    pci, before = stranded(world, 5)
    world.kernel.add_pod(POD)
    pci_b, before_b = stranded(world, 6)  # its pod name clashed: back as dev0
    assert world.kernel.state(pci_b)[1] == "dev0"
    world.kernel.nic(None, "uplink", alias="uplink to rack 4")  # somebody else's alias
    in_place = Origin("ens9", None, 1500).to_alias()  # right name, marker left: cleared
    plain = world.kernel.nic(None, "ens9", mtu=9000, alias=in_place)
    assert sorted(world.executor.repair()) == [("", "ens9"), (pci, "ens5"), (pci_b, "ens6")]
    assert world.kernel.state(pci) == before
    assert world.kernel.state(pci_b) == before_b
    assert (plain.name, plain.mtu, plain.alias) == ("ens9", 1500, "")
    assert world.kernel.host_ns.by_name("uplink").alias == "uplink to rack 4"
    assert "netdev-ens9.lock" in world.locks()


def test_name_taken_leaves_it_marked_for_later(world: World) -> None:
    pci, before = stranded(world)
    blocker = world.kernel.nic(None, "ens5")
    assert world.executor.repair() == []
    assert world.kernel.state(pci)[1] == "net1"  # still marked: the next rescan tries again
    assert parse_alias(world.kernel.state(pci)[4]) is not None
    del world.kernel.host_ns.links_by_index[blocker.index]
    assert world.executor.repair() == [(pci, "ens5")]
    assert world.kernel.state(pci) == before


def test_a_refused_restore_does_not_stop_the_others(world: World) -> None:
    pci, _ = stranded(world, 5)
    world.kernel.add_pod(POD)
    pci_b, before_b = stranded(world, 6)
    world.kernel.fail("restore", errno.EBUSY, HOST)
    assert world.executor.repair() == [(pci_b, "ens6")]
    assert world.kernel.state(pci_b) == before_b
    assert world.executor.repair() == [(pci, "ens5")]


def test_a_call_holding_the_lock_goes_first(world: World) -> None:
    """The repair waits for the device lock and looks again: here the call that held it
    put the NIC back meanwhile (as a DEL does), so there is nothing left to repair."""
    pci, before = stranded(world)
    results: list[list[tuple[str, str]]] = []
    with world.executor._device_lock(pci):
        worker = threading.Thread(target=lambda: results.append(world.executor.repair()))
        worker.start()
        worker.join(0.3)
        assert worker.is_alive(), "the repair did not wait for the lock"
        _, link = world.kernel.where(pci)
        link.name, link.mtu, link.alias = "ens5", 9000, ""
    worker.join(10)
    assert results == [[]]
    assert world.kernel.state(pci) == before
