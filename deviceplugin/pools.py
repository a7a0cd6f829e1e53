"""Which pool each device joins, and why the others join none.

Pure functions over the records in `model.py`: the daemon hands in a scan, the
configured pools and the default-route interfaces, and gets back the pools'
members plus a reason for every device left out, which `netdp list` prints.

The selector semantics follow the SR-IOV network device plugin (sriovdp), so
its config files select the same devices here:

- Within one selector object every given field must match (AND); a field left
  out (`None`) does not constrain. A pool's selector objects are alternatives
  (OR). A device joins the first pool, in config order, that selects it.
- `pfNames` / `rootDevices` name a VF's parent PF by netdev name
  (case-insensitive, as sriovdp compares) or PCI address. A device that is not
  a VF is its own parent, so a plain NIC or a PF without VFs matches by its own
  name or address, and `#` VF ranges never match it.
- A PF with VFs enabled is never advertised: its VFs are.

netdp additions: the default-route interface is never advertised unless a
pool that selects it opts in (`allow_default_route`; pools that do not opt in
pass it on to the next), and the `vfio-pci` device type takes only devices
bound to vfio-pci (`netDevice` takes any driver, as in sriovdp, so a
`drivers: ["vfio-pci"]` selector still picks DPDK-bound VFs).

A device's identity is its PCI address: a NIC whose netdev moved into a pod
(`NetdevState.ELSEWHERE`) keeps its pool. Only one selector needs the netdev
name itself, `pfNames` on a device that is not a VF; for that, the caller may
pass the names it saw earlier (`known_netdevs`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from deviceplugin.model import Device, NodeDevices


class DeviceType(StrEnum):
    """What a pool advertises.

    sriovdp's other types (`accelerator`, `auxNetDevice`) are not PCI network
    functions netdp can hand to a pod, so the config parser refuses them.
    """

    NET_DEVICE = "netDevice"  # any driver; the selectors decide (sriovdp's default)
    VFIO_PCI = "vfio-pci"  # only devices bound to vfio-pci (netdp addition)


@dataclass(frozen=True, slots=True)
class PfRef:
    """One `pfNames` or `rootDevices` entry: a parent PF and, optionally, which VFs.

    `parent` is a PF netdev name or a PF PCI address; `vfs` holds the VF
    indexes of `name#0-3,6` as Python ranges (`range(0, 4), range(6, 7)`), or
    `None` when every function of the parent is meant.
    """

    parent: str
    vfs: tuple[range, ...] | None = None

    def admits(self, vf_index: int | None) -> bool:
        """Whether a function with this VF index (None: not a VF) is in the entry."""
        if self.vfs is None:
            return True
        return vf_index is not None and any(vf_index in r for r in self.vfs)


@dataclass(frozen=True, slots=True)
class Selector:
    """One sriovdp selector object; `None` means the field does not constrain.

    Values are normalised by the config parser: ids are 4 lower-case hex digits,
    PCI addresses are full lower-case `dddd:bb:dd.f`, link types lower-case.
    """

    vendors: tuple[str, ...] | None = None
    devices: tuple[str, ...] | None = None
    drivers: tuple[str, ...] | None = None
    pci_addresses: tuple[str, ...] | None = None
    pf_names: tuple[PfRef, ...] | None = None
    root_devices: tuple[PfRef, ...] | None = None
    link_types: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """One validated `resourceList` entry.

    `resource_name` is the full extended resource name (`prefix/name`).
    `pf_link_health` (netdp addition) says whether a PF's link loss marks its
    VFs unhealthy; the health logic reads it. `exclude_topology` and
    `additional_info` carry sriovdp's `excludeTopology` (no NUMA node in
    ListAndWatch) and `additionalInfo` (extra keys in the `_INFO` env JSON,
    `"*"` for every device, else keyed by PCI address).
    """

    resource_name: str
    selectors: tuple[Selector, ...]
    device_type: DeviceType = DeviceType.NET_DEVICE
    allow_default_route: bool = False
    pf_link_health: bool = True
    exclude_topology: bool = False
    additional_info: Mapping[str, Mapping[str, str]] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class Assignment:
    """Every configured pool with its members, and why each other device is left out.

    `pools` has one entry per configured pool, in config order, even when
    empty (a pool with no devices still registers, advertising zero). Members
    are sorted by PCI address. `membership` maps the PCI address of every
    member to its pool, `excluded` every other device's PCI address to a reason.
    """

    pools: Mapping[str, tuple[Device, ...]]
    excluded: Mapping[str, str]
    membership: Mapping[str, str] = field(default_factory=dict)

    def pool_of(self, pci_address: str) -> str | None:
        return self.membership.get(pci_address)


def pci_sort_key(pci_address: str) -> tuple[int, str]:
    """Numeric order of PCI addresses (domains may be wider than four digits).

    Past the domain an address is fixed-width lower-case hex, so its text
    sorts numerically; anything that is no address sorts first.
    """
    domain, _, rest = pci_address.partition(":")
    try:
        return int(domain, 16), rest
    except ValueError:
        return -1, pci_address


def _parent_name(device: Device, last_netdev: str | None) -> str | None:
    if device.is_vf:
        return device.pf_netdev
    return device.netdev or last_netdev


def _parent_address(device: Device) -> str | None:
    return device.pf_address if device.is_vf else device.pci_address


def _matches_parent(refs: tuple[PfRef, ...], parent: str | None, device: Device) -> bool:
    if parent is None:
        return False
    parent = parent.casefold()
    return any(ref.parent.casefold() == parent and ref.admits(device.vf_index) for ref in refs)


def matches(selector: Selector, device: Device, last_netdev: str | None = None) -> bool:
    """Whether one selector object selects a device.

    `last_netdev` stands in for the device's own netdev name when none is
    visible (moved into a pod, or rebound), so `pfNames` can still match a
    device that is not a VF.
    """
    link_type = device.link_type
    return (
        (selector.vendors is None or device.vendor in selector.vendors)
        and (selector.devices is None or device.device in selector.devices)
        and (selector.drivers is None or device.driver in selector.drivers)
        and (selector.pci_addresses is None or device.pci_address in selector.pci_addresses)
        and (
            selector.pf_names is None
            or _matches_parent(selector.pf_names, _parent_name(device, last_netdev), device)
        )
        and (
            selector.root_devices is None
            or _matches_parent(selector.root_devices, _parent_address(device), device)
        )
        and (
            selector.link_types is None
            or (link_type is not None and link_type.lower() in selector.link_types)
        )
    )


def _place(
    device: Device,
    pools: Sequence[PoolSpec],
    default_route_ifaces: frozenset[str],
    last_netdev: str | None,
) -> tuple[str | None, str]:
    """The pool a device joins, or None and the most useful reason it joins none."""
    if device.num_vfs > 0:
        return None, f"PF with {device.num_vfs} VFs enabled (its VFs are advertised instead)"
    if device.driver is None:
        return None, "no driver bound"
    route_iface = next((nd.name for nd in device.netdevs if nd.name in default_route_ifaces), None)
    # The first pool that selected the device but turned it away, and why.
    route_pool = type_pool = None
    for pool in pools:
        if not any(matches(s, device, last_netdev) for s in pool.selectors):
            continue
        if pool.device_type is DeviceType.VFIO_PCI and not device.is_vfio:
            type_pool = type_pool or pool.resource_name
        elif route_iface is not None and not pool.allow_default_route:
            route_pool = route_pool or pool.resource_name
        else:
            return pool.resource_name, ""
    if route_iface is not None:
        if route_pool is None:
            return None, f"default-route interface {route_iface}"
        return None, (
            f"default-route interface {route_iface} (pool {route_pool} selects it but "
            "does not set allowDefaultRoute)"
        )
    if type_pool is not None:
        return None, (
            f"bound to {device.driver}, but pool {type_pool} (deviceType vfio-pci) takes "
            "only devices bound to vfio-pci"
        )
    if (
        not device.is_vf
        and device.netdev is None
        and last_netdev is None
        and any(s.pf_names is not None for p in pools for s in p.selectors)
    ):
        return None, (
            "not selected by any pool; its netdev name is not visible, so pfNames cannot "
            "match it (select it by pciAddresses or rootDevices)"
        )
    return None, "not selected by any pool"


def assign(
    node: NodeDevices,
    pools: Sequence[PoolSpec],
    default_route_ifaces: frozenset[str],
    *,
    known_netdevs: Mapping[str, str] | None = None,
) -> Assignment:
    """Place every scanned device in its pool or give the reason it is left out.

    `known_netdevs` maps PCI address to the netdev name last seen for devices
    whose netdev is no longer visible; see the module docstring.
    """
    known = known_netdevs or {}
    members: dict[str, list[Device]] = {pool.resource_name: [] for pool in pools}
    membership: dict[str, str] = {}
    excluded: dict[str, str] = {}
    for address in sorted(node.devices, key=pci_sort_key):
        device = node.devices[address]
        pool_name, reason = _place(device, pools, default_route_ifaces, known.get(address))
        if pool_name is None:
            excluded[address] = reason
        else:
            members[pool_name].append(device)
            membership[address] = pool_name
    return Assignment(
        pools={name: tuple(devices) for name, devices in members.items()},
        excluded=excluded,
        membership=membership,
    )


def remember_netdevs(known: Mapping[str, str], node: NodeDevices) -> dict[str, str]:
    """`known_netdevs` after a scan: each device's netdev name, or the last one seen.

    Devices that left the node are forgotten; a device whose netdev is not
    visible now (moved into a pod, driver rebound) keeps the name it had.
    """
    return {
        address: device.netdev or known[address]
        for address, device in node.devices.items()
        if device.netdev or address in known
    }
