"""Pool selection: sriovdp selector semantics, first match, and exclusion reasons."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from deviceplugin.config import default_config
from deviceplugin.model import Device, NetDev, NetdevState, NodeDevices
from deviceplugin.pools import (
    Assignment,
    DeviceType,
    PfRef,
    PoolSpec,
    Selector,
    assign,
    matches,
    pci_sort_key,
)

NO_ROUTES: frozenset[str] = frozenset()


def nic(
    address: str,
    *,
    vendor: str = "8086",
    device: str = "1572",
    driver: str | None = "i40e",
    netdev: str | None = "ens1f0",
    **kw: object,
) -> Device:
    netdevs = (NetDev(netdev, link_type="ether"),) if netdev else ()
    state = NetdevState.PRESENT if netdev else NetdevState.NONE
    return Device(
        pci_address=address,
        vendor=vendor,
        device=device,
        driver=driver,
        netdevs=netdevs,
        netdev_state=state,
        **kw,  # type: ignore[arg-type]
    )


def vf(
    address: str,
    index: int,
    *,
    pf: str = "0000:3b:00.0",
    pf_netdev: str | None = "ens1f0",
    driver: str = "iavf",
    netdev: str | None = None,
) -> Device:
    return dataclasses.replace(
        nic(address, device="154c", driver=driver, netdev=netdev or f"ens1f0v{index}"),
        pf_address=pf,
        vf_index=index,
        pf_netdev=pf_netdev,
    )


def moved_to_pod(device: Device) -> Device:
    """What the scanner sees once the netdev is in a pod's namespace."""
    return dataclasses.replace(device, netdevs=(), netdev_state=NetdevState.ELSEWHERE)


def node(*devices: Device) -> NodeDevices:
    return NodeDevices(devices={d.pci_address: d for d in devices})


def pool(name: str, *selectors: Selector, **kw: object) -> PoolSpec:
    return PoolSpec(resource_name=name, selectors=selectors or (Selector(),), **kw)  # type: ignore[arg-type]


def members(result: Assignment, name: str) -> list[str]:
    return [d.pci_address for d in result.pools[name]]


PF = nic("0000:3b:00.0", netdev="ens1f0", total_vfs=8, num_vfs=4)
VFS = [vf(f"0000:3b:02.{i}", i) for i in range(4)]


# --- one selector object --------------------------------------------------


def test_an_empty_selector_matches_everything() -> None:
    assert matches(Selector(), nic("0000:00:04.0"))
    assert matches(Selector(), nic("0000:00:04.0", driver=None, netdev=None))


def test_ids_drivers_and_addresses() -> None:
    dev = nic("0000:00:04.0", vendor="1af4", device="1041", driver="virtio-pci")
    assert matches(Selector(vendors=("8086", "1af4")), dev)
    assert not matches(Selector(vendors=("8086",)), dev)
    assert matches(Selector(devices=("1041",)), dev)
    assert not matches(Selector(devices=("1000",)), dev)
    assert matches(Selector(drivers=("virtio-pci",)), dev)
    assert not matches(Selector(drivers=("vfio-pci",)), dev)
    assert matches(Selector(pci_addresses=("0000:00:04.0",)), dev)
    assert not matches(Selector(pci_addresses=("0000:00:05.0",)), dev)


def test_fields_of_one_selector_are_anded() -> None:
    dev = nic("0000:00:04.0", vendor="1af4", device="1041")
    assert matches(Selector(vendors=("1af4",), devices=("1041",)), dev)
    assert not matches(Selector(vendors=("1af4",), devices=("1000",)), dev)


def test_a_driver_selector_never_matches_an_unbound_device() -> None:
    assert not matches(Selector(drivers=("i40e",)), nic("0000:00:04.0", driver=None))


def test_pf_names_select_vfs_by_their_pf_netdev_case_insensitively() -> None:
    assert matches(Selector(pf_names=(PfRef("ens1f0"),)), VFS[0])
    assert matches(Selector(pf_names=(PfRef("ENS1F0"),)), VFS[0])
    assert not matches(Selector(pf_names=(PfRef("ens1f1"),)), VFS[0])


def test_pf_names_vf_ranges() -> None:
    ref = PfRef("ens1f0", (range(0, 2), range(3, 4)))  # "ens1f0#0-1,3"
    assert [matches(Selector(pf_names=(ref,)), v) for v in VFS] == [True, True, False, True]


def test_pf_names_match_a_device_that_is_not_a_vf_by_its_own_name_but_never_with_ranges() -> None:
    plain = nic("0000:00:04.0", netdev="eth1")
    assert matches(Selector(pf_names=(PfRef("eth1"),)), plain)
    assert not matches(Selector(pf_names=(PfRef("eth1", (range(0, 8),)),)), plain)


