"""The one change path's pure core: the node's device tree, and what changed in it.

Every kind of change (a NIC hot-plugged, VFs created, a link lost, a config
reloaded) ends the same way: `place` assigns a scan's devices to the pools,
`build_state` turns that placement and the current link states into a
`NodeState` (each pool's members and their verdicts), and `diff` compares it
with the previous one. The daemon then only acts on what `diff` lists: pools
to start or stop, pools whose members or health changed (the only ones that
send the kubelet a new snapshot), and one event per device for the log. A
link change skips the scan and re-judges the last placement. `netdp list`
and the demo take the same two steps once, so they show what the daemon
advertises. Keeping this pure means every rule here is tested on hand-built
records, without sockets, sysfs or timing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from deviceplugin import health
from deviceplugin.health import LinkState, Verdict
from deviceplugin.model import Device, Health, NodeDevices
from deviceplugin.pools import Assignment, PoolSpec, assign, pci_sort_key


@dataclass(frozen=True, slots=True)
class PoolState:
    """One pool as the kubelet should see it: members by PCI address, and their verdicts."""

    spec: PoolSpec
    devices: tuple[Device, ...]
    verdicts: Mapping[str, Verdict]

    @property
    def health(self) -> dict[str, Health]:
        return {address: v.health for address, v in self.verdicts.items()}


@dataclass(frozen=True, slots=True)
class Placement:
    """One scan's devices in the configured pools: what a link change re-judges."""

    node: NodeDevices
    default_route_ifaces: frozenset[str]
    specs: tuple[PoolSpec, ...]
    assignment: Assignment


def place(
    node: NodeDevices,
    default_route_ifaces: frozenset[str],
    specs: Sequence[PoolSpec],
    known_netdevs: Mapping[str, str] | None = None,
) -> Placement:
    """A scan assigned to the pools (`pools.assign`), with the inputs the verdicts need."""
    assignment = assign(node, specs, default_route_ifaces, known_netdevs=known_netdevs)
    return Placement(node, default_route_ifaces, tuple(specs), assignment)


@dataclass(frozen=True, slots=True)
class NodeState:
    """The device tree after one scan (or one link change): every pool and every exclusion."""

    node: NodeDevices
    pools: Mapping[str, PoolState]
    excluded: Mapping[str, str] = field(default_factory=dict)
    default_route_ifaces: frozenset[str] = frozenset()  # as the scan found them

    # Every member's verdict by PCI address, whatever its pool.
    verdicts: Mapping[str, Verdict] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        flat = {a: v for pool in self.pools.values() for a, v in pool.verdicts.items()}
        object.__setattr__(self, "verdicts", flat)

    def netdev_names(self) -> frozenset[str]:
        """Interfaces whose link state can change a verdict: every scanned device's."""
        return frozenset(nd.name for d in self.node.devices.values() for nd in d.netdevs)


def build_state(
    placement: Placement, links: Mapping[str, LinkState], previous: NodeState | None = None
) -> NodeState:
    """Judge every pool member's health; `previous` supplies the last verdicts.

    A member that lost its driver keeps its place, Unhealthy, until a driver
    is bound again: a rebind (to vfio-pci, say) passes through "unbound", and
    a pod may still hold the device. The pool assignment alone would drop it.
    """
    node, assignment, specs = placement.node, placement.assignment, placement.specs
    kept = _unbound_members(node, assignment, previous, {s.resource_name for s in specs})
    excluded = {a: why for a, why in assignment.excluded.items() if a not in kept}
    last = previous.verdicts if previous else {}
    pools = {}
    for spec in specs:
        members = assignment.pools.get(spec.resource_name, ())
        extra = [node.devices[a] for a, p in kept.items() if p == spec.resource_name]
        if extra:
            members = tuple(sorted((*members, *extra), key=lambda d: pci_sort_key(d.pci_address)))
        verdicts = {
            d.pci_address: health.assess(
                d,
                links,
                pf=node.get(d.pf_address) if d.pf_address else None,
                pf_link_health=spec.pf_link_health,
                previous=last.get(d.pci_address),
            )
            for d in members
        }
        pools[spec.resource_name] = PoolState(spec, members, verdicts)
    return NodeState(node, pools, excluded, placement.default_route_ifaces)


