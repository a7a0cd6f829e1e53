"""sysfs discovery: the lab layouts, SR-IOV relations, and sysfs misbehaving."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import host_uplinks
from hypothesis import given, settings
from hypothesis import strategies as st

from deviceplugin import sysfs, sysfs_read, sysfs_values
from deviceplugin.model import Device, NetDev, NetdevState
from deviceplugin.sim.fakesysfs import FakeSysfs, sriov_topology, tmpfs_tempdir, virtio_lab
from deviceplugin.sysfs import read_device, scan

PF = "0000:01:00.0"
VF0, VF1, VF2 = "0000:01:10.0", "0000:01:10.2", "0000:01:10.4"
# This host's virtio NIC, as a 6.18 kernel prints its uevent.
KERNEL_UEVENT = (
    "DRIVER=virtio-pci\nPCI_CLASS=20000\nPCI_ID=1AF4:1041\nPCI_SUBSYS_ID=1AF4:1041\n"
    "PCI_SLOT_NAME=0000:00:03.0\nMODALIAS=pci:v00001AF4d00001041sv00001AF4sd00001041bc02sc00i00\n"
)
KERNEL_UEVENT_KEYS = {
    "DRIVER": "virtio-pci",
    "PCI_CLASS": "20000",
    "PCI_ID": "1AF4:1041",
    "PCI_SUBSYS_ID": "1AF4:1041",
    "PCI_SLOT_NAME": "0000:00:03.0",
    "MODALIAS": "pci:v00001AF4d00001041sv00001AF4sd00001041bc02sc00i00",
}


@pytest.fixture
def tmp_path(tmpfs_path: Path) -> Path:
    """Every fake tree here goes on tmpfs (see conftest.tmpfs_path)."""
    return tmpfs_path


@pytest.fixture
def lab(tmp_path: Path) -> FakeSysfs:
    return virtio_lab(tmp_path / "lab")


@pytest.fixture
def sriov(tmp_path: Path) -> FakeSysfs:
    """One igb PF with three VFs: igbvf, igbvf, vfio-pci."""
    fs = sriov_topology(tmp_path / "sriov", pfs=1, vfs_per_pf=3, total_vfs=7, numa_nodes=1)
    fs.bind(VF2, "vfio-pci")
    return fs


def only(fs: FakeSysfs, pci: str) -> Device:
    dev = scan(fs.root).get(pci)
    assert dev is not None
    return dev


# --- pure parsers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("parse", "raw", "expected"),
    [
        (sysfs_values.parse_hex_id, "0x1AF4\n", "1af4"),
        (sysfs_values.parse_class, "0x020000\n", "020000"),
        (sysfs_values.parse_numa_node, "-1\n", None),
        (sysfs_values.parse_numa_node, "1\n", 1),
        (sysfs_values.parse_carrier, "0\n", False),
        (sysfs_values.parse_link_type, "1\n", "ether"),
        (sysfs_values.parse_link_type, "32\n", "infiniband"),
        (sysfs_values.parse_link_type, "772\n", "arphrd-772"),
        (sysfs_values.pci_address_of_link, "../0000:05:10.2", "0000:05:10.2"),
        (sysfs_values.pci_address_of_link, "../10000:e1:00.0", "10000:e1:00.0"),  # VMD domain
        (sysfs_values.iommu_group_of_link, "../../../kernel/iommu_groups/17", 17),
        (sysfs_values.driver_of_link, "../../../bus/pci/drivers/igbvf", "igbvf"),
        (sysfs_values.virtfn_index, "virtfn12", 12),
        (sysfs_values.virtfn_index, "virtio3", None),
        (sysfs_values.is_virtio_child, "virtio3", True),
        (sysfs_values.is_virtio_child, "virtfn3", False),
        (sysfs_values.parse_uevent_class, "20000", "020000"),
        (sysfs_values.parse_uevent_class, "FFFF00", "ffff00"),
        (sysfs_values.parse_uevent_class, "0000", "000000"),
        (sysfs_values.parse_uevent_ids, "1AF4:1041", ("1af4", "1041")),
        (sysfs_values.parse_driver_name, "virtio-pci", "virtio-pci"),
        (sysfs_values.parse_uevent, KERNEL_UEVENT, KERNEL_UEVENT_KEYS),
        (sysfs_values.parse_uevent, "", {}),
    ],
)
def test_parsers(parse, raw, expected) -> None:
    assert parse(raw) == expected


@pytest.mark.parametrize(
    ("parse", "raw"),
    [
        (sysfs_values.parse_hex_id, "0x1af\n"),
        (sysfs_values.parse_hex_id, "0xzzzz"),
        (sysfs_values.parse_class, "0x0200"),
        (sysfs_values.parse_int, "1_0"),
        (sysfs_values.parse_int, "\u0661"),  # ARABIC-INDIC DIGIT ONE, which int() would take
        (sysfs_values.parse_int, "-3"),
        (sysfs_values.parse_numa_node, "-2"),
        (sysfs_values.parse_carrier, "yes"),
        (sysfs_values.pci_address_of_link, "../eth0"),
        (sysfs_values.iommu_group_of_link, "../kernel/iommu_groups/x"),
        (sysfs_values.driver_of_link, ""),
        (sysfs_values.parse_uevent_class, "0x20000"),
        (sysfs_values.parse_uevent_class, "200"),
        (sysfs_values.parse_uevent_class, "1000000"),
        (sysfs_values.parse_uevent_class, "20000\n"),
        (sysfs_values.parse_uevent_ids, "8086:10C"),
        (sysfs_values.parse_uevent_ids, "8086-10CA"),
        (sysfs_values.parse_uevent_ids, "8086:10CA:1"),
        (sysfs_values.parse_driver_name, ""),
        (sysfs_values.parse_driver_name, "../vfio-pci"),
        (sysfs_values.parse_uevent, "DRIVER=igb\ngarbage\n"),
        (sysfs_values.parse_uevent, "DRIVER=igb\nDRIVER=vfio-pci\n"),
    ],
)
def test_parsers_reject_garbage(parse, raw) -> None:
    with pytest.raises(ValueError):
        parse(raw)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 0xFFFFFF))
def test_uevent_class_reads_as_the_class_file(code: int) -> None:
    uevent = sysfs_values.parse_uevent_class(f"{code:04X}")  # pci_uevent's PCI_CLASS
    assert uevent == sysfs_values.parse_class(f"0x{code:06x}\n")  # class_show's


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_uevent_ids_read_as_the_id_files(vendor: int, device: int) -> None:
    files = (f"0x{vendor:04x}\n", f"0x{device:04x}\n")
    assert sysfs_values.parse_uevent_ids(f"{vendor:04X}:{device:04X}") == tuple(
        sysfs_values.parse_hex_id(f) for f in files
    )


_UEVENT_KEYS = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", min_size=1, max_size=16)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_UEVENT_KEYS, st.text(st.characters(codec="ascii"), max_size=40).map(
    lambda v: v.replace("\n", "")), max_size=8))  # fmt: skip
def test_uevent_lines_round_trip(env: dict[str, str]) -> None:
    assert sysfs_values.parse_uevent("".join(f"{k}={v}\n" for k, v in env.items())) == env


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_parse_uevent_refuses_with_value_error_only(text: str) -> None:
    try:
        env = sysfs_values.parse_uevent(text)
    except ValueError:
        return
    assert "".join(f"{k}={v}\n" for k, v in env.items()) == text


# --- layouts ------------------------------------------------------------------


def test_virtio_lab(lab: FakeSysfs) -> None:
    node = scan(lab.root)
    assert list(node.devices) == ["0000:00:03.0", "0000:01:00.0", "0000:02:00.0", "0000:03:00.0"]
    assert node.warnings == ()
    eth0 = node.devices["0000:00:03.0"]
    assert (eth0.vendor, eth0.device, eth0.class_code) == ("1af4", "1041", "020000")
    assert (eth0.subsystem_vendor, eth0.subsystem_device) == ("1af4", "1100")
    assert (eth0.driver, eth0.numa_node, eth0.iommu_group) == ("virtio-pci", None, None)
    assert eth0.is_virtio and not eth0.is_pf and not eth0.is_vf
    assert eth0.netdev_state is NetdevState.PRESENT
    (nd,) = eth0.netdevs
    assert nd == NetDev("eth0", carrier=True, link_type="ether")
    assert node.by_netdev("eth2").pci_address == "0000:02:00.0"
    assert eth0.warnings == ()


def test_sriov_pf_and_vfs(sriov: FakeSysfs) -> None:
    node = scan(sriov.root)
    pf = node.devices[PF]
    assert pf.is_pf and (pf.total_vfs, pf.num_vfs) == (7, 3)
    assert pf.vf_addresses == (VF0, VF1, VF2)
    assert pf.netdev == "ens1f0" and pf.driver == "igb" and pf.numa_node == 0
    for index, vf in enumerate((VF0, VF1, VF2)):
        dev = node.devices[vf]
        assert dev.is_vf and not dev.is_pf
        assert (dev.pf_address, dev.vf_index, dev.pf_netdev) == (PF, index, "ens1f0")
        assert (dev.vendor, dev.device, dev.numa_node) == ("8086", "10ca", 0)
        assert dev.warnings == ()
    assert node.devices[VF1].netdev == "ens1f0v1"
    assert node.devices[VF1].driver == "igbvf"


def test_vfio_vf_has_a_dev_vfio_node_and_no_netdev(sriov: FakeSysfs) -> None:
    dev = only(sriov, VF2)
    assert dev.is_vfio and dev.driver == "vfio-pci"
    assert dev.netdev_state is NetdevState.NONE and dev.netdevs == ()
    assert dev.iommu_group is not None
    assert dev.vfio_device == f"/dev/vfio/{dev.iommu_group}"


def test_netdev_moved_away_keeps_the_device(sriov: FakeSysfs, lab: FakeSysfs) -> None:
    sriov.move_netdev_out(VF0)
    dev = only(sriov, VF0)
    assert dev.netdev_state is NetdevState.ELSEWHERE and dev.netdevs == ()
    assert dev.vf_index == 0 and dev.warnings == ()
    assert dev.link_type == "ether"  # from the PCI class while the netdev is away

    lab.move_netdev_out("0000:01:00.0")
    assert only(lab, "0000:01:00.0").netdev_state is NetdevState.ELSEWHERE

    sriov.move_netdev_out(PF)
    assert only(sriov, VF1).pf_netdev is None


def test_netdev_back_under_another_name(sriov: FakeSysfs) -> None:
    sriov.move_netdev_out(VF0)
    sriov.return_netdev(VF0, "net1")
    assert only(sriov, VF0).netdev == "net1"


def test_unbound_and_pf_without_vfs(tmp_path: Path) -> None:
    fs = FakeSysfs(tmp_path)
    fs.add_pf("0000:3b:00.0", netdev="p1", total_vfs=4, numa_node=1)
    fs.add_nic("0000:3b:00.1", vendor="8086", device="1572", driver=None, netdev=None)
    node = scan(tmp_path)
    pf = node.devices["0000:3b:00.0"]
    assert (pf.total_vfs, pf.num_vfs, pf.vf_addresses, pf.numa_node) == (4, 0, (), 1)
    unbound = node.devices["0000:3b:00.1"]
    assert unbound.driver is None and unbound.netdev_state is NetdevState.NONE


def test_carrier_and_link_types(tmp_path: Path) -> None:
    fs = FakeSysfs(tmp_path)
    fs.add_nic("0000:00:05.0", vendor="15b3", device="1017", driver="mlx5_core", netdev="ib0",
               class_code="0x020700", arphrd=32, operstate="down", carrier=None)  # fmt: skip
    fs.add_nic("0000:00:06.0", vendor="8086", device="1572", driver="i40e", netdev="x0",
               arphrd=772, carrier=False, operstate="lowerlayerdown")  # fmt: skip
    node = scan(tmp_path)
    ib = node.devices["0000:00:05.0"].netdevs[0]
    assert (ib.link_type, ib.carrier) == ("infiniband", None)
    other = node.devices["0000:00:06.0"].netdevs[0]
    assert (other.link_type, other.carrier) == ("arphrd-772", False)
    assert node.devices["0000:00:05.0"].warnings == ()


def test_carrier_einval_means_unknown_not_a_problem(
    lab: FakeSysfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_read = sysfs_read.read_text

    def read(name: str, dir_fd: int) -> str:
        if name.endswith("/carrier"):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_read(name, dir_fd)

    monkeypatch.setattr(sysfs_read, "read_text", read)
    dev = only(lab, "0000:00:03.0")
    assert dev.netdevs[0].carrier is None and dev.warnings == ()


def test_scan_without_class_net_lists_each_function(sriov: FakeSysfs, lab: FakeSysfs) -> None:
    """`class/net` only saves listings: without it (or with a link gone) the scan is the same."""
    sriov.move_netdev_out(VF1)
    for fs in (sriov, lab):
        before = scan(fs.root)
        some = sorted(os.listdir(fs.root / "class/net"))[0]
        os.unlink(fs.root / "class/net" / some)
        assert scan(fs.root) == before
        shutil.rmtree(fs.root / "class/net")
        assert scan(fs.root) == before


def test_a_vf_costs_four_reads_and_two_readlinks(tmpfs_path: Path, monkeypatch) -> None:
    """Issue 13's budget, as marginal cost per VF: uevent, numa_node, its netdev's type and
    carrier; its class/net link and its PF's virtfn link; no listing, no physfn."""
    counts: dict[str, int] = {"read": 0, "readlink": 0, "listdir": 0}

    def counting(kind, real):
        def call(*args, **kwargs):
            counts[kind] += 1
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(sysfs_read, "read_text", counting("read", sysfs_read.read_text))
    monkeypatch.setattr(os, "readlink", counting("readlink", os.readlink))
    monkeypatch.setattr(os, "listdir", counting("listdir", os.listdir))
    cost = []
    for vfs in (16, 48):
        root = tmpfs_path / str(vfs)
        sriov_topology(root, pfs=1, vfs_per_pf=vfs, numa_nodes=2)
        counts.update(dict.fromkeys(counts, 0))
        assert len(scan(root).devices) == vfs + 1
        cost.append(dict(counts))
    per_vf = {kind: (cost[1][kind] - cost[0][kind]) / 32 for kind in counts}
    assert per_vf == {"read": 4, "readlink": 2, "listdir": 0}


