"""The config file: the SR-IOV network device plugin's `resourceList`, validated.

A config a user wrote for sriovdp must select the same devices here, and a
mistake must stop netdp before it registers anything, with a message naming
the file, the field and what was expected. So the pydantic models mirror
sriovdp's JSON keys exactly, refuse unknown keys (a typo would otherwise
silently widen or empty a pool), and refuse known sriovdp features netdp
cannot honour instead of ignoring them.

Decisions (also in `config_keys()`, which docs/configuration.md follows):

- Every level refuses unknown keys, with a "did you mean" hint.
- Honoured sriovdp keys: `resourceName`, `resourcePrefix` (default
  `intel.com`, sriovdp's `--resource-prefix` default), `deviceType`
  (`netDevice`, default), `selectors` (one object or a non-empty list, OR-ed),
  `excludeTopology`, `additionalInfo`; selector fields `vendors`, `devices`,
  `drivers`, `pciAddresses`, `pfNames`, `rootDevices`, `linkTypes`. An empty
  selector list (`"vendors": []`) does not constrain, as in sriovdp; netdp warns.
- sriovdp keys accepted only with their default value (false, null or an empty
  list), because netdp cannot honour them and ignoring them would either
  select devices the filter meant to leave out (`ddpProfiles`, `pKeys`,
  `acpiIndexes`, `auxTypes`) or hand a pod a device without what it asked for
  (`isRdma`, `needVhostNet`, `vdpaType`). The device types `accelerator` and
  `auxNetDevice` are refused.
- netdp additions: `deviceType: vfio-pci` (only devices bound to vfio-pci),
  `allowDefaultRoute` (default false) and `pfLinkHealth` (default true).
- Stricter than sriovdp: ids must be 4 hex digits (`0x` and upper case
  accepted, stored as `8086`), PCI addresses must be well formed (short
  `03:02.0` gets domain `0000`), `#` VF ranges are checked when loading, not
  when matching, and resource names follow the kubelet's extended-resource
  rules rather than sriovdp's `[A-Za-z0-9_]+` (so `-` and `.` are allowed;
  a name whose `PCIDEVICE_*` key a shell cannot read gets a warning).
- YAML is read with every scalar kept as a string except booleans and null,
  so unquoted ids such as `8086` or `0x1af4` mean what they look like.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    StrictBool,
    Tag,
    ValidationError,
)
from pydantic_core import ErrorDetails

from deviceplugin.allocation import env_var_name
from deviceplugin.model import VIRTIO_NET_DEVICE_IDS, VIRTIO_PCI_DRIVER, VIRTIO_VENDOR
from deviceplugin.pools import DeviceType, PfRef, PoolSpec, Selector

DEFAULT_RESOURCE_PREFIX = "intel.com"  # sriovdp's --resource-prefix default
DEFAULT_POOL_NAME = "kernel.org/virt"
MAX_VF_INDEX = 65535  # sriov_totalvfs is a 16-bit field
MAX_PROBLEMS_SHOWN = 20
# Link types the scanner reports (`NetDev.link_type`, `Device.link_type`).
KNOWN_LINK_TYPES = ("ether", "infiniband")
_ARPHRD_LINK_TYPE = re.compile(r"arphrd-[0-9]+")


class ConfigError(Exception):
    """An unusable config: every problem found, each naming the file and field."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        shown = [f"{self.source}: {p}" for p in self.problems[:MAX_PROBLEMS_SHOWN]]
        hidden = len(self.problems) - MAX_PROBLEMS_SHOWN
        if hidden > 0:
            shown.append(f"{self.source}: ... and {hidden} more problems")
        return "\n".join(shown)


@dataclass(frozen=True, slots=True)
class Config:
    """A validated config: the pools in file order, where they came from, and warnings."""

    pools: tuple[PoolSpec, ...]
    source: str
    warnings: tuple[str, ...] = ()


class KeySupport(StrEnum):
    """How netdp treats an accepted config key."""

    HONOURED = "sriovdp"  # sriovdp key, same meaning
    DEFAULT_ONLY = "default only"  # sriovdp key netdp cannot honour: only its default is accepted
    NETDP = "netdp"  # netdp addition


@dataclass(frozen=True, slots=True)
class ConfigKey:
    """One accepted key, for documentation: `path` like `resourceList[].selectors[].vendors`."""

    path: str
    type: str
    default: str  # JSON text of the default, or "required"
    support: KeySupport
    description: str


