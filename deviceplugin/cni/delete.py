"""CNI DEL and GC: give devices back; never fail on what is already gone.

DEL returns the device from the pod when it is there and carries our marker.
Otherwise the pod (or its namespace) is gone, and the kernel may have handed
the NIC back to the host under its pod name: with a PCI address sysfs names
it directly, without one every netdp-marked host link is looked at. GC does
the latter for the whole node, then lets the IPAM plugin collect its leases.
"""

from __future__ import annotations

from contextlib import ExitStack, suppress
from pathlib import Path

import structlog

from deviceplugin.cni.origin import parse_alias
from deviceplugin.cni.ports import NamespaceGone, Netns, Ports
from deviceplugin.cni.restore import restore_device_at, restore_returned_devices, return_to_host
from deviceplugin.cni.types import CniError, CniRequest
from deviceplugin.devinfo import remove_devinfo

log = structlog.get_logger(__name__)


def delete(request: CniRequest, ports: Ports) -> None:
    ipam_call = None
    if request.ipam_type and ports.ipam.detached(request.ipam_type):
        ipam_call = ports.ipam.start(request, "DEL")
    try:
        _delete_device(request, ports)
    except BaseException:
        if ipam_call is not None:  # reap it; the device error is the one to report
            with suppress(CniError):
                ipam_call.finish()
        raise
    if request.ipam_type:
        (ipam_call or ports.ipam.start(request, "DEL")).finish()
    if request.devinfo_file:
        remove_devinfo([Path(request.devinfo_file)])
    log.info("cni_del", container=request.container_id, ifname=request.ifname)


def _delete_device(request: CniRequest, ports: Ports) -> None:
    pci = request.selector.pci_address
    key = pci or f"attachment-{request.container_id}-{request.ifname}"
    with ports.lock(key), ports.namespaces.host() as host:
        if _return_from_pod(request, ports, host):
            return
        if pci:
            restore_device_at(host, ports.devices, pci)
        else:
            restore_returned_devices(host)


def _return_from_pod(request: CniRequest, ports: Ports, host: Netns) -> bool:
    """Return our device from the pod; False if there was none to return."""
    if not request.netns:
        return False
    with ExitStack() as stack:
        try:
            pod = stack.enter_context(ports.namespaces.pod(request.netns))
        except NamespaceGone:
            log.info("cni_del_netns_gone", netns=request.netns)
            return False
        link = pod.link(request.ifname)
        if link is None:
            return False
        origin = parse_alias(link.alias)
        if origin is None:
            log.warning("cni_del_foreign_interface", ifname=request.ifname, alias=link.alias)
            return False
        return_to_host(pod, host, link, origin)
        return True


def gc(request: CniRequest, ports: Ports) -> None:
    """Give back devices whose pods died; let the IPAM plugin collect its leases."""
    with ports.namespaces.host() as host:
        restored = restore_returned_devices(host)
    log.info("cni_gc", restored=restored)
    if request.ipam_type and ports.ipam.supports(request, request.cni_version):
        ports.ipam.invoke(request, "GC")
