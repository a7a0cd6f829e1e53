"""Node repair: NICs that a lost CNI call left behind go back under their own names.

If the daemon was down or died between an ADD and its DEL, the DEL never
put the NIC back: when the pod's namespace was deleted the kernel returned
the NIC to the host under its pod name (or `devN`), still carrying netdp's
origin marker. A marked link in the host namespace is by construction in no
pod (ADD sets the marker in the very message that moves the NIC out, and
every way back clears it), so unless a call is working on it right now it is
stranded. The daemon runs this on start and on each rescan; each NIC is
looked at again under the same per-device lock the CNI calls take, so a
repair never races an ADD or DEL in flight, and restored (name, MTU, marker
cleared) in one message.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from deviceplugin.cni.origin import Origin, parse_alias
from deviceplugin.cni.ports import Link, NetlinkRefused, Netns, Ports

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Repaired:
    """One NIC put back: its PCI address ("" if unknown) and the host name it has again."""

    device: str
    name: str


def repair_stranded(ports: Ports) -> list[Repaired]:
    """Restore every netdp-marked link of the host namespace that no call is working on."""
    with ports.namespaces.host() as host:
        marked = [(link, o) for link in host.links() if (o := parse_alias(link.alias))]
        repaired = (_repair(host, ports, link, origin) for link, origin in marked)
        return [r for r in repaired if r is not None]


def _lock_key(ports: Ports, link: Link, origin: Origin) -> str:
    """The key ADD and DEL lock this device under (see `resolve.lock_key`)."""
    pci = origin.pci_address or ports.devices.pci_of_netdev(link.name)
    return pci or f"netdev-{origin.orig_name}"


def _repair(host: Netns, ports: Ports, seen: Link, origin: Origin) -> Repaired | None:
    with ports.lock(_lock_key(ports, seen, origin)):
        # Looked at again under the lock: a call that held it may have moved,
        # restored or re-marked the NIC meanwhile.
        link = host.link_by_index(seen.index)
        now = parse_alias(link.alias) if link is not None and link.mac == seen.mac else None
        if link is None or now is None:
            return None
        try:
            host.restore(link.index, now.orig_name, now.mtu, "")
        except NetlinkRefused as exc:
            log.error(
                "nic_repair_refused",
                device=now.pci_address or "",
                netdev=link.name,
                orig=now.orig_name,
                error=str(exc),
            )
            return None
    log.info(
        "nic_repaired",
        device=now.pci_address or "",
        netdev=link.name,
        name=now.orig_name,
        mtu=now.mtu,
    )
    return Repaired(device=now.pci_address or "", name=now.orig_name)
