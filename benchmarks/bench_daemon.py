"""What users of the daemon core feel: discovery time, start-up, Allocate latency, memory.

Run: `python benchmarks/bench_daemon.py [--quick]`. Prints a markdown table
(and writes it to benchmarks/results/daemon.md). It reports; it never fails
on a missed target, because timings on a shared 2-core machine are noisy.

- discovery: `sysfs.scan` + pool assignment of fake SR-IOV trees on tmpfs
  (64 / 1024 / 4096 VFs), median of N runs;
- start → registered: from spawning `netdp run` until the kubelet stand-in
  has accepted its Register call;
- Allocate round trip over the unix socket, p50/p99 of many calls from the
  stand-in's client;
- daemon RSS (VmRSS from /proc) with 1024 VFs advertised.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import quantile

from deviceplugin import pools, sysfs
from deviceplugin.config import parse_config
from deviceplugin.sim.fakesysfs import sriov_topology, tmpfs_tempdir
from deviceplugin.sim.kubelet import KubeletStandIn

RESOURCE = "example.com/vf"
CONFIG = {
    "resourceList": [
        {"resourceName": "vf", "resourcePrefix": "example.com", "selectors": {"drivers": ["igbvf"]}}
    ]
}


def topology(root: Path, vfs: int) -> None:
    pfs = max(1, vfs // 1024)
    sriov_topology(root, pfs=pfs, vfs_per_pf=vfs // pfs, total_vfs=vfs // pfs, numa_nodes=2)


def bench_discovery(vfs: int, runs: int) -> dict[str, float]:
    config = parse_config(CONFIG, "bench")
    with tmpfs_tempdir("ndpb-") as root:
        topology(root / "sys", vfs)
        scan_times, total_times = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            node = sysfs.scan(root / "sys")
            t1 = time.perf_counter()
            assignment = pools.assign(node, config.pools, frozenset())
            t2 = time.perf_counter()
            scan_times.append(t1 - t0)
            total_times.append(t2 - t0)
        assert len(assignment.pools[RESOURCE]) == vfs
    return {
        "scan_ms": statistics.median(scan_times) * 1000,
        "total_ms": statistics.median(total_times) * 1000,
    }


def memory_kib(pid: int) -> tuple[int, int]:
    """RSS and PSS (shared library pages split among their users) in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return fields.get("Rss", 0), fields.get("Pss", 0)


def bench_daemon(vfs: int, starts: int, calls: int) -> dict[str, float]:
    start_times, rtts = [], []
    rss = pss = 0
    with tmpfs_tempdir("ndpb-") as root:
        topology(root / "sys", vfs)
        config_file = root / "config.json"
        config_file.write_text(json.dumps(CONFIG))
        plugins = root / "dp"
        plugins.mkdir()
        with KubeletStandIn(plugins) as kubelet:
            conn = None
            for _ in range(starts):
                t0 = time.monotonic()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "deviceplugin", "run",
                     "--config", str(config_file), "--sysfs-root", str(root / "sys"),
                     "--device-plugin-path", str(plugins), "--devinfo-dir", str(root / "di"),
                     "--log-level", "warning", "--metrics-address", "127.0.0.1:0",
                     "--cni-socket", ""],
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    conn = kubelet.wait_registered(RESOURCE, timeout=30, newer_than=conn)
                    start_times.append(conn.registered_at - t0)
                    snap = conn.wait_snapshot(lambda s: len(s.devices) == vfs, timeout=30)
                    ids = sorted(snap.devices)
                    if not rtts:
                        for i in range(calls):
                            t = time.perf_counter()
                            conn.allocate([ids[i % len(ids)]])
                            rtts.append(time.perf_counter() - t)
                        time.sleep(1.0)
                        rss, pss = memory_kib(proc.pid)
                finally:
                    proc.terminate()
                    proc.wait(timeout=10)
    return {
        "start_ms_median": statistics.median(start_times) * 1000,
        "start_ms_max": max(start_times) * 1000,
        "alloc_p50_ms": quantile(rtts, 0.5) * 1000,
        "alloc_p99_ms": quantile(rtts, 0.99) * 1000,
        "rss_mib": rss / 1024,
        "pss_mib": pss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    args = parser.parse_args()
    runs = 3 if args.quick else 9
    rows = ["| measurement | result | target |", "|---|---|---|"]
    for vfs in (64, 1024, 4096):
        d = bench_discovery(vfs, runs)
        target = "≤ 100 ms" if vfs == 1024 else "linear"
        rows.append(
            f"| discovery, {vfs} VFs (scan / scan+assign, median of {runs}) | "
            f"{d['scan_ms']:.1f} / {d['total_ms']:.1f} ms | {target} |"
        )
    d = bench_daemon(1024, starts=3 if args.quick else 7, calls=300 if args.quick else 2000)
    rows += [
        f"| process start → registered (median / max) | {d['start_ms_median']:.0f} / "
        f"{d['start_ms_max']:.0f} ms | ≤ 400 ms |",
        f"| Allocate round trip over unix socket p50 / p99 | {d['alloc_p50_ms']:.2f} / "
        f"{d['alloc_p99_ms']:.2f} ms | p99 ≤ 2 ms |",
        f"| daemon RSS (PSS) with 1024 devices | {d['rss_mib']:.1f} ({d['pss_mib']:.1f}) MiB "
        "| ≤ 50 MiB |",
    ]
    table = "\n".join(rows)
    print(table)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "daemon.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
