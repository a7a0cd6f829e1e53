"""The real `netdp run` following a changing node: link state, hot-plug, config reload.

Link-state tests run the daemon in a node namespace whose fake sysfs names
real veth ends; the test toggles the peer ends in another namespace, so the
kernel really drops the carrier. Hot-plug tests rewrite the fake sysfs and
then make the kernel emit real uevents (writing to a netdev's `uevent` file
inside the node namespace). Reload tests edit the config file on disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    DaemonProcess,
    is_root,
    make_node_netns,
    namespaces,
    run_netdp,
    sh,
    start_daemon,
)

from deviceplugin.config import load_config
from deviceplugin.daemon import Daemon, Settings
from deviceplugin.diff import NodeState
from deviceplugin.model import Health
from deviceplugin.observer import DaemonObserver
from deviceplugin.sim.fakesysfs import FakeSysfs, virtio_lab
from deviceplugin.sim.plugin_connection import Snapshot
from deviceplugin.watch import Uevent

VIRT = "kernel.org/virt"
NIC1, NIC2 = "0000:01:00.0", "0000:02:00.0"
needs_root = pytest.mark.skipif(not is_root(), reason="needs root for network namespaces")


def health_of(snap: Snapshot) -> dict[str, str]:
    return {i: v.health for i, v in snap.devices.items()}


def events(d: DaemonProcess, name: str) -> list[dict]:
    return [e for e in list(d.events) if e.get("event") == name]


def uevents(ns: str, netdev: str, count: int, action: str = "change") -> None:
    """`count` real kernel uevents for `netdev`, as fast as a shell loop writes them."""
    write = f"echo {action} > /sys/class/net/{netdev}/uevent"
    script = f"i=0; while [ $i -lt {count} ]; do {write}; i=$((i+1)); done"
    sh("ip", "netns", "exec", ns, "sh", "-c", script)


def write_config(path: Path, resources: list[dict]) -> None:
    """Write-then-rename, as editors and config management do."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"resourceList": resources}))
    tmp.rename(path)


# What the daemon logs when it changes what the kubelet sees.
CHANGES = frozenset(
    {"pool_added", "pool_removed", "pool_respecified", "pool_server_started", "registered"}
    | {"device_added", "device_removed", "device_health_changed", "list_and_watch_sent"}
)


def changes_before_next_reload(log: list[dict], event: dict) -> list[str]:
    """What changed for the kubelet after `event` (an object `wait_event` returned) and
    before the next reload began: the next reload is the marker that time has passed."""
    start = next(i for i, e in enumerate(log) if e is event) + 1
    end = next(i for i, e in enumerate(log[start:], start) if e["event"] == "config_reloaded")
    return [e["event"] for e in log[start:end] if e["event"] in CHANGES]


VIRT_POOL = {
    "resourceName": "virt",
    "resourcePrefix": "kernel.org",
    "selectors": {"vendors": ["1af4"]},
}


# --- link state --------------------------------------------------------------------


@needs_root
def test_link_down_and_up_reaches_the_kubelet(node, kubelet, daemons) -> None:
    with namespaces() as nss:
        net = make_node_netns(nss, extra=2)
        world, peers = net.world, net.peers
        net.links_up()
        virtio_lab(node.sysfs, net.extra, primary_netdev=net.uplink)
        d = start_daemon(daemons, node, netns=net.ns)
        conn = kubelet.wait_registered(VIRT, timeout=10)
        healthy = {NIC1: "Healthy", NIC2: "Healthy"}
        first = conn.wait_snapshot(lambda s: health_of(s) == healthy, timeout=10)
        mode = d.wait_event("live_updates")
        assert mode["netlink"] and mode["rescan_interval_s"] is None

        sh("ip", "-n", world, "link", "set", peers[0], "down")
        down = conn.wait_snapshot(
            lambda s: health_of(s) == {NIC1: "Unhealthy", NIC2: "Healthy"}, newer_than=first
        )
        change = d.wait_event("device_health_changed")
        assert (change["device"], change["pool"], change["health"]) == (NIC1, VIRT, "Unhealthy")
        assert change["netdev"] == net.extra[0] and "no carrier" in change["reason"]

        sh("ip", "-n", world, "link", "set", peers[0], "up")
        up = conn.wait_snapshot(lambda s: health_of(s) == healthy, newer_than=down)
        back = d.wait_event("device_health_changed", where=lambda e: e["health"] == "Healthy")

        # admin-down on the node side: not configured, still usable, no new snapshot.
        # Marker: the first NIC's cable is pulled afterwards; netlink reports in order, so
        # once that shows, the admin-down was handled, and nothing may have come before.
        count = len(conn.snapshots)
        sh("ip", "-n", net.ns, "link", "set", net.extra[1], "down")
        sh("ip", "-n", world, "link", "set", peers[0], "down")
        marker = conn.wait_snapshot(lambda s: health_of(s)[NIC1] == "Unhealthy", newer_than=up)
        assert health_of(marker) == {NIC1: "Unhealthy", NIC2: "Healthy"}
        assert conn.snapshots[count:] == [marker]
        d.wait_event(
            "device_health_changed",
            where=lambda e: e["health"] == "Unhealthy" and e is not change and e is not back,
        )
        assert [e["device"] for e in events(d, "device_health_changed")] == [NIC1] * 3
        assert events(d, "discovery_done")[-1]["trigger"] == "start"  # no sysfs rescans
        d.kill()


