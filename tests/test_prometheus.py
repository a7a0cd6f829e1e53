"""A real Prometheus scrapes the real `netdp run`, with netdp's alert rules loaded.

The daemon runs in a node namespace whose fake sysfs names real veth ends,
against the kubelet stand-in; Debian's Prometheus runs in the same namespace,
on its loopback, with its TSDB in the test's temp dir, scraping the daemon
every second and evaluating the rules every second. The test asks its HTTP
API what an operator would see: readiness going from 0 to 1 when the
kubelet appears, the pool's devices as the kubelet sees them, a link going
down as an unhealthy device, a stopped daemon as a target down, and the
alerts that go pending or fire on these real series.
"""

from __future__ import annotations

import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import pytest
from helpers import (
    cni_socket_call,
    in_netns,
    is_root,
    make_node_netns,
    namespaces,
    sh,
    start_daemon,
)
from prom import prometheus, promtool, values

from deviceplugin.cni import wire
from deviceplugin.sim.fakesysfs import virtio_lab
from deviceplugin.sim.kubelet import KubeletStandIn
from deviceplugin.sim.plugin_connection import Snapshot

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "daemonset" / "components" / "monitoring" / "netdp.rules.yaml"
VIRT = "kernel.org/virt"
NIC1, NIC2 = "0000:01:00.0", "0000:02:00.0"
NODE = "test-node"
TIMEOUT = 60  # Prometheus and the daemon share 2 busy cores with other tests

needs_root = pytest.mark.skipif(not is_root(), reason="needs root for network namespaces")


def health_counts(snap: Snapshot) -> dict[str, float]:
    """What the kubelet sees, as netdp_pool_devices should say it (both healths present)."""
    counts = Counter(d.health for d in snap.devices.values())
    return {"Healthy": float(counts["Healthy"]), "Unhealthy": float(counts["Unhealthy"])}


def alerts(result: list[dict]) -> list[tuple[str, str]]:
    return sorted((s["metric"]["alertname"], s["metric"]["alertstate"]) for s in result)


