"""The origin marker: what a device was before netdp moved it, kept in its link alias.

`netdp:pci=<address>;orig=<host name>;mtu=<host MTU>` survives namespace moves,
so DEL (and GC, and a daemon repairing the node) can restore the host name and
MTU even after the pod's namespace is gone and the kernel handed the NIC back
under its pod name. Anybody else's alias is left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ALIAS_PREFIX = "netdp:"
_ALIAS_FIELD = re.compile(r"(pci|orig|mtu)=([^;]*)")


@dataclass(frozen=True, slots=True)
class Origin:
    """What DEL needs to put a device back as it was."""

    orig_name: str
    pci_address: str | None = None
    mtu: int | None = None

    def to_alias(self) -> str:
        parts = [f"pci={self.pci_address or ''}", f"orig={self.orig_name}"]
        if self.mtu is not None:
            parts.append(f"mtu={self.mtu}")
        return ALIAS_PREFIX + ";".join(parts)


def parse_alias(alias: str) -> Origin | None:
    """The origin a netdp alias records, or None for anybody else's alias."""
    if not alias.startswith(ALIAS_PREFIX):
        return None
    values = dict(_ALIAS_FIELD.findall(alias[len(ALIAS_PREFIX) :]))
    if not values.get("orig"):
        return None
    mtu = values.get("mtu", "")
    return Origin(
        orig_name=values["orig"],
        pci_address=values.get("pci") or None,
        mtu=int(mtu) if mtu.isascii() and mtu.isdigit() else None,
    )