@needs_root
def test_pf_link_loss_marks_vfs_per_pool_option(node, kubelet, daemons, tmp_path) -> None:
    with namespaces() as nss:
        net = make_node_netns(nss, extra=1)
        world = net.ns.replace("-node-", "-world-")
        pf_netdev, peer = net.extra[0], f"w0{nss.tag}"
        sh("ip", "-n", net.ns, "link", "set", pf_netdev, "up")
        sh("ip", "-n", world, "link", "set", peer, "up")
        fs = FakeSysfs(node.sysfs)
        pf = fs.add_pf("0000:05:00.0", netdev=pf_netdev, total_vfs=4)
        vfs = fs.set_num_vfs(pf, 2)
        config = tmp_path / "config.json"
        write_config(
            config,
            [
                {"resourceName": "strict", "selectors": {"pfNames": [f"{pf_netdev}#0"]}},
                {
                    "resourceName": "lenient",
                    "pfLinkHealth": False,
                    "selectors": {"pfNames": [f"{pf_netdev}#1"]},
                },
            ],
        )
        start_daemon(daemons, node, "--config", str(config), netns=net.ns)
        strict = kubelet.wait_registered("intel.com/strict", timeout=10)
        lenient = kubelet.wait_registered("intel.com/lenient", timeout=10)
        strict.wait_snapshot(lambda s: health_of(s) == {vfs[0]: "Healthy"})
        lenient.wait_snapshot(lambda s: health_of(s) == {vfs[1]: "Healthy"})
        count = len(lenient.snapshots)

        sh("ip", "-n", world, "link", "set", peer, "down")
        strict.wait_snapshot(lambda s: health_of(s) == {vfs[0]: "Unhealthy"})
        sh("ip", "-n", world, "link", "set", peer, "up")
        strict.wait_snapshot(lambda s: health_of(s) == {vfs[0]: "Healthy"})
        # Marker on the lenient pool's own stream: its VF loses its driver afterwards. Any
        # snapshot the PF's flaps had caused would have reached the kubelet before it.
        fs.bind(vfs[1], None)
        uevents(net.ns, pf_netdev, 1)
        marker = lenient.wait_snapshot(lambda s: health_of(s) == {vfs[1]: "Unhealthy"})
        assert lenient.snapshots[count:] == [marker]


# --- hot-plug ----------------------------------------------------------------------


