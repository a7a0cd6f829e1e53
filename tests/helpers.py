"""Test plumbing shared by integration tests: network namespaces and the daemon process.

Every namespace and link made here carries a random suffix and is removed in
a `finally`, so a failing test leaves nothing behind and parallel runs do not
clash. Nothing here ever touches the host's own interfaces.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

NETDP = [sys.executable, "-m", "deviceplugin"]


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def is_root() -> bool:
    return os.geteuid() == 0


_PCI_ADDRESS = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")


@dataclass(frozen=True)
class HostUplink:
    """An interface carrying one of this namespace's default routes, and its PCI function."""

    name: str
    pci: str | None  # None when the netdev is no PCI function (a veth, a bond...)


def host_uplinks() -> list[HostUplink]:
    """This host's default-route interfaces, read at run time from iproute2 (not from the
    code under test), each with the PCI function sysfs puts it under."""
    names: set[str] = set()
    for family in ("-4", "-6"):
        out = sh("ip", "-j", family, "route", "show", "default", "table", "all").stdout
        for route in json.loads(out or "[]"):
            if route.get("type", "unicast") != "unicast" or route.get("table") == "local":
                continue
            hops = route.get("nexthops") or [route]
            names.update(hop["dev"] for hop in hops if hop.get("dev"))
    uplinks = []
    for name in sorted(names):
        device = Path("/sys/class/net", name).resolve()
        pcis = [part for part in device.parts if _PCI_ADDRESS.fullmatch(part)]
        uplinks.append(HostUplink(name, pcis[-1] if pcis else None))
    return uplinks