def test_read_device_agrees_with_scan(sriov: FakeSysfs, lab: FakeSysfs) -> None:
    sriov.move_netdev_out(VF1)
    for fs in (sriov, lab):
        node = scan(fs.root)
        for pci, dev in node.devices.items():
            assert read_device(fs.root, pci) == dev
    assert read_device(lab.root, "0000:00:02.0") is None  # virtio-blk: not a network class
    assert read_device(lab.root, "0000:00:00.0") is None  # host bridge
    assert read_device(lab.root, "0000:09:00.0") is None  # absent
    assert read_device(lab.root, "eth0") is None  # not a PCI address
    assert read_device(lab.root / "nope", "0000:00:03.0") is None


def test_many_vfs_keep_their_index(tmp_path: Path) -> None:
    fs = sriov_topology(tmp_path, pfs=2, vfs_per_pf=256, offset=128, stride=1)
    node = scan(tmp_path)
    assert len(node.devices) == 2 + 512
    for pf in ("0000:01:00.0", "0000:03:00.0"):
        vfs = fs.vfs_of(pf)
        assert node.devices[pf].vf_addresses == tuple(vfs)
        assert [node.devices[vf].vf_index for vf in vfs] == list(range(256))


# --- sysfs misbehaving --------------------------------------------------------