@needs_root
def test_vf_burst_is_one_rescan_and_one_snapshot(node, kubelet, daemons, tmp_path) -> None:
    with namespaces() as nss:
        net = make_node_netns(nss, extra=1)
        trigger = net.extra[0]
        fs = virtio_lab(node.sysfs, [trigger], primary_netdev=net.uplink)
        pf = fs.add_pf("0000:40:00.0", netdev="ens40f0", total_vfs=64)
        config = tmp_path / "config.json"
        vf_pool = {"resourceName": "vf", "selectors": {"pfNames": ["ens40f0"]}}
        write_config(config, [vf_pool, VIRT_POOL])
        d = start_daemon(daemons, node, "--config", str(config), netns=net.ns)
        sriov = kubelet.wait_registered("intel.com/vf", timeout=10)
        virt = kubelet.wait_registered(VIRT, timeout=10)
        first = sriov.wait_snapshot(lambda s: set(s.devices) == {pf})
        virt.wait_snapshot(lambda s: set(s.devices) == {NIC1})
        virt_count = len(virt.snapshots)

        vfs = fs.set_num_vfs(pf, 64)
        uevents(net.ns, trigger, 64, "add")
        burst = sriov.wait_snapshot(lambda s: set(s.devices) == set(vfs), newer_than=first)
        assert d.wait_event("device_excluded", where=lambda e: e["device"] == pf)

        # The removal burst is also the marker for the first: whatever the first burst
        # caused came before it, in the kubelet's stream and in the daemon's log.
        fs.set_num_vfs(pf, 0)
        uevents(net.ns, trigger, 64, "remove")
        gone = sriov.wait_snapshot(lambda s: set(s.devices) == {pf}, newer_than=burst)
        # The kubelet may see the snapshot before the log says why: wait for the rescan's
        # last line (uplink, NIC1 and the PF are left), which follows its device events.
        d.wait_event(
            "discovery_done", where=lambda e: e["trigger"] == "uevent" and e["devices"] == 3
        )
        first_at = sriov.snapshots.index(first)
        assert sriov.snapshots[first_at + 1 :] == [burst, gone]  # one snapshot per burst
        rescans = [e for e in events(d, "discovery_done") if e["trigger"] == "uevent"]
        assert rescans[0]["events"] == 64  # the first burst was one rescan
        assert rescans[0]["changed_pools"] == ["intel.com/vf"]
        assert sum(r["events"] for r in rescans) == 128 and rescans[-1]["devices"] == 3
        assert all(r["changed_pools"] in ([], ["intel.com/vf"]) for r in rescans)
        assert len(virt.snapshots) == virt_count  # the other pool never changed
        added = [e["device"] for e in events(d, "device_added") if e["device"] in vfs]
        assert sorted(added) == sorted(vfs)  # each VF once
        assert len([e for e in events(d, "device_removed") if e["device"] in vfs]) == 64


@needs_root
def test_unplug_and_driver_unbind(node, kubelet, daemons) -> None:
    with namespaces() as nss:
        net = make_node_netns(nss, extra=2)
        fs = virtio_lab(node.sysfs, net.extra, primary_netdev=net.uplink)
        start_daemon(daemons, node, netns=net.ns)
        conn = kubelet.wait_registered(VIRT, timeout=10)
        snap = conn.wait_snapshot(lambda s: set(s.devices) == {NIC1, NIC2})
        fs.bind(NIC2, None)  # driver unbound: kept, but Unhealthy
        uevents(net.ns, net.extra[0], 1)
        snap = conn.wait_snapshot(
            lambda s: health_of(s) == {NIC1: "Healthy", NIC2: "Unhealthy"}, newer_than=snap
        )
        fs.remove(NIC1)
        uevents(net.ns, net.extra[0], 1)  # a netdev the daemon knows: relevant
        conn.wait_snapshot(lambda s: set(s.devices) == {NIC2}, newer_than=snap)


# --- config reload -----------------------------------------------------------------


def test_reload_valid_invalid_and_pool_removal(node, kubelet, daemons, tmp_path) -> None:
    virtio_lab(node.sysfs, 2, primary_netdev="ndpuplink")
    config = tmp_path / "config.json"
    write_config(config, [VIRT_POOL])
    d = start_daemon(daemons, node, "--config", str(config))
    virt = kubelet.wait_registered(VIRT, timeout=10)
    snap = virt.wait_snapshot(lambda s: len(s.devices) == 3)

    # a new pool takes NIC2 away from virt: announced in both
    other = {**VIRT_POOL, "resourceName": "other", "selectors": {"pciAddresses": [NIC2]}}
    write_config(config, [other, VIRT_POOL])
    moved = d.wait_event("config_reloaded")
    assert moved["added"] == ["kernel.org/other"] and moved["trigger"] == "config-file"
    conn_other = kubelet.wait_registered("kernel.org/other", timeout=5)
    conn_other.wait_snapshot(lambda s: set(s.devices) == {NIC2})
    snap = virt.wait_snapshot(lambda s: NIC2 not in s.devices and len(s.devices) == 2)
    added = d.wait_event("device_added", where=lambda e: e["pool"] == "kernel.org/other")
    assert (added["device"], added["previous"]) == (NIC2, VIRT)

    # invalid: the same message as at start, and everything keeps running
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"resourceList": [{"resourceName": "Bad Name!"}]}))
    at_start = run_netdp("config", "check", str(bad)).stderr.strip()
    registrations = len(kubelet.registrations)
    config.write_text(bad.read_text())
    failed = d.wait_event("config_reload_failed")
    assert failed["error"].replace(str(config), str(bad)) in at_start
    assert "resourceList[0].resourceName" in failed["error"]

    # pool removed: its socket goes away and the kubelet's stream ends. This valid reload
    # is also the marker for the invalid one: up to it, nothing changed.
    write_config(config, [VIRT_POOL])
    assert conn_other.wait_stream_end(timeout=5) is not None
    assert not (node.plugins / "netdp-kernel.org_other.sock").exists()
    removed = d.wait_event("pool_removed")
    assert removed["pool"] == "kernel.org/other"
    assert changes_before_next_reload(list(d.events), failed) == []
    assert virt.stream_end is None and len(kubelet.registrations) == registrations
    virt.wait_snapshot(lambda s: len(s.devices) == 3, newer_than=snap)
    assert sorted(p.name for p in node.plugins.iterdir()) == [
        "kubelet.sock",
        "netdp-kernel.org_virt.sock",
    ]


