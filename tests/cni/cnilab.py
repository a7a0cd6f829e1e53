"""Helpers for the ehost-device tests: real namespaces, veths behind a fake sysfs.

Each test gets its own "node": a namespace made by `helpers.make_node_netns`
that plays the host, with a default route out of its uplink. Every "NIC" is
a veth end created directly in that node namespace (its peer in another
namespace of the test), and the fake sysfs maps a PCI address onto its name.
The daemon, the ehost-device binary (installed with `netdp install-cni
--dest`, as the DaemonSet does) and Go's host-device all run under `ip netns
exec <node>`, so they take the node for their host and see its links in
/sys/class/net: the machine's root namespace never holds a test link, not
even for a moment. Names carry a random suffix and everything is removed in
`finally` blocks, also when a test fails half-way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import Namespaces, make_node_netns

from deviceplugin.cli import main as netdp_main
from deviceplugin.cni.install import PLUGIN_NAME
from deviceplugin.sim.fakesysfs import FakeSysfs

CNI_BIN = "/usr/lib/cni"
REPO = Path(__file__).resolve().parents[2]


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check)


def link_state(name: str, netns: str) -> dict[str, Any] | None:
    """name, MAC, up flag, MTU, global addresses of one link, as `ip -j` reports them."""
    proc = sh("ip", "-j", "-n", netns, "addr", "show", "dev", name, check=False)
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


# What may differ between two namespaces' views of the same device and still be the
# same state: the kernel numbers links itself (a namespace move may renumber one).
_UNCOMPARED_LINK_KEYS = frozenset({"ifindex"})


def full_link_state(name: str, netns: str) -> dict[str, Any] | None:
    """Everything `ip -d` reports about one link and its addresses (broadcast, scope,
    flags, lifetimes, label), except what the kernel numbers on its own."""
    proc = sh("ip", "-d", "-j", "-n", netns, "addr", "show", "dev", name, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    info = json.loads(proc.stdout)[0]
    link = {k: v for k, v in info.items() if k not in _UNCOMPARED_LINK_KEYS | {"addr_info"}}
    addresses = sorted(info.get("addr_info", []), key=lambda a: json.dumps(a, sort_keys=True))
    return {"link": link, "addresses": addresses}


def full_routes(netns: str) -> list[dict[str, Any]]:
    """Every route of every table in `netns`, IPv4 and IPv6, with all `ip -d` shows of
    it (table, type, scope, protocol, metric, preferred source, flags)."""
    routes = []
    for family in ("-4", "-6"):
        out = sh("ip", "-d", "-j", family, "-n", netns, "route", "show", "table", "all").stdout
        routes += [{"family": family, **r} for r in json.loads(out or "[]")]
    return sorted(routes, key=lambda r: json.dumps(r, sort_keys=True))


def settled_link_state(name: str, netns: str, timeout: float = 15) -> dict[str, Any]:
    """`full_link_state` once the kernel is done with the link: up with carrier and
    operstate UP (linkwatch updates it asynchronously), no address still in duplicate
    address detection. Raises if that does not happen within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        state = full_link_state(name, netns)
        link = state["link"] if state else {}
        if (
            state is not None
            and "LOWER_UP" in link.get("flags", ())
            and link.get("operstate") == "UP"
            and not any(a.get("tentative") for a in state["addresses"])
        ):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} in {netns} did not settle: {state}")
        time.sleep(0.05)


def ns_routes(netns: str) -> list[str]:
    out = sh("ip", "-n", netns, "route", "show").stdout
    return sorted(line.replace(" linkdown", "").strip() for line in out.splitlines())


def install_cni(dest: Path) -> Path:
    """`netdp install-cni --dest DEST`, the DaemonSet's init container; the installed file."""
    assert netdp_main(["install-cni", "--dest", str(dest)]) == 0
    return dest / PLUGIN_NAME


def root_links_with(fragment: str) -> list[str]:
    """Links of the machine's root namespace whose name holds `fragment`."""
    out = sh("ip", "-o", "link", "show").stdout
    names = (line.split(":")[1].strip().split("@")[0] for line in out.splitlines())
    return [name for name in names if fragment in name]