def test_root_devices_select_vfs_by_pf_address_with_ranges() -> None:
    assert matches(Selector(root_devices=(PfRef("0000:3b:00.0"),)), VFS[2])
    assert not matches(Selector(root_devices=(PfRef("0000:3b:00.1"),)), VFS[2])
    ranged = Selector(root_devices=(PfRef("0000:3b:00.0", (range(1, 3),)),))
    assert [matches(ranged, v) for v in VFS] == [False, True, True, False]
    plain = nic("0000:00:04.0")
    assert matches(Selector(root_devices=(PfRef("0000:00:04.0"),)), plain)
    assert not matches(Selector(root_devices=(PfRef("0000:00:04.0", (range(0, 1),)),)), plain)


def test_link_types_fall_back_on_the_pci_class_when_the_netdev_is_in_a_pod() -> None:
    ib = dataclasses.replace(nic("0000:00:04.0", netdev=None), class_code="020700")
    assert matches(Selector(link_types=("infiniband",)), ib)
    assert not matches(Selector(link_types=("ether",)), ib)
    ether_in_pod = moved_to_pod(nic("0000:00:05.0"))
    assert matches(Selector(link_types=("ether",)), ether_in_pod)
    other = dataclasses.replace(nic("0000:00:06.0", netdev=None), class_code="028000")
    assert not matches(Selector(link_types=("ether",)), other)


def test_pf_ref_admits() -> None:
    assert PfRef("x").admits(None)
    assert PfRef("x").admits(5)
    assert not PfRef("x", (range(0, 4),)).admits(None)
    assert PfRef("x", (range(0, 4), range(6, 7))).admits(6)
    assert not PfRef("x", (range(0, 4), range(6, 7))).admits(5)


# --- assignment ------------------------------------------------------------


def test_selectors_of_a_pool_are_ored() -> None:
    a, b, c = nic("0000:00:04.0"), nic("0000:00:05.0"), nic("0000:00:06.0")
    spec = pool(
        "example.com/nic",
        Selector(pci_addresses=("0000:00:04.0",)),
        Selector(pci_addresses=("0000:00:06.0",)),
    )
    result = assign(node(a, b, c), [spec], NO_ROUTES)
    assert members(result, "example.com/nic") == ["0000:00:04.0", "0000:00:06.0"]
    assert result.excluded == {"0000:00:05.0": "not selected by any pool"}


def test_first_matching_pool_wins_in_config_order() -> None:
    dev = nic("0000:00:04.0")
    narrow = pool("example.com/narrow", Selector(pci_addresses=("0000:00:04.0",)))
    broad = pool("example.com/broad", Selector(vendors=("8086",)))
    first = assign(node(dev), [narrow, broad], NO_ROUTES)
    assert members(first, "example.com/narrow") == ["0000:00:04.0"]
    assert members(first, "example.com/broad") == []
    second = assign(node(dev), [broad, narrow], NO_ROUTES)
    assert members(second, "example.com/broad") == ["0000:00:04.0"]
    assert second.pool_of("0000:00:04.0") == "example.com/broad"


def test_every_pool_is_present_and_members_are_sorted_by_pci_address() -> None:
    devices = [nic(a) for a in ("0000:0a:00.0", "0000:00:1f.0", "0000:00:04.1", "0000:00:04.0")]
    result = assign(node(*devices), [pool("example.com/all"), pool("example.com/none")], NO_ROUTES)
    assert members(result, "example.com/all") == [
        "0000:00:04.0",
        "0000:00:04.1",
        "0000:00:1f.0",
        "0000:0a:00.0",
    ]
    assert result.pools["example.com/none"] == ()
    assert list(result.pools) == ["example.com/all", "example.com/none"]
    assert result.pool_of("0000:99:00.0") is None


def test_pci_sort_key_orders_wide_domains_numerically() -> None:
    addresses = ["10000:00:00.0", "0000:10:00.0", "0000:02:00.0", "garbage"]
    assert sorted(addresses, key=pci_sort_key) == [
        "garbage",
        "0000:02:00.0",
        "0000:10:00.0",
        "10000:00:00.0",
    ]


def test_a_pf_with_vfs_enabled_is_never_advertised_but_its_vfs_are() -> None:
    spec = pool("example.com/sriov", Selector(vendors=("8086",)))
    explicit = pool("example.com/pf", Selector(pci_addresses=("0000:3b:00.0",)))
    result = assign(node(PF, *VFS), [explicit, spec], NO_ROUTES)
    assert members(result, "example.com/pf") == []
    assert members(result, "example.com/sriov") == [v.pci_address for v in VFS]
    assert result.excluded == {
        "0000:3b:00.0": "PF with 4 VFs enabled (its VFs are advertised instead)"
    }