# ---------------------------------------------------------------------------
# Leaf values. Each parser takes the user's text and returns the normalised
# value or raises ValueError with a message meant for the user.

_PCI_ID = re.compile(r"(?:0[xX])?([0-9a-fA-F]{4})")
_PCI_ADDRESS = re.compile(r"(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([01][0-9a-fA-F])\.([0-7])")
_VF_ITEM = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DRIVER_NAME = re.compile(r"[A-Za-z0-9_.:+-]{1,64}")
# The kubelet checks "requests.<name>" against the qualified-name rules (quota
# names), so a prefix may use 253 - len("requests.") characters.
_MAX_PREFIX_LENGTH = 253 - len("requests.")
_MAX_NAME_LENGTH = 63
_MAX_IFNAME_BYTES = 15  # IFNAMSIZ - 1


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


def _resource_name(text: str) -> str:
    if "/" in text:
        raise ValueError(
            f"{text!r} is not a valid resource name: put the part before '/' in resourcePrefix"
        )
    if len(text) > _MAX_NAME_LENGTH or not _QUALIFIED_NAME.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a valid resource name: expected a qualified name of at most "
            f"{_MAX_NAME_LENGTH} characters (letters, digits, '-', '_' and '.', starting and "
            "ending with a letter or digit), e.g. 'sriov_net_a'"
        )
    return text


def _resource_prefix(text: str) -> str:
    if len(text) > _MAX_PREFIX_LENGTH or not _DNS_SUBDOMAIN.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a valid resource prefix: expected a DNS subdomain of at most "
            f"{_MAX_PREFIX_LENGTH} characters (lower-case letters, digits, '-' and '.'), "
            "e.g. 'example.com'"
        )
    if text == "kubernetes.io" or text.endswith(".kubernetes.io"):
        raise ValueError(
            f"{text!r} is not a valid resource prefix: the kubernetes.io domain is reserved "
            "for Kubernetes' own resources"
        )
    if text.startswith("requests."):
        raise ValueError(
            f"{text!r} is not a valid resource prefix: names starting with 'requests.' "
            "are reserved for resource quotas"
        )
    return text


def _device_type(text: str) -> DeviceType:
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


def _driver_name(text: str) -> str:
    if not _DRIVER_NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not a kernel driver name, e.g. 'iavf' or 'vfio-pci'")
    return text


def _link_type(text: str) -> str:
    if not text or not text.isprintable():
        raise ValueError(f"{text!r} is not a link type, e.g. 'ether' or 'infiniband'")
    return text.lower()


def _info_key(text: str) -> str:
    if text == "*":
        return text
    try:
        return normalise_pci_address(text)
    except ValueError as e:
        raise ValueError(f"{e}; or '*' for every device") from None


# ---------------------------------------------------------------------------
# pydantic models of the file. Leaf strings go through PlainValidator so every
# message is ours; `_describe` names what was found instead.

T = TypeVar("T")


def _describe(value: object) -> str:
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


def _text(parse: Callable[[str], T]) -> PlainValidator:
    def validate(value: object) -> T:
        if not isinstance(value, str):
            hint = " (put it in quotes)" if isinstance(value, bool | int | float) else ""
            raise ValueError(f"expected a string{hint}, got {_describe(value)}")
        return parse(value)

    return PlainValidator(validate)


def _default_only(reason: str) -> AfterValidator:
    def check(value: T) -> T:
        if value:
            raise ValueError(f"not supported by netdp: {reason}; remove the key")
        return value

    return AfterValidator(check)


def _key(
    alias: str,
    support: KeySupport,
    type_name: str,
    description: str,
    default: Any = ...,
) -> Any:
    return Field(
        default,
        alias=alias,
        description=description,
        json_schema_extra={"netdp_support": support.value, "netdp_type": type_name},
    )


PciId = Annotated[str, _text(normalise_pci_id)]
PciAddress = Annotated[str, _text(normalise_pci_address)]
DriverName = Annotated[str, _text(_driver_name)]
LinkType = Annotated[str, _text(_link_type)]
PfName = Annotated[PfRef, _text(parse_pf_name)]
RootDevice = Annotated[PfRef, _text(parse_root_device)]
AnyText = Annotated[str, _text(str)]
InfoKey = Annotated[str, _text(_info_key)]

