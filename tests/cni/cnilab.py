"""Helpers for the ehost-device tests: real namespaces, veths behind a fake sysfs.

Every host "NIC" is a veth end in the test's own namespace (the root one),
its peer parked in a namespace of the test, and the fake sysfs maps a PCI
address onto its name. Names carry a random suffix and everything is removed
in `finally` blocks, also when a test fails half-way.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deviceplugin.cni.install import install_shim
from deviceplugin.sim.fakesysfs import FakeSysfs

CNI_BIN = "/usr/lib/cni"
REPO = Path(__file__).resolve().parents[2]


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check)


def link_state(name: str, netns: str | None = None) -> dict[str, Any] | None:
    """name, MAC, up flag, MTU, global addresses of one link, as `ip -j` reports them."""
    cmd = ["ip", "-j"] + (["-n", netns] if netns else []) + ["addr", "show", "dev", name]
    proc = sh(*cmd, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    info = json.loads(proc.stdout)[0]
    return {
        "name": info["ifname"],
        "mac": info["address"],
        "up": "UP" in info["flags"],
        "mtu": info["mtu"],
        "addresses": sorted(
            f"{a['local']}/{a['prefixlen']}"
            for a in info.get("addr_info", [])
            if a.get("scope") == "global"
        ),
    }


def ns_routes(netns: str) -> list[str]:
    out = sh("ip", "-n", netns, "route", "show").stdout
    return sorted(line.replace(" linkdown", "").strip() for line in out.splitlines())


@dataclass
class Lab:
    """One test's namespaces, veths, fake sysfs and CNI plumbing."""

    tmp: Path
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    next_slot: int = 0

    def __post_init__(self) -> None:
        self.sysfs_root = self.tmp / "sys"
        self.fake = FakeSysfs(self.sysfs_root)
        self.data_dir = self.tmp / "ipam"
        self.lock_dir = self.tmp / "locks"
        self.socket = self.tmp / "cni.sock"
        self.shim = install_shim(self.tmp / "bin")
        self.peer_ns = self.netns("peer")

    def netns(self, tag: str) -> str:
        name = f"ehd-{self.suffix}-{tag}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        return name

    def nic(self) -> tuple[str, str]:
        """A fresh host veth end behind a fake virtio PCI function: (pci, netdev)."""
        self.next_slot += 1
        name = f"eh{self.suffix}{self.next_slot}"
        peer = f"ep{self.suffix}{self.next_slot}"
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", peer)
        self.links.append(name)
        sh("ip", "link", "set", peer, "netns", self.peer_ns)
        pci = f"0000:00:{self.next_slot + 3:02x}.0"
        self.fake.add_virtio_nic(pci, name)
        return pci, name

    def conf(self, version: str = "1.0.0", ipam: bool = True, **extra: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {"cniVersion": version, "name": "ehd-net", "type": "ehost-device"}
        if ipam:
            doc["ipam"] = {
                "type": "host-local",
                "dataDir": str(self.data_dir),
                "ranges": [[{"subnet": "10.77.0.0/24", "gateway": "10.77.0.1"}]],
                "routes": [{"dst": "10.78.0.0/16"}],
            }
        doc.update(extra)
        return doc

    def recording_ipam(self) -> tuple[str, Path]:
        """A 1.1.0-capable IPAM stand-in (Debian's host-local stops at 1.0.0).

        It answers ADD with a fixed lease and appends every call's environment
        and stdin to a log, to compare with what libcni would pass. Returns
        (CNI_PATH with it first, log path).
        """
        bin_dir = self.tmp / "ipam-bin"
        bin_dir.mkdir(exist_ok=True)
        log = self.tmp / "ipam-calls.jsonl"
        script = bin_dir / "recording-ipam"
        script.write_text(
            f"""#!{sys.executable}
import json, os, sys
stdin = sys.stdin.read()
env = {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}
with open({str(log)!r}, "a") as f:
    f.write(json.dumps({{"env": env, "stdin": stdin}}) + "\\n")
if env["CNI_COMMAND"] == "ADD":
    print(json.dumps({{"cniVersion": json.loads(stdin)["cniVersion"],
        "ips": [{{"address": "10.77.0.2/24", "gateway": "10.77.0.1"}}],
        "routes": [{{"dst": "10.78.0.0/16"}}], "dns": {{"nameservers": ["10.77.0.1"]}}}}))
elif env["CNI_COMMAND"] == "VERSION":
    print(json.dumps({{"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]}}))
"""
        )
        script.chmod(0o755)
        return f"{bin_dir}:{CNI_BIN}", log

    def env(self, command: str, netns: str | None, ifname: str = "net1", cid: str = "c1") -> dict:
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_IFNAME": ifname,
            "CNI_PATH": CNI_BIN,
            "NETDP_CNI_SOCKET": str(self.socket),
            "NETDP_SYSFS_ROOT": str(self.sysfs_root),
            "NETDP_CNI_LOCK_DIR": str(self.lock_dir),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        if netns:
            env["CNI_NETNS"] = f"/run/netns/{netns}"
        return env

    def run(
        self,
        command: str,
        conf: dict[str, Any] | bytes,
        netns: str | None,
        *,
        ifname: str = "net1",
        cid: str = "c1",
        plugin: str | None = None,
        env: dict[str, str] | None = None,
    ) -> tuple[int, Any, str]:
        """Run a plugin as the runtime does; (exit code, parsed stdout or None, stderr)."""
        full_env = {**self.env(command, netns, ifname, cid), **(env or {})}
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        proc = subprocess.run(
            [plugin or str(self.shim)], input=stdin, env=full_env, capture_output=True, timeout=60
        )
        out = proc.stdout.decode()
        return proc.returncode, json.loads(out) if out.strip() else None, proc.stderr.decode()

    def cleanup(self) -> None:
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        for name in self.links:
            sh("ip", "link", "del", name, check=False)


class Daemon:
    """The real `netdp run` (CNI socket on, no kubelet needed) in its own session."""

    def __init__(self, lab: Lab, netns: str | None = None) -> None:
        cmd = [
            sys.executable, "-m", "deviceplugin", "run",
            "--cni-socket", str(lab.socket),
            "--sysfs-root", str(lab.sysfs_root),
            "--device-plugin-path", str(lab.tmp / "device-plugins"),
            "--devinfo-dir", "",
            "--metrics-address", "0",
            "--log-level", "warning", "--log-format", "json",
        ]  # fmt: skip
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "NETDP_CNI_LOCK_DIR": str(lab.lock_dir),
            "NETDP_POD_RESOURCES_SOCKET": str(lab.tmp / "kubelet.sock"),
        }
        self.proc = subprocess.Popen(
            cmd, env=env, start_new_session=True, stderr=subprocess.PIPE, cwd=REPO
        )
        deadline = time.monotonic() + 15
        while not lab.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"CNI server did not start: {self.proc.stderr.read()!r}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the server and everything it started (its session's process group)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
