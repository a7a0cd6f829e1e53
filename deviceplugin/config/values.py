"""The config file's leaf values: the user's text in, the normalised value out.

Each parser returns the value as the rest of netdp compares it (ids and PCI
addresses as sysfs spells them, `#` VF ranges as Python ranges) or raises
ValueError with a message meant for the person who wrote the file; the
schema puts the field's path in front of it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from deviceplugin.api import names
from deviceplugin.pools import DeviceType, PfRef

MAX_VF_INDEX = 65535  # sriov_totalvfs is a 16-bit field

_PCI_ID = re.compile(r"(?:0[xX])?([0-9a-fA-F]{4})")
_PCI_ADDRESS = re.compile(r"(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([01][0-9a-fA-F])\.([0-7])")
_VF_ITEM = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_DRIVER_NAME = re.compile(r"[A-Za-z0-9_.:+-]{1,64}")
_MAX_IFNAME_BYTES = 15  # IFNAMSIZ - 1


def describe(value: object) -> str:
    """What a decoded JSON/YAML value is, in words, for "expected X, got Y" messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {text!r}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def normalise_pci_id(text: str) -> str:
    """`"0x8086"`, `"8086"`, `"1AF4"` → `"8086"`/`"1af4"`: how sysfs ids are stored."""
    m = _PCI_ID.fullmatch(text)
    if m is None:
        raise ValueError(
            f"{text!r} is not a PCI id: expected 4 hex digits, e.g. '8086' or '0x8086'"
        )
    return m.group(1).lower()


def normalise_pci_address(text: str) -> str:
    """`"0000:03:02.0"` or `"03:02.0"` → `"0000:03:02.0"`, as sysfs names devices."""
    m = _PCI_ADDRESS.fullmatch(text)
    if m is None:
        raise ValueError(
            f"{text!r} is not a PCI address: expected domain:bus:device.function "
            "in hex, e.g. '0000:03:02.0' (or '03:02.0')"
        )
    domain, bus, device, function = m.groups()
    return f"{int(domain or '0', 16):04x}:{bus.lower()}:{device.lower()}.{function}"


def _check_ifname(name: str, entry: str) -> str:
    if (
        not name
        or len(name.encode()) > _MAX_IFNAME_BYTES
        or name in (".", "..")
        or any(c in "/:" or c.isspace() or not c.isprintable() for c in name)
    ):
        raise ValueError(
            f"{entry!r}: {name!r} is not a network interface name: expected 1 to 15 "
            "characters without '/', ':' or spaces"
        )
    return name


def _parse_vf_ranges(text: str, entry: str) -> tuple[range, ...]:
    ranges = []
    for item in text.split(","):
        m = _VF_ITEM.fullmatch(item)
        if m is None:
            raise ValueError(
                f"{entry!r}: {item!r} is not a VF index or range: expected indexes "
                "and ranges after '#', e.g. 'ens1f0#0-3,6'"
            )
        bounds = [m.group(1), m.group(2) or m.group(1)]
        if any(len(b) > len(str(MAX_VF_INDEX)) or int(b) > MAX_VF_INDEX for b in bounds):
            raise ValueError(f"{entry!r}: VF index in {item!r} exceeds {MAX_VF_INDEX}")
        first, last = int(bounds[0]), int(bounds[1])
        if first > last:
            raise ValueError(f"{entry!r}: range {item!r} ends before it starts")
        ranges.append(range(first, last + 1))
    return tuple(ranges)


def _parse_pf_ref(text: str, parse_parent: Callable[[str, str], str]) -> PfRef:
    parent, hash_sign, indexes = text.partition("#")
    parent = parse_parent(parent, text)
    if not hash_sign:
        return PfRef(parent)
    if "#" in indexes:
        raise ValueError(f"{text!r}: more than one '#'")
    if not indexes:
        raise ValueError(f"{text!r}: expected VF indexes after '#', e.g. '{parent}#0-3,6'")
    return PfRef(parent, _parse_vf_ranges(indexes, text))


def parse_pf_name(text: str) -> PfRef:
    """A `pfNames` entry, `ens1f0` or `ens1f0#0-3,6`; ValueError says what is wrong."""
    return _parse_pf_ref(text, _check_ifname)


def parse_root_device(text: str) -> PfRef:
    """A `rootDevices` entry, `0000:86:00.0` or `0000:86:00.0#0-1,3`."""

    def parent_address(address: str, entry: str) -> str:
        try:
            return normalise_pci_address(address)
        except ValueError as e:
            raise ValueError(f"{entry!r}: {e}") from None

    return _parse_pf_ref(text, parent_address)


def format_pf_ref(ref: PfRef) -> str:
    """The config text of a `PfRef`, the inverse of the two parsers above."""
    if ref.vfs is None:
        return ref.parent
    items = (str(r.start) if len(r) == 1 else f"{r.start}-{r.stop - 1}" for r in ref.vfs)
    return f"{ref.parent}#{','.join(items)}"


def resource_name(text: str) -> str:
    """A `resourceName`: the part after the prefix, by the kubelet's rule (`api.names`)."""
    if "/" in text:
        raise ValueError(
            f"{text!r} is not a valid resource name: put the part before '/' in resourcePrefix"
        )
    problems = names.name_problems(text)
    if problems:
        raise ValueError(f"{text!r} is not a valid resource name: {problems[0]}")
    return text


def resource_prefix(text: str) -> str:
    """A `resourcePrefix`: a domain the kubelet accepts for extended resources (`api.names`)."""
    problems = names.domain_problems(text)
    if problems:
        raise ValueError(f"{text!r} is not a valid resource prefix: {problems[0]}")
    return text


def device_type(text: str) -> DeviceType:
    """A `deviceType`; sriovdp's types netdp cannot serve are named as such."""
    try:
        return DeviceType(text)
    except ValueError:
        pass
    supported = ", ".join(t.value for t in DeviceType)
    if text in ("accelerator", "auxNetDevice"):
        raise ValueError(
            f"deviceType {text!r} is not supported by netdp, which advertises PCI network "
            f"functions only; expected one of: {supported}"
        )
    raise ValueError(f"unknown deviceType {text!r}: expected one of: {supported}")


def driver_name(text: str) -> str:
    """A `drivers` entry: a kernel driver name as sysfs shows it."""
    if not _DRIVER_NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not a kernel driver name, e.g. 'iavf' or 'vfio-pci'")
    return text


def link_type(text: str) -> str:
    """A `linkTypes` entry, lower-cased as the scanner reports link types."""
    if not text or not text.isprintable():
        raise ValueError(f"{text!r} is not a link type, e.g. 'ether' or 'infiniband'")
    return text.lower()


def info_key(text: str) -> str:
    """An `additionalInfo` key: `*` (every device) or a PCI address."""
    if text == "*":
        return text
    try:
        return normalise_pci_address(text)
    except ValueError as e:
        raise ValueError(f"{e}; or '*' for every device") from None