def test_no_pci_bus_at_all(tmp_path: Path) -> None:
    node = scan(tmp_path)
    assert node.devices == {} and len(node.warnings) == 1


def with_uevent(fs: FakeSysfs, pci: str, **keys: str | None) -> None:
    """Change keys of a function's `uevent` (None: drop the key), keeping the kernel's order."""
    path = fs.pci_dir(pci) / "uevent"
    env = {**sysfs_values.parse_uevent(path.read_text()), **keys}
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items() if v is not None))


def test_garbage_identity_skips_only_that_device(lab: FakeSysfs) -> None:
    with_uevent(lab, "0000:01:00.0", PCI_ID="nope")
    with_uevent(lab, "0000:02:00.0", PCI_CLASS="2")
    (lab.pci_dir("0000:03:00.0") / "uevent").unlink()  # the files say it then
    lab.write_attr("0000:03:00.0", "class", b"\xff\xfe")
    node = scan(lab.root)
    assert sorted(node.devices) == ["0000:00:03.0"]
    reasons = [w.partition(": skipped: ")[2] for w in node.warnings]
    assert [r.partition(":")[0] for r in reasons] == ["uevent PCI_ID", "uevent PCI_CLASS", "class"]


def test_ids_and_driver_come_from_the_uevent(sriov: FakeSysfs) -> None:
    """One read instead of five files and a link: they may all be gone."""
    before = only(sriov, VF0)
    for name in ("class", "vendor", "device", "subsystem_vendor", "subsystem_device", "driver"):
        (sriov.pci_dir(VF0) / name).unlink()
    assert only(sriov, VF0) == before and before.warnings == ()
    assert (before.vendor, before.device, before.driver) == ("8086", "10ca", "igbvf")


