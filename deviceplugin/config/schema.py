"""The config file's shape: pydantic models mirroring sriovdp's JSON keys.

Every level refuses unknown keys (a typo would otherwise silently widen or
empty a pool) and leaf strings go through `values`' parsers via
PlainValidator, so every message about a value is ours. Each field also
carries what the documentation needs (type, default, how netdp supports it):
`config_keys()` lists them, and docs/configuration.md is tested against it.
The nesting of the models is read from their annotations (`model_tree`), so
the error wording and the key list follow the models by construction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    StrictBool,
    Tag,
)

from deviceplugin.config import values
from deviceplugin.pools import DeviceType, PfRef

DEFAULT_RESOURCE_PREFIX = "intel.com"  # sriovdp's --resource-prefix default

T = TypeVar("T")


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


def _text(parse: Callable[[str], T]) -> PlainValidator:
    def validate(value: object) -> T:
        if not isinstance(value, str):
            hint = " (put it in quotes)" if isinstance(value, bool | int | float) else ""
            raise ValueError(f"expected a string{hint}, got {values.describe(value)}")
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


_STRINGS = "list of strings"


def _selector_list(alias: str, description: str) -> Any:
    """An honoured selector field: a list of strings; absent or null does not constrain."""
    return _key(alias, KeySupport.HONOURED, _STRINGS, description, None)


# What a refused sriovdp key may still say, by its type: (type name, default, description).
_REFUSED_UNLESS = {
    "list": (_STRINGS, None, "Refused unless empty or null."),
    "boolean": ("boolean", False, "Refused unless false or null."),
    "string": ("string", None, "Refused unless null or empty."),
}


def _refused(alias: str, kind: str) -> Any:
    """A sriovdp selector field netdp cannot honour: accepted only with its default value."""
    type_name, default, description = _REFUSED_UNLESS[kind]
    return _key(alias, KeySupport.DEFAULT_ONLY, type_name, description, default)


PciId = Annotated[str, _text(values.normalise_pci_id)]
PciAddress = Annotated[str, _text(values.normalise_pci_address)]
DriverName = Annotated[str, _text(values.driver_name)]
LinkType = Annotated[str, _text(values.link_type)]
PfName = Annotated[PfRef, _text(values.parse_pf_name)]
RootDevice = Annotated[PfRef, _text(values.parse_root_device)]
AnyText = Annotated[str, _text(str)]
InfoKey = Annotated[str, _text(values.info_key)]

_UNEVALUATED = "this selector cannot be evaluated, and ignoring it would select more devices"
_NO_AUX = "auxiliary devices (auxNetDevice) are not advertised"
# A sriovdp selector netdp cannot evaluate: only empty or null passes.
Unevaluated = Annotated[list[AnyText] | None, _default_only(_UNEVALUATED)]


class StrictModel(BaseModel):
    """A level of the file: unknown keys refused, no type coercion, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    PLACE: ClassVar[str]  # where its keys belong, for "belongs in ..." hints


class SelectorModel(StrictModel):
    PLACE = "the selector objects"

    vendors: list[PciId] | None = _selector_list("vendors", 'PCI vendor ids, e.g. "8086".')
    devices: list[PciId] | None = _selector_list("devices", 'PCI device ids, e.g. "154c".')
    drivers: list[DriverName] | None = _selector_list(
        "drivers", 'Bound kernel drivers, e.g. "iavf" or "vfio-pci".'
    )
    pci_addresses: list[PciAddress] | None = _selector_list(
        "pciAddresses", 'PCI addresses, e.g. "0000:03:02.0".'
    )
    pf_names: list[PfName] | None = _selector_list(
        "pfNames",
        'Netdev names of parent PFs, optionally with VF indexes: "ens1f0#0-3,6". '
        "A device that is not a VF matches by its own netdev name.",
    )
    root_devices: list[RootDevice] | None = _selector_list(
        "rootDevices",
        'PCI addresses of parent PFs, optionally with VF indexes: "0000:86:00.0#0-1". '
        "A device that is not a VF matches by its own address.",
    )
    link_types: list[LinkType] | None = _selector_list(
        "linkTypes",
        'Link types of the netdev: "ether", "infiniband" (from the PCI class when the '
        "netdev is in a pod).",
    )
    acpi_indexes: Unevaluated = _refused("acpiIndexes", "list")
    ddp_profiles: Unevaluated = _refused("ddpProfiles", "list")
    p_keys: Unevaluated = _refused("pKeys", "list")
    aux_types: Annotated[list[AnyText] | None, _default_only(_NO_AUX)] = _refused(
        "auxTypes", "list"
    )
    is_rdma: Annotated[StrictBool | None, _default_only("RDMA devices are not mounted")] = _refused(
        "isRdma", "boolean"
    )
    need_vhost_net: Annotated[
        StrictBool | None, _default_only("/dev/vhost-net and /dev/net/tun are not mounted")
    ] = _refused("needVhostNet", "boolean")
    vdpa_type: Annotated[AnyText | None, _default_only("vDPA devices are not advertised")] = (
        _refused("vdpaType", "string")
    )


