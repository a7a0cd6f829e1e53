"""ADD, DEL and VERSION whole-process latency: ehost-device beside Go host-device.

Each cycle runs ADD, DEL and VERSION for both plugins in turn on the same
veth-backed "NIC", the same pod namespace and the same host-local config
(each with its own data dir), so drift on the machine hits both alike.
Latency is the wall time of the plugin process as a runtime sees it (fork,
exec, answer). ehost-device is installed with `netdp install-cni` and
forwards to a `netdp run` started here.

The machine's own namespace is never used: the script makes a throwaway
"node" namespace holding the NIC (its peer in a second one) and a pod
namespace, then runs its measuring half as a process of the node (`ip netns
exec`), so the daemon, ehost-device and Go's host-device all treat the node as
their host and see its links in /sys/class/net, while each timed call stays a
plain fork and exec, with no namespace switch in it.

    sudo python benchmarks/bench_cni.py [--cycles 200]

Needs root, iproute2 and Debian's containernetworking-plugins in /usr/lib/cni.
Prints a markdown table and the machine's load (`uptime`: the machine may be
shared); nothing here is a CI gate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, quantile, sh  # first: it puts the repo on sys.path

from deviceplugin.cni.forwarder_build import ensure_in_place
from deviceplugin.cni.install import install_forwarder
from deviceplugin.sim.fakesysfs import FakeSysfs, tmpfs_tempdir

SCRIPT = Path(__file__).resolve()

CNI_BIN = "/usr/lib/cni"
PCI = "0000:00:05.0"


class Lab:
    """The namespaces and the NIC, made and removed from outside the node."""

    def __init__(self) -> None:
        suffix = secrets.token_hex(3)
        self.node, self.peer, self.pod = f"bcn-{suffix}", f"bcp-{suffix}", f"bcd-{suffix}"
        self.nic = f"bh{suffix}"
        self.made: list[str] = []
        try:
            for ns in (self.node, self.peer, self.pod):
                sh("ip", "netns", "add", ns)
                self.made.append(ns)
            # Created in the node with its peer in place: never a link in the machine's namespace.
            sh("ip", "-n", self.node, "link", "add", self.nic, "type", "veth",
               "peer", "name", f"bp{suffix}", "netns", self.peer)  # fmt: skip
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        # After an interrupt the measuring half or its daemon may still run in the node,
        # which would keep the namespace alive: all ours, stopped by pid.
        pids = subprocess.run(["ip", "netns", "pids", self.node], capture_output=True, text=True)
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made.clear()


class Bench:
    """The measuring half, run as a process of the lab's node namespace."""

    def __init__(self, tmp: Path, nic: str, pod: str) -> None:
        self.tmp, self.nic, self.pod = tmp, nic, pod
        self.sysfs = tmp / "sys"
        self.socket = tmp / "cni.sock"
        self.daemon: subprocess.Popen[bytes] | None = None
        FakeSysfs(self.sysfs).add_virtio_nic(PCI, self.nic)
        self.plugin = install_forwarder(tmp / "bin").path

    def start_daemon(self) -> None:
        self.daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deviceplugin",
                "run",
                "--cni-socket",
                str(self.socket),
                "--sysfs-root",
                str(self.sysfs),
                "--device-plugin-path",
                str(self.tmp / "device-plugins"),
                "--devinfo-dir",
                "",
                "--metrics-address",
                "0",
                "--log-level",
                "warning",
                "--log-format",
                "json",
            ],
            cwd=REPO,
            env={
                **os.environ,
                "PYTHONPATH": str(REPO),
                "NETDP_CNI_LOCK_DIR": str(self.tmp / "locks"),
            },
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while not self.socket.exists():
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("CNI server did not start")
            time.sleep(0.02)

    def conf(self, plugin: str) -> bytes:
        device = {"device": self.nic} if plugin == "host-device" else {"deviceID": PCI}
        return json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "bench",
                "type": "host-device" if plugin == "host-device" else "ehost-device",
                **device,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(self.tmp / f"ipam-{plugin}"),
                    "ranges": [[{"subnet": "10.88.0.0/24", "gateway": "10.88.0.1"}]],
                    "routes": [{"dst": "10.89.0.0/16"}],
                },
            }
        ).encode()

    def call(self, plugin: str, command: str) -> float:
        binary = f"{CNI_BIN}/host-device" if plugin == "host-device" else str(self.plugin)
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": "bench",
            "CNI_NETNS": f"/run/netns/{self.pod}",
            "CNI_IFNAME": "net1",
            "CNI_PATH": CNI_BIN,
            "NETDP_CNI_SOCKET": str(self.socket),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        start = time.perf_counter()
        proc = subprocess.run([binary], input=self.conf(plugin), env=env, capture_output=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{plugin} {command} failed: {proc.stdout!r} {proc.stderr!r}")
        return elapsed * 1000

    def close(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            os.killpg(self.daemon.pid, signal.SIGTERM)
            self.daemon.wait(timeout=10)


PLUGINS = ("host-device", "ehost-device")
COMMANDS = ("ADD", "DEL", "VERSION")


def run(cycles: int, tmp: Path, nic: str, pod: str) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {p: {c: [] for c in COMMANDS} for p in PLUGINS}
    bench = Bench(tmp, nic, pod)
    try:
        bench.start_daemon()
        for plugin in PLUGINS:  # warm-up: page cache, daemon's first request
            bench.call(plugin, "ADD")
            bench.call(plugin, "DEL")
        for _ in range(cycles):
            for plugin in PLUGINS:
                for command in COMMANDS:
                    samples[plugin][command].append(bench.call(plugin, command))
    finally:
        bench.close()
    return samples


def table(samples: dict[str, dict[str, list[float]]], cycles: int) -> str:
    go = samples["host-device"]
    lines = [
        f"Whole-process latency, {cycles} interleaved cycles, host-local IPAM, ms",
        "(VERSION: starting the plugin process and answering, no device work)",
        "",
        "| plugin | command | median | p95 | median / Go | p95 / Go |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for plugin in PLUGINS:
        for command in COMMANDS:
            values = samples[plugin][command]
            med, p95 = statistics.median(values), quantile(values, 0.95)
            go_med, go_p95 = statistics.median(go[command]), quantile(go[command], 0.95)
            lines.append(
                f"| {plugin} | {command} | {med:.2f} | {p95:.2f} | "
                f"{med / go_med:.2f}x | {p95 / go_p95:.2f}x |"
            )
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lines += ["", f"load (uptime, after the run): {load}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=200, help="ADD+DEL cycles per plugin")
    # The measuring half, as the script starts it inside the node: TMP NIC POD.
    parser.add_argument("--in-node", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_node:
        tmp, nic, pod = args.in_node
        print(table(run(args.cycles, Path(tmp), nic, pod), args.cycles))
        return
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    ensure_in_place()  # this checkout's ehost-device binary, rebuilt if its source is newer
    with tmpfs_tempdir("ndpc-") as tmp:
        lab = Lab()
        try:
            inside = [sys.executable, str(SCRIPT), "--cycles", str(args.cycles),
                      "--in-node", str(tmp), lab.nic, lab.pod]  # fmt: skip
            code = subprocess.run(["ip", "netns", "exec", lab.node, *inside]).returncode
        finally:
            lab.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