def test_without_a_uevent_the_files_say_the_same(sriov: FakeSysfs, lab: FakeSysfs) -> None:
    sriov.add_nic("0000:3b:00.1", vendor="8086", device="1572", driver=None, netdev=None,
                  class_code="0x020700", subsystem=("15d9", "0000"))  # fmt: skip
    befores = {fs: scan(fs.root) for fs in (sriov, lab)}
    drivers = {d.driver for node in befores.values() for d in node.devices.values()}
    assert drivers == {None, "igb", "igbvf", "vfio-pci", "virtio-pci"}
    for fs, before in befores.items():
        pcis = list(before.devices)
        # A uevent with the slot and driver only: every id from its file.
        with_uevent(fs, pcis[0], PCI_CLASS=None, PCI_ID=None, PCI_SUBSYS_ID=None)
        for pci in pcis[1:]:
            (fs.pci_dir(pci) / "uevent").unlink()
        assert scan(fs.root) == before


def test_a_uevent_naming_another_function_is_not_used(sriov: FakeSysfs) -> None:
    with_uevent(sriov, VF0, PCI_SLOT_NAME=VF1, PCI_ID="1234:5678", DRIVER=None)
    dev = only(sriov, VF0)
    assert (dev.vendor, dev.device, dev.driver, dev.warnings) == ("8086", "10ca", "igbvf", ())