_UNEVALUATED = "this selector cannot be evaluated, and ignoring it would select more devices"
_STRINGS = "list of strings"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _SelectorModel(_Strict):
    vendors: list[PciId] | None = _key(
        "vendors", KeySupport.HONOURED, _STRINGS, 'PCI vendor ids, e.g. "8086".', None
    )
    devices: list[PciId] | None = _key(
        "devices", KeySupport.HONOURED, _STRINGS, 'PCI device ids, e.g. "154c".', None
    )
    drivers: list[DriverName] | None = _key(
        "drivers",
        KeySupport.HONOURED,
        _STRINGS,
        'Bound kernel drivers, e.g. "iavf" or "vfio-pci".',
        None,
    )
    pci_addresses: list[PciAddress] | None = _key(
        "pciAddresses", KeySupport.HONOURED, _STRINGS, 'PCI addresses, e.g. "0000:03:02.0".', None
    )
    pf_names: list[PfName] | None = _key(
        "pfNames",
        KeySupport.HONOURED,
        _STRINGS,
        'Netdev names of parent PFs, optionally with VF indexes: "ens1f0#0-3,6". '
        "A device that is not a VF matches by its own netdev name.",
        None,
    )
    root_devices: list[RootDevice] | None = _key(
        "rootDevices",
        KeySupport.HONOURED,
        _STRINGS,
        'PCI addresses of parent PFs, optionally with VF indexes: "0000:86:00.0#0-1". '
        "A device that is not a VF matches by its own address.",
        None,
    )
    link_types: list[LinkType] | None = _key(
        "linkTypes",
        KeySupport.HONOURED,
        _STRINGS,
        'Link types of the netdev: "ether", "infiniband" (from the PCI class when the '
        "netdev is in a pod).",
        None,
    )
    acpi_indexes: Annotated[list[AnyText] | None, _default_only(_UNEVALUATED)] = _key(
        "acpiIndexes", KeySupport.DEFAULT_ONLY, _STRINGS, "Refused unless empty or null.", None
    )
    ddp_profiles: Annotated[list[AnyText] | None, _default_only(_UNEVALUATED)] = _key(
        "ddpProfiles", KeySupport.DEFAULT_ONLY, _STRINGS, "Refused unless empty or null.", None
    )
    p_keys: Annotated[list[AnyText] | None, _default_only(_UNEVALUATED)] = _key(
        "pKeys", KeySupport.DEFAULT_ONLY, _STRINGS, "Refused unless empty or null.", None
    )
    aux_types: Annotated[
        list[AnyText] | None, _default_only("auxiliary devices (auxNetDevice) are not advertised")
    ] = _key("auxTypes", KeySupport.DEFAULT_ONLY, _STRINGS, "Refused unless empty or null.", None)
    is_rdma: Annotated[StrictBool | None, _default_only("RDMA devices are not mounted")] = _key(
        "isRdma", KeySupport.DEFAULT_ONLY, "boolean", "Refused unless false or null.", False
    )
    need_vhost_net: Annotated[
        StrictBool | None, _default_only("/dev/vhost-net and /dev/net/tun are not mounted")
    ] = _key(
        "needVhostNet", KeySupport.DEFAULT_ONLY, "boolean", "Refused unless false or null.", False
    )
    vdpa_type: Annotated[AnyText | None, _default_only("vDPA devices are not advertised")] = _key(
        "vdpaType", KeySupport.DEFAULT_ONLY, "string", "Refused unless null or empty.", None
    )


def _non_empty(selectors: list[_SelectorModel]) -> list[_SelectorModel]:
    if not selectors:
        raise ValueError("expected at least one selector object ({} selects every device)")
    return selectors


# Union tags pydantic puts in error locations; removed when printing paths.
_ONE_SELECTOR = "<selector object>"
_SELECTOR_LIST = "<selector list>"


def _selectors_shape(value: Any) -> str | None:
    if isinstance(value, dict):
        return _ONE_SELECTOR
    if isinstance(value, list):
        return _SELECTOR_LIST
    return None


Selectors = Annotated[
    Annotated[_SelectorModel, Tag(_ONE_SELECTOR)]
    | Annotated[list[_SelectorModel], AfterValidator(_non_empty), Tag(_SELECTOR_LIST)],
    Discriminator(
        _selectors_shape,
        custom_error_type="selectors_shape",
        custom_error_message="expected a selector object or a list of selector objects",
    ),
]


