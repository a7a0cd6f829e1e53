"""Scenario 4: netdp restarts while one of its NICs is inside a pod.

Identity is the PCI address, so the NIC whose netdev left the host's view
stays advertised: capacity does not shrink. And nothing is handed out twice:
the NIC in the pod cannot be plugged into a second pod, the kubelet's next
allocation gets a free one, and the restarted daemon's CNI returns both.
"""

from __future__ import annotations

import pytest
from vmrig import GuestRun, VmSpec, require

pytestmark = pytest.mark.timeout(480)


@pytest.fixture(scope="module")
def lab(rig) -> GuestRun:
    return rig.run("restart", VmSpec(nics=3))


def test_scenario_ran_to_the_end(lab: GuestRun) -> None:
    assert lab.ok, lab.explain()


def test_capacity_unchanged_across_restart(lab: GuestRun) -> None:
    before, after, spares, first_exit = require(
        lab, "advertised_before", "advertised_after", "spare_pcis", "first_exit"
    )
    assert first_exit == 0
    assert sorted(before) == spares
    assert after == before, "the NIC inside pod-a must stay advertised, and Healthy"


def test_nic_in_a_pod_is_not_handed_out_twice(lab: GuestRun) -> None:
    in_pod, second_add, pod_a_before, pod_a_after, pod_b = require(
        lab, "in_pod", "second_add", "pod_a_before", "pod_a_after", "pod_b_after"
    )
    assert second_add["rc"] != 0, second_add
    assert second_add["answer"]["code"] >= 100, second_add  # a plugin error, not a crash
    assert pod_a_after == pod_a_before, "pod-a keeps its net1 and address"
    assert "net1" not in pod_b
    (second_alloc,) = require(lab, "second_alloc")
    assert second_alloc != in_pod


def test_restarted_daemon_returns_everything(lab: GuestRun) -> None:
    del_rc, after, before, final = require(
        lab, "del_rc", "host_netdevs_after", "host_netdevs_before", "final"
    )
    assert del_rc == [0, 0]
    assert after == before
    assert sorted(final) == lab.facts["spare_pcis"]
    assert set(final.values()) == {"Healthy"}
