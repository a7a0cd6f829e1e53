"""`FakeSysfs`: PCI functions in a fake sysfs, added and changed as on a node.

The PCI side of the tree lives here: a function's directory and id files, its
`bus/pci` links, the driver bound to it, its IOMMU group, an SR-IOV PF's VFs,
hot-unplug. Netdev directories are `netdevs.Netdevs`' job, writing files and
links `tree.Tree`'s, VF addresses `sriov.Sriov`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Unpack

from deviceplugin.model import VFIO_DRIVER, VIRTIO_PCI_DRIVER
from deviceplugin.sim.fakesysfs.netdevs import Netdev, NetdevAttrs, Netdevs
from deviceplugin.sim.fakesysfs.sriov import Sriov
from deviceplugin.sim.fakesysfs.tree import Tree
from deviceplugin.sysfs import parse_pci_address

ETHERNET_CLASS = "0x020000"
BRIDGE_CLASS = "0x060400"
_TOP_DIRS = (
    "devices",
    "bus/pci/devices",
    "bus/pci/drivers",
    "bus/virtio/devices",
    "bus/virtio/drivers/virtio_net",
    "class/net",
    "kernel/iommu_groups",
)


@dataclass(frozen=True, slots=True)
class PciIds:
    """What a function's id files say."""

    vendor: str
    device: str
    class_code: str
    subsystem: tuple[str, str]

    def files(self) -> tuple[tuple[str, str], ...]:
        return (
            ("vendor", _hex(self.vendor)),
            ("device", _hex(self.device)),
            ("class", _hex(self.class_code)),
            ("subsystem_vendor", _hex(self.subsystem[0])),
            ("subsystem_device", _hex(self.subsystem[1])),
        )

    def uevent(self, pci: str, driver: str | None) -> str:
        """The function's `uevent`, as the kernel prints it (dev_uevent, then pci_uevent)."""
        ids = (self.vendor, self.device, self.class_code, *self.subsystem)
        vendor, device, class_code, sub_vendor, sub_device = (int(v, 16) for v in ids)
        lines = [f"DRIVER={driver}"] if driver is not None else []
        lines += [
            f"PCI_CLASS={class_code:04X}",
            f"PCI_ID={vendor:04X}:{device:04X}",
            f"PCI_SUBSYS_ID={sub_vendor:04X}:{sub_device:04X}",
            f"PCI_SLOT_NAME={pci}",
            f"MODALIAS=pci:v{vendor:08X}d{device:08X}sv{sub_vendor:08X}sd{sub_device:08X}"
            f"bc{class_code >> 16:02X}sc{(class_code >> 8) & 0xFF:02X}i{class_code & 0xFF:02x}",
        ]
        return "".join(f"{line}\n" for line in lines)


_ROOT_PORT = PciIds("1b36", "000c", BRIDGE_CLASS, ("1af4", "1100"))  # QEMU's pcie-root-port


@dataclass(slots=True)
class _Function:
    pci: str
    rel: str  # root-relative path of the function's directory
    ids: PciIds
    numa_node: int
    iommu_group: int | None
    virtio: bool  # netdev lives under virtio<N>/net while bound to virtio-pci
    driver: str | None = None
    virtio_dir: str | None = None  # "virtio<N>" while bound to virtio-pci
    netdevs: list[Netdev] = field(default_factory=list)  # visible in this namespace
    away: list[Netdev] = field(default_factory=list)  # moved into another namespace
    last_netdev: str | None = None  # name the driver gives the netdev on the next bind
    sriov: Sriov | None = None
    pf: str | None = None

    @property
    def net_rel(self) -> str:
        if self.virtio_dir is not None:
            return f"{self.rel}/{self.virtio_dir}/net"
        return f"{self.rel}/net"


def _hex(value: str) -> str:
    return value if value.startswith("0x") else f"0x{value}"


