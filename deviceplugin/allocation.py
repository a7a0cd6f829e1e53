"""Choosing devices for a container and describing them to it.

Pure functions: the gRPC servicer hands in plain data and sends back what
these return, so the rules (env keys, NUMA and PF packing) are tested
without sockets or sysfs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import islice

from deviceplugin.model import Device, NetdevState

VFIO_CONTAINER_NODE = "/dev/vfio/vfio"


def env_var_name(resource_name: str) -> str:
    """The `PCIDEVICE_*` key the SR-IOV network device plugin would set.

    Workloads and Multus read this exact key, so the mangling is kept as it
    is there: `/` and `.` become `_`, then upper case. A `-` survives (the
    kubelet accepts it), which is why `netdp config check` warns about it.
    """
    return "PCIDEVICE_" + resource_name.replace("/", "_").replace(".", "_").upper()


def info_env_name(resource_name: str) -> str:
    """The companion `_INFO` key, a JSON object keyed by PCI address."""
    return env_var_name(resource_name) + "_INFO"


@dataclass(frozen=True, slots=True)
class DeviceNode:
    """A character device the runtime must expose in the container."""

    container_path: str
    host_path: str
    permissions: str = "rw"


@dataclass(frozen=True, slots=True)
class ContainerAllocation:
    """What one container gets for its devices, independent of the wire format."""

    envs: Mapping[str, str]
    device_nodes: tuple[DeviceNode, ...]


class UnknownDevicesError(ValueError):
    """The kubelet asked for ids this pool does not have (stale or foreign)."""

    def __init__(self, resource_name: str, unknown: Sequence[str]) -> None:
        self.unknown = tuple(unknown)
        super().__init__(
            f"resource {resource_name}: unknown device id(s) {', '.join(self.unknown)}"
        )


def device_info(
    device: Device, additional_info: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, dict[str, str]]:
    """Per-device details, grouped by kind as the SR-IOV device plugin does.

    Workloads (DPDK apps in particular) find their vfio nodes here without
    having to parse sysfs inside the container. The pool's `additionalInfo`
    (`"*"` for every device, or per PCI address, the latter winning) lands
    under `extra`.
    """
    info: dict[str, dict[str, str]] = {"generic": {"deviceID": device.pci_address}}
    if device.netdev:
        info["generic"]["netdev"] = device.netdev
    if device.vfio_device:
        info["vfio"] = {"mount": VFIO_CONTAINER_NODE, "dev-mount": device.vfio_device}
    extra = {
        **(additional_info or {}).get("*", {}),
        **(additional_info or {}).get(device.pci_address, {}),
    }
    if extra:
        info["extra"] = extra
    return info


def _numa_key(device: Device) -> str:
    """Sorts as the NUMA node does; no known node is its own group, first."""
    return "" if device.numa_node is None else f"{device.numa_node:06d}"


@dataclass(frozen=True, slots=True)
class PoolIndex:
    """A pool's devices with what answering the kubelet needs, worked out once.

    The servicer builds it when the pool's devices change, not per call: the
    env keys, each device's `_INFO` entry as JSON text, and the devices
    grouped by NUMA node and PF for `preferred_allocation`. With 1024 VFs
    every GetPreferredAllocation names them all, so per-call work must stay
    near a set lookup per device, and below that for the common pool of one
    PF's VFs on one NUMA node (`sole_group`), where no group needs counting.
    """

    resource_name: str
    devices: Mapping[str, Device]
    additional_info: Mapping[str, Mapping[str, str]]
    env_key: str
    info_key: str
    # PCI address -> `"<address>": {...}`, a member of the `_INFO` object (keys sorted).
    info_members: Mapping[str, str]
    # NUMA key -> PF key -> ids in address order; keys as `_numa_key` and `_pf_key` give them.
    groups: Mapping[str, Mapping[str, tuple[str, ...]]]
    placement: Mapping[str, tuple[str, str]]  # id -> (NUMA key, PF key)
    # Every id in address order when they all share one NUMA node and one PF, else None.
    sole_group: tuple[str, ...] | None


def index_pool(
    resource_name: str,
    devices: Iterable[Device],
    additional_info: Mapping[str, Mapping[str, str]] | None = None,
) -> PoolIndex:
    """Everything per-call answers need from a pool's devices and settings."""
    by_id = {d.pci_address: d for d in sorted(devices, key=lambda d: d.pci_address)}
    placement = {i: (_numa_key(d), _pf_key(d)) for i, d in by_id.items()}
    groups: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for i, (numa, pf) in placement.items():
        groups[numa][pf].append(i)
    extra = additional_info or {}
    every_group = [ids for by_pf in groups.values() for ids in by_pf.values()]
    return PoolIndex(
        resource_name=resource_name,
        devices=by_id,
        additional_info=extra,
        env_key=env_var_name(resource_name),
        info_key=info_env_name(resource_name),
        info_members={i: _info_member(d, extra) for i, d in by_id.items()},
        groups={n: {pf: tuple(ids) for pf, ids in by_pf.items()} for n, by_pf in groups.items()},
        placement=placement,
        sole_group=tuple(every_group[0]) if len(every_group) == 1 else None,
    )


def _info_member(device: Device, additional_info: Mapping[str, Mapping[str, str]]) -> str:
    info = json.dumps(device_info(device, additional_info), sort_keys=True)
    return f"{json.dumps(device.pci_address)}: {info}"


def away_from_host(pool: PoolIndex, device_ids: Iterable[str]) -> list[str]:
    """The ids whose netdev was in another namespace at the last scan.

    Their `_INFO` entry has no netdev name. The kubelet may hand such a NIC
    to the next pod within milliseconds of the CNI DEL that brought it home,
    before the rescan that follows: these are the devices worth a fresh look.
    """
    return [
        i
        for i in device_ids
        if (d := pool.devices.get(i)) is not None and d.netdev_state is NetdevState.ELSEWHERE
    ]