def fetch_in_netns(netns: str, url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with in_netns(netns), opener.open(url, timeout=10) as reply:
        return reply.read().decode()


@needs_root
def test_prometheus_sees_what_the_kubelet_sees(node, daemons, tmp_path) -> None:
    with namespaces() as nss:
        net = make_node_netns(nss, extra=2)
        net.links_up()
        virtio_lab(node.sysfs, net.extra, primary_netdev=net.uplink)
        cni_socket = tmp_path / "cni.sock"
        d = start_daemon(daemons, node, "--cni-socket", str(cni_socket), netns=net.ns)
        port = d.wait_event("metrics_server_started", timeout=TIMEOUT)["port"]

        with prometheus(
            tmp_path / "prometheus",
            targets=[f"127.0.0.1:{port}"],
            listen="127.0.0.1:9090",  # the node namespace is ours alone: any port is free
            rule_files=[RULES],
            labels={"node": NODE},
            netns=net.ns,
        ) as prom:
            # No kubelet yet: not ready, and the alert for it is on its way.
            prom.wait_for(
                'netdp_ready{job="netdp"}', lambda r: values(r, "node") == {NODE: 0}, TIMEOUT
            )
            prom.wait_for(
                'ALERTS{alertname="NetdpNotReady"}',
                lambda r: alerts(r) == [("NetdpNotReady", "pending")],
                TIMEOUT,
            )

            with KubeletStandIn(node.plugins) as kubelet:
                conn = kubelet.wait_registered(VIRT, timeout=TIMEOUT)
                prom.wait_for(
                    'netdp_ready{job="netdp"}', lambda r: values(r, "node") == {NODE: 1}, TIMEOUT
                )
                prom.wait_for('ALERTS{alertname="NetdpNotReady"}', lambda r: r == [], TIMEOUT)

                healthy = conn.wait_snapshot(lambda s: len(s.healthy) == 2, timeout=TIMEOUT)
                prom.wait_for(
                    f'netdp_pool_devices{{pool="{VIRT}"}}',
                    lambda r: values(r, "health") == health_counts(healthy),
                    TIMEOUT,
                )

                # The kubelet asks for a device the pool does not have: a real Allocate
                # error, and the alert without a `for:` fires.
                with pytest.raises(grpc.RpcError):
                    conn.allocate(["0000:99:00.0"])
                prom.wait_for(
                    'ALERTS{alertname="NetdpAllocateErrors"}',
                    lambda r: (
                        alerts(r) == [("NetdpAllocateErrors", "firing")]
                        and r[0]["metric"]["pool"] == VIRT
                        and r[0]["metric"]["node"] == NODE
                    ),
                    TIMEOUT,
                )

                # A CNI call through the daemon's socket is counted by command and result.
                request = wire.encode_request({"CNI_COMMAND": "VERSION"}, b"{}")
                answer = cni_socket_call(cni_socket, request)
                assert wire.decode_response(answer)[0] == 0
                prom.wait_for(
                    'netdp_cni_calls_total{command="VERSION"}',
                    lambda r: values(r, "result") == {"ok": 1},
                    TIMEOUT,
                )

                # The peer of NIC1's netdev goes down: no carrier, an unhealthy device.
                sh("ip", "-n", net.world, "link", "set", net.peers[0], "down")
                down = conn.wait_snapshot(
                    lambda s: s.healthy == {NIC2}, newer_than=healthy, timeout=TIMEOUT
                )
                prom.wait_for(
                    f'netdp_device_healthy{{pool="{VIRT}"}}',
                    lambda r: values(r, "pci_address") == {NIC1: 0, NIC2: 1},
                    TIMEOUT,
                )
                prom.wait_for(
                    f'netdp_pool_devices{{pool="{VIRT}"}}',
                    lambda r: values(r, "health") == health_counts(down),
                    TIMEOUT,
                )
                unhealthy = prom.wait_for(
                    'ALERTS{alertname="NetdpDeviceUnhealthy"}',
                    lambda r: alerts(r) == [("NetdpDeviceUnhealthy", "pending")],
                    TIMEOUT,
                )
                labels = unhealthy[0]["metric"]
                assert (labels["pci_address"], labels["netdev"]) == (NIC1, net.extra[0])
                assert (labels["pool"], labels["node"]) == (VIRT, NODE)

                # Every rule evaluated cleanly against the daemon's real series.
                groups = prom.get("/api/v1/rules")["groups"]
                rules = [r for g in groups for r in g["rules"]]
                assert len(rules) == len(RULES.read_text().split("- alert: ")) - 1
                assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules] == [
                    (r["name"], "ok", "") for r in rules
                ]
                # The daemon's own series carry the labels the rules expect.
                targets = prom.get("/api/v1/targets")["activeTargets"]
                assert [(t["labels"]["job"], t["health"]) for t in targets] == [("netdp", "up")]

                # promtool finds nothing to complain about in the live exposition.
                text = fetch_in_netns(net.ns, f"http://127.0.0.1:{port}/metrics")
                assert "netdp_cni_call_duration_seconds_bucket" in text
                check = promtool("check", "metrics", stdin=text)
                assert (check.returncode, check.stdout + check.stderr) == (0, "")

            # The daemon stops: its target is down and the alert for that is on its way;
            # the alert on its instant series goes with them. (NetdpAllocateErrors keeps
            # firing: increase() over its window still holds the samples from before.)
            assert d.stop()[0] == 0
            down = prom.wait_for(
                "ALERTS",
                lambda r: (
                    ("NetdpDown", "pending") in alerts(r)
                    and "NetdpDeviceUnhealthy" not in {name for name, _ in alerts(r)}
                ),
                TIMEOUT,
            )
            assert {s["metric"]["node"] for s in down} == {NODE}
