"""Live state of the real `netdp run`: link-flap latency, a VF burst, idle CPU.

One node namespace plays the node: a fake sysfs with 4 PFs x 256 VFs (1024
advertised devices), a fifth PF with 256 VFs still to create, and a virtio
NIC whose netdev is a real veth end. The daemon runs inside that namespace
against the in-process kubelet stand-in.

- idle CPU: the daemon's user+system time over `--idle` seconds once settled;
- link down → ListAndWatch: the veth's peer (in another namespace) is set
  down over netlink, and the time until the stand-in holds the Unhealthy
  snapshot is measured, `--toggles` times (each followed by an up, also timed);
  the daemon's own share comes from its debug log (`links_applied`);
- burst: `sriov_numvfs` 0 → 256 in the fake sysfs, then 256 real kernel
  uevents from a shell loop; counts the snapshots and times the one that comes.

    sudo python benchmarks/bench_live.py [--toggles 200] [--idle 60]

Needs root and iproute2. Prints a markdown table; nothing here is a CI gate.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, child_env, compile_package, cpu_seconds, quantile, sh
from pyroute2 import IPRoute

from deviceplugin.sim.fakesysfs import sriov_topology, tmpfs_tempdir
from deviceplugin.sim.kubelet import KubeletStandIn
from deviceplugin.sim.plugin_connection import PluginConnection, Snapshot

VF_POOL, BURST_POOL, LINK_POOL = "bench.io/vf", "bench.io/burst", "bench.io/link"
LINK_NIC = "0000:30:00.0"
BURST_PF = "0000:40:00.0"


class Node:
    """Namespaces, veth, fake sysfs and config; everything removed by `close`."""

    def __init__(self, root: Path) -> None:
        tag = secrets.token_hex(3)
        self.ns, self.world = f"bl-node-{tag}", f"bl-world-{tag}"
        self.nic, self.peer = f"bln{tag}", f"blw{tag}"
        self.namespaces: list[str] = []
        for ns in (self.ns, self.world):
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
        # Distinct ifindexes: the kernel (linkwatch) treats a veth whose peer has the same
        # index number, as it does in two fresh namespaces, like a physical NIC and
        # batches its carrier-down notification up to a second; see the report.
        sh("ip", "-n", self.ns, "link", "add", "name", self.nic, "index", "40", "type", "veth",
           "peer", "name", self.peer, "index", "41", "netns", self.world)  # fmt: skip
        sh("ip", "-n", self.ns, "link", "set", self.nic, "up")
        sh("ip", "-n", self.world, "link", "set", self.peer, "up")
        self.root = root
        self.sysfs = root / "sys"
        self.plugins = root / "dp"
        self.plugins.mkdir()
        self.fs = sriov_topology(self.sysfs, pfs=4, vfs_per_pf=256)
        self.fs.add_pf(BURST_PF, netdev="ens40f0", total_vfs=256)
        self.fs.add_virtio_nic(LINK_NIC, self.nic)
        self.config = root / "config.json"
        pools = [
            ("burst", {"pfNames": ["ens40f0"]}),
            ("vf", {"drivers": ["igbvf"]}),
            ("link", {"vendors": ["1af4"]}),
        ]
        self.config.write_text(
            json.dumps(
                {
                    "resourceList": [
                        {"resourceName": n, "resourcePrefix": "bench.io", "selectors": s}
                        for n, s in pools
                    ]
                }
            )
        )

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def start_daemon(node: Node, log: Path) -> subprocess.Popen[bytes]:
    command = [
        "ip", "netns", "exec", node.ns, sys.executable, "-m", "deviceplugin", "run",
        "--config", str(node.config),
        "--sysfs-root", str(node.sysfs),
        "--device-plugin-path", str(node.plugins),
        "--devinfo-dir", "",
        "--log-level", "debug", "--log-format", "json",
        "--metrics-address", "127.0.0.1:0", "--cni-socket", "",
    ]  # fmt: skip
    with log.open("w") as stderr:
        return subprocess.Popen(command, cwd=REPO, env=child_env(), stderr=stderr)


def relink_seconds(log: Path) -> list[float]:
    """The daemon's own share of a link flap: netlink event to pool servers updated."""
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and '"links_applied"' in line:
            out.append(json.loads(line)["duration_ms"] / 1000)
    return out


