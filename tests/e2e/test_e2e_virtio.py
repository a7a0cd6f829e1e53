"""Scenario 1, the classic NFV lab, on a real kernel: virtio NICs as kernel.org/virt.

One VM (a default-route NIC eth0 plus 3 spare virtio NICs on one QEMU hub)
runs the whole story once; each test checks one part of what it saw.
"""

from __future__ import annotations

import pytest
from helpers import elf_facts
from vmrig import GuestRun, VmSpec, require

from deviceplugin.cni import forwarder_build

pytestmark = pytest.mark.timeout(480)

VIRT_ENV = "PCIDEVICE_KERNEL_ORG_VIRT"


@pytest.fixture(scope="module")
def lab(rig) -> GuestRun:
    return rig.run("virtio", VmSpec(nics=3))


def test_scenario_ran_to_the_end(lab: GuestRun) -> None:
    assert lab.ok, lab.explain()


def test_registers_exactly_the_spare_nics(lab: GuestRun) -> None:
    spares, uplink, registered, advertised, discovery = require(
        lab, "spare_pcis", "uplink_pci", "registered", "advertised", "discovery"
    )
    assert registered == ["kernel.org/virt"], lab.explain()
    assert sorted(advertised) == spares and len(spares) == 3, lab.explain()
    assert set(advertised.values()) == {"Healthy"}, lab.explain()
    assert uplink not in advertised
    assert discovery["default_route"] == ["eth0"]
    assert discovery["devices"][uplink]["pool"] is None
    assert "default-route" in discovery["devices"][uplink]["excluded"]
    for row in discovery["devices"].values():  # the uevent read as the files say, no warnings
        assert (row["ids"], row["warnings"]) == (row["ids_from_files"], [])


def test_pods_get_net1_with_a_host_local_address(lab: GuestRun) -> None:
    (pods,) = require(lab, "pods")
    assert {p["pci"] for p in pods.values()} <= set(lab.facts["spare_pcis"])
    assert len({p["pci"] for p in pods.values()}) == 2, "each pod got its own NIC"
    for name, pod in pods.items():
        assert pod["env"][VIRT_ENV] == pod["pci"], (name, pod["env"])
        assert set(pod["ip_a"]) == {"lo", "net1"}, (name, pod["ip_a"])
        (address,) = pod["result_ips"]
        assert address.startswith("10.56.0."), address
        assert pod["ip_a"]["net1"] == [address], (name, pod["ip_a"])
    moved = set(lab.facts["host_netdevs_before"]) - set(lab.facts["host_netdevs_with_pods"])
    assert len(moved) == 2, lab.facts["host_netdevs_with_pods"]


def test_cni_calls_go_through_the_installed_binary(lab: GuestRun) -> None:
    """`netdp install-cni` put this package's static binary in place; every call
    through it succeeded and said nothing on stderr."""
    (installed,) = require(lab, "installed_plugin")
    assert installed["size"] == forwarder_build.BINARY.stat().st_size
    assert elf_facts(forwarder_build.BINARY.read_bytes())["interpreter"] is False
    assert lab.result is not None and lab.result.get("cni_calls"), lab.explain()
    assert {(c["rc"], c["stderr"]) for c in lab.result["cni_calls"]} == {(0, "")}


def test_pods_ping_each_other_over_the_qemu_hub(lab: GuestRun) -> None:
    (ping,) = require(lab, "ping")
    assert ping["rc"] == 0, ping["output"] + "\n" + lab.explain()
    assert " 0% packet loss" in ping["output"] or "packets received" in ping["output"]


def test_del_returns_the_nics_under_their_names(lab: GuestRun) -> None:
    del_rc, after, pod_links = require(lab, "del_rc", "host_netdevs_after", "pod_links_after")
    assert set(del_rc.values()) == {0}, del_rc
    assert after == lab.facts["host_netdevs_before"], after
    assert all(set(links) == {"lo"} for links in pod_links.values()), pod_links


def test_capacity_never_shrinks_and_ends_at_three(lab: GuestRun) -> None:
    final, min_devices = require(lab, "final", "min_devices")
    assert sorted(final) == lab.facts["spare_pcis"], final
    assert set(final.values()) == {"Healthy"}, final
    assert min_devices == 3


def test_daemon_stops_cleanly(lab: GuestRun) -> None:
    (code,) = require(lab, "daemon_exit")
    assert code == 0, lab.explain()
