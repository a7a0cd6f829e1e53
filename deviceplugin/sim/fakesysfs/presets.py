"""Ready-made nodes: the classic virtio lab VM and SR-IOV hosts of any size.

Tests, benchmarks and `netdp demo` start from one of these and change it with
`FakeSysfs`' methods; the layouts copy what QEMU (q35, igb) and libvirt give.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from deviceplugin.model import VIRTIO_PCI_DRIVER
from deviceplugin.sim.fakesysfs.builder import FakeSysfs


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
