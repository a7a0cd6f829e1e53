"""Scenario 3: pulling the virtual cable (QMP `set_link`) makes a NIC Unhealthy, and back.

The link goes down on the QEMU side, so the guest kernel sees a real carrier
loss on a NIC that stays administratively up, as with a cable or a switch
port, not an `ip link set down`.
"""

from __future__ import annotations

import pytest
from vmrig import GuestRun, VmSpec, require

pytestmark = pytest.mark.timeout(480)


@pytest.fixture(scope="module")
def lab(rig) -> GuestRun:
    return rig.run("health", VmSpec(nics=2, qmp=True))


def test_scenario_ran_to_the_end(lab: GuestRun) -> None:
    assert lab.ok, lab.explain()


def test_qmp_set_link_reaches_the_guest(lab: GuestRun) -> None:
    down, up = require(lab, "carrier_down", "carrier_up")
    assert (down, up) == ("0", "1"), "the rig itself must toggle the guest's carrier"


def test_link_down_is_unhealthy_then_healthy_again(lab: GuestRun) -> None:
    victim, spares, start = require(lab, "victim_pci", "spare_pcis", "healthy_at_start")
    assert start is not None and set(start.values()) == {"Healthy"}, start
    down_s, after_down = require(lab, "link_down_seen_s", "after_link_down")
    assert down_s is not None, f"no Unhealthy snapshot for {victim}: {after_down}"
    others = {d: h for d, h in after_down.items() if d != victim}
    assert after_down[victim] == "Unhealthy" and set(others.values()) == {"Healthy"}
    up_s, after_up = require(lab, "link_up_seen_s", "after_link_up")
    assert up_s is not None, f"no Healthy snapshot for {victim}: {after_up}"
    assert sorted(after_up) == spares and set(after_up.values()) == {"Healthy"}


def test_metrics_follow_the_link(lab: GuestRun) -> None:
    ready, down, up = require(lab, "readyz", "metric_link_down", "metric_link_up")
    assert ready == 200
    assert (down, up) == (0.0, 1.0), "netdp_device_healthy for the NIC whose cable was pulled"
