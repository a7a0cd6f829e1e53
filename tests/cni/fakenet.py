"""In-memory stand-ins for the CNI ports, so the ADD/DEL rules run without root.

`FakeKernel` plays the namespaces and their links the way the kernel treats
them where the rules depend on it: names are unique per namespace, a move
that would clash is refused and leaves the device where it was (or, with
`rename_after_move`, lands under its old name first, as older kernels did), a
moved device arrives down with its addresses flushed and keeps its index if
it is free, a `%d` name takes the first free number, and a destroyed
namespace hands its physical NICs back to the host under their pod names
(`dev%d` on a clash). Any operation can be made to fail with an errno.

`FakeNode` answers device look-ups from where the links are, as sysfs in
the host namespace would; `FakeIpam` hands out one lease per container and
can fail any command. Nothing here touches the system.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from deviceplugin.cni.ports import Link, NamespaceGone, NetlinkRefused, Netns
from deviceplugin.cni.types import ERR_IPAM, CniError, CniRequest, IpConfig, Route
from deviceplugin.model import Device, NetDev, NetdevState

HOST = "host"


def refused(code: int) -> NetlinkRefused:
    return NetlinkRefused(code, f"({code}, {os.strerror(code)!r})")


@dataclass
class FakeLink:
    index: int
    name: str
    mac: str
    pci: str | None = None  # the PCI function behind it; None for a virtual link
    alias: str = ""
    up: bool = False
    mtu: int = 1500
    addresses: list[str] = field(default_factory=list)
    routes: list[tuple[str, str | None]] = field(default_factory=list)

    def record(self, with_addresses: bool = False) -> Link:
        return Link(
            index=self.index,
            name=self.name,
            mac=self.mac,
            alias=self.alias,
            up=self.up,
            mtu=self.mtu,
            addresses=tuple(self.addresses) if with_addresses else (),
        )


@dataclass
class Failure:
    op: str
    code: int
    ns: str | None  # None: in any namespace
    times: int


class FakeNetns:
    """`ports.Netns` on a dict of links."""

    def __init__(self, kernel: FakeKernel, name: str) -> None:
        self.kernel = kernel
        self.name = name
        self.links_by_index: dict[int, FakeLink] = {}
        self.default_routes: set[int] = set()

    # --- lookups used by the tests
    def by_name(self, name: str) -> FakeLink | None:
        return next((lk for lk in self.links_by_index.values() if lk.name == name), None)

    def free_name(self, pattern: str) -> str:
        n = 0
        while self.by_name(pattern.replace("%d", str(n))) is not None:
            n += 1
        return pattern.replace("%d", str(n))

    def free_index(self, wanted: int) -> int:
        if wanted not in self.links_by_index:
            return wanted
        return max(self.links_by_index) + 1

    def _get(self, index: int) -> FakeLink:
        link = self.links_by_index.get(index)
        if link is None:
            raise refused(errno.ENODEV)
        return link

    def _check(self, op: str) -> None:
        self.kernel.calls.append((self.name, op))
        code = self.kernel.take_failure(op, self.name)
        if code is not None:
            raise refused(code)

    # --- the port
    def links(self) -> list[Link]:
        self._check("links")
        return [lk.record() for _, lk in sorted(self.links_by_index.items())]

    def link(self, name: str, with_addresses: bool = False) -> Link | None:
        try:
            self._check("link")
        except NetlinkRefused as exc:
            if exc.code == errno.ENODEV:  # how a test makes a link vanish for one look
                return None
            raise
        found = self.by_name(name)
        return found.record(with_addresses) if found else None

    def link_by_index(self, index: int) -> Link | None:
        self._check("link_by_index")
        found = self.links_by_index.get(index)
        return found.record() if found else None

    def set_up(self, index: int) -> None:
        self._check("set_up")
        self._get(index).up = True

    def set_down(self, index: int) -> None:
        self._check("set_down")
        self._get(index).up = False

    def restore(self, index: int, name: str, mtu: int | None, alias: str) -> None:
        self._check("restore")
        link = self._get(index)
        other = self.by_name(name)
        if other is not None and other is not link:
            raise refused(errno.EEXIST)
        link.name, link.alias = name, alias
        if mtu is not None:
            link.mtu = mtu

    def move(
        self, index: int, target: Netns, name: str, alias: str, mtu: int | None = None
    ) -> None:
        self._check("move")
        assert isinstance(target, FakeNetns)
        link = self._get(index)
        if "%d" in name:
            name = target.free_name(name)
        elif target.by_name(name) is not None:
            if self.kernel.rename_after_move and target.by_name(link.name) is None:
                self._transfer(link, target)
            raise refused(errno.EEXIST)
        self._transfer(link, target)
        link.name, link.alias = name, alias
        if mtu is not None:
            link.mtu = mtu

    def _transfer(self, link: FakeLink, target: FakeNetns) -> None:
        del self.links_by_index[link.index]
        self.default_routes.discard(link.index)
        link.index = target.free_index(link.index)
        link.up = False
        link.addresses.clear()
        link.routes.clear()
        target.links_by_index[link.index] = link

    def default_route_ifindexes(self) -> frozenset[int]:
        self._check("default_route_ifindexes")
        return frozenset(self.default_routes)

    def configure(
        self, index: int, mtu: int | None, ips: tuple[IpConfig, ...], routes: tuple[Route, ...]
    ) -> None:
        self._check("configure")
        link = self._get(index)
        if mtu is not None:
            link.mtu = mtu
        link.up = True
        link.addresses.extend(ip.address for ip in ips)
        link.routes.extend((r.dst, r.gw) for r in routes)


class FakeKernel:
    """`ports.Namespaces`: the host and pod namespaces, by path."""

    def __init__(self) -> None:
        self.host_ns = FakeNetns(self, HOST)
        self.pods: dict[str, FakeNetns] = {}
        self.failures: list[Failure] = []
        self.calls: list[tuple[str, str]] = []
        self.open = 0  # namespaces entered and not yet left
        self.rename_after_move = False
        self._next_index = 2  # 1 is lo

    # --- the port
    @contextmanager
    def host(self) -> Iterator[FakeNetns]:
        with self._entered():
            yield self.host_ns

    @contextmanager
    def pod(self, path: str) -> Iterator[FakeNetns]:
        ns = self.pods.get(path)
        if ns is None:
            raise NamespaceGone(path)
        with self._entered():
            yield ns

    @contextmanager
    def _entered(self) -> Iterator[None]:
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1

    # --- building and changing the world
    def nic(
        self, pci: str | None, name: str, *, up: bool = False, mtu: int = 1500, alias: str = ""
    ) -> FakeLink:
        index = self._next_index
        self._next_index += 1
        mac = f"52:54:00:00:00:{index:02x}"
        link = FakeLink(index, name, mac, pci=pci, alias=alias, up=up, mtu=mtu)
        self.host_ns.links_by_index[index] = link
        return link

    def add_pod(self, path: str) -> FakeNetns:
        ns = FakeNetns(self, path)
        self.pods[path] = ns
        return ns

    def destroy_pod(self, path: str) -> None:
        """Physical NICs go back to the host under their pod names (`dev%d` on a clash)."""
        ns = self.pods.pop(path)
        for link in list(ns.links_by_index.values()):
            if link.pci is None:
                continue
            clash = self.host_ns.by_name(link.name) is not None
            ns._transfer(link, self.host_ns)
            if clash:
                link.name = self.host_ns.free_name("dev%d")

    def fail(self, op: str, code: int, ns: str | None = None, times: int = 1) -> None:
        self.failures.append(Failure(op, code, ns, times))

    def take_failure(self, op: str, ns: str) -> int | None:
        for f in self.failures:
            if f.op == op and f.ns in (None, ns) and f.times > 0:
                f.times -= 1
                return f.code
        return None

    def where(self, pci: str) -> tuple[str, FakeLink] | None:
        """(namespace name, link) of the NIC at `pci`."""
        for ns in (self.host_ns, *self.pods.values()):
            for link in ns.links_by_index.values():
                if link.pci == pci:
                    return ns.name, link
        return None

    def state(self, pci: str) -> tuple[str, str, int, bool, str, str]:
        """Where a NIC is and what it looks like: namespace, name, MTU, up, alias, MAC."""
        found = self.where(pci)
        assert found is not None, f"{pci} is nowhere"
        ns, link = found
        return ns, link.name, link.mtu, link.up, link.alias, link.mac


class FakeNode:
    """`ports.DeviceResolver`: virtio NICs whose netdevs are where the kernel has them."""

    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.pcis: set[str] = set()
        self.vfio: set[str] = set()
        self.stale: dict[str, str] = {}  # pci -> netdev name sysfs still shows

    def device(self, pci_address: str) -> Device | None:
        if pci_address in self.vfio:
            return Device(pci_address, "8086", "10ca", driver="vfio-pci")
        if pci_address not in self.pcis:
            return None
        found = self.kernel.where(pci_address)
        name = self.stale.get(pci_address)
        if name is None and found is not None and found[0] == HOST:
            name = found[1].name
        if name is None:
            return Device(
                pci_address, "1af4", "1041", driver="virtio-pci",
                netdev_state=NetdevState.ELSEWHERE,
            )  # fmt: skip
        return Device(
            pci_address, "1af4", "1041", driver="virtio-pci",
            netdevs=(NetDev(name),), netdev_state=NetdevState.PRESENT,
        )  # fmt: skip

    def pci_of_netdev(self, name: str) -> str | None:
        link = self.kernel.host_ns.by_name(name)
        return link.pci if link is not None and link.pci in self.pcis else None


@dataclass
class FakeCall:
    outcome: bytes | CniError

    def finish(self) -> bytes:
        if isinstance(self.outcome, CniError):
            raise self.outcome
        return self.outcome


class FakeIpam:
    """`ports.Ipam`: one lease per container; `fail[command]` makes that command fail."""

    def __init__(self, journal: list[tuple[str, str]], plugin: str = "host-local") -> None:
        self.journal = journal  # shared with the kernel's calls, to see the order
        self.plugin = plugin
        self.is_detached = True
        self.versions = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
        self.fail: dict[str, CniError] = {}
        self.answer: bytes | None = None  # replaces the ADD answer (garbage tests)
        self.leases: dict[str, str] = {}
        self.calls: list[str] = []

    def detached(self, plugin: str) -> bool:
        return self.is_detached

    def find(self, request: CniRequest) -> None:
        if request.ipam_type != self.plugin:
            raise CniError(ERR_IPAM, f"IPAM plugin {request.ipam_type!r} not found")

    def start(self, request: CniRequest, command: str) -> FakeCall:
        self.find(request)
        self.calls.append(command)
        self.journal.append(("ipam", command))
        if command in self.fail:
            return FakeCall(self.fail[command])
        if command == "ADD":
            self.leases[request.container_id] = "10.77.0.2/24"
            answer = {
                "cniVersion": request.cni_version,
                "ips": [{"address": "10.77.0.2/24", "gateway": "10.77.0.1"}],
                "routes": [{"dst": "10.78.0.0/16"}],
            }
            return FakeCall(self.answer if self.answer is not None else json.dumps(answer).encode())
        if command == "DEL":
            self.leases.pop(request.container_id, None)
        if command == "GC":
            self.leases.clear()
        return FakeCall(b"")

    def invoke(self, request: CniRequest, command: str) -> bytes:
        return self.start(request, command).finish()

    def supports(self, request: CniRequest, version: str) -> bool:
        return version in self.versions