class _ResourceModel(_Strict):
    resource_name: Annotated[str, _text(_resource_name)] = _key(
        "resourceName",
        KeySupport.HONOURED,
        "string",
        "Resource name after the prefix; unique within the prefix.",
    )
    resource_prefix: Annotated[str, _text(_resource_prefix)] | None = _key(
        "resourcePrefix",
        KeySupport.HONOURED,
        "string",
        f"Resource prefix; {DEFAULT_RESOURCE_PREFIX!r} (sriovdp's default) when null.",
        None,
    )
    device_type: Annotated[DeviceType, _text(_device_type)] = _key(
        "deviceType",
        KeySupport.HONOURED,
        "string",
        '"netDevice": devices bound to any driver, the selectors decide; '
        '"vfio-pci" (netdp): only devices bound to vfio-pci.',
        DeviceType.NET_DEVICE,
    )
    selectors: Selectors = _key(
        "selectors",
        KeySupport.HONOURED,
        "object or list of objects",
        "Selector objects; a device matching any of them is selected.",
    )
    exclude_topology: StrictBool = _key(
        "excludeTopology",
        KeySupport.HONOURED,
        "boolean",
        "Leave the NUMA node out of the devices advertised to the kubelet.",
        False,
    )
    additional_info: dict[InfoKey, dict[AnyText, AnyText]] | None = _key(
        "additionalInfo",
        KeySupport.HONOURED,
        "object of objects of strings",
        'Extra keys for the _INFO env JSON: under "*" for every device, or under a PCI '
        "address for one.",
        None,
    )
    allow_default_route: StrictBool = _key(
        "allowDefaultRoute",
        KeySupport.NETDP,
        "boolean",
        "Advertise the default-route NIC too if this pool selects it (cuts the node off "
        "when a pod takes it).",
        False,
    )
    pf_link_health: StrictBool = _key(
        "pfLinkHealth",
        KeySupport.NETDP,
        "boolean",
        "A VF is unhealthy while its PF's link is down.",
        True,
    )


class _ConfigModel(_Strict):
    resource_list: list[_ResourceModel] = _key(
        "resourceList", KeySupport.HONOURED, "list of objects", "The resource pools, in order."
    )


_CHILD_MODELS: Mapping[tuple[type[BaseModel], str], type[BaseModel]] = {
    (_ConfigModel, "resourceList"): _ResourceModel,
    (_ResourceModel, "selectors"): _SelectorModel,
}
# Where each key belongs, to point a misplaced key at its level.
_LEVELS: Mapping[type[BaseModel], str] = {
    _ConfigModel: "the top level",
    _ResourceModel: "the objects of resourceList",
    _SelectorModel: "the selector objects",
}
# A key from sriovdp's first config format, which had no selector objects.
_LEGACY_KEYS: Mapping[str, str] = {
    "sriovMode": "sriovMode is from sriovdp's first config format; use selectors",
}


def config_keys() -> tuple[ConfigKey, ...]:
    """Every accepted key with its type, default, support and description."""
    levels = (
        (_ConfigModel, ""),
        (_ResourceModel, "resourceList[]."),
        (_SelectorModel, "resourceList[].selectors[]."),
    )
    keys = []
    for model, prefix in levels:
        for info in model.model_fields.values():
            extra = info.json_schema_extra
            assert isinstance(extra, dict) and info.alias is not None
            default = "required" if info.is_required() else json.dumps(info.default)
            keys.append(
                ConfigKey(
                    path=prefix + info.alias,
                    type=str(extra["netdp_type"]),
                    default=default,
                    support=KeySupport(extra["netdp_support"]),
                    description=info.description or "",
                )
            )
    return tuple(keys)


# ---------------------------------------------------------------------------
# Error messages.

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "top level"


def _aliases(model: type[BaseModel]) -> list[str]:
    return [info.alias for info in model.model_fields.values() if info.alias]


def _model_at(loc: Sequence[int | str]) -> type[BaseModel]:
    model: type[BaseModel] = _ConfigModel
    for part in loc:
        if isinstance(part, str):
            model = _CHILD_MODELS.get((model, part), model)
    return model


def _unknown_key(loc: Sequence[int | str]) -> str:
    model, key = _model_at(loc[:-1]), str(loc[-1])
    known = _aliases(model)
    if key in _LEGACY_KEYS:
        return f"unknown key: {_LEGACY_KEYS[key]}"
    for level, place in _LEVELS.items():
        if level is not model and key in _aliases(level):
            return f"unknown key here: {key} belongs in {place}"
    same_case = [k for k in known if k.lower() == key.lower()]
    close = same_case or difflib.get_close_matches(key, known, n=1, cutoff=0.7)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key: {hint}expected one of: {', '.join(known)}"


_TYPE_MESSAGES = {
    "list_type": "expected a list",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "model_type": "expected an object",
    "dict_type": "expected an object",
    "model_attributes_type": "expected an object",
}


