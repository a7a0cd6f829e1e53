"""Health rules and the pure diff of device trees, on hand-built records."""

from __future__ import annotations

import dataclasses

from deviceplugin import diff, pools
from deviceplugin.health import HEALTHY, LinkState, Verdict, assess
from deviceplugin.model import Device, Health, NetDev, NetdevState, NodeDevices
from deviceplugin.pools import PoolSpec, Selector

UP = NetDev("ens1", carrier=True)
NO_CARRIER = NetDev("ens1", carrier=False)
ADMIN_DOWN = NetDev("ens1", carrier=None)


def nic(address: str = "0000:01:00.0", *netdevs: NetDev, driver: str | None = "igb") -> Device:
    state = NetdevState.PRESENT if netdevs else NetdevState.NONE
    return Device(address, "8086", "10c9", driver=driver, netdevs=netdevs, netdev_state=state)


def link(name: str, admin_up: bool, carrier: bool | None) -> LinkState:
    return LinkState(name, 7, admin_up, carrier)


def pf_and_vf(pf_netdev: NetDev) -> tuple[Device, Device]:
    pf = Device(
        "0000:05:00.0",
        "8086",
        "10c9",
        driver="igb",
        netdevs=(pf_netdev,),
        netdev_state=NetdevState.PRESENT,
        total_vfs=2,
        num_vfs=1,
        vf_addresses=("0000:05:10.0",),
    )
    vf = Device(
        "0000:05:10.0",
        "8086",
        "10ca",
        driver="igbvf",
        netdevs=(NetDev("ens5v0", carrier=True),),
        netdev_state=NetdevState.PRESENT,
        pf_address=pf.pci_address,
        vf_index=0,
        pf_netdev=pf_netdev.name,
    )
    return pf, vf


# --- assess -------------------------------------------------------------------------


def test_sysfs_link_state_rules() -> None:
    assert assess(nic("0000:01:00.0", UP), {}) == HEALTHY
    # administratively down: nobody configured it yet; a pod can still use it
    assert assess(nic("0000:01:00.0", ADMIN_DOWN), {}).health is Health.HEALTHY
    verdict = assess(nic("0000:01:00.0", NO_CARRIER), {})
    assert verdict.health is Health.UNHEALTHY
    assert "ens1" in verdict.reason


def test_netlink_state_wins_over_the_scan() -> None:
    scanned_up = nic("0000:01:00.0", UP)
    assert assess(scanned_up, {"ens1": link("ens1", True, False)}).health is Health.UNHEALTHY
    scanned_down = nic("0000:01:00.0", NO_CARRIER)
    assert assess(scanned_down, {"ens1": link("ens1", True, True)}) == HEALTHY
    assert assess(scanned_down, {"ens1": link("ens1", False, False)}) == HEALTHY
    # a link of another name says nothing about this device: the scan decides
    assert assess(scanned_down, {"ens9": link("ens9", True, True)}).health is Health.UNHEALTHY


def test_unbound_device_is_unhealthy_whatever_its_link() -> None:
    verdict = assess(nic("0000:01:00.0", driver=None), {})
    assert verdict == Verdict(Health.UNHEALTHY, "no driver bound")


def test_device_in_a_pod_keeps_its_last_verdict() -> None:
    away = Device("0000:01:00.0", "8086", "10c9", driver="igb", netdev_state=NetdevState.ELSEWHERE)
    sick = Verdict(Health.UNHEALTHY, "no carrier on ens1 (link is up)")
    assert assess(away, {}, previous=sick) == sick
    assert assess(away, {}, previous=None) == HEALTHY


def test_vfio_device_without_netdev_is_healthy() -> None:
    vfio = Device("0000:01:00.0", "8086", "10ca", driver="vfio-pci", iommu_group=3)
    assert assess(vfio, {}) == HEALTHY


