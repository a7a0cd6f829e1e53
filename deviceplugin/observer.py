"""What the running daemon reports, as one protocol with no-op defaults.

The daemon, its pool servers and its registrar call these hooks; `metrics`
implements them. Keeping the protocol here, apart from both, means the
daemon knows nothing about Prometheus and the metrics know nothing about
the daemon: either can be loaded, tested or replaced without the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deviceplugin.diff import NodeState
    from deviceplugin.model import Health


class DaemonObserver:
    """What the daemon reports as it runs; every method is a no-op here.

    Metrics subclass it and override what they count. Calls come from the
    event loop and must not block. Sources are `uevent`, `netlink`,
    `config-file`, `periodic`; `trigger` of a discovery is one of those or
    `start`, `sighup`.
    """

    def events_received(self, source: str, count: int) -> None:
        """`count` events that can change what is advertised arrived from `source`."""

    def events_coalesced(self, source: str, count: int) -> None:
        """`count` events were served by another event's run instead of their own."""

    def discovery_done(self, trigger: str, seconds: float, devices: int) -> None:
        """A sysfs rescan finished: how long it took and how many devices it found."""

    def reload_done(self, ok: bool) -> None:
        """A config reload was applied (or found nothing new: still ok) or refused."""

    def health_changed(self, resource: str, device: str, health: Health) -> None:
        """A pool member's health changed (not called for devices joining or leaving)."""

    def state_applied(self, state: NodeState) -> None:
        """The device tree every pool now advertises (gauges, device info)."""

    def registration(self, resource: str, accepted: bool) -> None:
        """A Register call to the kubelet was accepted or refused."""

    def kubelet_restarted(self) -> None:
        """A new kubelet.sock appeared after the one we knew."""

    def allocation(self, resource: str, seconds: float, devices: int, ok: bool) -> None:
        """An Allocate call was answered."""

    def preferred_allocation(self, resource: str, seconds: float) -> None:
        """A GetPreferredAllocation call was answered."""

    def nic_repaired(self, device: str, name: str) -> None:
        """A NIC stranded by a lost CNI call is back under its host name `name`.

        `device` is its PCI address, or "" when it is not known.
        """