def test_an_sriov_capable_pf_without_vfs_is_advertised() -> None:
    idle_pf = dataclasses.replace(PF, num_vfs=0)
    result = assign(node(idle_pf), [pool("example.com/pf")], NO_ROUTES)
    assert members(result, "example.com/pf") == ["0000:3b:00.0"]


def test_the_default_route_interface_is_excluded_unless_its_pool_opts_in() -> None:
    uplink = nic("0000:00:03.0", vendor="1af4", device="1000", driver="virtio-pci", netdev="eth0")
    routes = frozenset({"eth0"})
    closed = assign(node(uplink), [pool("example.com/virt")], routes)
    assert closed.pools["example.com/virt"] == ()
    assert closed.excluded["0000:00:03.0"] == (
        "default-route interface eth0 "
        "(pool example.com/virt selects it but does not set allowDefaultRoute)"
    )
    opened = assign(node(uplink), [pool("example.com/virt", allow_default_route=True)], routes)
    assert members(opened, "example.com/virt") == ["0000:00:03.0"]


def test_the_default_route_interface_falls_through_to_a_later_pool_that_opts_in() -> None:
    uplink = nic("0000:00:03.0", netdev="eth0")
    pools = [pool("example.com/all"), pool("example.com/uplink", allow_default_route=True)]
    result = assign(node(uplink), pools, frozenset({"eth0"}))
    assert members(result, "example.com/uplink") == ["0000:00:03.0"]
    closed = assign(
        node(uplink), [pool("example.com/a"), pool("example.com/b")], frozenset({"eth0"})
    )
    assert "(pool example.com/a selects it" in closed.excluded["0000:00:03.0"]


def test_the_default_route_reason_wins_even_when_no_pool_selects_it() -> None:
    uplink = nic("0000:00:03.0", netdev="eth0")
    spec = pool("example.com/x", Selector(vendors=("15b3",)))
    result = assign(node(uplink), [spec], frozenset({"eth0"}))
    assert result.excluded == {"0000:00:03.0": "default-route interface eth0"}


def test_any_netdev_of_a_device_on_the_default_route_excludes_it() -> None:
    dual = dataclasses.replace(nic("0000:00:04.0"), netdevs=(NetDev("ens1f0"), NetDev("ens1f0d1")))
    result = assign(node(dual), [pool("example.com/x")], frozenset({"ens1f0d1"}))
    assert result.excluded == {
        "0000:00:04.0": "default-route interface ens1f0d1 "
        "(pool example.com/x selects it but does not set allowDefaultRoute)"
    }


def test_a_device_whose_netdev_moved_into_a_pod_keeps_its_pool() -> None:
    spec = pool(
        "example.com/mixed",
        Selector(vendors=("8086",), drivers=("iavf",), link_types=("ether",)),
        Selector(pf_names=(PfRef("ens1f0", (range(0, 4),)),)),
    )
    visible = node(PF, *VFS, nic("0000:00:04.0", driver="iavf"))
    in_pods = node(
        PF, *(moved_to_pod(d) for d in VFS), moved_to_pod(nic("0000:00:04.0", driver="iavf"))
    )
    before, after = assign(visible, [spec], NO_ROUTES), assign(in_pods, [spec], NO_ROUTES)
    expected = ["0000:00:04.0", *(v.pci_address for v in VFS)]
    assert members(before, "example.com/mixed") == members(after, "example.com/mixed") == expected
    assert before.excluded == after.excluded


def test_pf_names_on_a_plain_nic_in_a_pod_use_the_last_known_name() -> None:
    spec = pool("example.com/eth1", Selector(pf_names=(PfRef("eth1"),)))
    gone = moved_to_pod(nic("0000:00:04.0", netdev="eth1"))
    kept = assign(node(gone), [spec], NO_ROUTES, known_netdevs={"0000:00:04.0": "eth1"})
    assert members(kept, "example.com/eth1") == ["0000:00:04.0"]
    unknown = assign(node(gone), [spec], NO_ROUTES)
    assert "pfNames cannot match it" in unknown.excluded["0000:00:04.0"]
    assert "pciAddresses or rootDevices" in unknown.excluded["0000:00:04.0"]


def test_vfio_pci_device_type_takes_only_vfio_bound_devices() -> None:
    dpdk = vf("0000:3b:02.0", 0, driver="vfio-pci")
    kernel = VFS[1]
    vfio_pool = pool("example.com/dpdk", device_type=DeviceType.VFIO_PCI)
    result = assign(node(dpdk, kernel), [vfio_pool], NO_ROUTES)
    assert members(result, "example.com/dpdk") == ["0000:3b:02.0"]
    assert result.excluded == {
        "0000:3b:02.1": "bound to iavf, but pool example.com/dpdk (deviceType vfio-pci) "
        "takes only devices bound to vfio-pci"
    }
    with_fallback = assign(node(dpdk, kernel), [vfio_pool, pool("example.com/kernel")], NO_ROUTES)
    assert members(with_fallback, "example.com/kernel") == ["0000:3b:02.1"]