def test_changed_pool_settings_reregister_only_when_the_kubelet_saw_them(
    node, kubelet, daemons, tmp_path
) -> None:
    """NUMA affinity was part of the registration's snapshots; pfLinkHealth was not."""
    fs = FakeSysfs(node.sysfs)
    fs.add_virtio_nic(NIC1, "ndpnuma", numa_node=1)
    config = tmp_path / "config.json"
    write_config(config, [VIRT_POOL])
    d = start_daemon(daemons, node, "--config", str(config))
    virt = kubelet.wait_registered(VIRT, timeout=10)
    assert virt.wait_snapshot(lambda s: NIC1 in s.devices).devices[NIC1].numa_nodes == (1,)

    write_config(config, [{**VIRT_POOL, "pfLinkHealth": False}])
    quiet = d.wait_event("pool_respecified")
    assert (quiet["pool"], quiet["reregister"]) == (VIRT, False)

    # The loud change is the marker for the quiet one: only it registers again.
    write_config(config, [{**VIRT_POOL, "pfLinkHealth": False, "excludeTopology": True}])
    loud = d.wait_event("pool_respecified", where=lambda e: e["reregister"])
    assert loud["pool"] == VIRT
    again = kubelet.wait_registered(VIRT, timeout=5, newer_than=virt)
    assert again.wait_snapshot(lambda s: NIC1 in s.devices).devices[NIC1].numa_nodes == ()
    assert len(kubelet.registrations) == 2
    assert changes_before_next_reload(list(d.events), quiet) == []


def test_configmap_symlink_swap_is_a_reload(node, kubelet, daemons, tmp_path) -> None:
    """The kubelet updates a ConfigMap volume by renaming a new `..data` symlink into place."""
    virtio_lab(node.sysfs, 2, primary_netdev="ndpuplink")
    volume = tmp_path / "cm"
    volume.mkdir()

    def publish(version: str, resources: list[dict]) -> None:
        data = volume / version
        data.mkdir()
        (data / "config.json").write_text(json.dumps({"resourceList": resources}))
        os.symlink(version, volume / "..data_tmp")
        os.rename(volume / "..data_tmp", volume / "..data")

    publish("..v1", [VIRT_POOL])
    (volume / "config.json").symlink_to("..data/config.json")
    d = start_daemon(daemons, node, "--config", str(volume / "config.json"))
    virt = kubelet.wait_registered(VIRT, timeout=10)
    virt.wait_snapshot(lambda s: len(s.devices) == 3)

    narrow = {**VIRT_POOL, "selectors": {"pciAddresses": [NIC1]}}
    publish("..v2", [narrow])
    virt.wait_snapshot(lambda s: set(s.devices) == {NIC1})
    assert d.wait_event("config_reloaded")["trigger"] == "config-file"


def test_sighup_rereads_config_and_rescans(node, kubelet, daemons, tmp_path) -> None:
    fs = virtio_lab(node.sysfs, 1, primary_netdev="ndpuplink")
    d = start_daemon(daemons, node)  # the built-in config: nothing to re-read, still a rescan
    virt = kubelet.wait_registered(VIRT, timeout=10)
    snap = virt.wait_snapshot(lambda s: len(s.devices) == 2)
    fs.add_virtio_nic("0000:09:00.0", "ndpnew")  # a fake sysfs change: no uevent
    d.proc.send_signal(signal.SIGHUP)
    virt.wait_snapshot(lambda s: "0000:09:00.0" in s.devices, newer_than=snap)
    assert d.wait_event("discovery_done", where=lambda e: e["trigger"] == "sighup")
    code, _ = d.stop()
    assert code == 0