def test_a_uevent_without_driver_means_unbound(sriov: FakeSysfs) -> None:
    """The kernel writes DRIVER= exactly while a driver is bound; the link is not read."""
    with_uevent(sriov, VF0, DRIVER=None)
    with_uevent(sriov, VF1, DRIVER="")
    node = scan(sriov.root)
    assert node.devices[VF0].driver is None and node.devices[VF0].warnings == ()
    assert node.devices[VF1].driver is None
    assert node.devices[VF1].warnings == ("uevent DRIVER: not a driver name: ''",)


def test_garbage_attribute_degrades_the_device(sriov: FakeSysfs) -> None:
    sriov.write_attr(VF0, "numa_node", "many\n")
    with_uevent(sriov, VF0, PCI_SUBSYS_ID="8086")
    (sriov.netdev_dir("ens1f0v0") / "type").write_text("-5\n")
    (sriov.netdev_dir("ens1f0v0") / "carrier").write_text("maybe\n")
    dev = only(sriov, VF0)
    assert dev.numa_node is None and dev.subsystem_vendor is dev.subsystem_device is None
    assert dev.netdevs == (NetDev("ens1f0v0", carrier=None, link_type=None),)
    assert dev.link_type == "ether"  # from the PCI class, as for a netdev in a pod
    assert dev.vf_index == 0 and dev.vendor == "8086"
    assert len(dev.warnings) == 4
    assert "netdev ens1f0v0: type: not an integer >= 0: '-5\\n'" in dev.warnings
    assert any(w.startswith("netdev ens1f0v0: carrier:") for w in dev.warnings)
    assert only(sriov, VF1).warnings == ()


