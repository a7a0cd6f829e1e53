"""Scenario 2: real SR-IOV VFs of an emulated Intel 82576 (igb) in a pfNames pool.

The pool is `pfNames: [<PF netdev>]`, which (as in sriovdp) also selects the
PF itself while it has no VFs; once VFs exist the PF is never advertised,
its VFs are. The VFs are created through `sriov_numvfs` while netdp runs and
destroyed again at the end. One VM runs the whole story; the live parts (VFs showing up
and vanishing without a restart) are checked apart from the rest, which
holds with or without them (the guest restarts netdp when no update came).
"""

from __future__ import annotations

import pytest
from vmrig import GuestRun, VmSpec, require

pytestmark = pytest.mark.timeout(480)

SRIOV_ENV = "PCIDEVICE_KERNEL_ORG_SRIOV"


@pytest.fixture(scope="module")
def lab(rig) -> GuestRun:
    return rig.run("sriov", VmSpec(nics=0, igb=1))


def test_scenario_ran_to_the_end(lab: GuestRun) -> None:
    assert lab.ok, lab.explain()


def test_vfs_are_the_pool_and_the_pf_is_not(lab: GuestRun) -> None:
    pf, vfs, before, with_vfs, discovery = require(
        lab, "pf", "vfs", "advertised_before_vfs", "advertised_with_vfs", "discovery"
    )
    assert before == {pf["pci"]: "Healthy"}, "a PF without VFs is its own pfNames match"
    assert len(vfs) == 2
    assert sorted(with_vfs) == sorted(vfs) and set(with_vfs.values()) == {"Healthy"}
    assert pf["pci"] not in with_vfs
    assert discovery["devices"][pf["pci"]]["pool"] is None
    assert "VFs enabled" in discovery["devices"][pf["pci"]]["excluded"]
    for vf in vfs:
        assert discovery["devices"][vf]["pool"] == "kernel.org/sriov"
        assert discovery["devices"][vf]["driver"] == "igbvf"
    for row in discovery["devices"].values():  # the uevent read as the files say, no warnings
        assert (row["ids"], row["warnings"]) == (row["ids_from_files"], [])


def test_allocate_env_carries_vf_addresses(lab: GuestRun) -> None:
    env, vfs = require(lab, "env", "vfs")
    assert sorted(env[SRIOV_ENV].split(",")) == sorted(vfs)
    assert SRIOV_ENV + "_INFO" in env


def test_vf_goes_into_a_pod_and_back(lab: GuestRun) -> None:
    pod, del_rc, after, vfs = require(lab, "pod_a", "del_rc", "host_netdevs_after_del", "vfs")
    assert set(pod["ip_a"]) == {"lo", "net1"}
    assert pod["ip_a"]["net1"] == pod["result_ips"]
    assert del_rc == 0
    assert after[vfs[pod["pci"]]] == pod["pci"], "the VF is back under its own name"


def test_vfs_appear_and_vanish_live(lab: GuestRun) -> None:
    added, removed, after = require(lab, "live_add_s", "live_remove_s", "advertised_after_destroy")
    assert added is not None, "VFs created under a running netdp never reached the kubelet"
    assert removed is not None, f"destroyed VFs still advertised: {after}"
    assert after == {lab.facts["pf"]["pci"]: "Healthy"}, "without VFs the PF is back"
    assert lab.facts["restarts"] == 0, "netdp was restarted to see the VFs"
