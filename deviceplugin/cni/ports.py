"""What the CNI rules need from the world, as protocols over plain records.

The rules (`resolve`, `add`, `delete`, `check`, `restore`) are written against
these ports only, so they import no pyroute2, no sysfs reader and no IPAM
runner, and their tests run without root on in-memory fakes. The real
adapters are `netlink.NetlinkNamespaces` (namespaces and links),
`sysfs_devices.SysfsDevices` (device records) and `ipam.PluginIpam` (the
delegated IPAM plugin); `executor` wires them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from deviceplugin.cni.types import CniRequest, IpConfig, Route
from deviceplugin.model import Device


class NamespaceGone(Exception):
    """The pod's network namespace path does not exist (any more)."""


class NetlinkRefused(Exception):
    """The kernel refused a link operation; `code` is its errno."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Link:
    """A network interface as one namespace's netlink shows it."""

    index: int
    name: str
    mac: str
    alias: str
    up: bool
    mtu: int
    addresses: tuple[str, ...] = ()  # CIDR strings, global scope only


class Netns(Protocol):
    """Link operations in one network namespace; failures raise `NetlinkRefused`."""

    def links(self) -> list[Link]: ...

    def link(self, name: str, with_addresses: bool = False) -> Link | None: ...

    def link_by_index(self, index: int) -> Link | None: ...

    def set_up(self, index: int) -> None: ...

    def set_down(self, index: int) -> None: ...

    def restore(self, index: int, name: str, mtu: int | None, alias: str) -> None:
        """Name, MTU and alias in one message."""

    def move(
        self, index: int, target: Netns, name: str, alias: str, mtu: int | None = None
    ) -> None:
        """Into `target` under `name` (a `%d` pattern picks a free one), alias and MTU set,
        in one message: the device is never visible under a clashing name, and a move
        the kernel refuses leaves it where it was. It arrives down."""

    def default_route_ifindexes(self) -> frozenset[int]: ...

    def configure(
        self, index: int, mtu: int | None, ips: tuple[IpConfig, ...], routes: tuple[Route, ...]
    ) -> None:
        """MTU, up, addresses, then routes; routes without a gateway use the family's one."""


class Namespaces(Protocol):
    """Opening namespaces; each context closes what it opened."""

    def host(self) -> AbstractContextManager[Netns]:
        """The namespace the daemon (or the in-process shim) runs in: the node's."""
        ...

    def pod(self, path: str) -> AbstractContextManager[Netns]:
        """A pod's namespace by its path; `NamespaceGone` when there is none."""
        ...


class DeviceResolver(Protocol):
    """The node's PCI network functions, as the host namespace's sysfs shows them."""

    def device(self, pci_address: str) -> Device | None: ...

    def pci_of_netdev(self, name: str) -> str | None: ...


class IpamCall(Protocol):
    """One running IPAM plugin call."""

    def finish(self) -> bytes:
        """Its stdout, or `CniError`; the same on every call."""
        ...


class Ipam(Protocol):
    """The delegated IPAM plugin; every failure is a `CniError` (ERR_IPAM)."""

    def detached(self, plugin: str) -> bool:
        """Whether `plugin` never touches the interface, so it may run during the move."""
        ...

    def start(self, request: CniRequest, command: str) -> IpamCall: ...

    def invoke(self, request: CniRequest, command: str) -> bytes: ...

    def find(self, request: CniRequest) -> None:
        """`CniError` when the plugin is not in CNI_PATH."""

    def supports(self, request: CniRequest, version: str) -> bool: ...


# (namespace, pod name, resource) -> device ids the kubelet allocated to the pod.
PodDevices = Callable[[str, str, str], list[str]]
# A lock held while one device is worked on, by a key naming the device.
DeviceLock = Callable[[str], AbstractContextManager[None]]


@dataclass(frozen=True, slots=True)
class Ports:
    """Everything a CNI command touches outside its own data."""

    namespaces: Namespaces
    devices: DeviceResolver
    ipam: Ipam
    pod_devices: PodDevices
    lock: DeviceLock
