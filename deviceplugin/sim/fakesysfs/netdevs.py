"""The netdevs of a fake sysfs: their directories, attributes and `class/net` links.

A netdev directory sits in its device's `net/` directory (`<bdf>/net/<if>`, or
`<bdf>/virtio<N>/net/<if>` for virtio) with `address`, `mtu`, `type`,
`ifindex`, `operstate`, `carrier` and a `device` link back up, and
`class/net/<if>` links to it. Names are free-form, so a test can name fake
netdevs after real veth ends it created; ifindexes and MACs are unique in the
tree unless a test sets them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from deviceplugin.sim.fakesysfs.tree import Tree


class NetdevAttrs(TypedDict, total=False):
    """Optional netdev attributes; unset ones get lab-like defaults."""

    mac: str
    mtu: int
    operstate: str
    carrier: bool | None  # None: unreadable, as for an administratively down link
    arphrd: int  # the `type` file: 1 Ethernet, 32 InfiniBand
    ifindex: int


@dataclass(slots=True)
class Netdev:
    name: str
    mac: str
    mtu: int
    operstate: str
    carrier: bool | None
    arphrd: int
    ifindex: int


class Netdevs:
    """Creates and removes netdev directories; knows which PCI function owns each name."""

    def __init__(self, tree: Tree) -> None:
        self._tree = tree
        self._owner: dict[str, str] = {}  # netdev name -> PCI address
        self._next_ifindex = 2  # 1 is lo
        self._next_mac = 1

    def owner(self, name: str) -> str:
        """The PCI address whose netdev `name` is (KeyError if there is none)."""
        return self._owner[name]

    def new(self, name: str, attrs: NetdevAttrs) -> Netdev:
        """A netdev record; ifindex and MAC are the next free ones unless `attrs` set them."""
        ifindex = attrs.get("ifindex", self._next_ifindex)
        self._next_ifindex = max(self._next_ifindex, ifindex + 1)
        mac = attrs.get("mac")
        if mac is None:
            n = self._next_mac
            self._next_mac += 1
            mac = f"52:54:00:{(n >> 16) & 0xFF:02x}:{(n >> 8) & 0xFF:02x}:{n & 0xFF:02x}"
        return Netdev(
            name=name,
            mac=mac,
            mtu=attrs.get("mtu", 1500),
            operstate=attrs.get("operstate", "up"),
            carrier=attrs.get("carrier", True),
            arphrd=attrs.get("arphrd", 1),
            ifindex=ifindex,
        )

    def add(self, nd: Netdev, net_rel: str, device: str, pci: str) -> None:
        """Put `nd` in the `net/` directory `net_rel` of `device` (a bdf or `virtio<N>`)."""
        if nd.name in self._owner:
            raise ValueError(f"netdev {nd.name} already exists")
        nd_rel = f"{net_rel}/{nd.name}"
        self._tree.mkdir(nd_rel)
        self._tree.write_attrs(
            nd_rel,
            (("address", nd.mac), ("mtu", nd.mtu), ("type", nd.arphrd), ("ifindex", nd.ifindex)),
        )
        self.write_link_state(nd, net_rel)
        # The kernel's form: up to the owning device's parent, then its name.
        self._tree.symlink(f"../../../{device}", f"{nd_rel}/device")
        self._tree.link(f"class/net/{nd.name}", nd_rel)
        self._owner[nd.name] = pci

    def write_link_state(self, nd: Netdev, net_rel: str) -> None:
        """`operstate` and `carrier` as `nd` says; an unknown carrier is an absent file."""
        nd_rel = f"{net_rel}/{nd.name}"
        self._tree.write(f"{nd_rel}/operstate", f"{nd.operstate}\n")
        if nd.carrier is None:
            self._tree.unlink(f"{nd_rel}/carrier")
        else:
            self._tree.write(f"{nd_rel}/carrier", "1\n" if nd.carrier else "0\n")

    def drop(self, nd: Netdev, net_rel: str) -> None:
        """The netdev is gone from this namespace: its directory and `class/net` link go."""
        self._tree.unlink(f"class/net/{nd.name}")
        self._tree.rmtree(f"{net_rel}/{nd.name}")
        del self._owner[nd.name]