def measure_idle(pid: int, seconds: float) -> float:
    """Percent of one core."""
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    used, elapsed = cpu_seconds(pid) - before, time.monotonic() - started
    return 100 * used / elapsed


def measure_links(node: Node, conn: PluginConnection, toggles: int) -> dict[str, list[float]]:
    """Seconds from the netlink request that sets the peer down (up) to the stand-in's snapshot."""
    out: dict[str, list[float]] = {"down": [], "up": []}
    with IPRoute(netns=node.world) as ipr:
        index = ipr.link_lookup(ifname=node.peer)[0]
        last: Snapshot | None = conn.latest()
        for _ in range(toggles):
            for state, health in (("down", "Unhealthy"), ("up", "Healthy")):
                started = time.monotonic()
                ipr.link("set", index=index, state=state)
                last = conn.wait_snapshot(
                    lambda s, h=health: s.devices[LINK_NIC].health == h,
                    newer_than=last,
                    timeout=5,
                )
                out[state].append(last.at - started)
    return out


def measure_burst(node: Node, conn: PluginConnection) -> tuple[float, float, int]:
    """(seconds from the first event, seconds from the last, snapshots sent) for 256 VFs."""
    first = conn.latest()
    vfs = node.fs.set_num_vfs(BURST_PF, 256)
    write = f"echo add > /sys/class/net/{node.nic}/uevent"
    script = f"i=0; while [ $i -lt 256 ]; do {write}; i=$((i+1)); done"
    started = time.monotonic()
    sh("ip", "netns", "exec", node.ns, "sh", "-c", script)
    ended = time.monotonic()
    snap = conn.wait_snapshot(lambda s: set(s.devices) == set(vfs), newer_than=first, timeout=10)
    time.sleep(1.0)  # anything else would come now
    snapshots = conn.snapshots
    count = len(snapshots) - snapshots.index(first) - 1 if first else len(snapshots)
    return snap.at - started, snap.at - ended, count


def row(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"| {name} | {len(ms)} | {statistics.median(ms):.2f} | {quantile(ms, 0.99):.2f} "
        f"| {max(ms):.2f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toggles", type=int, default=200, help="link down+up cycles")
    parser.add_argument("--idle", type=float, default=60.0, help="idle CPU window, seconds")
    args = parser.parse_args()
    compile_package()
    with tmpfs_tempdir("bl-") as root:
        node = Node(root)
        daemon = None
        try:
            with KubeletStandIn(node.plugins) as kubelet:
                started = time.monotonic()
                daemon = start_daemon(node, root / "daemon.log")
                vf = kubelet.wait_registered(VF_POOL, timeout=60)
                vf.wait_snapshot(lambda s: len(s.devices) == 1024, timeout=60)
                link = kubelet.wait_registered(LINK_POOL, timeout=10)
                burst = kubelet.wait_registered(BURST_POOL, timeout=10)
                burst.wait_snapshot(lambda s: set(s.devices) == {BURST_PF}, timeout=10)
                ready = time.monotonic() - started
                time.sleep(2.0)  # settle: registration, first ListAndWatch
                idle = measure_idle(daemon.pid, args.idle)
                links = measure_links(node, link, args.toggles)
                from_first, from_last, snapshots = measure_burst(node, burst)
        finally:
            if daemon is not None:
                daemon.terminate()
                daemon.wait(timeout=10)
            node.close()
        relinks = relink_seconds(root / "daemon.log")
    print(f"\nnetdp live state, {os.cpu_count()} CPUs, daemon start to 1024 VFs advertised: "
          f"{ready:.2f} s\n")  # fmt: skip
    print("| measurement | n | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    print(row("link down → Unhealthy at the stand-in", links["down"]))
    print(row("link up → Healthy at the stand-in", links["up"]))
    print(row("of which in the daemon: link event → servers updated", relinks))
    print(f"| 256 VF uevents → snapshot (from first event) | 1 | {from_first * 1000:.0f} | | |")
    print(f"| 256 VF uevents → snapshot (from last event) | 1 | {from_last * 1000:.0f} | | |")
    print(f"\nsnapshots sent for the 256-VF burst: {snapshots}")
    print(f"idle CPU over {args.idle:g} s with 1029 devices: {idle:.3f} % of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
