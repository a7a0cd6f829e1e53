"""ADD and DEL whole-process latency: ehost-device (daemon, in-process) beside Go host-device.

Each cycle runs ADD then DEL for every plugin in turn on the same veth-backed
"NIC", the same pod namespace and the same host-local config (each with its
own data dir), so drift on the machine hits all of them alike. Latency is the
wall time of the plugin process as a runtime sees it (fork, exec, answer).

    sudo python benchmarks/bench_cni.py [--cycles 200]

Needs root, iproute2 and Debian's containernetworking-plugins in /usr/lib/cni.
Prints a markdown table; nothing here is a CI gate.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deviceplugin.cni.install import install_shim  # noqa: E402
from deviceplugin.sim.fakesysfs import FakeSysfs  # noqa: E402

CNI_BIN = "/usr/lib/cni"
PCI = "0000:00:05.0"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bench:
    def __init__(self, tmp: Path) -> None:
        suffix = secrets.token_hex(3)
        self.tmp = tmp
        self.peer, self.pod = f"bcp-{suffix}", f"bcn-{suffix}"
        self.nic, peer_end = f"bh{suffix}", f"bp{suffix}"
        self.sysfs = tmp / "sys"
        self.socket = tmp / "cni.sock"
        self.daemon: subprocess.Popen[bytes] | None = None
        sh("ip", "netns", "add", self.peer)
        sh("ip", "netns", "add", self.pod)
        sh("ip", "link", "add", self.nic, "type", "veth", "peer", "name", peer_end)
        sh("ip", "link", "set", peer_end, "netns", self.peer)
        FakeSysfs(self.sysfs).add_virtio_nic(PCI, self.nic)
        self.shim = install_shim(tmp / "bin")

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
        binary = f"{CNI_BIN}/host-device" if plugin == "host-device" else str(self.shim)
        sock = str(self.socket) if plugin == "ehost-device daemon" else str(self.tmp / "none.sock")
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": "bench",
            "CNI_NETNS": f"/run/netns/{self.pod}",
            "CNI_IFNAME": "net1",
            "CNI_PATH": CNI_BIN,
            "NETDP_CNI_SOCKET": sock,
            "NETDP_SYSFS_ROOT": str(self.sysfs),
            "NETDP_CNI_LOCK_DIR": str(self.tmp / "locks"),
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
        subprocess.run(["ip", "netns", "del", self.pod], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.peer], capture_output=True)
        subprocess.run(["ip", "link", "del", self.nic], capture_output=True)


PLUGINS = ("host-device", "ehost-device daemon", "ehost-device in-process")


def run(cycles: int) -> dict[str, dict[str, list[float]]]:
    samples = {p: {"ADD": [], "DEL": [], "VERSION": []} for p in PLUGINS}
    with tempfile.TemporaryDirectory(prefix="bench-cni-") as tmp:
        bench = Bench(Path(tmp))
        try:
            bench.start_daemon()
            for plugin in PLUGINS:  # warm-up: page cache, daemon's first request
                bench.call(plugin, "ADD")
                bench.call(plugin, "DEL")
            for _ in range(cycles):
                for plugin in PLUGINS:
                    samples[plugin]["ADD"].append(bench.call(plugin, "ADD"))
                    samples[plugin]["DEL"].append(bench.call(plugin, "DEL"))
                    samples[plugin]["VERSION"].append(bench.call(plugin, "VERSION"))
        finally:
            bench.close()
    return samples


def table(samples: dict[str, dict[str, list[float]]], cycles: int) -> str:
    go = {c: statistics.median(samples["host-device"][c]) for c in ("ADD", "DEL")}
    lines = [
        f"ADD+DEL whole-process latency, {cycles} cycles, host-local IPAM, ms",
        "(VERSION: the cost of starting the plugin process and answering, no device work)",
        "",
        "| plugin | ADD median | ADD p90 | DEL median | DEL p90 | ADD / Go | DEL / Go "
        "| VERSION median |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for plugin in PLUGINS:
        add, dele = samples[plugin]["ADD"], samples[plugin]["DEL"]
        add_med, del_med = statistics.median(add), statistics.median(dele)
        lines.append(
            f"| {plugin} | {add_med:.1f} | {quantile(add, 0.9):.1f} | {del_med:.1f} | "
            f"{quantile(dele, 0.9):.1f} | {add_med / go['ADD']:.2f}x | {del_med / go['DEL']:.2f}x "
            f"| {statistics.median(samples[plugin]['VERSION']):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=200, help="ADD+DEL cycles per plugin")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    print(table(run(args.cycles), args.cycles))


if __name__ == "__main__":
    main()
