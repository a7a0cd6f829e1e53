"""A fake sysfs tree in a directory, in the layout the kernel uses.

The daemon reads sysfs through `--sysfs-root`, so unit tests, integration
tests, benchmarks and `netdp demo` all point it at one of these. It is only as
useful as it is faithful, so it copies what a real kernel (6.1, seen in the
QEMU lab) shows, down to the relative symlink targets:

- `devices/pci0000:00/[<bridge>/]<bdf>/`: the function, with `vendor`,
  `device`, `class`, `subsystem_vendor`, `subsystem_device`, `numa_node`;
- `bus/pci/devices/<bdf>` -> the function; `bus/pci/drivers/<drv>/<bdf>` and
  the function's `driver` -> `bus/pci/drivers/<drv>`;
- `kernel/iommu_groups/<n>/devices/<bdf>` and the function's `iommu_group`;
- netdevs as directories with `address`, `mtu`, `operstate`, `carrier`,
  `type`, `ifindex` and a `device` link: under `<bdf>/net/<if>` for most
  drivers, under `<bdf>/virtio<N>/net/<if>` for virtio (the `virtio<N>` child is
  the device `class/net/<if>/device` points at); `class/net/<if>` links to it;
- SR-IOV: `sriov_totalvfs`, `sriov_numvfs`, `sriov_offset`, `sriov_stride`,
  `sriov_vf_device` on the PF, VFs as siblings of the PF at the routing ids
  offset/stride give, `virtfnN` on the PF and `physfn` on each VF.

Differences from the kernel, on purpose: a carrier the kernel would refuse to
report (EINVAL, link administratively down) is an absent `carrier` file here,
since a regular file cannot fail a read that way; `remove()` of a single VF
also drops the PF's `virtfnN` link (`sriov_numvfs` is left as it was).
Netdev names are free-form strings, so a test can name fake netdevs after
real veth ends it created.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, Unpack

from deviceplugin.model import VFIO_DRIVER, VIRTIO_PCI_DRIVER
from deviceplugin.sysfs import parse_pci_address

SHM_DIR = "/dev/shm"
ETHERNET_CLASS = "0x020000"
BRIDGE_CLASS = "0x060400"
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


class NetdevAttrs(TypedDict, total=False):
    """Optional netdev attributes; unset ones get lab-like defaults."""

    mac: str
    mtu: int
    operstate: str
    carrier: bool | None  # None: unreadable, as for an administratively down link
    arphrd: int  # the `type` file: 1 Ethernet, 32 InfiniBand
    ifindex: int


@dataclass(slots=True)
class _Netdev:
    name: str
    mac: str
    mtu: int
    operstate: str
    carrier: bool | None
    arphrd: int
    ifindex: int


@dataclass(slots=True)
class _Sriov:
    total: int
    offset: int
    stride: int
    vf_device: str
    vf_driver: str | None
    num: int = 0  # what sriov_numvfs says
    vfs: dict[int, str] = field(default_factory=dict)  # virtfn index -> VF address


@dataclass(slots=True)
class _Function:
    pci: str
    rel: str  # root-relative path of the function's directory
    vendor: str
    class_code: str
    subsystem: tuple[str, str]
    numa_node: int
    iommu_group: int | None
    virtio: bool  # netdev lives under virtio<N>/net while bound to virtio-pci
    driver: str | None = None
    virtio_dir: str | None = None  # "virtio<N>" while bound to virtio-pci
    netdevs: list[_Netdev] = field(default_factory=list)  # visible in this namespace
    away: list[_Netdev] = field(default_factory=list)  # moved into another namespace
    last_netdev: str | None = None  # name the driver gives the netdev on the next bind
    sriov: _Sriov | None = None
    pf: str | None = None

    @property
    def net_rel(self) -> str:
        if self.virtio_dir is not None:
            return f"{self.rel}/{self.virtio_dir}/net"
        return f"{self.rel}/net"


def _up(rel_dir: str) -> str:
    """The `../` prefix that climbs from a root-relative directory to the root."""
    return "../" * (rel_dir.count("/") + 1)


def _hex(value: str) -> str:
    return value if value.startswith("0x") else f"0x{value}"


def _routing_id(pci: str) -> tuple[str, int]:
    domain, bus, devfn = pci.split(":")
    dev, fn = devfn.split(".")
    return domain, (int(bus, 16) << 8) | (int(dev, 16) << 3) | int(fn)


def _pci_of(domain: str, rid: int) -> str:
    if rid > 0xFFFF:
        raise ValueError("VF routing id beyond bus ff")
    return f"{domain}:{rid >> 8:02x}:{(rid >> 3) & 0x1F:02x}.{rid & 7}"


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
        self._root = os.fspath(self.root)
        self._functions: dict[str, _Function] = {}
        self._netdev_owner: dict[str, str] = {}
        self._next_ifindex = 2  # 1 is lo
        self._next_mac = 1
        self._next_virtio = 0
        self._next_group = 0
        for rel in (
            "devices",
            "bus/pci/devices",
            "bus/pci/drivers",
            "bus/virtio/devices",
            "bus/virtio/drivers/virtio_net",
            "class/net",
            "kernel/iommu_groups",
        ):
            os.makedirs(self._abs(rel), exist_ok=True)

    # --- adding devices --------------------------------------------------------

    def add_bridge(self, pci: str, *, parent: str | None = None) -> str:
        """A PCIe root port (QEMU's pcie-root-port ids); put NICs behind it with `parent=`."""
        return self._add_function(
            pci,
            vendor="1b36",
            device="000c",
            class_code=BRIDGE_CLASS,
            subsystem=("1af4", "1100"),
            numa_node=-1,
            iommu_group=None,
            parent=parent,
            driver="pcieport",
        ).pci

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
        fn = self._add_function(
            pci,
            vendor=vendor,
            device=device,
            class_code=class_code,
            subsystem=subsystem or (vendor, device),
            numa_node=numa_node,
            iommu_group=iommu_group,
            parent=parent,
            driver=None,
        )
        fn.last_netdev = netdev
        self._bind(fn, driver, netdev_attrs)
        return fn.pci

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
        fn = self._add_function(
            pci,
            vendor="1af4",
            device=device_id,
            class_code=ETHERNET_CLASS,
            subsystem=("1af4", "1100"),
            numa_node=numa_node,
            iommu_group=iommu_group,
            parent=parent,
            driver=None,
            virtio=True,
        )
        fn.last_netdev = netdev
        self._bind(fn, driver, netdev_attrs)
        return fn.pci

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
        if total_vfs < 1:
            raise ValueError("a PF needs total_vfs >= 1")
        if offset < 1 or stride < 1:
            raise ValueError("offset and stride must be >= 1")
        fn = self._add_function(
            pci,
            vendor=vendor,
            device=device,
            class_code=ETHERNET_CLASS,
            subsystem=(vendor, device),
            numa_node=numa_node,
            iommu_group=iommu_group,
            parent=parent,
            driver=None,
        )
        fn.sriov = _Sriov(total_vfs, offset, stride, vf_device, vf_driver)
        for name, value in (
            ("sriov_totalvfs", total_vfs),
            ("sriov_numvfs", 0),
            ("sriov_offset", offset),
            ("sriov_stride", stride),
            ("sriov_vf_device", vf_device),
        ):
            self._write(f"{fn.rel}/{name}", f"{value}\n")
        fn.last_netdev = netdev
        self._bind(fn, driver, netdev_attrs)
        return fn.pci

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
        if not 0 <= n <= sriov.total:
            raise ValueError(f"{pf}: numvfs {n} outside 0..{sriov.total}")
        if n and sriov.num and n != sriov.num:
            raise ValueError(f"{pf}: device busy, set numvfs to 0 first")
        if n == 0:
            for index in sorted(sriov.vfs, reverse=True):
                self._remove_vf(fn, index)
        elif not sriov.num:
            base = fn.last_netdev or "vf"
            name_of = vf_netdev or (lambda i: f"{base}v{i}")
            domain, rid = _routing_id(pf)
            parent_rel = fn.rel.rpartition("/")[0]
            for i in range(n):
                vf = _pci_of(domain, rid + sriov.offset + i * sriov.stride)
                self._add_vf(fn, parent_rel, vf, i, name_of(i))
        sriov.num = n
        self._write(f"{fn.rel}/sriov_numvfs", f"{n}\n")
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
            self._drop_netdev(fn, nd)
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
        fn = self._functions[self._netdev_owner[netdev]]
        nd = next(nd for nd in fn.netdevs if nd.name == netdev)
        nd.operstate, nd.carrier = operstate, carrier
        self._write_link_state(f"{fn.net_rel}/{netdev}", nd)

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
        raw = data.encode() if isinstance(data, str) else data
        path = self._abs(f"{self._functions[pci].rel}/{name}")
        with open(path, "wb") as f:
            f.write(raw)

    # --- looking things up -----------------------------------------------------

    def pci_dir(self, pci: str) -> Path:
        """The function's real directory (what `bus/pci/devices/<pci>` resolves to)."""
        return self.root / self._functions[pci].rel

    def netdev_dir(self, name: str) -> Path:
        fn = self._functions[self._netdev_owner[name]]
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

    def _abs(self, rel: str) -> str:
        return f"{self._root}/{rel}"

    def _write(self, rel: str, text: str) -> None:
        fd = os.open(self._abs(rel), _FILE_FLAGS, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def _link(self, rel_link: str, rel_target: str) -> None:
        """A relative symlink, as the kernel writes them (never absolute)."""
        os.symlink(_up(rel_link.rpartition("/")[0]) + rel_target, self._abs(rel_link))

    def _unlink(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._abs(rel))

    def _add_function(
        self,
        pci: str,
        *,
        vendor: str,
        device: str,
        class_code: str,
        subsystem: tuple[str, str],
        numa_node: int,
        iommu_group: int | None,
        parent: str | None,
        driver: str | None,
        virtio: bool = False,
        rel: str | None = None,
    ) -> _Function:
        pci = parse_pci_address(pci)
        if pci in self._functions:
            raise ValueError(f"{pci} already exists")
        if rel is None:
            if parent is not None:
                rel = f"{self._functions[parent].rel}/{pci}"
            else:
                domain, bus, _ = pci.split(":")
                os.makedirs(self._abs(f"devices/pci{domain}:{bus}"), exist_ok=True)
                rel = f"devices/pci{domain}:{bus}/{pci}"
        os.mkdir(self._abs(rel))
        fn = _Function(
            pci=pci,
            rel=rel,
            vendor=vendor,
            class_code=class_code,
            subsystem=subsystem,
            numa_node=numa_node,
            iommu_group=iommu_group,
            virtio=virtio,
        )
        for name, value in (
            ("vendor", _hex(vendor)),
            ("device", _hex(device)),
            ("class", _hex(class_code)),
            ("subsystem_vendor", _hex(subsystem[0])),
            ("subsystem_device", _hex(subsystem[1])),
            ("numa_node", str(numa_node)),
        ):
            self._write(f"{rel}/{name}", f"{value}\n")
        self._link(f"bus/pci/devices/{pci}", rel)
        if iommu_group is not None:
            self._join_iommu_group(fn, iommu_group)
        self._functions[pci] = fn
        self._bind_driver_link(fn, driver)
        return fn

    def _join_iommu_group(self, fn: _Function, group: int) -> None:
        group_rel = f"kernel/iommu_groups/{group}"
        os.makedirs(self._abs(f"{group_rel}/devices"), exist_ok=True)
        self._link(f"{group_rel}/devices/{fn.pci}", fn.rel)
        self._link(f"{fn.rel}/iommu_group", group_rel)
        self._next_group = max(self._next_group, group + 1)

    def _add_vf(
        self, pf: _Function, parent_rel: str, vf: str, index: int, netdev: str | None
    ) -> None:
        sriov = pf.sriov
        assert sriov is not None
        group = None if pf.iommu_group is None else self.new_iommu_group()
        fn = self._add_function(
            vf,
            vendor=pf.vendor,
            device=sriov.vf_device,
            class_code=pf.class_code,
            subsystem=pf.subsystem,
            numa_node=pf.numa_node,
            iommu_group=group,
            parent=None,
            driver=None,
            rel=f"{parent_rel}/{vf}",
        )
        fn.pf = pf.pci
        fn.last_netdev = netdev
        os.symlink(f"../{pf.pci}", self._abs(f"{fn.rel}/physfn"))
        os.symlink(f"../{vf}", self._abs(f"{pf.rel}/virtfn{index}"))
        sriov.vfs[index] = vf
        self._bind(fn, sriov.vf_driver, {})

    def _remove_vf(self, pf: _Function, index: int) -> None:
        assert pf.sriov is not None
        vf = pf.sriov.vfs.pop(index)
        self._unlink(f"{pf.rel}/virtfn{index}")
        self._remove_function(self._functions[vf])

    def _remove_function(self, fn: _Function) -> None:
        self._unbind(fn)
        if fn.iommu_group is not None:
            group_rel = f"kernel/iommu_groups/{fn.iommu_group}"
            self._unlink(f"{group_rel}/devices/{fn.pci}")
            if not os.listdir(self._abs(f"{group_rel}/devices")):
                shutil.rmtree(self._abs(group_rel))
        self._unlink(f"bus/pci/devices/{fn.pci}")
        shutil.rmtree(self._abs(fn.rel))
        del self._functions[fn.pci]

    def _bind_driver_link(self, fn: _Function, driver: str | None) -> None:
        fn.driver = driver
        if driver is None:
            return
        drv_rel = f"bus/pci/drivers/{driver}"
        os.makedirs(self._abs(drv_rel), exist_ok=True)
        self._link(f"{drv_rel}/{fn.pci}", fn.rel)
        self._link(f"{fn.rel}/driver", drv_rel)

    def _bind(self, fn: _Function, driver: str | None, attrs: NetdevAttrs) -> None:
        self._bind_driver_link(fn, driver)
        if driver is None or driver == VFIO_DRIVER:
            return
        if fn.virtio:
            if driver != VIRTIO_PCI_DRIVER:
                return
            fn.virtio_dir = f"virtio{self._next_virtio}"
            self._next_virtio += 1
            virtio_rel = f"{fn.rel}/{fn.virtio_dir}"
            os.mkdir(self._abs(virtio_rel))
            self._write(f"{virtio_rel}/vendor", "0x1af4\n")
            self._write(f"{virtio_rel}/device", "0x0001\n")
            self._link(f"{virtio_rel}/driver", "bus/virtio/drivers/virtio_net")
            self._link(f"bus/virtio/devices/{fn.virtio_dir}", virtio_rel)
        if fn.last_netdev is None:
            return
        os.mkdir(self._abs(fn.net_rel))
        self._add_netdev(fn, self._new_netdev(fn.last_netdev, attrs))

    def _unbind(self, fn: _Function) -> None:
        for nd in fn.netdevs:
            self._drop_netdev(fn, nd)
        if fn.netdevs:
            fn.last_netdev = fn.netdevs[0].name
        elif fn.away:
            fn.last_netdev = fn.away[0].name
        fn.netdevs.clear()
        fn.away.clear()
        if fn.virtio_dir is not None:
            self._unlink(f"bus/virtio/devices/{fn.virtio_dir}")
            shutil.rmtree(self._abs(f"{fn.rel}/{fn.virtio_dir}"))
            fn.virtio_dir = None
        elif os.path.isdir(self._abs(f"{fn.rel}/net")):
            shutil.rmtree(self._abs(f"{fn.rel}/net"))
        if fn.driver is not None:
            self._unlink(f"bus/pci/drivers/{fn.driver}/{fn.pci}")
            self._unlink(f"{fn.rel}/driver")
            fn.driver = None

    def _new_netdev(self, name: str, attrs: NetdevAttrs) -> _Netdev:
        ifindex = attrs.get("ifindex", self._next_ifindex)
        self._next_ifindex = max(self._next_ifindex, ifindex + 1)
        mac = attrs.get("mac")
        if mac is None:
            n = self._next_mac
            self._next_mac += 1
            mac = f"52:54:00:{(n >> 16) & 0xFF:02x}:{(n >> 8) & 0xFF:02x}:{n & 0xFF:02x}"
        return _Netdev(
            name=name,
            mac=mac,
            mtu=attrs.get("mtu", 1500),
            operstate=attrs.get("operstate", "up"),
            carrier=attrs.get("carrier", True),
            arphrd=attrs.get("arphrd", 1),
            ifindex=ifindex,
        )

    def _add_netdev(self, fn: _Function, nd: _Netdev) -> None:
        if nd.name in self._netdev_owner:
            raise ValueError(f"netdev {nd.name} already exists")
        nd_rel = f"{fn.net_rel}/{nd.name}"
        os.mkdir(self._abs(nd_rel))
        for name, value in (
            ("address", nd.mac),
            ("mtu", nd.mtu),
            ("type", nd.arphrd),
            ("ifindex", nd.ifindex),
        ):
            self._write(f"{nd_rel}/{name}", f"{value}\n")
        self._write_link_state(nd_rel, nd)
        # The kernel's form: up to the owning device's parent, then its name.
        owner = fn.virtio_dir or fn.pci
        os.symlink(f"../../../{owner}", self._abs(f"{nd_rel}/device"))
        self._link(f"class/net/{nd.name}", nd_rel)
        fn.netdevs.append(nd)
        self._netdev_owner[nd.name] = fn.pci

    def _write_link_state(self, nd_rel: str, nd: _Netdev) -> None:
        self._write(f"{nd_rel}/operstate", f"{nd.operstate}\n")
        if nd.carrier is None:
            self._unlink(f"{nd_rel}/carrier")
        else:
            self._write(f"{nd_rel}/carrier", "1\n" if nd.carrier else "0\n")

    def _drop_netdev(self, fn: _Function, nd: _Netdev) -> None:
        self._unlink(f"class/net/{nd.name}")
        shutil.rmtree(self._abs(f"{fn.net_rel}/{nd.name}"))
        del self._netdev_owner[nd.name]


@contextlib.contextmanager
def tmpfs_tempdir(prefix: str = "netdp-sysfs-") -> Iterator[Path]:
    """A temporary directory on tmpfs when the host has one, removed afterwards.

    A fake sysfs is thousands of tiny files and links: pure metadata work. On
    this project's host, ext4 under /tmp builds 512 VFs in about 5 s, tmpfs in
    0.1 s, so tests, benchmarks and `netdp demo` should build their trees here.
    """
    base = SHM_DIR if os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK) else None
    path = tempfile.mkdtemp(prefix=prefix, dir=base)
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def virtio_lab(
    root: Path, extra_nics: int | Sequence[str] = 3, primary_netdev: str = "eth0"
) -> FakeSysfs:
    """The classic lab node: the default-route virtio NIC at 0000:00:03.0 on the
    root bus (as on this host) plus extra virtio NICs behind root ports (as
    vm-run.sh and libvirt lay out q35 VMs), and two non-network functions.

    `extra_nics` is a count (netdevs `eth1`..`ethN`) or the extra netdev names
    themselves, e.g. the veth ends a test created.
    """
    if isinstance(extra_nics, int):
        names = [f"eth{i + 1}" for i in range(extra_nics)]
    else:
        names = list(extra_nics)
    fs = FakeSysfs(root)
    fs.add_nic(
        "0000:00:00.0",
        vendor="8086",
        device="29c0",
        driver=None,
        netdev=None,
        class_code="0x060000",
    )
    fs.add_nic(
        "0000:00:02.0",
        vendor="1af4",
        device="1042",
        driver=VIRTIO_PCI_DRIVER,
        netdev=None,
        class_code="0x010000",
    )
    fs.add_virtio_nic("0000:00:03.0", primary_netdev, mac="52:54:00:5a:00:10")
    for i, name in enumerate(names):
        port = fs.add_bridge(f"0000:00:{4 + i:02x}.0")
        fs.add_virtio_nic(
            f"0000:{i + 1:02x}:00.0", name, mac=f"52:54:00:5a:00:{0x11 + i:02x}", parent=port
        )
    return fs


def sriov_topology(
    root: Path,
    pfs: int,
    vfs_per_pf: int,
    *,
    total_vfs: int | None = None,
    vf_driver: str | None = "igbvf",
    iommu: bool = True,
    numa_nodes: int = 0,
    pf_netdev: Callable[[int], str] = lambda i: f"ens{i + 1}f0",
    offset: int = 128,
    stride: int = 2,
) -> FakeSysfs:
    """`pfs` igb PFs, each behind its own root port, with `vfs_per_pf` VFs enabled.

    PF i has netdev `pf_netdev(i)`, VFs `<pf netdev>v<j>`. With `iommu` every
    function has its own group (as behind ACS), so VFs can be bound to vfio-pci.
    With `numa_nodes` > 0, PF i (and its VFs) sits on node `i % numa_nodes`.
    Buses are spaced so that each PF's VF routing ids fit.
    """
    total = total_vfs if total_vfs is not None else max(vfs_per_pf, 1)
    if not 0 < pfs <= 30:
        raise ValueError("pfs must be 1..30 (one root port each)")
    buses = ((offset + stride * (total - 1)) >> 8) + 1
    fs = FakeSysfs(root)
    for i in range(pfs):
        bus = 1 + i * buses
        if bus + buses - 1 > 0xFF:
            raise ValueError("too many VFs for one PCI domain")
        port = fs.add_bridge(f"0000:00:{2 + i:02x}.0")
        pf = fs.add_pf(
            f"0000:{bus:02x}:00.0",
            netdev=pf_netdev(i),
            total_vfs=total,
            vf_driver=vf_driver,
            offset=offset,
            stride=stride,
            numa_node=i % numa_nodes if numa_nodes > 0 else -1,
            iommu_group=fs.new_iommu_group() if iommu else None,
            parent=port,
        )
        if vfs_per_pf:
            fs.set_num_vfs(pf, vfs_per_pf)
    return fs
