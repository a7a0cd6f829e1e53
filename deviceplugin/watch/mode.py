"""Which event sources the daemon has here, and what stands in for a missing one.

`open_sources` opens the uevent and rtnetlink monitors it can; `LiveMode` says
what the daemon follows live and, when a source is missing (no permission, no
libudev, `--watch periodic`), that periodic rescans stand in and why. `probe`
answers that for `netdp list` without keeping anything open.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deviceplugin.watch.uevents import Uevent, UeventMonitor

if TYPE_CHECKING:
    from deviceplugin.watch.links import LinkMonitor


@dataclass(frozen=True, slots=True)
class LiveMode:
    """How the daemon learns about changes, for its logs and `netdp list`.

    `rescan_interval_s` is set when periodic rescans stand in for a missing
    event source; `problems` says why a source is missing.
    """

    uevents: str | None  # "kernel" or "udev" when listening, else None
    netlink: bool
    rescan_interval_s: float | None
    problems: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = []
        if self.uevents:
            parts.append(f"hot-plug from {self.uevents} uevents")
        if self.netlink:
            parts.append("link state from netlink")
        if self.rescan_interval_s is not None:
            parts.append(f"periodic rescan every {self.rescan_interval_s:g} s")
        text = ", ".join(parts)
        if self.problems:
            text += f" ({'; '.join(self.problems)})"
        return text


def live_mode(
    uevents: str | None, netlink: bool, rescan_interval_s: float, problems: Iterable[str]
) -> LiveMode:
    """Periodic rescans exactly when an event source is missing."""
    complete = uevents is not None and netlink
    return LiveMode(uevents, netlink, None if complete else rescan_interval_s, tuple(problems))


def open_sources(
    on_uevent: Callable[[Uevent], None],
    on_links: Callable[[frozenset[str]], None],
    *,
    rescan_interval_s: float,
    periodic_only: bool = False,
) -> tuple[LiveMode, UeventMonitor | None, LinkMonitor | None]:
    """Open what can be opened; the mode says what stands in for the rest."""
    problems = []
    uevents: UeventMonitor | None = None
    links: LinkMonitor | None = None
    if periodic_only:
        problems.append("event sources disabled by --watch periodic")
    else:
        try:
            uevents = UeventMonitor(on_uevent)
            uevents.open()
        except Exception as exc:  # pyudev raises ImportError/OSError/its own on a bad libudev
            problems.append(f"no uevent socket: {exc}")
            uevents = None
        from deviceplugin import watch  # `links`, and pyroute2 with it, load on first use

        try:
            links = watch.LinkMonitor(on_links)
            links.open()
        except OSError as exc:
            problems.append(f"no rtnetlink socket: {exc}")
            links = None
    mode = live_mode(
        uevents.source if uevents else None, links is not None, rescan_interval_s, problems
    )
    return mode, uevents, links


def probe(rescan_interval_s: float, periodic_only: bool = False) -> LiveMode:
    """The mode `netdp run` would use here and now (opens and closes the sources)."""
    mode, uevents, links = open_sources(
        lambda _: None,
        lambda _: None,
        rescan_interval_s=rescan_interval_s,
        periodic_only=periodic_only,
    )
    for source in (uevents, links):
        if source is not None:
            source.close()
    return mode