def _unbound_members(
    node: NodeDevices, assignment: Assignment, previous: NodeState | None, names: set[str]
) -> dict[str, str]:
    """PCI address → pool of previous members now excluded because no driver is bound."""
    if previous is None:
        return {}
    kept = {}
    for name, pool in previous.pools.items():
        if name not in names:
            continue
        for device in pool.devices:
            address = device.pci_address
            now = node.get(address)
            if now is not None and now.driver is None and address in assignment.excluded:
                kept[address] = name
    return kept


class ChangeKind(StrEnum):
    """What happened to one device, named as its log event."""

    ADDED = "device_added"  # joined a pool (new, or moved from another pool or exclusion)
    REMOVED = "device_removed"  # gone from the node
    EXCLUDED = "device_excluded"  # in no pool (new, left its pool, or a new reason)
    HEALTH = "device_health_changed"  # same pool, other health


@dataclass(frozen=True, slots=True)
class DeviceChange:
    """One device's change; `previous_pool` is set when it left a pool."""

    kind: ChangeKind
    device: str
    netdev: str | None
    pool: str | None = None
    previous_pool: str | None = None
    health: Health | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Changes:
    """What the daemon has to do to go from one `NodeState` to the next.

    `updated_pools` lists pools whose members or verdicts changed, those that
    lost devices first, so a device moving between pools is never offered by
    both at once. `respecified_pools` kept their name but changed settings.
    """

    added_pools: tuple[str, ...] = ()
    removed_pools: tuple[str, ...] = ()
    respecified_pools: tuple[str, ...] = ()
    updated_pools: tuple[str, ...] = ()
    devices: tuple[DeviceChange, ...] = ()

    @property
    def empty(self) -> bool:
        return not (
            self.added_pools
            or self.removed_pools
            or self.respecified_pools
            or self.updated_pools
            or self.devices
        )


def _placements(state: NodeState | None) -> dict[str, tuple[str | None, str]]:
    """PCI address → (pool, "") for members, (None, reason) for excluded devices."""
    if state is None:
        return {}
    out: dict[str, tuple[str | None, str]] = {a: (None, why) for a, why in state.excluded.items()}
    for name, pool in state.pools.items():
        out.update({d.pci_address: (name, "") for d in pool.devices})
    return out


def _netdev(address: str, new: NodeState, old: NodeState | None) -> str | None:
    dev = new.node.get(address) or (old.node.get(address) if old else None)
    return dev.netdev if dev else None


def _device_changes(old: NodeState | None, new: NodeState) -> list[DeviceChange]:
    before, after = _placements(old), _placements(new)
    old_verdicts = old.verdicts if old else {}
    changes = []
    for address in sorted(before.keys() | after.keys()):
        was, now = before.get(address), after.get(address)
        was_pool = was[0] if was else None
        verdict = None
        if now is None:
            kind, pool, reason = ChangeKind.REMOVED, was_pool, ""
        elif now[0] is None:
            if was == now:
                continue
            kind, pool, reason = ChangeKind.EXCLUDED, None, now[1]
        else:
            pool, verdict = now[0], new.verdicts[address]
            reason = verdict.reason
            if was_pool != pool:
                kind = ChangeKind.ADDED
            elif old_verdicts[address].health != verdict.health:
                kind = ChangeKind.HEALTH
            else:
                continue
        changes.append(
            DeviceChange(
                kind,
                address,
                _netdev(address, new, old),
                pool=pool,
                previous_pool=was_pool if kind in (ChangeKind.ADDED, ChangeKind.EXCLUDED) else None,
                health=verdict.health if verdict else None,
                reason=reason,
            )
        )
    return changes


def diff(old: NodeState | None, new: NodeState) -> Changes:
    """Pools to start, stop, re-specify and update, and each device's change."""
    old_pools = old.pools if old else {}
    added = tuple(p for p in new.pools if p not in old_pools)
    removed = tuple(p for p in old_pools if p not in new.pools)
    respecified = tuple(
        p for p in new.pools if p in old_pools and old_pools[p].spec != new.pools[p].spec
    )
    updated = []
    for name, pool in new.pools.items():
        previous = old_pools.get(name)
        if previous is None or previous.devices != pool.devices or previous.health != pool.health:
            lost = previous is not None and bool(
                {d.pci_address for d in previous.devices} - {d.pci_address for d in pool.devices}
            )
            updated.append((not lost, name))
    return Changes(
        added_pools=added,
        removed_pools=removed,
        respecified_pools=respecified,
        # stable sort: pools that lost devices first, config order otherwise
        updated_pools=tuple(name for _, name in sorted(updated, key=lambda t: t[0])),
        devices=tuple(_device_changes(old, new)),
    )