def _problem(error: ErrorDetails) -> str:
    loc = list(error["loc"])
    if "selectors" in loc:
        i = loc.index("selectors") + 1
        if i < len(loc) and loc[i] in (_ONE_SELECTOR, _SELECTOR_LIST):
            del loc[i]
    key_error = bool(loc) and loc[-1] == "[key]"
    if key_error:
        del loc[-1]
    kind = error["type"]
    if kind == "value_error":
        message = str(error.get("ctx", {}).get("error", error["msg"]))
    elif kind == "missing":
        message = "required key missing"
    elif kind == "extra_forbidden":
        message = _unknown_key(loc)
    elif kind == "model_type" and not loc:
        message = f"expected an object with a resourceList key, got {_describe(error['input'])}"
    elif kind in _TYPE_MESSAGES:
        message = f"{_TYPE_MESSAGES[kind]}, got {_describe(error['input'])}"
    elif kind == "selectors_shape":
        message = f"{error['msg']}, got {_describe(error['input'])}"
    else:
        message = error["msg"]
    if key_error:
        message = f"invalid key: {message}"
    return f"{_path(loc)}: {message}"


# ---------------------------------------------------------------------------
# From the validated models to pools, with the checks across pools.


def _values(
    values: list[T] | None, where: str, warnings: list[str], full_name: str
) -> tuple[T, ...] | None:
    if values is None:
        return None
    if not values:
        warnings.append(
            f"resource {full_name}: {where} is an empty list, which does not constrain "
            "the selection (as in sriovdp)"
        )
        return None
    return tuple(values)


def _selector(model: _SelectorModel, where: str, warnings: list[str], full_name: str) -> Selector:
    def values(field: str) -> tuple[Any, ...] | None:
        alias = _SelectorModel.model_fields[field].alias
        return _values(getattr(model, field), f"{where}.{alias}", warnings, full_name)

    link_types = values("link_types")
    for link_type in link_types or ():
        if link_type not in KNOWN_LINK_TYPES and not _ARPHRD_LINK_TYPE.fullmatch(link_type):
            warnings.append(
                f"resource {full_name}: {where}.linkTypes: {link_type!r} is not a link type "
                f"netdp reports ({', '.join(KNOWN_LINK_TYPES)}, arphrd-<number>), so it "
                "matches no device"
            )
    return Selector(
        vendors=values("vendors"),
        devices=values("devices"),
        drivers=values("drivers"),
        pci_addresses=values("pci_addresses"),
        pf_names=values("pf_names"),
        root_devices=values("root_devices"),
        link_types=link_types,
    )


def _pools(model: _ConfigModel) -> tuple[tuple[PoolSpec, ...], list[str], list[str]]:
    pools: list[PoolSpec] = []
    problems: list[str] = []
    warnings: list[str] = []
    names: dict[str, int] = {}
    env_names: dict[str, tuple[int, str]] = {}
    if not model.resource_list:
        warnings.append("resourceList is empty: no pool will be registered")
    for i, resource in enumerate(model.resource_list):
        where = f"resourceList[{i}]"
        full_name = (
            f"{resource.resource_prefix or DEFAULT_RESOURCE_PREFIX}/{resource.resource_name}"
        )
        env = env_var_name(full_name)
        if full_name in names:
            problems.append(
                f"{where}.resourceName: resource {full_name} is already defined by "
                f"resourceList[{names[full_name]}]"
            )
            continue
        if env in env_names:
            j, other = env_names[env]
            problems.append(
                f"{where}.resourceName: resource {full_name} gets the env var {env}, as "
                f"{other} (resourceList[{j}]) does; a container given both would lose one"
            )
            continue
        names[full_name] = i
        env_names[env] = (i, full_name)
        if not _SHELL_NAME.fullmatch(env):
            warnings.append(
                f"resource {full_name}: env var {env} cannot be read by a shell (contains '-')"
            )
        if isinstance(resource.selectors, list):
            raw = [(f"{where}.selectors[{k}]", s) for k, s in enumerate(resource.selectors)]
        else:
            raw = [(f"{where}.selectors", resource.selectors)]
        info = resource.additional_info or {}
        pools.append(
            PoolSpec(
                resource_name=full_name,
                selectors=tuple(_selector(s, w, warnings, full_name) for w, s in raw),
                device_type=resource.device_type,
                allow_default_route=resource.allow_default_route,
                pf_link_health=resource.pf_link_health,
                exclude_topology=resource.exclude_topology,
                additional_info=MappingProxyType(
                    {k: MappingProxyType(dict(v)) for k, v in info.items()}
                ),
            )
        )
    return tuple(pools), problems, warnings


