"""Choosing devices for a container and describing them to it.

Pure functions: the gRPC servicer hands in plain data and sends back what
these return, so the rules (env keys, NUMA and PF packing) are tested
without sockets or sysfs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from deviceplugin.model import Device

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


def container_allocation(
    resource_name: str,
    pool: Mapping[str, Device],
    device_ids: Sequence[str],
    additional_info: Mapping[str, Mapping[str, str]] | None = None,
) -> ContainerAllocation:
    """The env and device nodes for one container's share of a pool.

    Raises `UnknownDevicesError` naming every id not in the pool: the kubelet
    only asks for what we advertised, so anything else is a stale view that
    must fail loudly rather than hand a pod the wrong NIC.
    """
    unknown = [i for i in device_ids if i not in pool]
    if unknown:
        raise UnknownDevicesError(resource_name, unknown)
    devices = [pool[i] for i in device_ids]
    envs = {
        env_var_name(resource_name): ",".join(d.pci_address for d in devices),
        info_env_name(resource_name): json.dumps(
            {d.pci_address: device_info(d, additional_info) for d in devices}, sort_keys=True
        ),
    }
    nodes: list[DeviceNode] = []
    vfio = [d.vfio_device for d in devices if d.vfio_device]
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
    pool: Mapping[str, Device],
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
) -> list[str]:
    """The ids the plugin would like the kubelet to allocate.

    Keeps `must_include`, then prefers a single NUMA node (cross-node traffic
    costs latency), then packs onto the fewest PFs. Ids the pool does not
    know are ignored: the kubelet makes the final choice anyway.
    """
    chosen = [i for i in dict.fromkeys(must_include) if i in pool][:size]
    candidates = sorted(i for i in set(available) - set(chosen) if i in pool)
    need = size - len(chosen)
    if need <= 0 or not candidates:
        return chosen

    def numa(i: str) -> str:
        node = pool[i].numa_node
        return "" if node is None else f"{node:06d}"

    by_numa: dict[str, list[str]] = defaultdict(list)
    for i in candidates:
        by_numa[numa(i)].append(i)
    favoured_numa = [numa(i) for i in chosen]
    fitting = [k for k, v in by_numa.items() if len(v) >= need]
    if any(k in fitting for k in favoured_numa):
        numa_order = [next(k for k in favoured_numa if k in fitting)]
    elif fitting:
        numa_order = [min(fitting, key=lambda k: (len(by_numa[k]), k))]
    else:
        numa_order = list(dict.fromkeys(favoured_numa)) + sorted(
            (k for k in by_numa if k not in favoured_numa), key=lambda k: (-len(by_numa[k]), k)
        )

    for key in numa_order:
        if need <= 0:
            break
        groups: dict[str, list[str]] = defaultdict(list)
        for i in by_numa.get(key, []):
            groups[_pf_key(pool[i])].append(i)
        take = _fill_from_groups(
            groups, min(need, len(by_numa.get(key, []))), (_pf_key(pool[i]) for i in chosen)
        )
        chosen.extend(take)
        need -= len(take)
    return chosen