def test_periodic_fallback(node, kubelet, daemons) -> None:
    fs = virtio_lab(node.sysfs, 1, primary_netdev="ndpuplink")
    d = start_daemon(daemons, node, "--watch", "periodic", "--rescan-interval", "0.2")
    mode = d.wait_event("live_updates")
    assert mode["rescan_interval_s"] == 0.2 and not mode["netlink"] and mode["uevents"] is None
    assert "periodic rescan every 0.2 s" in mode["mode"]
    virt = kubelet.wait_registered(VIRT, timeout=10)
    snap = virt.wait_snapshot(lambda s: len(s.devices) == 2)
    fs.add_virtio_nic("0000:09:00.0", "ndpnew")
    virt.wait_snapshot(lambda s: "0000:09:00.0" in s.devices, newer_than=snap, timeout=3)
    fs.set_link("ndpnew", operstate="lowerlayerdown", carrier=False)  # health from sysfs
    virt.wait_snapshot(lambda s: s.devices["0000:09:00.0"].health == "Unhealthy", timeout=3)


def test_list_says_which_mode(node) -> None:
    virtio_lab(node.sysfs, 1, primary_netdev="ndpuplink")
    table = run_netdp("list", "--sysfs-root", str(node.sysfs), "--watch", "periodic")
    assert table.returncode == 0, table.stderr
    assert "live updates: periodic rescan every 30 s" in table.stdout
    data = json.loads(run_netdp("list", "--json", "--sysfs-root", str(node.sysfs)).stdout)
    assert data["live_updates"]["netlink"] is is_root() or data["live_updates"]["problems"]
    bad = run_netdp("run", *node.args("--rescan-interval", "soon"))
    assert bad.returncode == 2 and "--rescan-interval" in bad.stderr


# --- in process: the event interface and the observer ---------------------------------


class Recorder(DaemonObserver):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def events_received(self, source: str, count: int) -> None:
        self.calls.append(("received", source, count))

    def events_coalesced(self, source: str, count: int) -> None:
        self.calls.append(("coalesced", source, count))

    def discovery_done(self, trigger: str, seconds: float, devices: int) -> None:
        self.calls.append(("discovery", trigger, devices))

    def reload_done(self, ok: bool) -> None:
        self.calls.append(("reload", ok))

    def health_changed(self, resource: str, device: str, health: Health) -> None:
        self.calls.append(("health", resource, device, health))

    def state_applied(self, state: NodeState) -> None:
        self.calls.append(("state", {r: len(p.devices) for r, p in state.pools.items()}))

    def of(self, kind: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == kind]


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait for `condition` to hold, checking every few milliseconds; fail after `timeout`."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def test_event_interface_and_observer_in_process(node, tmp_path) -> None:
    fs = virtio_lab(node.sysfs, ["ndpa", "ndpb"], primary_netdev="ndpuplink")
    config = tmp_path / "config.json"
    write_config(config, [VIRT_POOL])
    rec = Recorder()

    async def main() -> None:
        daemon = Daemon(
            load_config(config),
            Settings(node.plugins, node.sysfs, None, config_path=config),
            routes=frozenset,
            observer=rec,
        )
        try:
            await daemon.refresh()
            assert rec.of("state") == [("state", {VIRT: 3})]
            fs.set_link("ndpa", operstate="lowerlayerdown", carrier=False)
            fs.add_virtio_nic("0000:09:00.0", "ndpnew")
            pod_veth = Uevent("add", "net", "/devices/virtual/net/veth9", {"INTERFACE": "veth9"})
            daemon.on_uevent(pod_veth)  # not ours: ignored
            ndpb = Uevent("change", "net", "/devices/virtual/net/ndpb", {})
            for _ in range(256):
                daemon.on_uevent(ndpb)
            await until(lambda: len(rec.of("discovery")) == 2)
            # Marker: one more uevent; its rescan comes after anything the burst left over.
            daemon.on_uevent(ndpb)
            await until(lambda: len(rec.of("discovery")) == 3)
            assert rec.of("discovery")[1:] == [("discovery", "uevent", 4)] * 2
            assert rec.of("coalesced") == [("coalesced", "uevent", 255), ("coalesced", "uevent", 0)]
            assert len(rec.of("received")) == 257
            assert rec.of("health") == [("health", VIRT, NIC1, Health.UNHEALTHY)]
            assert rec.of("state")[-1] == ("state", {VIRT: 4})
            servers = daemon.servers[VIRT]
            assert servers.health[NIC1] is Health.UNHEALTHY

            write_config(config, [{**VIRT_POOL, "resourceName": "renamed"}])
            assert await daemon.reload("sighup")
            config.write_text("{")
            assert not await daemon.reload("sighup")
            assert rec.of("reload") == [("reload", True), ("reload", False)]
            assert list(daemon.servers) == ["kernel.org/renamed"]
            assert not (node.plugins / "netdp-kernel.org_virt.sock").exists()
        finally:
            await daemon.shutdown()

    asyncio.run(asyncio.wait_for(main(), 20))