def with_devices(pool: PoolIndex, fresh: Mapping[str, Device]) -> PoolIndex:
    """The index with these devices as read just now, for one call's answer."""
    if not fresh:
        return pool
    return replace(
        pool,
        devices={**pool.devices, **fresh},
        info_members={
            **pool.info_members,
            **{i: _info_member(d, pool.additional_info) for i, d in fresh.items()},
        },
    )


def info_env_value(pool: PoolIndex, device_ids: Iterable[str]) -> str:
    """The `_INFO` JSON for these devices: `json.dumps({id: device_info}, sort_keys=True)`,
    assembled from the members worked out once per pool."""
    members = (pool.info_members[i] for i in sorted(set(device_ids)))
    return "{" + ", ".join(members) + "}"


def container_allocation(pool: PoolIndex, device_ids: Sequence[str]) -> ContainerAllocation:
    """The env and device nodes for one container's share of a pool.

    Raises `UnknownDevicesError` naming every id not in the pool: the kubelet
    only asks for what we advertised, so anything else is a stale view that
    must fail loudly rather than hand a pod the wrong NIC.
    """
    unknown = [i for i in device_ids if i not in pool.devices]
    if unknown:
        raise UnknownDevicesError(pool.resource_name, unknown)
    envs = {
        pool.env_key: ",".join(device_ids),
        pool.info_key: info_env_value(pool, device_ids),
    }
    nodes: list[DeviceNode] = []
    vfio = [v for i in device_ids if (v := pool.devices[i].vfio_device)]
    if vfio:
        nodes.append(DeviceNode(VFIO_CONTAINER_NODE, VFIO_CONTAINER_NODE))
        nodes.extend(DeviceNode(path, path) for path in dict.fromkeys(vfio))
    return ContainerAllocation(envs=envs, device_nodes=tuple(nodes))


def _pf_key(device: Device) -> str:
    """Devices that share a PF share its bandwidth and its fate; a plain NIC is its own."""
    return device.pf_address or device.pci_address


def _fill_from_groups(
    groups: Mapping[str, list[str]], count: int, favoured: Iterable[str]
) -> list[str]:
    """Pick `count` ids touching as few groups as possible.

    Groups already holding must-include devices come first; then, if one
    group can take the whole remainder, the smallest such group (best fit:
    it leaves the big groups whole for bigger requests); otherwise the
    largest groups first. Ties go to the lowest key, so answers are stable.
    """
    favoured_keys = [k for k in dict.fromkeys(favoured) if k in groups]
    picked: list[str] = []
    for key in favoured_keys:
        take = groups[key][: count - len(picked)]
        picked.extend(take)
        if len(picked) == count:
            return picked
    rest = {k: v for k, v in groups.items() if k not in favoured_keys}
    need = count - len(picked)
    fitting = sorted((len(v), k) for k, v in rest.items() if len(v) >= need)
    if fitting:
        return picked + rest[fitting[0][1]][:need]
    for _, key in sorted((-len(v), k) for k, v in rest.items()):
        picked.extend(rest[key][: count - len(picked)])
        if len(picked) == count:
            break
    return picked


def preferred_allocation(
    pool: PoolIndex,
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
) -> list[str]:
    """The ids the plugin would like the kubelet to allocate.

    Keeps `must_include`, then prefers a single NUMA node (cross-node traffic
    costs latency), then packs onto the fewest PFs. Ids the pool does not
    know are ignored: the kubelet makes the final choice anyway.
    """
    chosen = [i for i in dict.fromkeys(must_include) if i in pool.devices][:size]
    need = size - len(chosen)
    if need <= 0:
        return chosen
    if pool.sole_group is not None and need == 1 and not chosen:
        # One device from one group: the lowest id the kubelet named, if the pool has it; one
        # pass over the ids without hashing any, the kubelet's usual question for a VF pool.
        lowest = min(available, default=None)
        if lowest is None or lowest in pool.devices:
            return [] if lowest is None else [lowest]
    free = set(available)
    free.difference_update(chosen)
    if pool.sole_group is not None:
        # One NUMA node and one PF: every rule below comes down to the lowest free addresses,
        # found by looking up the pool's ids in order until there are enough, instead of
        # matching each of the (up to 1024) ids the kubelet named against the pool.
        return chosen + list(islice(filter(free.__contains__, pool.sole_group), need))
    # The candidates, grouped by NUMA node and PF, each group in address order.
    by_numa: dict[str, dict[str, list[str]]] = {}
    for numa, by_pf in pool.groups.items():
        found = {pf: hits for pf, ids in by_pf.items() if (hits := [i for i in ids if i in free])}
        if found:
            by_numa[numa] = found
    if not by_numa:
        return chosen
    counts = {numa: sum(map(len, by_pf.values())) for numa, by_pf in by_numa.items()}
    favoured_numa = [pool.placement[i][0] for i in chosen]
    fitting = [k for k, n in counts.items() if n >= need]
    if any(k in fitting for k in favoured_numa):
        numa_order = [next(k for k in favoured_numa if k in fitting)]
    elif fitting:
        numa_order = [min(fitting, key=lambda k: (counts[k], k))]
    else:
        numa_order = list(dict.fromkeys(favoured_numa)) + sorted(
            (k for k in counts if k not in favoured_numa), key=lambda k: (-counts[k], k)
        )

    for key in numa_order:
        if need <= 0:
            break
        take = _fill_from_groups(
            by_numa.get(key, {}),
            min(need, counts.get(key, 0)),
            (pool.placement[i][1] for i in chosen),
        )
        chosen.extend(take)
        need -= len(take)
    return chosen
