"""Plain records for what netdp knows about a node's network devices.

Everything here is immutable data with no I/O, so the scanner, the pool
selection, the allocation logic and the CNI executor can pass it around and
tests can build it by hand. A device's identity is its PCI address: a netdev
name changes (pods rename it, it moves namespaces), the PCI function does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

VFIO_DRIVER = "vfio-pci"
VIRTIO_PCI_DRIVER = "virtio-pci"
VIRTIO_VENDOR = "1af4"
# Transitional (legacy-capable) and modern-only virtio-net PCI device ids.
VIRTIO_NET_DEVICE_IDS = frozenset({"1000", "1041"})


class NetdevState(StrEnum):
    """Where a device's kernel network interface is, seen from the host.

    `ELSEWHERE` matters: a NIC moved into a pod's namespace leaves an empty
    `net/` directory behind in sysfs. It is allocated, not gone, and must keep
    its place (and capacity) in its pool.
    """

    PRESENT = "present"  # one or more netdevs visible in this namespace
    ELSEWHERE = "elsewhere"  # driver has a net/ dir but it is empty: moved to another netns
    NONE = "none"  # no netdev at all (vfio-pci, unbound, or a driver without one)


class Health(StrEnum):
    """Values the kubelet understands in ListAndWatch."""

    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"


@dataclass(frozen=True, slots=True)
class NetDev:
    """A kernel network interface as sysfs shows it in the daemon's namespace.

    Only what a decision uses: the name (device-info, Multus, the CNI), the
    carrier (health where netlink does not know the link) and the link type
    (`linkTypes` selectors). MAC, MTU and the rest come from netlink where the
    CNI needs them; reading them here cost a scan a third of its time.
    """

    name: str
    carrier: bool | None = None  # None when unreadable (interface administratively down)
    link_type: str | None = None  # "ether", "infiniband", or "arphrd-<n>" for others


@dataclass(frozen=True, slots=True)
class Device:
    """One PCI network function, PF, VF or plain NIC.

    Ids are lower-case hex without `0x` (`"1af4"`), matching how the SR-IOV
    network device plugin's selectors spell them.
    """

    pci_address: str
    vendor: str
    device: str
    class_code: str = "020000"
    subsystem_vendor: str | None = None
    subsystem_device: str | None = None
    driver: str | None = None
    numa_node: int | None = None  # None where the kernel says -1 (no NUMA affinity)
    iommu_group: int | None = None  # read for vfio-pci functions only, its one use
    netdevs: tuple[NetDev, ...] = ()
    netdev_state: NetdevState = NetdevState.NONE
    # SR-IOV, physical function side: sriov_totalvfs, sriov_numvfs and virtfnN links.
    total_vfs: int = 0
    num_vfs: int = 0
    vf_addresses: tuple[str, ...] = ()
    # SR-IOV, virtual function side: physfn link.
    pf_address: str | None = None
    vf_index: int | None = None
    pf_netdev: str | None = None
    # Problems met while reading this device; it is kept, but degraded.
    warnings: tuple[str, ...] = ()

    @property
    def netdev(self) -> str | None:
        """The primary interface name, as sriovdp and Multus use it."""
        return self.netdevs[0].name if self.netdevs else None

    @property
    def is_pf(self) -> bool:
        return self.total_vfs > 0

    @property
    def is_vf(self) -> bool:
        return self.pf_address is not None

    @property
    def is_virtio(self) -> bool:
        return self.vendor == VIRTIO_VENDOR and self.device in VIRTIO_NET_DEVICE_IDS

    @property
    def is_vfio(self) -> bool:
        return self.driver == VFIO_DRIVER

    @property
    def vfio_device(self) -> str | None:
        """The `/dev/vfio/<group>` node a DPDK container needs, if bound to vfio-pci."""
        if self.is_vfio and self.iommu_group is not None:
            return f"/dev/vfio/{self.iommu_group}"
        return None

    @property
    def link_type(self) -> str | None:
        """Link type of the netdev; from the PCI class when the netdev is not visible.

        PCI class 0x0200 is an Ethernet controller, 0x0207 InfiniBand, so a NIC
        whose netdev sits in a pod still matches a `linkTypes` selector.
        """
        for nd in self.netdevs:
            if nd.link_type:
                return nd.link_type
        if self.class_code.startswith("0200"):
            return "ether"
        if self.class_code.startswith("0207"):
            return "infiniband"
        return None


@dataclass(frozen=True, slots=True)
class NodeDevices:
    """The result of one sysfs scan: every PCI network function of the node."""

    devices: Mapping[str, Device] = field(default_factory=dict)
    # Messages about entries that could not be read at all (not even a PCI address).
    warnings: tuple[str, ...] = ()

    def get(self, pci_address: str) -> Device | None:
        return self.devices.get(pci_address)

    def by_netdev(self, name: str) -> Device | None:
        for dev in self.devices.values():
            if any(nd.name == name for nd in dev.netdevs):
                return dev
        return None
