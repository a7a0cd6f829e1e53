"""The real `netdp run` process against the kubelet stand-in, on real unix sockets.

Each test builds a fake sysfs, starts the stand-in in a temp device-plugin
directory and the daemon as a child process, then drives it as the kubelet
would. Tests about the default route run the daemon inside a network
namespace of their own where a veth end carries the default route.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
import pytest
import yaml
from helpers import host_uplinks, is_root, make_node_netns, namespaces, run_netdp, start_daemon

from deviceplugin.kubelet import SAFETY_RECHECK_S
from deviceplugin.sim.fakesysfs import FakeSysfs, sriov_topology, virtio_lab
from deviceplugin.sim.kubelet import KubeletStandIn
from deviceplugin.sysfs import scan

VIRT = "kernel.org/virt"
REPO = Path(__file__).resolve().parents[1]
needs_root = pytest.mark.skipif(not is_root(), reason="needs root for network namespaces")


def test_virtio_lab_registers_and_allocates(node, kubelet, daemons) -> None:
    lab = virtio_lab(node.sysfs, ["ndpa", "ndpb", "ndpc"], primary_netdev="ndpuplink")
    assert lab  # built
    start_daemon(daemons, node)
    conn = kubelet.wait_registered(VIRT, timeout=10)
    assert conn.options.get_preferred_allocation_available
    assert not conn.options.pre_start_required
    snap = conn.wait_snapshot(lambda s: len(s.devices) == 4)
    # no default route on the fake uplink in this namespace: all four virtio NICs
    assert set(snap.devices) == {"0000:00:03.0", "0000:01:00.0", "0000:02:00.0", "0000:03:00.0"}
    assert all(v.health == "Healthy" for v in snap.devices.values())

    resp = conn.allocate(["0000:02:00.0"], ["0000:01:00.0", "0000:03:00.0"])
    first, second = (dict(r.envs) for r in resp.container_responses)
    assert first["PCIDEVICE_KERNEL_ORG_VIRT"] == "0000:02:00.0"
    assert second["PCIDEVICE_KERNEL_ORG_VIRT"] == "0000:01:00.0,0000:03:00.0"
    info = json.loads(first["PCIDEVICE_KERNEL_ORG_VIRT_INFO"])
    assert info == {"0000:02:00.0": {"generic": {"deviceID": "0000:02:00.0", "netdev": "ndpb"}}}
    devinfo = node.devinfo / "kernel.org-virt-0000:02:00.0-device.json"
    assert json.loads(devinfo.read_text())["pci"]["pci-address"] == "0000:02:00.0"

    with pytest.raises(grpc.RpcError) as err:
        conn.allocate(["0000:02:00.0", "0000:77:00.0"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "0000:77:00.0" in err.value.details()

    assert conn.preferred(sorted(snap.devices), ["0000:03:00.0"], 2)[0] == "0000:03:00.0"


@needs_root
def test_default_route_nic_is_excluded(node, kubelet, daemons) -> None:
    with namespaces() as nss:
        net = make_node_netns(nss, extra=2)
        virtio_lab(node.sysfs, net.extra, primary_netdev=net.uplink)
        d = start_daemon(daemons, node, netns=net.ns)
        conn = kubelet.wait_registered(VIRT, timeout=10)
        snap = conn.wait_snapshot(lambda s: len(s.devices) > 0)
        assert set(snap.devices) == {"0000:01:00.0", "0000:02:00.0"}
        excluded = d.wait_event("device_excluded")
        assert excluded["device"] == "0000:00:03.0"
        assert net.uplink in excluded["reason"]

        listing = run_netdp("list", "--json", "--sysfs-root", str(node.sysfs), netns=net.ns)
        assert listing.returncode == 0, listing.stderr
        rows = {r["pci"]: r for r in json.loads(listing.stdout)["devices"]}
        assert "default-route" in rows["0000:00:03.0"]["excluded"]
        assert rows["0000:01:00.0"]["pool"] == VIRT
        d.kill()


@needs_root
def test_pool_can_opt_into_default_route_nic(node, kubelet, daemons, tmp_path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "resourceList:\n"
        "- resourceName: all\n"
        "  resourcePrefix: kernel.org\n"
        "  allowDefaultRoute: true\n"
        "  selectors: {vendors: ['1af4']}\n"
    )
    with namespaces() as nss:
        net = make_node_netns(nss, extra=1)
        virtio_lab(node.sysfs, net.extra, primary_netdev=net.uplink)
        d = start_daemon(daemons, node, "--config", str(config), netns=net.ns)
        conn = kubelet.wait_registered("kernel.org/all", timeout=10)
        snap = conn.wait_snapshot(lambda s: len(s.devices) > 0)
        assert set(snap.devices) == {"0000:00:03.0", "0000:01:00.0"}
        d.kill()


def test_sriov_pool_by_pf_name_with_numa(node, kubelet, daemons, tmp_path) -> None:
    fs = sriov_topology(node.sysfs, pfs=2, vfs_per_pf=4, numa_nodes=2)
    vfs0 = fs.vfs_of("0000:01:00.0")
    fs.bind(vfs0[3], "vfio-pci")
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "resourceList": [
                    {
                        "resourceName": "dpdk",
                        "resourcePrefix": "example.com",
                        "selectors": {"drivers": ["vfio-pci"]},
                    },
                    {
                        "resourceName": "sriov_a",
                        "resourcePrefix": "example.com",
                        "selectors": {"pfNames": ["ens1f0#0-2"]},
                    },
                    {
                        "resourceName": "sriov_rest",
                        "resourcePrefix": "example.com",
                        "selectors": [{"rootDevices": ["0000:01:00.0"]}, {"pfNames": ["ens2f0"]}],
                    },
                ]
            }
        )
    )
    start_daemon(daemons, node, "--config", str(config))
    a = kubelet.wait_registered("example.com/sriov_a", timeout=10)
    rest = kubelet.wait_registered("example.com/sriov_rest", timeout=10)
    dpdk = kubelet.wait_registered("example.com/dpdk", timeout=10)
    snap_a = a.wait_snapshot(lambda s: len(s.devices) == 3)
    assert set(snap_a.devices) == set(vfs0[:3])
    assert all(v.numa_nodes == (0,) for v in snap_a.devices.values())
    snap_rest = rest.wait_snapshot(lambda s: len(s.devices) > 0)
    pf2 = scan(node.sysfs).by_netdev("ens2f0")
    assert pf2 is not None
    vfs1 = fs.vfs_of(pf2.pci_address)
    assert set(snap_rest.devices) == set(vfs1)
    assert all(v.numa_nodes == (1,) for v in snap_rest.devices.values())
    snap_dpdk = dpdk.wait_snapshot(lambda s: len(s.devices) == 1)
    assert set(snap_dpdk.devices) == {vfs0[3]}

    resp = dpdk.allocate([vfs0[3]])
    specs = [(s.host_path, s.container_path) for s in resp.container_responses[0].devices]
    assert specs[0] == ("/dev/vfio/vfio", "/dev/vfio/vfio")
    assert specs[1][0].startswith("/dev/vfio/") and len(specs) == 2


def test_kubelet_restart_reregisters_without_waiting_for_the_safety_net(
    node, kubelet, daemons
) -> None:
    """inotify, not the periodic safety recheck, brings the daemon back to a restarted
    kubelet: each re-registration comes well before the recheck could have fired (a
    bound generous enough for a loaded machine; it takes milliseconds when idle)."""
    virtio_lab(node.sysfs, 2, primary_netdev="ndpuplink")
    start_daemon(daemons, node)
    first = kubelet.wait_registered(VIRT, timeout=10)
    first.wait_snapshot(lambda s: len(s.devices) == 3)
    for _ in range(3):
        restarted = time.monotonic()
        kubelet.restart()
        again = kubelet.wait_registered(VIRT, timeout=SAFETY_RECHECK_S, newer_than=first)
        assert again.registered_at - restarted < SAFETY_RECHECK_S / 2
        snap = again.wait_snapshot(lambda s: len(s.devices) == 3)
        assert snap.healthy == frozenset(snap.devices)
        first = again


def test_waits_for_kubelet_then_registers(node, daemons) -> None:
    virtio_lab(node.sysfs, 1, primary_netdev="ndpuplink")
    d = start_daemon(daemons, node)
    d.wait_event("pool_server_started")
    d.wait_event("kubelet_socket_gone")  # it looked, found no kubelet, and waits
    with KubeletStandIn(node.plugins) as kubelet:
        conn = kubelet.wait_registered(VIRT, timeout=5)
        assert conn.wait_snapshot(lambda s: len(s.devices) == 2)


def test_refused_registration_is_retried_with_backoff(node, daemons) -> None:
    virtio_lab(node.sysfs, 1, primary_netdev="ndpuplink")
    refusals = []

    def reject(request):
        if len(refusals) < 2:
            refusals.append(time.monotonic())
            return "not today"
        return None

    with KubeletStandIn(node.plugins, reject=reject) as kubelet:
        d = start_daemon(daemons, node)
        conn = kubelet.wait_registered(VIRT, timeout=10)
        assert conn.wait_snapshot(lambda s: len(s.devices) == 2)
        failed = d.wait_event("registration_failed")
        assert "not today" in failed["reason"]
        assert refusals[1] - refusals[0] >= 0.4  # backed off, not hammering


def test_sigterm_cleans_up_within_the_grace_period(node, kubelet, daemons) -> None:
    """The DaemonSet gives the pod `terminationGracePeriodSeconds` before SIGKILL: the
    clean-up (sockets, device-info files) must be done well within it."""
    manifest = yaml.safe_load_all((REPO / "daemonset" / "daemonset.yaml").read_text())
    (ds,) = [doc for doc in manifest if doc and doc.get("kind") == "DaemonSet"]
    grace = ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    virtio_lab(node.sysfs, 2, primary_netdev="ndpuplink")
    d = start_daemon(daemons, node)
    conn = kubelet.wait_registered(VIRT, timeout=10)
    conn.wait_snapshot(lambda s: "0000:01:00.0" in s.devices)  # the kubelet allocates what it saw
    conn.allocate(["0000:01:00.0"])
    assert list(node.devinfo.glob("*.json"))
    code, took = d.stop(timeout=grace)
    assert code == 0
    assert took < grace / 2
    assert sorted(p.name for p in node.plugins.iterdir()) == ["kubelet.sock"]
    assert list(node.devinfo.glob("*.json")) == []


def test_device_inside_a_pod_keeps_capacity_across_restart(node, kubelet, daemons) -> None:
    fs = virtio_lab(node.sysfs, 3, primary_netdev="ndpuplink")
    d = start_daemon(daemons, node)
    conn = kubelet.wait_registered(VIRT, timeout=10)
    conn.wait_snapshot(lambda s: len(s.devices) == 4)
    d.stop()
    fs.move_netdev_out("0000:02:00.0")  # as if it were in a pod's namespace
    start_daemon(daemons, node)
    again = kubelet.wait_registered(VIRT, timeout=10, newer_than=conn)
    snap = again.wait_snapshot(lambda s: len(s.devices) == 4)
    assert snap.devices["0000:02:00.0"].health == "Healthy"


def test_a_nic_home_from_a_pod_is_named_in_info_before_the_next_scan(
    node, kubelet, daemons
) -> None:
    # The real kubelet handed a NIC to the next pod ~50 ms after the CNI DEL that brought
    # it home, before the rescan: the fake tree changes here without any event, so only
    # Allocate's own look at sysfs can find the name.
    fs = virtio_lab(node.sysfs, 3, primary_netdev="ndpuplink")
    fs.move_netdev_out("0000:02:00.0")
    start_daemon(daemons, node)
    conn = kubelet.wait_registered(VIRT, timeout=10)
    conn.wait_snapshot(lambda s: len(s.devices) == 4)
    info = json.loads(
        conn.allocate(["0000:02:00.0"])
        .container_responses[0]
        .envs["PCIDEVICE_KERNEL_ORG_VIRT_INFO"]
    )
    assert info["0000:02:00.0"]["generic"] == {"deviceID": "0000:02:00.0"}
    fs.return_netdev("0000:02:00.0", "ndpback")
    info = json.loads(
        conn.allocate(["0000:02:00.0"])
        .container_responses[0]
        .envs["PCIDEVICE_KERNEL_ORG_VIRT_INFO"]
    )
    assert info["0000:02:00.0"]["generic"] == {"deviceID": "0000:02:00.0", "netdev": "ndpback"}


def test_invalid_config_exits_before_touching_anything(node, kubelet, tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"resourceList": [{"resourceName": "Bad Name!"}]}))
    result = run_netdp("run", *node.args("--config", str(bad)))
    assert result.returncode == 2
    assert str(bad) in result.stderr and "resourceList[0].resourceName" in result.stderr
    assert sorted(p.name for p in node.plugins.iterdir()) == ["kubelet.sock"]
    assert kubelet.registrations == []
    check = run_netdp("config", "check", str(bad))
    assert check.returncode == 2 and "resourceName" in check.stderr


def test_config_check_ok_and_warns_about_shell_unfriendly_names(tmp_path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("resourceList:\n- resourceName: my-nic\n  selectors: {drivers: [igbvf]}\n")
    result = run_netdp("config", "check", str(good))
    assert result.returncode == 0, result.stderr
    assert "my-nic" in result.stdout
    assert "shell" in result.stderr


def test_list_on_fake_sysfs_table_and_json(tmp_path) -> None:
    fs = FakeSysfs(tmp_path / "sys")
    fs.add_pf("0000:05:00.0", netdev="ens5f0", total_vfs=4)
    fs.set_num_vfs("0000:05:00.0", 2)
    fs.add_virtio_nic("0000:00:04.0", "ndpv1")
    table = run_netdp("list", "--sysfs-root", str(tmp_path / "sys"))
    assert table.returncode == 0, table.stderr
    assert "PF with 2 VFs" in table.stdout or "VFs enabled" in table.stdout
    rows = json.loads(run_netdp("list", "--json", "--sysfs-root", str(tmp_path / "sys")).stdout)
    by_pci = {r["pci"]: r for r in rows["devices"]}
    assert by_pci["0000:00:04.0"]["pool"] == VIRT
    assert by_pci["0000:05:00.0"]["pool"] is None


def test_list_shows_the_health_the_daemon_advertises(node, kubelet, daemons) -> None:
    fs = virtio_lab(node.sysfs, ["ndpa", "ndpb"], primary_netdev="ndpuplink")
    fs.set_link("ndpb", operstate="lowerlayerdown", carrier=False)  # up, no carrier
    start_daemon(daemons, node)
    conn = kubelet.wait_registered(VIRT, timeout=10)
    snap = conn.wait_snapshot(lambda s: len(s.devices) == 3)
    listing = run_netdp("list", "--json", "--sysfs-root", str(node.sysfs))
    assert listing.returncode == 0, listing.stderr
    rows = {r["pci"]: r for r in json.loads(listing.stdout)["devices"]}
    assert {a: rows[a]["health"] for a in snap.devices} == {
        a: v.health for a, v in snap.devices.items()
    }
    assert rows["0000:02:00.0"]["health"] == "Unhealthy"
    assert "no carrier on ndpb" in rows["0000:02:00.0"]["health_reason"]
    table = run_netdp("list", "--sysfs-root", str(node.sysfs)).stdout
    line = next(x for x in table.splitlines() if x.startswith("0000:02:00.0"))
    assert line.endswith(f"{VIRT} (Unhealthy: no carrier on ndpb (link is up))")


def test_list_on_this_machine_excludes_the_uplink_untouched() -> None:
    """Smoke test on the real /sys: only reads; the host's default-route NIC, whatever its
    name and address (read from iproute2 and sysfs here), comes out excluded."""
    uplinks = [u for u in host_uplinks() if u.pci is not None]
    if not uplinks:
        pytest.skip(
            "no default-route interface of this host is a PCI function "
            f"({[u.name for u in host_uplinks()] or 'no default route'}): nothing to exclude"
        )
    result = run_netdp("list", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    rows = {r["pci"]: r for r in data["devices"]}
    for uplink in uplinks:
        assert uplink.name in data["default_route_interfaces"]
        assert rows[uplink.pci]["netdev"] == uplink.name
        assert "default-route" in rows[uplink.pci]["excluded"]
        assert os.path.exists(f"/sys/class/net/{uplink.name}")


def test_metrics_and_probes_of_the_real_daemon(node, daemons) -> None:
    from urllib.error import HTTPError
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    virtio_lab(node.sysfs, 2, primary_netdev="ndpuplink")
    d = start_daemon(daemons, node)
    port = d.wait_event("metrics_server_started")["port"]
    base = f"http://127.0.0.1:{port}"

    def scrape() -> dict[tuple[str, tuple], float]:
        text = urlopen(f"{base}/metrics", timeout=5).read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    def status(path: str) -> int:
        try:
            return urlopen(f"{base}{path}", timeout=5).status
        except HTTPError as err:
            return err.code

    assert status("/healthz") == 200
    assert status("/readyz") == 503  # no kubelet yet

    with KubeletStandIn(node.plugins) as kubelet:
        conn = kubelet.wait_registered(VIRT, timeout=10)
        conn.wait_snapshot(lambda s: len(s.devices) == 3)
        deadline = time.monotonic() + 5
        while status("/readyz") != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)
        conn.allocate(["0000:01:00.0", "0000:02:00.0"])
        values = scrape()
        pool = (("pool", VIRT),)
        assert values[("netdp_allocated_devices_total", pool)] == 2
        assert values[("netdp_pool_devices", (("health", "Healthy"), ("pool", VIRT)))] == 3
        assert values[("netdp_registrations_total", (("pool", VIRT), ("result", "success")))] >= 1
        with pytest.raises(grpc.RpcError):
            conn.allocate(["0000:99:00.0"])
        assert scrape()[("netdp_allocate_errors_total", pool)] == 1