def test_unreadable_files_degrade_the_device(lab: FakeSysfs) -> None:
    # Root reads through any mode bits; a directory in place of a file fails with EISDIR.
    pci_dir = lab.pci_dir("0000:01:00.0")
    (pci_dir / "numa_node").unlink()
    (pci_dir / "numa_node").mkdir()
    nd = lab.netdev_dir("eth1")
    (nd / "carrier").unlink()
    (nd / "carrier").mkdir()
    dev = only(lab, "0000:01:00.0")
    assert dev.numa_node is None and dev.netdevs[0].carrier is None
    assert len(dev.warnings) == 2
    (pci_dir / "uevent").unlink()
    (pci_dir / "uevent").mkdir()
    assert only(lab, "0000:01:00.0") == dev  # the same, from the files
    (pci_dir / "device").unlink()
    (pci_dir / "device").mkdir()
    assert "0000:01:00.0" not in scan(lab.root).devices


def test_dangling_and_garbage_links(sriov: FakeSysfs) -> None:
    vf2_dir, vf0_dir = sriov.pci_dir(VF2), sriov.pci_dir(VF0)  # VF2 is bound to vfio-pci
    os.unlink(vf2_dir / "iommu_group")
    os.symlink("../../../kernel/iommu_groups/banana", vf2_dir / "iommu_group")
    os.unlink(vf0_dir / "uevent")  # the driver from its link, then
    os.unlink(vf0_dir / "driver")
    os.symlink("../../../../bus/pci/drivers/gone", vf0_dir / "driver")
    shutil.rmtree(sriov.pci_dir(VF1))  # bus/pci/devices link left dangling, virtfn1 too
    node = scan(sriov.root)
    vf0 = node.devices[VF0]
    assert vf0.driver == "gone" and vf0.warnings == ()
    vf2 = node.devices[VF2]
    assert vf2.iommu_group is None and vf2.vfio_device is None
    assert vf2.warnings == ("iommu_group link: not an integer >= 0: 'banana'",)
    assert VF1 not in node.devices
    assert any(w.startswith(f"{VF1}: skipped: vanished") for w in node.warnings)
    assert node.devices[PF].vf_addresses == (VF0, VF1, VF2)  # as the PF's links say
    assert read_device(sriov.root, VF1) is None


def test_vf_without_its_pf(sriov: FakeSysfs) -> None:
    shutil.rmtree(sriov.pci_dir(PF))
    dev = only(sriov, VF0)
    assert dev.pf_address == PF and dev.vf_index is None and dev.pf_netdev is None
    assert dev.warnings == (f"PF {PF} unreadable: VF index and PF netdev unknown",)


def test_vf_the_pf_does_not_list(sriov: FakeSysfs) -> None:
    os.unlink(sriov.pci_dir(PF) / "virtfn0")
    node = scan(sriov.root)
    assert node.devices[VF0].vf_index is None
    assert node.devices[VF0].warnings == (f"PF {PF} has no virtfn link to this VF",)
    assert node.devices[PF].vf_addresses == (VF1, VF2)


def test_garbage_bus_entries(lab: FakeSysfs) -> None:
    bus = lab.root / "bus/pci/devices"
    (bus / "README").write_text("hi")
    (bus / "0000:07:00.0").write_text("a file, not a device dir")
    node = scan(lab.root)
    assert len(node.devices) == 4
    assert len(node.warnings) == 2