def test_pf_link_loss_marks_vfs_only_when_the_pool_asks() -> None:
    pf, vf = pf_and_vf(NetDev("ens5", carrier=True))
    lost = {"ens5": link("ens5", True, False)}
    verdict = assess(vf, lost, pf=pf, pf_link_health=True)
    assert verdict.health is Health.UNHEALTHY
    assert "PF 0000:05:00.0" in verdict.reason and "ens5" in verdict.reason
    assert assess(vf, lost, pf=pf, pf_link_health=False) == HEALTHY
    assert assess(vf, {}, pf=pf, pf_link_health=True) == HEALTHY
    # a PF nobody brought up does not condemn its VFs
    assert assess(vf, {"ens5": link("ens5", False, False)}, pf=pf) == HEALTHY
    # the sysfs record of the PF is used when netlink does not know it
    pf_down, vf2 = pf_and_vf(NetDev("ens5", carrier=False))
    assert assess(vf2, {}, pf=pf_down).health is Health.UNHEALTHY


def test_link_state_down_means_up_without_carrier() -> None:
    assert link("ens1", True, False).down
    assert not link("ens1", True, True).down
    assert not link("ens1", False, False).down
    assert not link("ens1", True, None).down  # unknown is not down


# --- build_state and diff -------------------------------------------------------------

SPEC_A = PoolSpec("example.com/a", (Selector(pci_addresses=("0000:01:00.0", "0000:02:00.0")),))
SPEC_B = PoolSpec("example.com/b", (Selector(vendors=("8086",)),))


def state(
    devices: list[Device],
    specs: tuple[PoolSpec, ...] = (SPEC_A, SPEC_B),
    links: dict[str, LinkState] | None = None,
    previous: diff.NodeState | None = None,
) -> diff.NodeState:
    node = NodeDevices({d.pci_address: d for d in devices})
    return diff.build_state(diff.place(node, frozenset(), specs), links or {}, previous)


def kinds(changes: diff.Changes) -> list[tuple[str, str]]:
    return [(c.kind.value, c.device) for c in changes.devices]


def test_first_state_adds_every_pool_and_device() -> None:
    s = state([nic("0000:01:00.0", UP), nic("0000:03:00.0")])
    changes = diff.diff(None, s)
    assert changes.added_pools == ("example.com/a", "example.com/b")
    assert set(changes.updated_pools) == {"example.com/a", "example.com/b"}
    assert kinds(changes) == [("device_added", "0000:01:00.0"), ("device_added", "0000:03:00.0")]
    assert changes.devices[0].pool == "example.com/a"


def test_nothing_changed_means_no_work() -> None:
    devices = [nic("0000:01:00.0", UP), nic("0000:03:00.0")]
    first = state(devices)
    assert diff.diff(first, state(devices, previous=first)).empty


def test_link_loss_updates_one_pool_and_logs_once() -> None:
    devices = [nic("0000:01:00.0", UP), nic("0000:03:00.0")]
    first = state(devices)
    second = state(devices, links={"ens1": link("ens1", True, False)}, previous=first)
    changes = diff.diff(first, second)
    assert changes.updated_pools == ("example.com/a",)
    assert kinds(changes) == [("device_health_changed", "0000:01:00.0")]
    assert changes.devices[0].health is Health.UNHEALTHY
    third = state(devices, links={"ens1": link("ens1", True, True)}, previous=second)
    back = diff.diff(second, third)
    assert back.updated_pools == ("example.com/a",)
    assert back.devices[0].health is Health.HEALTHY


def test_hot_plug_and_unplug() -> None:
    first = state([nic("0000:03:00.0")])
    second = state([nic("0000:03:00.0"), nic("0000:04:00.0")], previous=first)
    changes = diff.diff(first, second)
    assert changes.updated_pools == ("example.com/b",)
    assert kinds(changes) == [("device_added", "0000:04:00.0")]
    third = state([nic("0000:04:00.0")], previous=second)
    gone = diff.diff(second, third)
    assert kinds(gone) == [("device_removed", "0000:03:00.0")]
    assert gone.devices[0].pool == "example.com/b"


def test_moved_device_is_announced_in_both_pools_loser_first() -> None:
    devices = [nic("0000:02:00.0"), nic("0000:03:00.0")]
    first = state(devices)
    narrower = PoolSpec("example.com/a", (Selector(pci_addresses=("0000:01:00.0",)),))
    second = state(devices, specs=(narrower, SPEC_B), previous=first)
    changes = diff.diff(first, second)
    assert changes.updated_pools == ("example.com/a", "example.com/b")
    assert changes.respecified_pools == ("example.com/a",)
    moved = changes.devices[0]
    assert (moved.kind, moved.pool, moved.previous_pool) == (
        diff.ChangeKind.ADDED,
        "example.com/b",
        "example.com/a",
    )
    # the other direction: b loses, so b is updated first
    back = diff.diff(second, state(devices, previous=second))
    assert back.updated_pools == ("example.com/b", "example.com/a")


