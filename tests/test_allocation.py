"""The pure allocation rules: env keys, INFO, device nodes, preferred allocation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deviceplugin.allocation import (
    PoolIndex,
    UnknownDevicesError,
    _fill_from_groups,
    container_allocation,
    device_info,
    env_var_name,
    index_pool,
    info_env_name,
)
from deviceplugin.allocation import preferred_allocation as preferred_from_index
from deviceplugin.model import Device, NetDev


def vf(pf: int, idx: int, numa: int | None = 0, driver: str = "iavf", group: int | None = None):
    return Device(
        pci_address=f"0000:{pf:02x}:{0x10 + idx // 8:02x}.{idx % 8}",
        vendor="8086",
        device="154c",
        driver=driver,
        numa_node=numa,
        iommu_group=group,
        pf_address=f"0000:{pf:02x}:00.0",
        vf_index=idx,
        netdevs=() if driver == "vfio-pci" else (NetDev(f"pf{pf}v{idx}"),),
    )


def pool_of(*devices: Device) -> dict[str, Device]:
    return {d.pci_address: d for d in devices}


def index(pool: dict[str, Device], extra=None, resource: str = "kernel.org/virt") -> PoolIndex:
    return index_pool(resource, pool.values(), extra)


def preferred_allocation(pool, available, must_include, size) -> list[str]:
    return preferred_from_index(index(pool), available, must_include, size)


def test_env_key_matches_sriov_device_plugin() -> None:
    assert env_var_name("kernel.org/virt") == "PCIDEVICE_KERNEL_ORG_VIRT"
    assert env_var_name("intel.com/intel_sriov_netdevice") == (
        "PCIDEVICE_INTEL_COM_INTEL_SRIOV_NETDEVICE"
    )
    assert info_env_name("kernel.org/virt") == "PCIDEVICE_KERNEL_ORG_VIRT_INFO"
    # kept as the SR-IOV plugin does; config check warns about it
    assert env_var_name("example.com/my-nic") == "PCIDEVICE_EXAMPLE_COM_MY-NIC"


def test_netdevice_allocation_env_and_info() -> None:
    a, b = vf(1, 0), vf(1, 1)
    result = container_allocation(index(pool_of(a, b)), [b.pci_address, a.pci_address])
    assert result.envs["PCIDEVICE_KERNEL_ORG_VIRT"] == f"{b.pci_address},{a.pci_address}"
    info = json.loads(result.envs["PCIDEVICE_KERNEL_ORG_VIRT_INFO"])
    assert info[a.pci_address]["generic"] == {"deviceID": a.pci_address, "netdev": "pf1v0"}
    assert "vfio" not in info[a.pci_address]
    assert result.device_nodes == ()


def test_vfio_allocation_gets_device_nodes_once_per_group() -> None:
    a = vf(1, 0, driver="vfio-pci", group=40)
    b = vf(1, 1, driver="vfio-pci", group=41)
    c = vf(1, 2, driver="vfio-pci", group=41)  # shares b's group
    result = container_allocation(
        index(pool_of(a, b, c), resource="intel.com/dpdk"),
        [a.pci_address, b.pci_address, c.pci_address],
    )
    paths = [n.host_path for n in result.device_nodes]
    assert paths == ["/dev/vfio/vfio", "/dev/vfio/40", "/dev/vfio/41"]
    info = json.loads(result.envs["PCIDEVICE_INTEL_COM_DPDK_INFO"])
    assert info[a.pci_address]["vfio"] == {"mount": "/dev/vfio/vfio", "dev-mount": "/dev/vfio/40"}


def test_unknown_ids_are_named() -> None:
    a = vf(1, 0)
    with pytest.raises(UnknownDevicesError) as err:
        container_allocation(index(pool_of(a)), [a.pci_address, "0000:99:00.0", "x"])
    assert err.value.unknown == ("0000:99:00.0", "x")
    assert "0000:99:00.0" in str(err.value) and "kernel.org/virt" in str(err.value)


def test_preferred_keeps_must_include_first() -> None:
    devs = [vf(1, i) for i in range(4)]
    pool = pool_of(*devs)
    ids = [d.pci_address for d in devs]
    got = preferred_allocation(pool, ids, [ids[3]], 2)
    assert got[0] == ids[3] and len(got) == 2


def test_preferred_prefers_single_numa_node() -> None:
    n0 = [vf(1, i, numa=0) for i in range(2)]
    n1 = [vf(2, i, numa=1) for i in range(3)]
    pool = pool_of(*n0, *n1)
    got = preferred_allocation(pool, sorted(pool), [], 3)
    assert {pool[i].numa_node for i in got} == {1}
    # with a must-include on node 0 and room there, stay on node 0
    got = preferred_allocation(pool, sorted(pool), [n0[0].pci_address], 2)
    assert {pool[i].numa_node for i in got} == {0}


def test_preferred_best_fit_numa_leaves_big_node_whole() -> None:
    small = [vf(1, i, numa=0) for i in range(2)]
    big = [vf(2, i, numa=1) for i in range(8)]
    pool = pool_of(*small, *big)
    got = preferred_allocation(pool, sorted(pool), [], 2)
    assert {pool[i].numa_node for i in got} == {0}


def test_preferred_packs_onto_fewest_pfs() -> None:
    pf1 = [vf(1, i) for i in range(2)]
    pf2 = [vf(2, i) for i in range(4)]
    pf3 = [vf(3, i) for i in range(1)]
    pool = pool_of(*pf1, *pf2, *pf3)
    got = preferred_allocation(pool, sorted(pool), [], 4)
    assert {pool[i].pf_address for i in got} == {pf2[0].pf_address}
    got = preferred_allocation(pool, sorted(pool), [], 2)
    assert {pool[i].pf_address for i in got} == {pf1[0].pf_address}  # best fit
    got = preferred_allocation(pool, sorted(pool), [], 6)
    assert {pool[i].pf_address for i in got} == {pf1[0].pf_address, pf2[0].pf_address}


def test_preferred_spills_across_numa_when_needed() -> None:
    n0 = [vf(1, i, numa=0) for i in range(2)]
    n1 = [vf(2, i, numa=1) for i in range(2)]
    pool = pool_of(*n0, *n1)
    got = preferred_allocation(pool, sorted(pool), [], 3)
    assert len(got) == 3 and len(set(got)) == 3


def test_preferred_ignores_unknown_ids() -> None:
    a = vf(1, 0)
    assert preferred_allocation(pool_of(a), [a.pci_address, "bogus"], ["bogus"], 2) == [
        a.pci_address
    ]


@given(
    numa=st.lists(st.sampled_from([None, 0, 1, 2]), min_size=1, max_size=24),
    pf_of=st.data(),
    size=st.integers(min_value=0, max_value=30),
    must=st.data(),
)
def test_preferred_invariants(numa, pf_of, size, must) -> None:
    devs = [vf(pf_of.draw(st.integers(1, 4)), i, numa=n) for i, n in enumerate(numa)]
    pool = pool_of(*devs)
    available = sorted(pool)
    must_include = must.draw(st.lists(st.sampled_from(available), unique=True, max_size=size))
    got = preferred_allocation(pool, available, must_include, size)
    assert len(got) == len(set(got)) == min(size, len(available))
    assert got[: len(must_include)] == must_include
    assert set(got) <= set(available)
    assert got == preferred_allocation(pool, list(reversed(available)), must_include, size)


def test_additional_info_lands_under_extra_per_device_winning() -> None:
    a, b = vf(1, 0), vf(1, 1)
    extra = {"*": {"site": "lab", "tier": "gold"}, a.pci_address: {"tier": "silver"}}
    result = container_allocation(index(pool_of(a, b), extra), [a.pci_address, b.pci_address])
    info = json.loads(result.envs["PCIDEVICE_KERNEL_ORG_VIRT_INFO"])
    assert info[a.pci_address]["extra"] == {"site": "lab", "tier": "silver"}
    assert info[b.pci_address]["extra"] == {"site": "lab", "tier": "gold"}


def reference_preferred(
    pool: dict[str, Device], available: list[str], must_include: list[str], size: int
) -> list[str]:
    """The preference rule in its plainest form (no index), which the indexed one must match."""

    def numa(i: str) -> str:
        node = pool[i].numa_node
        return "" if node is None else f"{node:06d}"

    def pf(i: str) -> str:
        return pool[i].pf_address or i

    chosen = [i for i in dict.fromkeys(must_include) if i in pool][:size]
    candidates = sorted(i for i in set(available) - set(chosen) if i in pool)
    need = size - len(chosen)
    if need <= 0 or not candidates:
        return chosen
    by_numa: dict[str, list[str]] = {}
    for i in candidates:
        by_numa.setdefault(numa(i), []).append(i)
    favoured = [numa(i) for i in chosen]
    fitting = [k for k, v in by_numa.items() if len(v) >= need]
    if any(k in fitting for k in favoured):
        order = [next(k for k in favoured if k in fitting)]
    elif fitting:
        order = [min(fitting, key=lambda k: (len(by_numa[k]), k))]
    else:
        order = list(dict.fromkeys(favoured)) + sorted(
            (k for k in by_numa if k not in favoured), key=lambda k: (-len(by_numa[k]), k)
        )
    for key in order:
        if need <= 0:
            break
        groups: dict[str, list[str]] = {}
        for i in by_numa.get(key, []):
            groups.setdefault(pf(i), []).append(i)
        # Within a NUMA node both pick with the same rule; what differs is how they group.
        take = _fill_from_groups(
            groups, min(need, len(by_numa.get(key, []))), [pf(i) for i in chosen]
        )
        chosen.extend(take)
        need -= len(take)
    return chosen


@given(
    placement=st.lists(
        st.tuples(st.sampled_from([None, 0, 1, 2]), st.integers(1, 5)), min_size=0, max_size=40
    ),
    data=st.data(),
    size=st.integers(min_value=0, max_value=45),
)
def test_indexed_preference_matches_the_plain_rule(placement, data, size) -> None:
    devs = [vf(pf, i, numa=n) for i, (n, pf) in enumerate(placement)]
    pool = pool_of(*devs)
    ids = sorted(pool)
    available = data.draw(st.lists(st.sampled_from([*ids, "bogus"]), max_size=50)) if ids else []
    must = data.draw(st.lists(st.sampled_from([*ids, "bogus"]), max_size=6)) if ids else []
    got = preferred_from_index(index(pool), available, must, size)
    assert got == reference_preferred(pool, available, must, size)


@given(
    count=st.integers(0, 40),
    numa=st.sampled_from([None, 0, 1]),
    data=st.data(),
    size=st.integers(min_value=0, max_value=45),
)
def test_a_pool_of_one_group_prefers_as_the_plain_rule(count, numa, data, size) -> None:
    """One PF on one NUMA node (the common VF pool) takes its own path: the same answers."""
    pool = pool_of(*(vf(3, i, numa=numa) for i in range(count)))
    assert (index(pool).sole_group is not None) == bool(pool)
    ids = sorted(pool)
    # Unknown ids sort above and below the pool's: "0000:00:00.0" comes first.
    named = st.sampled_from([*ids, "bogus", "0000:00:00.0"])
    available = data.draw(st.lists(named, max_size=50)) if ids else []
    must = data.draw(st.lists(named, max_size=6)) if ids else []
    got = preferred_from_index(index(pool), available, must, size)
    assert got == reference_preferred(pool, available, must, size)


def test_one_device_from_one_group_is_the_lowest_known_free_id() -> None:
    pool = pool_of(*(vf(3, i) for i in range(4)))
    ids = sorted(pool)
    assert preferred_allocation(pool, [ids[2], ids[1], ids[3]], [], 1) == [ids[1]]
    # The lowest id named is not the pool's (a device gone since): the lowest that is.
    assert preferred_allocation(pool, [ids[3], "0000:00:00.0", ids[2]], [], 1) == [ids[2]]
    assert preferred_allocation(pool, ["0000:00:00.0"], [], 1) == []
    assert preferred_allocation(pool, [], [], 1) == []


def test_only_a_pool_of_one_numa_node_and_one_pf_has_a_sole_group() -> None:
    one = [vf(1, i, numa=0) for i in range(3)]
    assert index(pool_of(*one)).sole_group == tuple(sorted(d.pci_address for d in one))
    assert index(pool_of(*one, vf(2, 0, numa=0))).sole_group is None  # a second PF
    assert index(pool_of(*one, vf(1, 5, numa=1))).sole_group is None  # a second NUMA node
    assert index({}).sole_group is None


@given(
    picks=st.lists(st.integers(0, 7), min_size=0, max_size=10),
    extra=st.dictionaries(
        st.sampled_from(["*", "0000:01:10.0", "0000:01:10.3"]),
        st.dictionaries(st.text(max_size=4), st.text(max_size=6), max_size=3),
        max_size=3,
    ),
)
def test_info_env_is_the_json_of_every_named_device(picks, extra) -> None:
    devs = [vf(1, i, driver="vfio-pci" if i % 3 == 0 else "iavf", group=30 + i) for i in range(8)]
    pool = pool_of(*devs)
    ids = [devs[p].pci_address for p in picks]
    result = container_allocation(index(pool, extra), ids)
    expected = {i: device_info(pool[i], extra) for i in ids}
    assert result.envs["PCIDEVICE_KERNEL_ORG_VIRT_INFO"] == json.dumps(expected, sort_keys=True)
    assert result.envs["PCIDEVICE_KERNEL_ORG_VIRT"] == ",".join(ids)
