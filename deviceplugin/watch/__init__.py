"""Event sources that keep the daemon's view of the node current, without polling.

Each source is a thin shell around one kernel interface, read from the asyncio
loop with `loop.add_reader` (no threads, no timers while nothing happens):

- `uevents`: kernel uevents for the `pci` and `net` subsystems (`UeventMonitor`):
  hot-plug, driver binds, VFs created or destroyed, netdevs renamed or moved
  into pods; `uevent_relevant` decides which of them may change anything.
- `links`: rtnetlink link messages (`LinkMonitor`), kept as a map of every
  interface's admin state and carrier; a flap needs new verdicts, not a scan.
- `configfile`: inotify on the config file's directory (`FileWatcher`), so both
  an edited file and a ConfigMap update (an atomic `..data` swap) count.
- `coalescer`: turns a burst of triggers into one run of an async action.
- `mode`: opens what can be opened (`open_sources`) and says what the daemon
  follows live and what periodic rescans stand in for (`LiveMode`, `probe`).
- `limits`: socket buffer and per-wakeup read limits the monitors share.

The pure helpers (`uevent_relevant`, `parse_link_messages`, `link_changes`,
`live_mode`) hold the decisions, so tests can check them on plain data. This
package exports each module's public names, so `watch.Coalescer` and
`watch.coalescer.Coalescer` are the same class. Those of `links` are loaded
on first use (PEP 562 `__getattr__`): it decodes with pyroute2, whose
package import costs about 0.1 s of CPU and 9 MiB, so importing the daemon
does not pay for it before the daemon opens its sources.
"""

from typing import TYPE_CHECKING

from deviceplugin.watch.coalescer import Coalescer
from deviceplugin.watch.configfile import CONFIG_QUIET_S, CONFIGMAP_DATA_LINK, FileWatcher
from deviceplugin.watch.mode import LiveMode, live_mode, open_sources, probe
from deviceplugin.watch.uevents import (
    HOTPLUG_MAX_DELAY_S,
    HOTPLUG_QUIET_S,
    OVERFLOW,
    Uevent,
    UeventMonitor,
    uevent_relevant,
    uevent_source,
)

if TYPE_CHECKING:
    from deviceplugin.watch.links import (
        LinkMessage,
        LinkMonitor,
        link_changes,
        link_state_of,
        parse_link_messages,
    )

_LINKS = frozenset(
    {"LinkMessage", "LinkMonitor", "link_changes", "link_state_of", "parse_link_messages"}
)


def __getattr__(name: str) -> object:
    if name in _LINKS:
        from deviceplugin import pyroute2_loader

        pyroute2_loader.load()
        from deviceplugin.watch import links

        return getattr(links, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CONFIGMAP_DATA_LINK",
    "CONFIG_QUIET_S",
    "HOTPLUG_MAX_DELAY_S",
    "HOTPLUG_QUIET_S",
    "OVERFLOW",
    "Coalescer",
    "FileWatcher",
    "LinkMessage",
    "LinkMonitor",
    "LiveMode",
    "Uevent",
    "UeventMonitor",
    "link_changes",
    "link_state_of",
    "live_mode",
    "open_sources",
    "parse_link_messages",
    "probe",
    "uevent_relevant",
    "uevent_source",
]