class FakeSysfs:
    """Builds and mutates a fake sysfs under `root`, like the kernel would.

    Every `add_*` returns the PCI address it created. Mutations mirror what
    happens on a node: VFs created and destroyed through `set_num_vfs`, driver
    rebinds, hot-unplug, netdevs moving into pod namespaces and back. The
    object keeps the tree's state in memory: it builds a tree, it does not
    load one, so keep using the instance that built it.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._tree = Tree(self.root)
        self._netdevs = Netdevs(self._tree)
        self._functions: dict[str, _Function] = {}
        self._next_virtio = 0
        self._next_group = 0
        for rel in _TOP_DIRS:
            self._tree.mkdir(rel, parents=True)

    # --- adding devices --------------------------------------------------------

    def add_bridge(self, pci: str, *, parent: str | None = None) -> str:
        """A PCIe root port (QEMU's pcie-root-port ids); put NICs behind it with `parent=`."""
        fn = self._add_function(pci, _ROOT_PORT, -1, None, parent)
        return self._plug(fn, "pcieport", None, {})

    def add_nic(
        self,
        pci: str,
        *,
        vendor: str,
        device: str,
        driver: str | None,
        netdev: str | None,
        class_code: str = ETHERNET_CLASS,
        numa_node: int = -1,
        iommu_group: int | None = None,
        subsystem: tuple[str, str] | None = None,
        parent: str | None = None,
        **netdev_attrs: Unpack[NetdevAttrs],
    ) -> str:
        """Any PCI function; its netdev in `<bdf>/net/` once a driver other than
        vfio-pci is bound (`netdev=None`: a driver that makes none).

        Also fits non-network functions (pass their `class_code`), which the
        scanner must ignore.
        """
        ids = PciIds(vendor, device, class_code, subsystem or (vendor, device))
        fn = self._add_function(pci, ids, numa_node, iommu_group, parent)
        return self._plug(fn, driver, netdev, netdev_attrs)

    def add_virtio_nic(
        self,
        pci: str,
        netdev: str | None,
        *,
        device_id: str = "1041",
        driver: str | None = VIRTIO_PCI_DRIVER,
        numa_node: int = -1,
        iommu_group: int | None = None,
        parent: str | None = None,
        **netdev_attrs: Unpack[NetdevAttrs],
    ) -> str:
        """A virtio-net function: `1041` modern (behind a root port), `1000` transitional."""
        ids = PciIds("1af4", device_id, ETHERNET_CLASS, ("1af4", "1100"))
        fn = self._add_function(pci, ids, numa_node, iommu_group, parent, virtio=True)
        return self._plug(fn, driver, netdev, netdev_attrs)

    def add_pf(
        self,
        pci: str,
        *,
        netdev: str | None,
        total_vfs: int,
        vendor: str = "8086",
        device: str = "10c9",
        driver: str | None = "igb",
        vf_device: str = "10ca",
        vf_driver: str | None = "igbvf",
        offset: int = 128,
        stride: int = 2,
        numa_node: int = -1,
        iommu_group: int | None = None,
        parent: str | None = None,
        **netdev_attrs: Unpack[NetdevAttrs],
    ) -> str:
        """An SR-IOV PF with no VFs enabled yet; defaults are QEMU's igb (82576).

        `vf_driver` is what VFs bind to when `set_num_vfs` creates them (None:
        left unbound, as with `sriov_drivers_autoprobe=0`).
        """
        sriov = Sriov(total_vfs, offset, stride, vf_device, vf_driver)
        ids = PciIds(vendor, device, ETHERNET_CLASS, (vendor, device))
        fn = self._add_function(pci, ids, numa_node, iommu_group, parent)
        fn.sriov = sriov
        self._tree.write_attrs(fn.rel, sriov.files().items())
        return self._plug(fn, driver, netdev, netdev_attrs)

    def set_num_vfs(
        self, pf: str, n: int, *, vf_netdev: Callable[[int], str | None] | None = None
    ) -> list[str]:
        """`echo n > sriov_numvfs`: VFs at the kernel's addresses; returns them in index order.

        Like the kernel, going from some VFs to a different non-zero number is
        refused (write 0 first). VF netdevs are named `vf_netdev(i)`, by
        default `<pf netdev>v<i>`.
        """
        fn = self._functions[pf]
        sriov = fn.sriov
        if sriov is None:
            raise ValueError(f"{pf} is not an SR-IOV PF")
        sriov.check_num_vfs(pf, n)
        if n == 0:
            for index in sorted(sriov.vfs, reverse=True):
                self._remove_vf(fn, index)
        elif not sriov.num:
            base = fn.last_netdev or "vf"
            name_of = vf_netdev or (lambda i: f"{base}v{i}")
            for i, vf in enumerate(sriov.vf_addresses(pf, n)):
                self._add_vf(fn, vf, i, name_of(i))
        sriov.num = n
        self._tree.write(f"{fn.rel}/sriov_numvfs", f"{n}\n")
        return self.vfs_of(pf)

    # --- changing devices ------------------------------------------------------

    def bind(self, pci: str, driver: str | None, *, netdev: str | None = None) -> None:
        """Unbind the current driver, then bind `driver` (None: leave unbound).

        A network driver brings up a netdev named `netdev`, by default the
        one the function had before; `vfio-pci` brings none and, as in the
        kernel, needs an IOMMU group.
        """
        fn = self._functions[pci]
        if driver == VFIO_DRIVER and fn.iommu_group is None:
            raise ValueError(f"{pci}: vfio-pci needs an IOMMU group")
        self._unbind(fn)
        if netdev is not None:
            fn.last_netdev = netdev
        self._bind(fn, driver, {})

    def move_netdev_out(self, pci: str) -> None:
        """As if the netdev moved into a pod's netns: `net/` stays, empty."""
        fn = self._functions[pci]
        for nd in fn.netdevs:
            self._netdevs.drop(nd, fn.net_rel)
        fn.away.extend(fn.netdevs)
        fn.netdevs.clear()

    def return_netdev(self, pci: str, name: str) -> None:
        """The netdev comes back (pod deleted, CNI DEL), possibly under another name."""
        fn = self._functions[pci]
        if not fn.away:
            raise ValueError(f"{pci} has no netdev in another namespace")
        nd = fn.away.pop(0)
        nd.name = name
        self._add_netdev(fn, nd)

    def set_link(self, netdev: str, *, operstate: str, carrier: bool | None) -> None:
        fn = self._functions[self._netdevs.owner(netdev)]
        nd = next(nd for nd in fn.netdevs if nd.name == netdev)
        nd.operstate, nd.carrier = operstate, carrier
        self._netdevs.write_link_state(nd, fn.net_rel)

    def remove(self, pci: str) -> None:
        """Hot-unplug: the function (VFs and anything behind it first) and every link to it."""
        fn = self._functions[pci]
        if fn.pf is not None:
            pf = self._functions[fn.pf]
            assert pf.sriov is not None
            self._remove_vf(pf, next(i for i, vf in pf.sriov.vfs.items() if vf == pci))
            return
        if fn.sriov is not None:
            for index in sorted(fn.sriov.vfs, reverse=True):
                self._remove_vf(fn, index)
        prefix = fn.rel + "/"
        for child in [c for c in self._functions.values() if c.rel.startswith(prefix)]:
            if child.pci in self._functions:
                self.remove(child.pci)
        self._remove_function(fn)

    def write_attr(self, pci: str, name: str, data: bytes | str) -> None:
        """Overwrite (or create) any file of a function, e.g. with garbage for a test."""
        self._tree.write(f"{self._functions[pci].rel}/{name}", data)

    # --- looking things up -----------------------------------------------------

    def pci_dir(self, pci: str) -> Path:
        """The function's real directory (what `bus/pci/devices/<pci>` resolves to)."""
        return self.root / self._functions[pci].rel

    def netdev_dir(self, name: str) -> Path:
        fn = self._functions[self._netdevs.owner(name)]
        return self.root / fn.net_rel / name

    def netdevs_of(self, pci: str) -> list[str]:
        return [nd.name for nd in self._functions[pci].netdevs]

    def vfs_of(self, pf: str) -> list[str]:
        sriov = self._functions[pf].sriov
        return [sriov.vfs[i] for i in sorted(sriov.vfs)] if sriov else []

    def new_iommu_group(self) -> int:
        """The next unused group number, for callers that place devices in groups."""
        group = self._next_group
        self._next_group += 1
        return group

    # --- internals -------------------------------------------------------------

    def _add_function(
        self,
        pci: str,
        ids: PciIds,
        numa_node: int,
        iommu_group: int | None,
        parent: str | None,
        *,
        virtio: bool = False,
        rel: str | None = None,
    ) -> _Function:
        """The function's directory, id files, bus link and IOMMU group; no driver yet."""
        pci = parse_pci_address(pci)
        if pci in self._functions:
            raise ValueError(f"{pci} already exists")
        if rel is None:
            if parent is not None:
                rel = f"{self._functions[parent].rel}/{pci}"
            else:
                domain, bus, _ = pci.split(":")
                self._tree.mkdir(f"devices/pci{domain}:{bus}", parents=True)
                rel = f"devices/pci{domain}:{bus}/{pci}"
        self._tree.mkdir(rel)
        fn = _Function(pci, rel, ids, numa_node, iommu_group, virtio)
        self._tree.write_attrs(rel, (*ids.files(), ("numa_node", numa_node)))
        self._write_uevent(fn)
        self._tree.link(f"bus/pci/devices/{pci}", rel)
        if iommu_group is not None:
            self._join_iommu_group(fn, iommu_group)
        self._functions[pci] = fn
        return fn

    def _plug(
        self, fn: _Function, driver: str | None, netdev: str | None, attrs: NetdevAttrs
    ) -> str:
        """Bind `driver`, whose netdev (if it makes one) is `netdev`; returns the address."""
        fn.last_netdev = netdev
        self._bind(fn, driver, attrs)
        return fn.pci

    def _join_iommu_group(self, fn: _Function, group: int) -> None:
        group_rel = f"kernel/iommu_groups/{group}"
        self._tree.mkdir(f"{group_rel}/devices", parents=True)
        self._tree.link(f"{group_rel}/devices/{fn.pci}", fn.rel)
        self._tree.link(f"{fn.rel}/iommu_group", group_rel)
        self._next_group = max(self._next_group, group + 1)

    def _add_vf(self, pf: _Function, vf: str, index: int, netdev: str | None) -> None:
        """VF `index` of `pf`, a sibling of the PF's directory, bound to the VF driver."""
        sriov = pf.sriov
        assert sriov is not None
        group = None if pf.iommu_group is None else self.new_iommu_group()
        ids = dataclasses.replace(pf.ids, device=sriov.vf_device)
        rel = f"{pf.rel.rpartition('/')[0]}/{vf}"
        fn = self._add_function(vf, ids, pf.numa_node, group, None, rel=rel)
        fn.pf = pf.pci
        self._tree.symlink(f"../{pf.pci}", f"{fn.rel}/physfn")
        self._tree.symlink(f"../{vf}", f"{pf.rel}/virtfn{index}")
        sriov.vfs[index] = vf
        self._plug(fn, sriov.vf_driver, netdev, {})

    def _remove_vf(self, pf: _Function, index: int) -> None:
        assert pf.sriov is not None
        vf = pf.sriov.vfs.pop(index)
        self._tree.unlink(f"{pf.rel}/virtfn{index}")
        self._remove_function(self._functions[vf])

    def _remove_function(self, fn: _Function) -> None:
        self._unbind(fn)
        if fn.iommu_group is not None:
            group_rel = f"kernel/iommu_groups/{fn.iommu_group}"
            self._tree.unlink(f"{group_rel}/devices/{fn.pci}")
            if self._tree.is_empty(f"{group_rel}/devices"):
                self._tree.rmtree(group_rel)
        self._tree.unlink(f"bus/pci/devices/{fn.pci}")
        self._tree.rmtree(fn.rel)
        del self._functions[fn.pci]

    def _write_uevent(self, fn: _Function) -> None:
        self._tree.write(f"{fn.rel}/uevent", fn.ids.uevent(fn.pci, fn.driver))

    def _bind(self, fn: _Function, driver: str | None, attrs: NetdevAttrs) -> None:
        fn.driver = driver
        if driver is None:
            return
        drv_rel = f"bus/pci/drivers/{driver}"
        self._tree.mkdir(drv_rel, parents=True)
        self._tree.link(f"{drv_rel}/{fn.pci}", fn.rel)
        self._tree.link(f"{fn.rel}/driver", drv_rel)
        self._write_uevent(fn)
        if driver == VFIO_DRIVER:
            return
        if fn.virtio:
            if driver != VIRTIO_PCI_DRIVER:
                return
            self._add_virtio_child(fn)
        if fn.last_netdev is None:
            return
        self._tree.mkdir(fn.net_rel)
        self._add_netdev(fn, self._netdevs.new(fn.last_netdev, attrs))

    def _add_virtio_child(self, fn: _Function) -> None:
        """virtio-pci's `virtio<N>` device, which virtio_net drives and the netdev hangs off."""
        fn.virtio_dir = f"virtio{self._next_virtio}"
        self._next_virtio += 1
        virtio_rel = f"{fn.rel}/{fn.virtio_dir}"
        self._tree.mkdir(virtio_rel)
        self._tree.write_attrs(virtio_rel, (("vendor", "0x1af4"), ("device", "0x0001")))
        self._tree.link(f"{virtio_rel}/driver", "bus/virtio/drivers/virtio_net")
        self._tree.link(f"bus/virtio/devices/{fn.virtio_dir}", virtio_rel)

    def _unbind(self, fn: _Function) -> None:
        for nd in fn.netdevs:
            self._netdevs.drop(nd, fn.net_rel)
        if fn.netdevs:
            fn.last_netdev = fn.netdevs[0].name
        elif fn.away:
            fn.last_netdev = fn.away[0].name
        fn.netdevs.clear()
        fn.away.clear()
        if fn.virtio_dir is not None:
            self._tree.unlink(f"bus/virtio/devices/{fn.virtio_dir}")
            self._tree.rmtree(f"{fn.rel}/{fn.virtio_dir}")
            fn.virtio_dir = None
        elif self._tree.isdir(f"{fn.rel}/net"):
            self._tree.rmtree(f"{fn.rel}/net")
        if fn.driver is not None:
            self._tree.unlink(f"bus/pci/drivers/{fn.driver}/{fn.pci}")
            self._tree.unlink(f"{fn.rel}/driver")
            fn.driver = None
            self._write_uevent(fn)

    def _add_netdev(self, fn: _Function, nd: Netdev) -> None:
        self._netdevs.add(nd, fn.net_rel, fn.virtio_dir or fn.pci, fn.pci)
        fn.netdevs.append(nd)