@dataclass
class Namespaces:
    """Creates network namespaces and veth pairs, and removes them all at the end."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    names: list[str] = field(default_factory=list)

    def add(self, label: str) -> str:
        name = f"ndp-{label}-{self.tag}"
        sh("ip", "netns", "add", name)
        self.names.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def veth(self, name: str, ns: str, peer: str, peer_ns: str) -> None:
        """A veth pair created directly inside the two namespaces (never in the host's)."""
        sh("ip", "-n", ns, "link", "add", name, "type", "veth", "peer", "name", peer,
           "netns", peer_ns)  # fmt: skip

    def cleanup(self) -> None:
        for name in reversed(self.names):
            sh("ip", "netns", "del", name, check=False)
        self.names.clear()


@contextmanager
def namespaces() -> Iterator[Namespaces]:
    ns = Namespaces()
    try:
        yield ns
    finally:
        ns.cleanup()


@dataclass
class NodeNetns:
    """A namespace that plays the node: `uplink` carries its default route; `extra`
    are spare NICs whose veth peers (`peers`) sit in the `world` namespace."""

    ns: str
    uplink: str
    extra: list[str]
    world: str
    peers: list[str]

    def links_up(self) -> None:
        """Both ends of every spare NIC up: the node side has a carrier."""
        for name, peer in zip(self.extra, self.peers, strict=True):
            sh("ip", "-n", self.ns, "link", "set", name, "up")
            sh("ip", "-n", self.world, "link", "set", peer, "up")


def make_node_netns(nss: Namespaces, extra: int = 0) -> NodeNetns:
    """A node namespace whose default route goes out of a veth end (its peer in a
    'world' namespace), plus `extra` veth ends standing in for spare NICs."""
    node = nss.add("node")
    world = nss.add("world")
    uplink = f"up{nss.tag}"
    nss.veth(uplink, node, f"wup{nss.tag}", world)
    sh("ip", "-n", node, "addr", "add", "10.250.0.2/24", "dev", uplink)
    sh("ip", "-n", node, "link", "set", uplink, "up")
    sh("ip", "-n", world, "link", "set", f"wup{nss.tag}", "up")
    sh("ip", "-n", node, "route", "add", "default", "via", "10.250.0.1", "dev", uplink)
    names, peers = [], []
    for i in range(extra):
        name, peer = f"x{i}{nss.tag}", f"w{i}{nss.tag}"
        nss.veth(name, node, peer, world)
        names.append(name)
        peers.append(peer)
    return NodeNetns(node, uplink, names, world, peers)


class DaemonProcess:
    """`netdp run` as a child process; collects its JSON log lines as they come."""

    def __init__(
        self,
        args: Sequence[str],
        netns: str | None = None,
        *,
        isolated: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        # Many daemons run side by side in the suite: no fixed metrics port, no shared
        # CNI socket, unless a test asks for them (later flags win in argparse).
        # `isolated=False` leaves the defaults, for the one daemon of a (VM) node.
        own = ["--metrics-address", "127.0.0.1:0", "--cni-socket", ""] if isolated else []
        self.command = [*prefix, *NETDP, "run", "--log-format", "json", *own, *args]
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.lines: list[str] = []
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                with suppress(json.JSONDecodeError):
                    self.events.append(json.loads(line))
                self._cond.notify_all()

    def wait_event(
        self, event: str, timeout: float = 10, where: Callable[[dict], bool] = lambda e: True
    ) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events:
                    if e.get("event") == event and where(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no {event!r} event; log:\n" + "\n".join(self.lines[-40:])
                    )
                self._cond.wait(min(left, 0.2))

    def stop(self, timeout: float = 5) -> tuple[int, float]:
        """SIGTERM; returns the exit code and how long the daemon took to exit."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        elapsed = time.monotonic() - started
        self._reader.join(timeout=2)
        return code, elapsed

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=2)

    def log_text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


def run_netdp(*args: str, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, *NETDP, *args], capture_output=True, text=True, timeout=60)


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the calling thread inside namespace `name` (sockets made here stay there),
    with the executor's own `setns` wrapper; back in its own namespace on the way out."""
    from deviceplugin.cni.netlink import inside_netns  # ctypes setns, for the tests that need it

    with open(f"/run/netns/{name}", "rb") as ns, inside_netns(ns.fileno()):
        yield


class Node:
    """Paths of one simulated node: fake sysfs, device-plugin dir, device-info dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sysfs = root / "sys"
        self.plugins = root / "dp"
        self.devinfo = root / "devinfo"
        self.plugins.mkdir()

    def args(self, *extra: str) -> list[str]:
        return [
            "--sysfs-root", str(self.sysfs),
            "--device-plugin-path", str(self.plugins),
            "--devinfo-dir", str(self.devinfo),
            *extra,
        ]  # fmt: skip


def start_daemon(
    daemons: list[DaemonProcess], node: Node, *extra: str, netns: str | None = None
) -> DaemonProcess:
    """`netdp run` on `node`, registered in the `daemons` fixture for clean-up."""
    d = DaemonProcess(node.args(*extra), netns=netns)
    daemons.append(d)
    return d


def load_script(path: Path) -> ModuleType:
    """A file of scripts/ as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PT_DYNAMIC, PT_INTERP = 2, 3


def elf_facts(data: bytes) -> dict[str, object]:
    """What makes an ELF file static, read from its header and program headers by hand:
    its type (EXEC or DYN) and whether it names a program interpreter or has a dynamic
    section (a static executable has neither)."""
    assert data[:4] == b"\x7fELF", "not an ELF file"
    assert data[4:6] == b"\x02\x01", "not a 64-bit little-endian ELF file"
    (e_type,) = struct.unpack_from("<H", data, 16)
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    types = {struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)}
    return {
        "type": {2: "EXEC", 3: "DYN"}.get(e_type, str(e_type)),
        "interpreter": PT_INTERP in types,
        "dynamic": PT_DYNAMIC in types,
    }


def cni_socket_call(sock: Path, request: bytes) -> bytes:
    """Send a netdp-cni request to the daemon's socket, half-close, read the answer to EOF
    (what the forwarder does, in Python, for calls the forwarder answers itself)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(sock))
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