def test_net_device_type_with_a_vfio_driver_selector_picks_dpdk_vfs_as_sriovdp_does() -> None:
    dpdk = vf("0000:3b:02.0", 0, driver="vfio-pci")
    spec = pool("example.com/dpdk", Selector(drivers=("vfio-pci",)))
    result = assign(node(dpdk, VFS[1]), [spec], NO_ROUTES)
    assert members(result, "example.com/dpdk") == ["0000:3b:02.0"]
    assert result.excluded == {"0000:3b:02.1": "not selected by any pool"}


def test_a_device_without_a_driver_is_excluded() -> None:
    result = assign(node(nic("0000:00:04.0", driver=None, netdev=None)), [pool("a.b/c")], NO_ROUTES)
    assert result.excluded == {"0000:00:04.0": "no driver bound"}


def test_no_pools_excludes_everything() -> None:
    result = assign(node(nic("0000:00:04.0")), [], NO_ROUTES)
    assert result.pools == {}
    assert result.excluded == {"0000:00:04.0": "not selected by any pool"}


def test_default_config_on_the_lab_node() -> None:
    """Like this machine: eth0 (virtio, default route) stays out, other virtio NICs go in."""
    uplink = nic("0000:00:03.0", vendor="1af4", device="1000", driver="virtio-pci", netdev="eth0")
    lab = [
        nic(f"0000:00:0{i}.0", vendor="1af4", device="1041", driver="virtio-pci", netdev=f"eth{i}")
        for i in (4, 5)
    ]
    intel = nic("0000:00:06.0")
    result = assign(node(uplink, *lab, intel), default_config().pools, frozenset({"eth0"}))
    assert members(result, "kernel.org/virt") == ["0000:00:04.0", "0000:00:05.0"]
    assert result.excluded["0000:00:03.0"].startswith("default-route interface eth0")
    assert result.excluded["0000:00:06.0"] == "not selected by any pool"


# --- invariants --------------------------------------------------------------

addresses = st.integers(0, 40).map(lambda n: f"0000:{n // 8:02x}:{n % 8:02x}.0")
devices = st.builds(
    nic,
    addresses,
    vendor=st.sampled_from(["8086", "1af4", "15b3"]),
    device=st.sampled_from(["154c", "1041"]),
    driver=st.sampled_from([None, "iavf", "vfio-pci", "virtio-pci"]),
    netdev=st.sampled_from([None, "eth0", "eth1", "ens1f0"]),
    num_vfs=st.sampled_from([0, 0, 2]),
)
selectors = st.builds(
    Selector,
    vendors=st.none() | st.tuples(st.sampled_from(["8086", "1af4"])),
    drivers=st.none() | st.tuples(st.sampled_from(["iavf", "vfio-pci", "virtio-pci"])),
    pf_names=st.none() | st.tuples(st.builds(PfRef, st.sampled_from(["eth1", "ens1f0"]))),
)
pool_lists = st.lists(
    st.builds(
        PoolSpec,
        resource_name=st.sampled_from([f"example.com/p{i}" for i in range(5)]),
        selectors=st.lists(selectors, min_size=1, max_size=3).map(tuple),
        device_type=st.sampled_from(list(DeviceType)),
        allow_default_route=st.booleans(),
    ),
    max_size=4,
    unique_by=lambda p: p.resource_name,
)


@given(st.lists(devices, unique_by=lambda d: d.pci_address), pool_lists)
def test_every_device_is_in_exactly_one_pool_or_excluded(
    devs: list[Device], pools: list[PoolSpec]
) -> None:
    result = assign(node(*devs), pools, frozenset({"eth0"}))
    placed = [d.pci_address for ms in result.pools.values() for d in ms]
    assert len(placed) == len(set(placed))
    assert set(placed).isdisjoint(result.excluded)
    assert set(placed) | set(result.excluded) == {d.pci_address for d in devs}
    assert result.membership == {
        d.pci_address: name for name, ms in result.pools.items() for d in ms
    }
    assert list(result.pools) == [p.resource_name for p in pools]
    for name, ms in result.pools.items():
        spec = next(p for p in pools if p.resource_name == name)
        assert [d.pci_address for d in ms] == sorted((d.pci_address for d in ms), key=pci_sort_key)
        for d in ms:
            assert d.num_vfs == 0
            assert spec.allow_default_route or d.netdev != "eth0"
            assert spec.device_type is DeviceType.NET_DEVICE or d.is_vfio