def parse_config(data: object, source: str) -> Config:
    """Validate already-decoded config data; raises ConfigError listing every problem."""
    try:
        model = _ConfigModel.model_validate(data)
    except ValidationError as e:
        raise ConfigError(source, [_problem(err) for err in e.errors()]) from None
    pools, problems, warnings = _pools(model)
    if problems:
        raise ConfigError(source, problems)
    return Config(pools=pools, source=source, warnings=tuple(warnings))


def default_config() -> Config:
    """The pool used without --config: every virtio-net PCI NIC, as `kernel.org/virt`.

    That is the emulated SR-IOV lab; `pools.assign` still leaves out the
    default-route NIC. Built through the parser so it obeys the same rules.
    """
    prefix, _, name = DEFAULT_POOL_NAME.partition("/")
    data = {
        "resourceList": [
            {
                "resourceName": name,
                "resourcePrefix": prefix,
                "selectors": [
                    {
                        "vendors": [VIRTIO_VENDOR],
                        "devices": sorted(VIRTIO_NET_DEVICE_IDS),
                        "drivers": [VIRTIO_PCI_DRIVER],
                    }
                ],
            }
        ]
    }
    return parse_config(data, "built-in default")


def _selector_dict(selector: Selector) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in _SelectorModel.model_fields.items():
        value = getattr(selector, name, None)
        if value is not None and info.alias is not None:
            out[info.alias] = [format_pf_ref(v) if isinstance(v, PfRef) else v for v in value]
    return out


def config_to_dict(config: Config) -> dict[str, Any]:
    """The canonical file form of a config: normalised values, list-syntax selectors.

    netdp-only keys appear only when they differ from their defaults, so a
    config that uses none stays readable by sriovdp.
    """
    resources = []
    for pool in config.pools:
        prefix, _, name = pool.resource_name.partition("/")
        entry: dict[str, Any] = {
            "resourceName": name,
            "resourcePrefix": prefix,
            "deviceType": pool.device_type.value,
            "selectors": [_selector_dict(s) for s in pool.selectors],
        }
        if pool.exclude_topology:
            entry["excludeTopology"] = True
        if pool.additional_info:
            entry["additionalInfo"] = {k: dict(v) for k, v in pool.additional_info.items()}
        if pool.allow_default_route:
            entry["allowDefaultRoute"] = True
        if not pool.pf_link_health:
            entry["pfLinkHealth"] = False
        resources.append(entry)
    return {"resourceList": resources}


# ---------------------------------------------------------------------------
# Reading the file.


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML where only booleans and null are typed and duplicate keys are errors.

    PyYAML would read `8086` as a number and `0x1af4` as 6900; keeping scalars
    as strings lets the id rules see what the user typed.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"found duplicate key {key_node.value!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_TYPED_YAML_TAGS = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:null", "tag:yaml.org,2002:merge"}
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag in _TYPED_YAML_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _DuplicateKeyError(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _decode(text: str, source: str, suffix: str) -> object:
    if not text.strip():
        raise ConfigError(source, ["the file is empty: expected an object with a resourceList"])
    as_json = suffix == ".json" or (
        suffix not in (".yaml", ".yml") and text.lstrip().startswith(("{", "["))
    )
    try:
        if as_json:
            return json.loads(text, object_pairs_hook=_json_object)
        return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader subclass
    except json.JSONDecodeError as e:
        problem = f"line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}"
    except _DuplicateKeyError as e:
        problem = f"invalid JSON: duplicate key {e.key!r}"
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = f"{where}invalid YAML: {e.problem or e.context}"
    except yaml.YAMLError as e:
        problem = f"invalid YAML: {e}"
    except RecursionError:
        problem = "nested too deeply"
    raise ConfigError(source, [problem])


def load_config(path: Path) -> Config:
    """Read, decode (JSON or YAML) and validate a config file; raises ConfigError.

    `.json` is read as JSON, `.yaml`/`.yml` as YAML, anything else as JSON when
    it starts with `{` or `[` (sriovdp's ConfigMap key is `config.json`).
    """
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(source, [f"cannot read the file: {e.strerror or e}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(source, [f"not UTF-8 text (bad byte at offset {e.start})"]) from None
    return parse_config(_decode(text, source, path.suffix.lower()), source)
