"""What the running daemon reports, as one protocol with no-op defaults.

The daemon, its pool servers, its registrar and its CNI server call these
hooks; `metrics` implements them. Keeping the protocol here, apart from both, means the
daemon knows nothing about Prometheus and the metrics know nothing about
the daemon: either can be loaded, tested or replaced without the other.
"""

from __future__ import annotations

from collections.abc import Callable
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

    def cni_call(self, command: str, result: str, seconds: float) -> None:
        """The CNI server answered one call.

        `command` is the CNI command (ADD, DEL, CHECK, STATUS, GC, VERSION) or
        `other`; `result` is `ok`, or the CNI error code the runtime got, as a
        string (`cni/call_labels.py` keeps both to a fixed set).
        """

    def nic_repaired(self, device: str, name: str) -> None:
        """A NIC stranded by a lost CNI call is back under its host name `name`.

        `device` is its PCI address, or "" when it is not known.
        """


class DeferredObserver(DaemonObserver):
    """Stands in for an observer that is built after the daemon has started.

    It keeps every call in order until `attach`, which replays them to the
    real observer and forwards every later call, so the real one ends up as
    if it had heard everything from the start. `netdp run` builds its metrics
    only once the pools are registered, as importing prometheus_client would
    otherwise delay registering.
    """

    def __init__(self) -> None:
        self._target: DaemonObserver | None = None
        self._held: list[tuple[str, tuple[object, ...]]] = []

    def attach(self, target: DaemonObserver) -> None:
        """Replay what was held to `target`, then pass every call straight on."""
        held, self._held = self._held, []
        for name, args in held:
            getattr(target, name)(*args)
        self._target = target


def _deferred(name: str) -> Callable[..., None]:
    def hook(self: DeferredObserver, *args: object) -> None:
        if self._target is None:
            self._held.append((name, args))
        else:
            getattr(self._target, name)(*args)

    hook.__name__, hook.__qualname__ = name, f"DeferredObserver.{name}"
    return hook


# Every hook, made from the protocol itself: one added later is deferred too, never
# answered by the no-op default and so silently dropped.
for _name in [n for n in vars(DaemonObserver) if not n.startswith("_")]:
    setattr(DeferredObserver, _name, _deferred(_name))
