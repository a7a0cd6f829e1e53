"""A fake sysfs tree in a directory, in the layout the kernel uses.

The daemon reads sysfs through `--sysfs-root`, so unit tests, integration
tests, benchmarks and `netdp demo` all point it at one of these. It is only as
useful as it is faithful, so it copies what a real kernel (6.1, seen in the
QEMU lab) shows, down to the relative symlink targets:

- `devices/pci0000:00/[<bridge>/]<bdf>/`: the function, with `vendor`,
  `device`, `class`, `subsystem_vendor`, `subsystem_device`, `numa_node`, and
  `uevent` as the kernel prints it (`DRIVER=` while bound, `PCI_CLASS`,
  `PCI_ID`, `PCI_SUBSYS_ID`, `PCI_SLOT_NAME`, `MODALIAS`);
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

Differences from the kernel, on purpose: `write_attr` changes one file, so
an id file overwritten with garbage no longer agrees with the `uevent`; a
carrier the kernel would refuse to report (EINVAL, link administratively
down) is an absent `carrier` file here, since a regular file cannot fail a
read that way; `remove()` of a single VF
also drops the PF's `virtfnN` link (`sriov_numvfs` is left as it was).
Netdev names are free-form strings, so a test can name fake netdevs after
real veth ends it created.

The modules: `builder` (`FakeSysfs`: PCI functions, drivers, IOMMU groups,
VFs, hot-unplug), `netdevs` (netdev directories), `sriov` (VF addresses and
the PF's SR-IOV files), `tree` (root-relative files and kernel-style links;
`tmpfs_tempdir`), `presets` (`virtio_lab`, `sriov_topology`).
"""

from deviceplugin.sim.fakesysfs.builder import BRIDGE_CLASS, ETHERNET_CLASS, FakeSysfs
from deviceplugin.sim.fakesysfs.netdevs import NetdevAttrs
from deviceplugin.sim.fakesysfs.presets import sriov_topology, virtio_lab
from deviceplugin.sim.fakesysfs.tree import tmpfs_tempdir

__all__ = [
    "BRIDGE_CLASS",
    "ETHERNET_CLASS",
    "FakeSysfs",
    "NetdevAttrs",
    "sriov_topology",
    "tmpfs_tempdir",
    "virtio_lab",
]