def _non_empty(selectors: list[SelectorModel]) -> list[SelectorModel]:
    if not selectors:
        raise ValueError("expected at least one selector object ({} selects every device)")
    return selectors


# Union tags pydantic puts in error locations; the error wording leaves them out of paths.
ONE_SELECTOR = "<selector object>"
SELECTOR_LIST = "<selector list>"


def _selectors_shape(value: Any) -> str | None:
    if isinstance(value, dict):
        return ONE_SELECTOR
    if isinstance(value, list):
        return SELECTOR_LIST
    return None


Selectors = Annotated[
    Annotated[SelectorModel, Tag(ONE_SELECTOR)]
    | Annotated[list[SelectorModel], AfterValidator(_non_empty), Tag(SELECTOR_LIST)],
    Discriminator(
        _selectors_shape,
        custom_error_type="selectors_shape",
        custom_error_message="expected a selector object or a list of selector objects",
    ),
]


class ResourceModel(StrictModel):
    PLACE = "the objects of resourceList"

    resource_name: Annotated[str, _text(values.resource_name)] = _key(
        "resourceName",
        KeySupport.HONOURED,
        "string",
        "Resource name after the prefix; unique within the prefix.",
    )
    resource_prefix: Annotated[str, _text(values.resource_prefix)] | None = _key(
        "resourcePrefix",
        KeySupport.HONOURED,
        "string",
        f"Resource prefix; {DEFAULT_RESOURCE_PREFIX!r} (sriovdp's default) when null.",
        None,
    )
    device_type: Annotated[DeviceType, _text(values.device_type)] = _key(
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


class ConfigModel(StrictModel):
    PLACE = "the top level"

    resource_list: list[ResourceModel] = _key(
        "resourceList", KeySupport.HONOURED, "list of objects", "The resource pools, in order."
    )


# ---------------------------------------------------------------------------
# The nesting of the models, read from their annotations.


def _model_in(annotation: Any) -> type[StrictModel] | None:
    """The model an annotation holds, through lists, unions and `Annotated`."""
    if isinstance(annotation, type) and issubclass(annotation, StrictModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def child_model(model: type[StrictModel], key: str) -> type[StrictModel] | None:
    """The model of the objects under `key` (an alias) of `model`; None for a leaf key."""
    for info in model.model_fields.values():
        if info.alias == key:
            return _model_in(info.annotation)
    return None


def model_tree(
    model: type[StrictModel] = ConfigModel, prefix: str = ""
) -> Iterator[tuple[type[StrictModel], str]]:
    """Every model from the top down, with its path prefix (`resourceList[].selectors[].`)."""
    yield model, prefix
    for info in model.model_fields.values():
        child = _model_in(info.annotation)
        if child is not None:
            yield from model_tree(child, f"{prefix}{info.alias}[].")


def aliases(model: type[StrictModel]) -> list[str]:
    """The keys a model accepts, in declaration order."""
    return [info.alias for info in model.model_fields.values() if info.alias]


def config_keys() -> tuple[ConfigKey, ...]:
    """Every accepted key with its type, default, support and description."""
    keys = []
    for model, prefix in model_tree():
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
