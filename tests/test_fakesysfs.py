"""The fake sysfs must look like the kernel's, or tests against it prove nothing.

The expected shapes come from a real 6.1 kernel in the QEMU lab (virtio NICs
behind root ports, an igb PF with VFs at offset 128, stride 2) and from this
host's own /sys.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deviceplugin.sim.fakesysfs import FakeSysfs, sriov_topology, tmpfs_tempdir, virtio_lab

PF = "0000:01:00.0"


def dangling_links(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                if os.path.isabs(os.readlink(path)):
                    found.append(f"{path} is absolute")
                elif not os.path.exists(path):
                    found.append(path)
    return found


def real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def text(path: Path) -> str:
    return path.read_text()


@pytest.fixture
def tmp_path(tmpfs_path: Path) -> Path:
    """Every fake tree here goes on tmpfs (see conftest.tmpfs_path)."""
    return tmpfs_path


@pytest.fixture
def lab(tmp_path: Path) -> FakeSysfs:
    return virtio_lab(tmp_path / "lab")


@pytest.fixture
def sriov(tmp_path: Path) -> FakeSysfs:
    fs = FakeSysfs(tmp_path / "sriov")
    port = fs.add_bridge("0000:00:02.0")
    fs.add_pf(PF, netdev="ens1f0", total_vfs=7, iommu_group=fs.new_iommu_group(), parent=port)
    fs.set_num_vfs(PF, 2)
    return fs


def test_bus_links_resolve_under_the_root_complex(lab: FakeSysfs) -> None:
    bus = lab.root / "bus/pci/devices"
    assert os.readlink(bus / "0000:00:03.0") == "../../../devices/pci0000:00/0000:00:03.0"
    assert real(bus / "0000:01:00.0") == lab.root / "devices/pci0000:00/0000:00:04.0/0000:01:00.0"
    for entry in bus.iterdir():
        assert real(entry).is_relative_to(lab.root / "devices/pci0000:00")
    assert dangling_links(lab.root) == []


def test_virtio_netdev_lives_under_the_virtio_child(lab: FakeSysfs) -> None:
    link = lab.root / "class/net/eth1"
    pci_dir = lab.pci_dir("0000:01:00.0")
    assert real(link).parent.parent.parent == pci_dir
    assert real(link).parent.parent.name.startswith("virtio")
    assert os.readlink(link / "device") == f"../../../{real(link).parent.parent.name}"
    # What sysfs-report.sh does: the PCI function is the parent of the netdev's device.
    assert real(link / "device/..") == pci_dir
    assert text(link / "device/../vendor") == "0x1af4\n"
    assert text(link / "device/../class") == "0x020000\n"
    assert real(pci_dir / "driver").name == "virtio-pci"
    assert real(link / "device/driver") == lab.root / "bus/virtio/drivers/virtio_net"
    assert text(link / "address") == "52:54:00:5a:00:11\n"


def test_lab_has_the_hosts_primary_nic_and_non_network_functions(lab: FakeSysfs) -> None:
    primary = lab.pci_dir("0000:00:03.0")
    assert primary == lab.root / "devices/pci0000:00/0000:00:03.0"
    assert lab.netdevs_of("0000:00:03.0") == ["eth0"]
    assert text(primary / "device") == "0x1041\n"
    assert text(primary / "numa_node") == "-1\n"
    assert text(lab.pci_dir("0000:00:02.0") / "class") == "0x010000\n"
    assert sorted(p.name for p in (lab.root / "class/net").iterdir()) == [
        "eth0",
        "eth1",
        "eth2",
        "eth3",
    ]


def test_uevent_as_the_kernel_prints_it(lab: FakeSysfs, sriov: FakeSysfs) -> None:
    """dev_uevent's DRIVER= while a driver is bound, then pci_uevent's keys, %04X upper case
    (but the prog-if in MODALIAS, %02x)."""
    assert text(lab.pci_dir("0000:00:03.0") / "uevent") == (
        "DRIVER=virtio-pci\nPCI_CLASS=20000\nPCI_ID=1AF4:1041\nPCI_SUBSYS_ID=1AF4:1100\n"
        "PCI_SLOT_NAME=0000:00:03.0\n"
        "MODALIAS=pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00\n"
    )
    usb = sriov.add_nic("0000:00:1d.0", vendor="8086", device="a36d", driver=None, netdev=None,
                        class_code="0x0c03fe", subsystem=("15d9", "0a1b"))  # fmt: skip
    assert text(sriov.pci_dir(usb) / "uevent") == (
        "PCI_CLASS=C03FE\nPCI_ID=8086:A36D\nPCI_SUBSYS_ID=15D9:0A1B\nPCI_SLOT_NAME=0000:00:1d.0\n"
        "MODALIAS=pci:v00008086d0000A36Dsv000015D9sd00000A1Bbc0Csc03ife\n"
    )
    vf = "0000:01:10.2"

    def first_line() -> str:
        return text(sriov.pci_dir(vf) / "uevent").splitlines()[0]

    assert first_line() == "DRIVER=igbvf"
    sriov.bind(vf, "vfio-pci")
    assert first_line() == "DRIVER=vfio-pci"
    sriov.bind(vf, None)
    assert first_line() == "PCI_CLASS=20000"


def test_lab_takes_netdev_names(tmp_path: Path) -> None:
    fs = virtio_lab(tmp_path, ["veth-a1", "veth-b1"], primary_netdev="uplink")
    assert sorted(p.name for p in (tmp_path / "class/net").iterdir()) == [
        "uplink",
        "veth-a1",
        "veth-b1",
    ]
    assert fs.netdevs_of("0000:02:00.0") == ["veth-b1"]


def test_vfs_sit_at_offset_and_stride_as_siblings_of_the_pf(sriov: FakeSysfs) -> None:
    pf_dir = sriov.pci_dir(PF)
    assert sriov.vfs_of(PF) == ["0000:01:10.0", "0000:01:10.2"]  # as in the igb lab
    assert os.readlink(pf_dir / "virtfn1") == "../0000:01:10.2"
    vf_dir = real(pf_dir / "virtfn1")
    assert vf_dir.parent == pf_dir.parent
    assert os.readlink(vf_dir / "physfn") == f"../{PF}"
    assert real(vf_dir / "physfn") == pf_dir
    assert text(pf_dir / "sriov_numvfs") == "2\n"
    assert text(pf_dir / "sriov_totalvfs") == "7\n"
    assert text(pf_dir / "sriov_offset") == "128\n"
    assert text(pf_dir / "sriov_stride") == "2\n"
    assert text(pf_dir / "sriov_vf_device") == "10ca\n"
    assert text(vf_dir / "device") == "0x10ca\n"
    assert real(sriov.root / "class/net/ens1f0v1/device") == vf_dir
    assert os.readlink(sriov.root / "class/net/ens1f0v1/device") == "../../../0000:01:10.2"
    assert dangling_links(sriov.root) == []


def test_drivers_and_iommu_groups_link_both_ways(sriov: FakeSysfs) -> None:
    vf_dir = sriov.pci_dir("0000:01:10.0")
    assert os.readlink(vf_dir / "driver") == "../../../../bus/pci/drivers/igbvf"
    assert real(sriov.root / "bus/pci/drivers/igbvf/0000:01:10.0") == vf_dir
    group = real(vf_dir / "iommu_group")
    assert group.parent == sriov.root / "kernel/iommu_groups"
    assert real(group / "devices/0000:01:10.0") == vf_dir
    groups = {real(sriov.pci_dir(p) / "iommu_group").name for p in [PF, *sriov.vfs_of(PF)]}
    assert len(groups) == 3  # one per function, as behind ACS


def test_vfs_at_the_kernels_routing_ids_across_buses(tmp_path: Path) -> None:
    fs = FakeSysfs(tmp_path)
    fs.add_pf("0000:05:00.0", netdev="p0", total_vfs=300, offset=128, stride=1)
    vfs = fs.set_num_vfs("0000:05:00.0", 300)
    assert vfs[0] == "0000:05:10.0"
    assert vfs[127] == "0000:05:1f.7"
    assert vfs[128] == "0000:06:00.0"  # routing id 0x580 + 128 + 128 crosses into bus 06
    assert vfs[-1] == "0000:06:15.3"
    assert len(set(vfs)) == 300


def test_set_num_vfs_behaves_like_the_kernel(sriov: FakeSysfs) -> None:
    with pytest.raises(ValueError, match="busy"):
        sriov.set_num_vfs(PF, 3)
    with pytest.raises(ValueError, match="outside"):
        sriov.set_num_vfs(PF, 8)
    assert sriov.set_num_vfs(PF, 2) == ["0000:01:10.0", "0000:01:10.2"]  # same number: no-op
    assert sriov.set_num_vfs(PF, 0) == []
    pf_dir = sriov.pci_dir(PF)
    assert text(pf_dir / "sriov_numvfs") == "0\n"
    assert not list(pf_dir.glob("virtfn*"))
    assert not (sriov.root / "bus/pci/devices/0000:01:10.0").exists()
    assert sorted(p.name for p in (sriov.root / "class/net").iterdir()) == ["ens1f0"]
    assert list((sriov.root / "bus/pci/drivers/igbvf").iterdir()) == []
    assert [p.name for p in (sriov.root / "kernel/iommu_groups").iterdir()] == ["0"]
    assert dangling_links(sriov.root) == []
    vfs = sriov.set_num_vfs(PF, 3, vf_netdev=lambda i: f"pod{i}")
    assert len(vfs) == 3
    assert sriov.netdevs_of(vfs[2]) == ["pod2"]


def test_netdev_moved_out_leaves_an_empty_net_dir(sriov: FakeSysfs, lab: FakeSysfs) -> None:
    vf = "0000:01:10.0"
    mac = text(sriov.netdev_dir("ens1f0v0") / "address")
    sriov.move_netdev_out(vf)
    assert list((sriov.pci_dir(vf) / "net").iterdir()) == []
    assert not os.path.lexists(sriov.root / "class/net/ens1f0v0")
    sriov.return_netdev(vf, "net1")
    assert text(sriov.root / "class/net/net1/address") == mac
    assert real(sriov.root / "class/net/net1/device") == sriov.pci_dir(vf)

    lab.move_netdev_out("0000:01:00.0")
    (virtio_net,) = lab.pci_dir("0000:01:00.0").glob("virtio*/net")
    assert list(virtio_net.iterdir()) == []
    with pytest.raises(ValueError):
        lab.return_netdev("0000:02:00.0", "x")


def test_bind_to_vfio_and_back(sriov: FakeSysfs, lab: FakeSysfs) -> None:
    vf = "0000:01:10.2"
    sriov.bind(vf, "vfio-pci")
    assert real(sriov.pci_dir(vf) / "driver").name == "vfio-pci"
    assert not (sriov.pci_dir(vf) / "net").exists()
    assert not os.path.lexists(sriov.root / "class/net/ens1f0v1")
    assert not os.path.lexists(sriov.root / f"bus/pci/drivers/igbvf/{vf}")
    sriov.bind(vf, "igbvf")
    assert sriov.netdevs_of(vf) == ["ens1f0v1"]
    sriov.bind(vf, None)
    assert not os.path.lexists(sriov.pci_dir(vf) / "driver")
    with pytest.raises(ValueError, match="IOMMU"):
        lab.bind("0000:01:00.0", "vfio-pci")
    lab.bind("0000:01:00.0", None)
    assert not list(lab.pci_dir("0000:01:00.0").glob("virtio*"))
    lab.bind("0000:01:00.0", "virtio-pci", netdev="eth9")
    assert real(lab.root / "class/net/eth9/device/..") == lab.pci_dir("0000:01:00.0")
    assert dangling_links(sriov.root) == dangling_links(lab.root) == []


def test_remove_is_a_hot_unplug(sriov: FakeSysfs, lab: FakeSysfs) -> None:
    sriov.remove("0000:01:10.2")
    assert sriov.vfs_of(PF) == ["0000:01:10.0"]
    assert not os.path.lexists(sriov.pci_dir(PF) / "virtfn1")
    sriov.remove("0000:00:02.0")  # the root port, and with it the PF and its VFs
    assert list((sriov.root / "bus/pci/devices").iterdir()) == []
    assert list((sriov.root / "class/net").iterdir()) == []
    assert list((sriov.root / "kernel/iommu_groups").iterdir()) == []
    lab.remove("0000:00:03.0")
    assert not os.path.lexists(lab.root / "class/net/eth0")
    assert dangling_links(sriov.root) == dangling_links(lab.root) == []


def test_set_link_and_netdev_attributes(tmp_path: Path) -> None:
    fs = FakeSysfs(tmp_path)
    fs.add_nic(
        "0000:00:05.0",
        vendor="15b3",
        device="1017",
        driver="mlx5_core",
        netdev="ib0",
        class_code="0x020700",
        numa_node=1,
        mac="80:00:00:48:fe:80:00:00:00:00:00:00:0c:42:a1:03:00:71:73:f4",
        mtu=2044,
        arphrd=32,
        ifindex=40,
    )
    nd = fs.netdev_dir("ib0")
    assert (text(nd / "type"), text(nd / "mtu"), text(nd / "ifindex")) == ("32\n", "2044\n", "40\n")
    assert text(fs.pci_dir("0000:00:05.0") / "numa_node") == "1\n"
    fs.set_link("ib0", operstate="down", carrier=None)
    assert text(nd / "operstate") == "down\n"
    assert not (nd / "carrier").exists()
    fs.set_link("ib0", operstate="up", carrier=False)
    assert text(nd / "carrier") == "0\n"
    with pytest.raises(ValueError, match="already exists"):
        fs.add_virtio_nic("0000:00:06.0", "ib0")


def test_tmpfs_tempdir_is_removed() -> None:
    with tmpfs_tempdir() as path:
        FakeSysfs(path).add_virtio_nic("0000:00:03.0", "eth0")
        if os.path.isdir("/dev/shm"):
            assert path.parent == Path("/dev/shm")
    assert not path.exists()


def test_sriov_topology_spaces_buses(tmp_path: Path) -> None:
    fs = sriov_topology(tmp_path, pfs=3, vfs_per_pf=200, numa_nodes=2, offset=128, stride=2)
    pfs = sorted(p.name for p in (tmp_path / "bus/pci/drivers/igb").iterdir())
    assert pfs == ["0000:01:00.0", "0000:04:00.0", "0000:07:00.0"]
    all_vfs = [vf for pf in pfs for vf in fs.vfs_of(pf)]
    assert len(all_vfs) == len(set(all_vfs)) == 600
    assert text(fs.pci_dir("0000:04:00.0") / "numa_node") == "1\n"
    assert text(fs.pci_dir(fs.vfs_of("0000:04:00.0")[5]) / "numa_node") == "1\n"
    assert fs.netdevs_of(fs.vfs_of("0000:07:00.0")[199]) == ["ens3f0v199"]
    assert dangling_links(tmp_path) == []
    with pytest.raises(ValueError):
        sriov_topology(tmp_path / "x", pfs=31, vfs_per_pf=1)
