"""What sysfs files and links say, as pure parsers: text in, value or `ValueError` out.

sysfs contents are untrusted input (a fake `--sysfs-root`, a buggy driver, a
device vanishing mid-read), so every parser is strict and names the text it
refused; `sysfs.py` decides what a refusal costs (one field, or the device).
Kept apart from the reader so the rules are tested without a file system.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from deviceplugin.model import NetDev, NetdevState

_PCI_ADDRESS = re.compile(r"[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")
_INT = re.compile(r"-?[0-9]+")
_HEX = re.compile(r"[0-9a-f]+")
_UEVENT_CLASS = re.compile(r"[0-9A-Fa-f]{4,6}")  # the kernel's %04X of a 24-bit class
_UEVENT_IDS = re.compile(r"[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}")  # %04X:%04X of two 16-bit ids
_LINK_TYPES = {1: "ether", 32: "infiniband"}  # ARPHRD_ETHER, ARPHRD_INFINIBAND


def _clip(text: str) -> str:
    return repr(text[:40])


def parse_hex_id(text: str, digits: int = 4) -> str:
    """`"0x1af4\\n"` -> `"1af4"`: the spelling sriovdp selectors use."""
    value = text.strip().lower().removeprefix("0x")
    if len(value) != digits or not _HEX.fullmatch(value):
        raise ValueError(f"not a {digits}-digit hex id: {_clip(text)}")
    return value


def parse_class(text: str) -> str:
    """`"0x020000\\n"` -> `"020000"` (base class, subclass, prog-if)."""
    return parse_hex_id(text, 6)


def parse_int(text: str, minimum: int = 0) -> int:
    """A decimal sysfs number; strict, because `int()` also takes `"1_0"` and non-ASCII digits."""
    value = text.strip()
    # The common case first: ASCII digits only (what `_INT` takes without the sign).
    if (value.isascii() and value.isdigit()) or _INT.fullmatch(value):
        number = int(value)
        if number >= minimum:
            return number
    raise ValueError(f"not an integer >= {minimum}: {_clip(text)}")


def parse_numa_node(text: str) -> int | None:
    """The kernel writes -1 for "no NUMA affinity"; the model says None."""
    node = parse_int(text, minimum=-1)
    return None if node == -1 else node


def parse_carrier(text: str) -> bool:
    value = text.strip()
    if value not in ("0", "1"):
        raise ValueError(f"carrier is not 0 or 1: {_clip(text)}")
    return value == "1"


def _matching(pattern: re.Pattern[str], what: str, text: str) -> str:
    """`text` trimmed and lowercased when all of it is `pattern` (sysfs may write either case)."""
    value = text.strip().lower()
    if not pattern.fullmatch(value):
        raise ValueError(f"not {what}: {_clip(text)}")
    return value


def link_type_name(arphrd: int) -> str:
    """The `type` file's ARPHRD number as sriovdp's `linkTypes` selector spells it."""
    return _LINK_TYPES.get(arphrd, f"arphrd-{arphrd}")


def parse_link_type(text: str) -> str:
    return link_type_name(parse_int(text))


def parse_pci_address(text: str) -> str:
    return _matching(_PCI_ADDRESS, "a PCI address", text)


def _link_name(target: str) -> str:
    return target.rstrip("/").rpartition("/")[2]


def pci_address_of_link(target: str) -> str:
    """`physfn -> ../0000:05:00.0` and `virtfnN -> ../0000:05:10.0` name a PCI function."""
    return parse_pci_address(_link_name(target))


def iommu_group_of_link(target: str) -> int:
    """`iommu_group -> ../../../kernel/iommu_groups/17` -> 17."""
    return parse_int(_link_name(target))


def driver_of_link(target: str) -> str:
    """`driver -> ../../../bus/pci/drivers/igbvf` -> `igbvf`."""
    name = _link_name(target)
    if not name:
        raise ValueError(f"empty driver link: {_clip(target)}")
    return name


# --- a PCI function's `uevent` ---------------------------------------------------
# The kernel builds it on each read: `DRIVER=<name>` while a driver is bound
# (drivers/base/core.c, dev_uevent), then pci_uevent's PCI_CLASS=%04X,
# PCI_ID=%04X:%04X, PCI_SUBSYS_ID=%04X:%04X, PCI_SLOT_NAME and MODALIAS
# (drivers/pci/pci-driver.c), from the same fields as the `class`, `vendor`,
# `device`, `subsystem_*` files and the `driver` link. One read instead of six.


def parse_uevent(text: str) -> dict[str, str]:
    """`KEY=value\\n` lines; a line without `=` or its newline, or a key twice, refuses it all.

    Keys are not checked further: only known keys are looked up, and each
    value goes through its own strict parser.
    """
    lines = text.split("\n")
    if lines.pop():
        raise ValueError(f"no newline at the end: {_clip(text[-40:])}")
    try:
        env = dict([line.split("=", 1) for line in lines])
    except ValueError:
        raise ValueError(f"not KEY=value lines: {_clip(text)}") from None
    if len(env) != len(lines):
        raise ValueError(f"a key twice: {_clip(text)}")
    return env


def parse_uevent_class(text: str) -> str:
    """`PCI_CLASS=20000` -> `"020000"`, as `parse_class` spells the `class` file's `0x020000`."""
    if not _UEVENT_CLASS.fullmatch(text):
        raise ValueError(f"not a PCI class: {_clip(text)}")
    return text.lower().zfill(6)


