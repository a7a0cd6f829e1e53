"""`netdp demo`: the classic lab, on any machine, without a cluster or root.

It builds the fake sysfs of a VM node (a default-route virtio NIC plus three
extra ones), starts the built-in kubelet stand-in, runs the real daemon
against both (as a child process, as in a pod) and walks through what the
kubelet would do: registration, ListAndWatch, a preferred allocation,
Allocate, a kubelet restart, SIGTERM. Every step prints what a person would
check on a real node.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from deviceplugin.allocation import env_var_name
from deviceplugin.config import default_config
from deviceplugin.routes import default_route_interfaces
from deviceplugin.sim.fakesysfs import tmpfs_tempdir, virtio_lab
from deviceplugin.sim.kubelet import KubeletStandIn, PluginConnection
from deviceplugin.survey import survey

RESOURCE = "kernel.org/virt"


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_demo(log_level: str = "warning") -> int:
    """The demo's story on stdout; its own logs go where `netdp`'s entry point set them
    up (stderr), the daemon it starts logs at `log_level`."""
    uplinks = sorted(default_route_interfaces()) or ["eth0"]
    with tmpfs_tempdir("netdp-demo-") as root:
        sysfs_root, plugin_dir, devinfo_dir = (
            root / "sys",
            root / "device-plugins",
            root / "devinfo",
        )
        _step(f"fake sysfs of a lab VM in {sysfs_root}")
        virtio_lab(sysfs_root, 3, primary_netdev=uplinks[0])
        print(f"0000:00:03.0 is the VM's uplink, named like this machine's: {uplinks[0]}")
        print("0000:01:00.0 .. 0000:03:00.0 are extra virtio NICs eth1 .. eth3")

        command = [
            sys.executable, "-m", "deviceplugin", "run",
            "--sysfs-root", str(sysfs_root),
            "--device-plugin-path", str(plugin_dir),
            "--devinfo-dir", str(devinfo_dir),
            "--log-format", "console", "--log-level", log_level,
            "--metrics-address", "127.0.0.1:0", "--cni-socket", "",
        ]  # fmt: skip
        with KubeletStandIn(plugin_dir) as kubelet:
            _step(f"kubelet stand-in listening on {kubelet.socket_path}; starting the daemon")
            print("  $ " + " ".join(command[2:]).replace("deviceplugin", "netdp", 1))
            daemon = subprocess.Popen(command)
            try:
                conn = kubelet.wait_registered(RESOURCE, timeout=15)
                print(f"  registered {conn.resource} at endpoint {conn.endpoint}")
                _demo_steps(kubelet, conn, sysfs_root, devinfo_dir)
                _step("SIGTERM to the daemon")
                started = time.monotonic()
                daemon.send_signal(signal.SIGTERM)
                code = daemon.wait(timeout=10)
                print(f"  exited with {code} in {time.monotonic() - started:.2f} s")
            finally:
                if daemon.poll() is None:
                    daemon.kill()
                    daemon.wait()
        leftovers = sorted(p.name for p in plugin_dir.iterdir()) if plugin_dir.exists() else []
        print(f"  plugin dir after stop: {leftovers or 'empty'}")
        print(f"  device-info files after stop: {sorted(p.name for p in devinfo_dir.glob('*'))}")
    return 0 if code == 0 else 1


def _demo_steps(
    kubelet: KubeletStandIn, conn: PluginConnection, sysfs_root: Path, devinfo_dir: Path
) -> None:
    snap = conn.wait_snapshot(lambda s: len(s.devices) > 0, timeout=10)
    _step("ListAndWatch: what the node advertises")
    for dev_id, view in sorted(snap.devices.items()):
        print(f"  {dev_id}  {view.health}")
    excluded = survey(default_config().pools, sysfs_root).excluded
    for address, why in sorted(excluded.items()):
        print(f"  {address}  excluded: {why}")

    _step("GetPreferredAllocation for 1 device, then Allocate")
    chosen = conn.preferred(sorted(snap.devices), [], 1)
    print(f"  preferred: {chosen}")
    response = conn.allocate(chosen)
    envs = dict(response.container_responses[0].envs)
    key = env_var_name(RESOURCE)
    print(f"  {key}={envs[key]}")
    print(f"  {key}_INFO={envs[key + '_INFO']}")
    for path in sorted(devinfo_dir.glob("*.json")):
        print(f"  device-info {path.name}: {json.dumps(json.loads(path.read_text()))}")

    _step("kubelet restart: every socket deleted, kubelet.sock re-created")
    started = time.monotonic()
    kubelet.restart()
    again = kubelet.wait_registered(RESOURCE, timeout=10, newer_than=conn)
    snap = again.wait_snapshot(lambda s: len(s.devices) > 0, timeout=10)
    print(
        f"  re-registered after {1000 * (time.monotonic() - started):.0f} ms, "
        f"{len(snap.devices)} devices advertised again"
    )
