"""Which interfaces carry the node's default routes.

Handing the default-route NIC to a pod cuts the node off its cluster, so both
the pool selection and the CNI executor refuse it. The answer comes from
netlink in the caller's network namespace (the daemon runs with hostNetwork),
for IPv4 and IPv6, including multipath routes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from typing import Any

_RT_TABLE_LOCAL = 255
_RTN_UNICAST = 1


def default_route_ifindexes(routes: Iterable[Mapping[str, Any]]) -> frozenset[int]:
    """Output interfaces of default routes, from route records in a plain form.

    Each record has `dst_len`, `table`, `type`, `oif` (int or None) and
    `multipath_oifs` (ints). Kept pure so the rules are tested without netlink.
    """
    found: set[int] = set()
    for route in routes:
        if route.get("dst_len") != 0 or route.get("table") == _RT_TABLE_LOCAL:
            continue
        if route.get("type", _RTN_UNICAST) != _RTN_UNICAST:
            continue
        if route.get("oif"):
            found.add(int(route["oif"]))
        found.update(int(i) for i in route.get("multipath_oifs", ()) if i)
    return frozenset(found)


def route_record(msg: Any) -> dict[str, Any]:
    """A pyroute2 `rtmsg` in the plain form above."""
    multipath = msg.get_attr("RTA_MULTIPATH") or []
    return {
        "dst_len": msg["dst_len"],
        "table": msg.get_attr("RTA_TABLE") or msg["table"],
        "type": msg["type"],
        "oif": msg.get_attr("RTA_OIF"),
        "multipath_oifs": [hop["oif"] for hop in multipath],
    }


def _default_route_records(ipr: Any) -> list[dict[str, Any]]:
    """The default routes of `ipr`'s namespace in the plain form above."""
    return [
        route_record(msg)
        for family in (socket.AF_INET, socket.AF_INET6)
        for msg in ipr.route("dump", family=family)
        if msg["dst_len"] == 0  # other routes: no attributes to read
    ]


def read_default_route_ifindexes(ipr: Any) -> frozenset[int]:
    """Interfaces carrying a default route in the namespace of `ipr` (a pyroute2 IPRoute);
    routes only, no link dump."""
    return default_route_ifindexes(_default_route_records(ipr))


def default_route_interfaces() -> frozenset[str]:
    """Names of the interfaces that carry a default route in this namespace.

    Only those links are asked for: pyroute2 decodes a link in about 0.6 ms
    here, and a node with 1024 VF netdevs would spend over half a second per
    rescan decoding a full link dump for the one or two names it needs.
    """
    from deviceplugin import pyroute2_loader

    pyroute2_loader.load()  # late: ~190 ms that `list` on a node without routes need not pay
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        names = set()
        for index in sorted(read_default_route_ifindexes(ipr)):
            try:
                links = ipr.link("get", index=index)
            except NetlinkError:  # gone since the route dump: it carries no route now
                continue
            names.update(link.get_attr("IFLA_IFNAME") for link in links)
    return frozenset(names)
