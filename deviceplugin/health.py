"""Whether a device can be handed to a pod right now, as the kubelet should see it.

Pure: device records and link states in, a verdict (health plus the reason a
person reading the log needs) out. The rules:

- A device that has lost its driver cannot be used by anyone: it stays
  advertised (capacity is not silently lost) but is Unhealthy until a driver
  is bound again.
- A device whose netdev is inside a pod's namespace is invisible from here, so
  nothing new is known about it: it keeps its last verdict (Healthy if none).
- A netdev that is administratively up but has no carrier (cable pulled, peer
  down, switch port dead) makes its device Unhealthy. An administratively down
  netdev is just not configured yet, which is how a spare NIC waits for a pod,
  so it stays Healthy.
- With the pool's `pf_link_health`, a VF is Unhealthy while its PF's link is
  down in the same sense: VFs share the PF's port, so their traffic goes
  nowhere.

Link state comes from netlink (`LinkState`, kept current by events) when the
interface exists in the daemon's namespace, else from the sysfs record of the
last scan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from deviceplugin.model import Device, Health, NetDev, NetdevState


@dataclass(frozen=True, slots=True)
class LinkState:
    """One interface's link as netlink (RTM_NEWLINK) or sysfs reports it.

    `carrier` is the kernel's lower-layer-up (IFF_LOWER_UP / `carrier` file);
    None when unknown, as sysfs says for an administratively down interface.
    """

    ifname: str
    ifindex: int | None
    admin_up: bool
    carrier: bool | None
    operstate: str | None = None

    @property
    def down(self) -> bool:
        """Configured to carry traffic but cannot: up, and definitely no carrier."""
        return self.admin_up and self.carrier is False


@dataclass(frozen=True, slots=True)
class Verdict:
    """A device's health and why, for the log line that announces a change."""

    health: Health
    reason: str


HEALTHY = Verdict(Health.HEALTHY, "usable")


def _link_down(netdev: NetDev, links: Mapping[str, LinkState]) -> bool:
    """Netlink's view when it knows the interface, else the scan's: the kernel lets
    sysfs read `carrier` only while the interface is administratively up."""
    state = links.get(netdev.name)
    return state.down if state is not None else netdev.carrier is False


def _down_links(netdevs: Iterable[NetDev], links: Mapping[str, LinkState]) -> list[str]:
    return [nd.name for nd in netdevs if _link_down(nd, links)]


def assess(
    device: Device,
    links: Mapping[str, LinkState],
    *,
    pf: Device | None = None,
    pf_link_health: bool = True,
    previous: Verdict | None = None,
) -> Verdict:
    """The verdict for one device.

    `links` maps interface names to their netlink state in the daemon's
    namespace; `pf` is the VF's parent as scanned (None for a non-VF or when
    not scanned); `previous` is the device's last verdict, kept while its
    netdev is in a pod.
    """
    if device.driver is None:
        return Verdict(Health.UNHEALTHY, "no driver bound")
    if device.netdev_state is NetdevState.ELSEWHERE:
        return previous or HEALTHY
    down = _down_links(device.netdevs, links)
    if down:
        return Verdict(Health.UNHEALTHY, f"no carrier on {', '.join(down)} (link is up)")
    if pf_link_health and device.is_vf and pf is not None:
        pf_down = _down_links(pf.netdevs, links)
        if pf_down:
            return Verdict(
                Health.UNHEALTHY, f"PF {pf.pci_address} has no carrier on {', '.join(pf_down)}"
            )
    return HEALTHY