def parse_uevent_ids(text: str) -> tuple[str, str]:
    """`PCI_ID=8086:10CA` (and `PCI_SUBSYS_ID`) -> `("8086", "10ca")`."""
    if not _UEVENT_IDS.fullmatch(text):
        raise ValueError(f"not a vendor:device pair: {_clip(text)}")
    vendor, _, device = text.lower().partition(":")
    return vendor, device


def parse_driver_name(text: str) -> str:
    """`DRIVER=igbvf`: the name of a directory under `bus/pci/drivers`."""
    if not text or "/" in text or text in (".", ".."):
        raise ValueError(f"not a driver name: {_clip(text)}")
    return text


def virtfn_index(name: str) -> int | None:
    """`virtfn12` -> 12; None for any other directory entry."""
    if name.startswith("virtfn") and name[6:].isdigit() and name[6:].isascii():
        return int(name[6:])
    return None


def is_virtio_child(name: str) -> bool:
    """virtio NICs keep their netdev one level down, under `virtioN/net/`."""
    return name.startswith("virtio") and name[6:].isdigit() and name[6:].isascii()


def netdev_state(netdevs: Iterable[NetDev], net_dir_seen: bool) -> NetdevState:
    """An empty `net/` dir means the driver made a netdev that now lives elsewhere."""
    if any(True for _ in netdevs):
        return NetdevState.PRESENT
    return NetdevState.ELSEWHERE if net_dir_seen else NetdevState.NONE


def netdev_home_of_link(target: str, name: str) -> tuple[str, str] | None:
    """(PCI function, net dir under it) a `class/net/<name>` link target puts the netdev in.

    The target is the netdev's place in the device tree:
    `../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0` for virtio
    (net dir `virtio2/net`), `.../0000:05:10.2/net/ens5v2` for most drivers
    (`net`). Only these two places count, the ones a device's own listing
    finds; a netdev of a USB or platform device, or a virtual one
    (`devices/virtual/net/lo`), has no PCI function.
    """
    parts = target.rstrip("/").split("/")
    if len(parts) < 3 or parts[-1] != name or parts[-2] != "net":
        return None
    owner, net_dir = parts[-3], "net"
    if is_virtio_child(owner) and len(parts) >= 4:
        owner, net_dir = parts[-4], f"{owner}/net"
    try:
        return parse_pci_address(owner), net_dir
    except ValueError:
        return None