@dataclass
class Lab:
    """One test's node and pod namespaces, veths, fake sysfs and CNI plumbing."""

    tmp: Path
    nss: Namespaces = field(default_factory=Namespaces)
    next_slot: int = 0
    daemons_started: int = 0

    def __post_init__(self) -> None:
        self.suffix = self.nss.tag
        self.sysfs_root = self.tmp / "sys"
        self.fake = FakeSysfs(self.sysfs_root)
        self.data_dir = self.tmp / "ipam"
        self.lock_dir = self.tmp / "locks"
        self.socket = self.tmp / "cni.sock"
        self.plugin = install_cni(self.tmp / "bin")
        try:
            node = make_node_netns(self.nss)
            self.peer_ns = self.nss.add("peer")  # the far end of every NIC's cable
        except BaseException:
            self.nss.cleanup()
            raise
        self.node, self.uplink = node.ns, node.uplink

    def netns(self, tag: str) -> str:
        """A pod namespace (lo up, nothing else)."""
        return self.nss.add(tag)

    def node_link(self, name: str) -> dict[str, Any] | None:
        """`link_state` of a link in the node namespace, where the host's NICs live."""
        return link_state(name, self.node)

    def in_node(self, *command: str) -> list[str]:
        """`command` run as a process of the node (its netns, and its /sys)."""
        return ["ip", "netns", "exec", self.node, *command]

    def nic(self) -> tuple[str, str]:
        """A fresh node veth end behind a fake virtio PCI function: (pci, netdev)."""
        self.next_slot += 1
        name = f"eh{self.suffix}{self.next_slot}"
        self.nss.veth(name, self.node, f"ep{self.suffix}{self.next_slot}", self.peer_ns)
        pci = f"0000:00:{self.next_slot + 3:02x}.0"
        self.fake.add_virtio_nic(pci, name)
        return pci, name

    def plug_in(self, name: str) -> None:
        """Bring up the far end of NIC `name`'s cable: the NIC gets carrier when up."""
        sh("ip", "-n", self.peer_ns, "link", "set", name.replace("eh", "ep", 1), "up")

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
        """Run a plugin as the node's runtime does; (exit code, parsed stdout or None, stderr)."""
        full_env = {**self.env(command, netns, ifname, cid), **(env or {})}
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        proc = subprocess.run(
            self.in_node(plugin or str(self.plugin)),
            input=stdin,
            env=full_env,
            capture_output=True,
            timeout=60,
        )
        out = proc.stdout.decode()
        return proc.returncode, json.loads(out) if out.strip() else None, proc.stderr.decode()

    def cleanup(self) -> list[str]:
        """Remove every namespace, then any link of this lab that reached the root
        namespace (a bug: none may); returns the names of those, for the caller to fail on."""
        self.nss.cleanup()
        strays = root_links_with(self.suffix)
        for name in strays:
            sh("ip", "link", "del", name, check=False)
        return strays


class Daemon:
    """The real `netdp run` (CNI socket on, no kubelet needed) in the node, in its own session.

    Its JSON log goes to a file of the lab, read by `wait_event`.
    """

    def __init__(self, lab: Lab, pod_resources_socket: Path | None = None) -> None:
        cmd = lab.in_node(
            sys.executable, "-m", "deviceplugin", "run",
            "--cni-socket", str(lab.socket),
            "--sysfs-root", str(lab.sysfs_root),
            "--device-plugin-path", str(lab.tmp / "device-plugins"),
            "--devinfo-dir", "",
            "--metrics-address", "0",
            # No periodic rescan in the middle of a test: rescans here come from
            # start-up, SIGHUP and the uevents of the node's own links only.
            "--rescan-interval", "3600",
            "--log-level", "info", "--log-format", "json",
        )  # fmt: skip
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "NETDP_CNI_LOCK_DIR": str(lab.lock_dir),
            "NETDP_POD_RESOURCES_SOCKET": str(pod_resources_socket or lab.tmp / "kubelet.sock"),
        }
        lab.daemons_started += 1
        self.log = lab.tmp / f"daemon-{lab.daemons_started}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=log, cwd=REPO)
        # Up once its first scan (and the node repair before it) is done.
        self.wait_event("discovery_done")

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                found.append(event)
        return found

    def wait_event(self, name: str, timeout: float = 30) -> dict[str, Any]:
        """The first `name` event of the log, once there."""
        deadline = time.monotonic() + timeout
        while not (found := self.events(name)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {name} event in:\n{self.log.read_text()}")
            time.sleep(0.05)
        return found[0]

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
