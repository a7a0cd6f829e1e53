"""What the daemon would advertise on this node right now, read in one go.

`netdp list`, the demo and the e2e checks must show the daemon's own view,
not a look-alike, so they take its pure steps (`diff.place`, then
`diff.build_state`) over the same inputs: one sysfs scan, the default-route
interfaces, and the link states netlink reports at this moment (none where
netlink is unavailable; the daemon then judges links by sysfs too). This
module is only that reading; nothing here decides anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from deviceplugin import diff, sysfs
from deviceplugin.health import LinkState
from deviceplugin.pools import PoolSpec
from deviceplugin.routes import default_route_interfaces


def read_links() -> dict[str, LinkState]:
    """Every interface's link state in this namespace, from one netlink dump; {} without one."""
    from deviceplugin.watch import LinkMonitor  # event sources: only when netlink is read

    monitor = LinkMonitor(lambda _: None)
    try:
        monitor.open()
    except OSError:
        return {}
    try:
        return monitor.links
    finally:
        monitor.close()


def survey(
    specs: Sequence[PoolSpec],
    sysfs_root: Path,
    *,
    links: Mapping[str, LinkState] | None = None,
    routes: Callable[[], frozenset[str]] = default_route_interfaces,
) -> diff.NodeState:
    """The node state a freshly started daemon would advertise for these pools.

    `links` None reads them from netlink; pass `{}` to judge links as a daemon
    without netlink does (`--watch periodic`).
    """
    node = sysfs.scan(sysfs_root)
    placement = diff.place(node, routes(), specs)
    return diff.build_state(placement, read_links() if links is None else links)
