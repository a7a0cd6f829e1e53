"""Putting devices back as they were before netdp moved them.

A device netdp moved carries its origin marker (`origin.Origin`) in its
alias, so the way back needs no memory of the ADD: from a pod, under the
original name and MTU (`return_to_host`); on the host, after the kernel
handed the NIC back from a dead pod under its pod name
(`restore_returned_devices`, which DEL, GC and a daemon repairing the node
share). Renames the kernel refuses are logged, not raised: the marker stays,
so a later DEL or GC finishes the job.
"""

from __future__ import annotations

import structlog

from deviceplugin.cni.origin import Origin, parse_alias
from deviceplugin.cni.ports import DeviceResolver, Link, NetlinkRefused, Netns

log = structlog.get_logger(__name__)

# A free name the kernel picks when the original one is taken on the host.
FALLBACK_NAME = "netdp%d"


def find_moved(ns: Netns, moved: Link, names: tuple[str, ...]) -> Link | None:
    """The moved device in `ns`: same MAC under one of `names` or its old index.

    Indexes are per namespace, so an index alone could name someone else's link.
    """
    candidates = [ns.link(name) for name in names] + [ns.link_by_index(moved.index)]
    return next((c for c in candidates if c is not None and c.mac == moved.mac), None)


def return_to_host(pod: Netns, host: Netns, link: Link, origin: Origin) -> None:
    """Back to the host under its original name and MTU, alias cleared, in one message."""
    if link.up:
        pod.set_down(link.index)
    try:
        pod.move(link.index, host, origin.orig_name, "", origin.mtu)
    except NetlinkRefused as exc:
        # A name clash on the host. If the kernel moved it but could not rename
        # it, it is on the host under its pod name with the netdp alias, which
        # a later DEL or GC restores; if it is still here, send it under a
        # free name, alias kept for the same reason.
        log.error("cni_return_name_taken", device=origin.orig_name, error=str(exc))
        if find_moved(pod, link, (link.name,)) is not None:
            pod.move(link.index, host, FALLBACK_NAME, origin.to_alias())


def restore_host_link(host: Netns, link: Link) -> Origin | None:
    """A host link under a name not its own (per its marker) gets its name and MTU back.

    Returns the origin it restored (or tried to); None for anything without a
    netdp marker or already under its original name (untouched, or in the
    middle of someone's ADD), which is left alone.
    """
    origin = parse_alias(link.alias)
    if origin is None or origin.orig_name == link.name:
        return None
    log.info("cni_restore_returned_device", name=link.name, orig=origin.orig_name)
    try:
        host.restore(link.index, origin.orig_name, origin.mtu, "")
    except NetlinkRefused as exc:
        log.error("cni_restore_failed", device=origin.orig_name, error=str(exc))
    return origin


def restore_returned_devices(host: Netns) -> list[str]:
    """Rename devices the kernel returned from dead pods back to their host names.

    When a pod's namespace is destroyed the kernel moves a physical NIC back to
    the host under the name it had in the pod (or `devN`); only its netdp alias
    tells what it was. Returns the original names of the devices it renamed.
    """
    return [o.orig_name for link in host.links() if (o := restore_host_link(host, link))]


def restore_device_at(host: Netns, devices: DeviceResolver, pci: str) -> None:
    """`restore_returned_devices` for the one device at `pci`, found through sysfs."""
    device = devices.device(pci)
    for netdev in device.netdevs if device is not None else ():
        link = host.link(netdev.name)
        if link is not None:
            restore_host_link(host, link)
