"""From the validated file to `PoolSpec`s and back, with the checks across pools.

The schema judges each value on its own; what needs the whole file is here:
full resource names (prefix defaults applied) must be unique, and so must
the `PCIDEVICE_*` env keys they give, or a container given both would lose
one. Things that are legal but likely mistakes become warnings. The
inverse, `config_to_dict`, writes the canonical form of a config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import ValidationError

from deviceplugin.allocation import env_var_name
from deviceplugin.config.errors import ConfigError, problems
from deviceplugin.config.schema import (
    DEFAULT_RESOURCE_PREFIX,
    ConfigModel,
    ResourceModel,
    SelectorModel,
)
from deviceplugin.config.values import format_pf_ref
from deviceplugin.model import VIRTIO_NET_DEVICE_IDS, VIRTIO_PCI_DRIVER, VIRTIO_VENDOR
from deviceplugin.pools import PfRef, PoolSpec, Selector

DEFAULT_POOL_NAME = "kernel.org/virt"
# Link types the scanner reports (`NetDev.link_type`, `Device.link_type`).
KNOWN_LINK_TYPES = ("ether", "infiniband")
_ARPHRD_LINK_TYPE = re.compile(r"arphrd-[0-9]+")
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Config:
    """A validated config: the pools in file order, where they came from, and warnings."""

    pools: tuple[PoolSpec, ...]
    source: str
    warnings: tuple[str, ...] = ()


def parse_config(data: object, source: str) -> Config:
    """Validate already-decoded config data; raises ConfigError listing every problem."""
    try:
        model = ConfigModel.model_validate(data)
    except ValidationError as e:
        raise ConfigError(source, problems(e)) from None
    pools, found, warnings = _pools(model)
    if found:
        raise ConfigError(source, found)
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


def _pools(model: ConfigModel) -> tuple[tuple[PoolSpec, ...], list[str], list[str]]:
    """The pools, the problems that refuse the file, and the warnings that do not."""
    pools: list[PoolSpec] = []
    found: list[str] = []
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
            found.append(
                f"{where}.resourceName: resource {full_name} is already defined by "
                f"resourceList[{names[full_name]}]"
            )
            continue
        if env in env_names:
            j, other = env_names[env]
            found.append(
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
        pools.append(_pool(resource, full_name, where, warnings))
    return tuple(pools), found, warnings


def _pool(resource: ResourceModel, full_name: str, where: str, warnings: list[str]) -> PoolSpec:
    if isinstance(resource.selectors, list):
        raw = [(f"{where}.selectors[{k}]", s) for k, s in enumerate(resource.selectors)]
    else:
        raw = [(f"{where}.selectors", resource.selectors)]
    info = resource.additional_info or {}
    return PoolSpec(
        resource_name=full_name,
        selectors=tuple(_selector(s, w, warnings, full_name) for w, s in raw),
        device_type=resource.device_type,
        allow_default_route=resource.allow_default_route,
        pf_link_health=resource.pf_link_health,
        exclude_topology=resource.exclude_topology,
        additional_info=MappingProxyType({k: MappingProxyType(dict(v)) for k, v in info.items()}),
    )


def _selector(model: SelectorModel, where: str, warnings: list[str], full_name: str) -> Selector:
    def values(field: str) -> tuple[Any, ...] | None:
        alias = SelectorModel.model_fields[field].alias
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


def _selector_dict(selector: Selector) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in SelectorModel.model_fields.items():
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
