"""Scenario 5: a NIC stranded by a lost CNI call comes home.

netdp is killed between a pod's ADD and DEL; the runtime's DEL is refused
with "try again later" (code 11); the pod's namespace is deleted, and the
kernel hands the virtio NIC back to the host under its pod name with netdp's
marker. The restarted daemon puts it back under its own name before any DEL,
counts the repair, and the retried DEL releases the IPAM lease. (The netns
tests can only simulate this: a veth dies with its namespace.)
"""

from __future__ import annotations

import pytest
from vmrig import GuestRun, VmSpec, require

pytestmark = pytest.mark.timeout(480)


@pytest.fixture(scope="module")
def lab(rig) -> GuestRun:
    return rig.run("repair", VmSpec(nics=2))


def test_scenario_ran_to_the_end(lab: GuestRun) -> None:
    assert lab.ok, lab.explain()


def test_del_without_the_daemon_is_try_again_later(lab: GuestRun) -> None:
    (refused,) = require(lab, "del_without_daemon")
    assert refused["rc"] == 1, refused
    assert refused["answer"]["code"] == 11, refused
    assert "netdp daemon not reachable at" in refused["answer"]["msg"], refused


def test_kernel_hands_the_nic_back_under_its_pod_name(lab: GuestRun) -> None:
    in_pod, returned, alias = require(lab, "in_pod", "host_netdevs_returned", "returned_alias")
    assert returned.get("net1") == in_pod, returned
    assert alias.startswith("netdp:") and f"pci={in_pod}" in alias, alias


def test_restarted_daemon_puts_it_home(lab: GuestRun) -> None:
    before, repaired, event, alias, metric = require(
        lab,
        "host_netdevs_before",
        "host_netdevs_repaired",
        "repair_event",
        "repaired_alias",
        "repairs_metric",
    )
    assert repaired == before, lab.explain()
    in_pod = lab.facts["in_pod"]
    name = next(n for n, p in before.items() if p == in_pod)
    assert event == {"device": in_pod, "netdev": "net1", "name": name}
    assert alias == ""
    assert metric == 1.0


def test_retried_del_releases_the_lease(lab: GuestRun) -> None:
    code, leases = require(lab, "del_after_repair", "leases_left")
    assert code == 0
    assert leases == []