def test_pools_added_and_removed_by_config() -> None:
    devices = [nic("0000:03:00.0")]
    first = state(devices, specs=(SPEC_A,))
    assert kinds(diff.diff(None, first)) == [("device_excluded", "0000:03:00.0")]
    second = state(devices, specs=(SPEC_B,), previous=first)
    changes = diff.diff(first, second)
    assert changes.added_pools == ("example.com/b",)
    assert changes.removed_pools == ("example.com/a",)
    assert changes.updated_pools == ("example.com/b",)
    assert kinds(changes) == [("device_added", "0000:03:00.0")]


def test_new_exclusion_reason_is_a_change() -> None:
    pf, _ = pf_and_vf(NetDev("ens5", carrier=True))
    only_a = (SPEC_A,)
    first = state([pf], specs=only_a)
    pf2 = dataclasses.replace(pf, num_vfs=2)
    second = state([pf2], specs=only_a, previous=first)
    changes = diff.diff(first, second)
    assert kinds(changes) == [("device_excluded", "0000:05:00.0")]
    assert "2 VFs" in changes.devices[0].reason


def test_health_survives_the_netdev_moving_into_a_pod() -> None:
    sick = nic("0000:01:00.0", NO_CARRIER)
    first = state([sick])
    assert first.pools["example.com/a"].health == {"0000:01:00.0": Health.UNHEALTHY}
    away = Device("0000:01:00.0", "8086", "10c9", driver="igb", netdev_state=NetdevState.ELSEWHERE)
    second = state([away], previous=first)
    assert second.pools["example.com/a"].health == {"0000:01:00.0": Health.UNHEALTHY}
    assert [c.kind for c in diff.diff(first, second).devices] == []


def test_pf_link_health_per_pool() -> None:
    pf, vf = pf_and_vf(NetDev("ens5", carrier=False))
    strict = PoolSpec("example.com/vf", (Selector(pf_names=(pools.PfRef("ens5"),)),))
    lenient = PoolSpec(
        "example.com/vf", (Selector(pf_names=(pools.PfRef("ens5"),)),), pf_link_health=False
    )
    assert state([pf, vf], specs=(strict,)).pools["example.com/vf"].health == {
        vf.pci_address: Health.UNHEALTHY
    }
    assert state([pf, vf], specs=(lenient,)).pools["example.com/vf"].health == {
        vf.pci_address: Health.HEALTHY
    }


def test_netdev_names_cover_pfs_and_members() -> None:
    pf, vf = pf_and_vf(NetDev("ens5", carrier=True))
    assert state([pf, vf]).netdev_names() == {"ens5", "ens5v0"}


def test_member_that_loses_its_driver_keeps_its_place_unhealthy() -> None:
    bound = nic("0000:03:00.0", UP)
    first = state([bound, nic("0000:04:00.0")])
    unbound = nic("0000:03:00.0", driver=None)
    second = state([unbound, nic("0000:04:00.0")], previous=first)
    pool = second.pools["example.com/b"]
    assert [d.pci_address for d in pool.devices] == ["0000:03:00.0", "0000:04:00.0"]
    assert pool.health["0000:03:00.0"] is Health.UNHEALTHY
    assert "0000:03:00.0" not in second.excluded
    assert kinds(diff.diff(first, second)) == [("device_health_changed", "0000:03:00.0")]
    # bound again: back to the pool assignment's own decision
    third = state([bound, nic("0000:04:00.0")], previous=second)
    assert third.pools["example.com/b"].health["0000:03:00.0"] is Health.HEALTHY
    # unbound at start (nothing to keep) or its pool gone: excluded as before
    assert "0000:03:00.0" in state([unbound]).excluded
    gone = state([unbound], specs=(SPEC_A,), previous=first)
    assert "0000:03:00.0" in gone.excluded