@pytest.fixture
def vanish_during(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Run an action the first time the scanner reads a file whose path ends so."""
    real_read = sysfs_read.read_text

    def arm(path_suffix: str, action) -> None:
        fired = []

        def read(name: str, dir_fd: int) -> str:
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)
            if not fired and path.endswith(path_suffix):
                fired.append(True)
                action()
            return real_read(name, dir_fd)

        monkeypatch.setattr(sysfs_read, "read_text", read)

    yield arm


def test_device_unplugged_mid_read(sriov: FakeSysfs, vanish_during) -> None:
    vanish_during(f"{VF1}/numa_node", lambda: sriov.remove(VF1))
    node = scan(sriov.root)
    assert VF1 not in node.devices and VF0 in node.devices
    assert any(w.startswith(f"{VF1}: skipped: vanished") for w in node.warnings)


def test_device_unplugged_as_its_uevent_is_read(lab: FakeSysfs, vanish_during) -> None:
    vanish_during("0000:02:00.0/uevent", lambda: lab.remove("0000:02:00.0"))
    node = scan(lab.root)
    assert "0000:02:00.0" not in node.devices and len(node.devices) == 3
    assert node.warnings == ("0000:02:00.0: skipped: class missing (device vanished?)",)


def test_device_unplugged_between_class_and_vendor(lab: FakeSysfs, vanish_during) -> None:
    (lab.pci_dir("0000:02:00.0") / "uevent").unlink()
    vanish_during("0000:02:00.0/class", lambda: lab.remove("0000:02:00.0"))
    node = scan(lab.root)
    assert "0000:02:00.0" not in node.devices and len(node.devices) == 3


def test_netdev_moved_mid_read(lab: FakeSysfs, vanish_during) -> None:
    vanish_during("/net/eth1/type", lambda: lab.move_netdev_out("0000:01:00.0"))
    dev = only(lab, "0000:01:00.0")
    assert dev.netdev_state is NetdevState.ELSEWHERE and dev.warnings == ()


# --- property: no bytes in any attribute file make the scan raise --------------


def _snapshot(path: Path) -> tuple[str, bytes | str]:
    if path.is_symlink():
        return ("link", os.readlink(path))
    return ("file", path.read_bytes())


def _restore(path: Path, saved: tuple[str, bytes | str]) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    kind, content = saved
    if kind == "link":
        os.symlink(content, path)
    else:
        path.write_bytes(content)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def garbage_tree() -> Iterator[tuple[Path, list[Path]]]:
    with tmpfs_tempdir() as root:
        yield _garbage_tree(root)


def _garbage_tree(root: Path) -> tuple[Path, list[Path]]:
    fs = virtio_lab(root, extra_nics=1)
    fs.add_pf("0000:05:00.0", netdev="p0", total_vfs=4, iommu_group=fs.new_iommu_group())
    vfs = fs.set_num_vfs("0000:05:00.0", 2)
    fs.bind(vfs[1], "vfio-pci")
    targets = []
    for dirpath, _dirs, files in os.walk(root / "devices"):
        targets.extend(Path(dirpath, f) for f in files)
    for dirpath, dirs, files in os.walk(root / "devices"):
        targets.extend(Path(dirpath, n) for n in dirs + files if Path(dirpath, n).is_symlink())
    return root, sorted(set(targets))


damage = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=64)),
    st.tuples(st.just("text"), st.sampled_from(["", "-1", "0x", "0x02", "99999999999999999999"])),
    st.tuples(st.just("delete"), st.none()),
    st.tuples(st.just("dir"), st.none()),
    st.tuples(
        st.just("link"), st.sampled_from(["/", "../..", "x/../../0000:05:00.0", ".", "nowhere"])
    ),
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.data())
def test_scan_never_raises_on_garbage(garbage_tree, data) -> None:
    root, targets = garbage_tree
    picked = data.draw(st.lists(st.sampled_from(targets), min_size=1, max_size=4, unique=True))
    saved = {p: _snapshot(p) for p in picked}
    try:
        for path in picked:
            kind, value = data.draw(damage)
            if kind in ("bytes", "text"):
                _restore(path, ("file", value if isinstance(value, bytes) else value.encode()))
            elif kind == "delete":
                path.unlink()
            elif kind == "dir":
                path.unlink()
                path.mkdir()
            else:
                _restore(path, ("link", value))
        node = scan(root)
        for pci, dev in node.devices.items():
            assert dev.pci_address == pci
            assert len(dev.vendor) == 4 and len(dev.device) == 4
            assert dev.class_code.startswith("02")
        for entry in os.listdir(root / "bus/pci/devices"):
            assert read_device(root, entry) is None or entry in node.devices
    finally:
        for path, snap in saved.items():
            _restore(path, snap)


# --- this machine ---------------------------------------------------------------


def test_scan_of_this_machines_sys_is_clean() -> None:
    node = scan(Path("/sys"))
    for dev in node.devices.values():
        assert dev.class_code.startswith("02")


def test_finds_the_hosts_uplink() -> None:
    """The host's default-route NIC (from iproute2 and sysfs at run time) as the scan reads it."""
    uplinks = [u for u in host_uplinks() if u.pci is not None]
    if not uplinks:
        pytest.skip("no default-route interface of this host is a PCI function")
    node = scan(Path("/sys"))
    for uplink in uplinks:
        assert uplink.pci is not None
        dev = node.get(uplink.pci)
        pci_dir = Path("/sys/bus/pci/devices", uplink.pci)
        assert dev is not None and dev.netdev == uplink.name
        assert dev.netdev_state is NetdevState.PRESENT
        assert dev.vendor == (pci_dir / "vendor").read_text().strip().removeprefix("0x")
        assert dev.driver == os.path.basename(os.readlink(pci_dir / "driver"))
        assert dev.is_virtio is (dev.vendor == "1af4")
        ether = Path("/sys/class/net", uplink.name, "type").read_text().strip() == "1"
        assert (dev.netdevs[0].link_type == "ether") is ether
        assert read_device(Path("/sys"), uplink.pci) == dev


# --- netdev -> PCI address, one readlink ---------------------------------------


@pytest.mark.parametrize(
    ("target", "name", "expected"),
    [
        ("../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0", "eth0",
         ("0000:00:03.0", "virtio2/net")),
        ("../../devices/pci0000:00/0000:00:02.0/0000:01:00.0/net/ens1", "ens1",
         ("0000:01:00.0", "net")),
        ("../../devices/pci0000:00/0000:00:02.0/0000:01:10.2/net/ens1v1/", "ens1v1", (VF1, "net")),
        ("../../devices/virtual/net/lo", "lo", None),
        ("../../devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/net/enx1", "enx1", None),
        ("../../devices/platform/a000000.virtio_mmio/virtio0/net/eth0", "eth0", None),
        ("../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0", "eth1", None),
        ("net/eth0", "eth0", None),
    ],
)  # fmt: skip
def test_netdev_home_of_link(target: str, name: str, expected: tuple[str, str] | None) -> None:
    assert sysfs_values.netdev_home_of_link(target, name) == expected


def test_netdev_pci_address_agrees_with_scan(sriov: FakeSysfs, lab: FakeSysfs) -> None:
    """Virtio children, NICs behind root ports, PFs and VFs; moved and returned netdevs."""
    sriov.move_netdev_out(VF0)
    for fs in (sriov, lab):
        node = scan(fs.root)
        names = {nd.name: dev.pci_address for dev in node.devices.values() for nd in dev.netdevs}
        assert len(names) >= 2
        for name, pci in names.items():
            assert sysfs.netdev_pci_address(fs.root, name) == pci
    assert sysfs.netdev_pci_address(sriov.root, "ens1f0v0") is None  # in a pod now
    sriov.return_netdev(VF0, "net1")
    assert sysfs.netdev_pci_address(sriov.root, "net1") == VF0
    for name in ("", ".", "..", "../../bus/pci/devices/0000:01:00.0", "a\0b", "nope"):
        assert sysfs.netdev_pci_address(sriov.root, name) is None


def test_netdev_pci_address_on_this_machine() -> None:
    node = scan(Path("/sys"))
    names = os.listdir("/sys/class/net")
    assert "lo" in names
    for name in names:
        dev = node.by_netdev(name)
        assert sysfs.netdev_pci_address(Path("/sys"), name) == (dev.pci_address if dev else None)
