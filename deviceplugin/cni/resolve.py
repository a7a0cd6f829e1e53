"""What an ADD works on: the pod's namespace, the host device, and whether it may go.

The device is named by PCI address (the device plugin's `deviceID`), netdev
name, MAC, or not at all (`resourceName`: the first device the kubelet
allocated to the pod that is still on the host). Before anything moves, the
refusals that protect the node and other pods: the default-route NIC never
goes, a device in another namespace is busy, and with `resourceName` only
the pod's own devices may be taken.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

from deviceplugin.cni.ports import DeviceResolver, Link, NamespaceGone, Namespaces, Netns, Ports
from deviceplugin.cni.types import (
    ERR_DEFAULT_ROUTE,
    ERR_DEVICE_BUSY,
    ERR_DEVICE_NOT_FOUND,
    ERR_INVALID_ENV,
    ERR_NOT_ALLOCATED,
    ERR_POD_RESOURCES,
    ERR_UNKNOWN_CONTAINER,
    CniError,
    CniRequest,
    DeviceSelector,
)
from deviceplugin.model import Device, NetdevState


@dataclass(frozen=True, slots=True)
class Target:
    """The host device an ADD works on; `device` is None for a netdev without a PCI function."""

    link: Link
    device: Device | None = None

    @property
    def pci_address(self) -> str | None:
        return self.device.pci_address if self.device is not None else None


@contextmanager
def pod_namespace(namespaces: Namespaces, path: str) -> Iterator[Netns]:
    """The pod's namespace for ADD and CHECK, where its absence is the caller's error."""
    with ExitStack() as stack:
        try:
            pod = stack.enter_context(namespaces.pod(path))
        except NamespaceGone:
            raise CniError(ERR_UNKNOWN_CONTAINER, f"network namespace {path} not found") from None
        yield pod


def allocated_devices(request: CniRequest, ports: Ports) -> list[str]:
    """The device ids the kubelet allocated to the pod for `resourceName`."""
    assert request.resource_name
    pod = request.pod
    if pod is None:
        raise CniError(
            ERR_INVALID_ENV,
            "resourceName is set but CNI_ARGS names no pod",
            "need K8S_POD_NAMESPACE and K8S_POD_NAME to check the allocation",
        )
    try:
        return ports.pod_devices(pod[0], pod[1], request.resource_name)
    except CniError:
        raise
    except Exception as exc:
        raise CniError(ERR_POD_RESOURCES, "kubelet PodResources lookup failed", str(exc)) from None


def pick_allocated(
    request: CniRequest, allocated: list[str], host: Netns, devices: DeviceResolver
) -> CniRequest:
    """Without a device in the config: the first allocated device still on the host."""
    for candidate in allocated:
        pci = candidate.lower()
        device = devices.device(pci)
        netdev = device.netdev if device is not None else None
        if netdev is not None and host.link(netdev) is not None:
            return replace(request, selector=DeviceSelector(pci_address=pci))
    raise CniError(
        ERR_DEVICE_NOT_FOUND,
        f"no free device of {request.resource_name} allocated to the pod",
        f"allocated: {', '.join(allocated) or 'none'}",
    )


def lock_key(request: CniRequest, host: Netns, devices: DeviceResolver) -> str:
    """The device identity to lock on, known before the locked resolution.

    DEL locks on the PCI address or the attachment, so ADD uses the PCI
    address whenever it can find one: every call for one device meets at one lock.
    """
    sel = request.selector
    if sel.pci_address:
        return sel.pci_address
    name = sel.netdev
    if sel.hwaddr:
        name = next((lk.name for lk in host.links() if lk.mac == sel.hwaddr), None)
    if name:
        return devices.pci_of_netdev(name) or f"netdev-{name}"
    return f"attachment-{request.container_id}-{request.ifname}"


def resolve(request: CniRequest, host: Netns, devices: DeviceResolver) -> Target:
    sel = request.selector
    if sel.pci_address:
        return _target_by_pci(sel.pci_address, host, devices)
    link = None
    if sel.netdev:
        link = host.link(sel.netdev)
    elif sel.hwaddr:
        link = next((lk for lk in host.links() if lk.mac == sel.hwaddr), None)
    if link is None:
        raise CniError(ERR_DEVICE_NOT_FOUND, f"{sel.describe()} not found on the host")
    pci = devices.pci_of_netdev(link.name)
    return Target(link=link, device=devices.device(pci) if pci else None)


def _target_by_pci(pci: str, host: Netns, devices: DeviceResolver) -> Target:
    device = devices.device(pci)
    if device is None:
        raise CniError(ERR_DEVICE_NOT_FOUND, f"no network device at PCI {pci}")
    if device.netdev_state is NetdevState.ELSEWHERE:
        raise CniError(
            ERR_DEVICE_BUSY,
            f"device {pci} is in use",
            "its netdev is in another network namespace",
        )
    if device.netdev is None:
        raise CniError(
            ERR_DEVICE_NOT_FOUND,
            f"device {pci} has no network interface",
            f"driver {device.driver or 'none'}; a vfio-pci device cannot be moved into a pod",
        )
    link = host.link(device.netdev)
    if link is None:
        raise CniError(
            ERR_DEVICE_BUSY,
            f"device {pci} is in use",
            f"its netdev {device.netdev} is not in the host namespace",
        )
    return Target(link=link, device=device)


def check_safety(
    request: CniRequest, target: Target, allocated: list[str] | None, host: Netns
) -> None:
    if target.link.index in host.default_route_ifindexes():
        raise CniError(
            ERR_DEFAULT_ROUTE,
            f"refusing {target.link.name}: it carries the node's default route",
            "moving it into a pod would cut the node off the network",
        )
    if allocated is not None and (target.pci_address or "") not in {a.lower() for a in allocated}:
        raise CniError(
            ERR_NOT_ALLOCATED,
            f"device {target.pci_address or target.link.name} is not allocated to the pod",
            f"kubelet allocated {request.resource_name}: {', '.join(allocated) or 'nothing'}",
        )
