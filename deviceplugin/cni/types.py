"""CNI protocol on plain data: parse a call (env + stdin), build results and errors.

Nothing here touches the system, so the whole protocol surface (versions,
required variables, device selection, result shapes of 0.3.0 up to 1.1.0) is
tested without root. The parser answers bad input with a `CniError` naming
what is wrong, because a plugin that prints a traceback instead of the spec's
error JSON leaves the runtime guessing; an exception it did not foresee is
its own bug and says so (`ERR_INTERNAL`), never blamed on the input.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# Error codes of the CNI spec; 100 and up are ours. (11, "try again later", is the
# shim's, which must not import this module.)
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_NOT_AVAILABLE = 50
ERR_DEVICE_NOT_FOUND = 100
ERR_DEVICE_BUSY = 101
ERR_DEFAULT_ROUTE = 102
ERR_NOT_ALLOCATED = 103
ERR_IPAM = 104
ERR_NETLINK = 105
ERR_POD_RESOURCES = 106
ERR_INTERNAL = 199

# Required environment per command, as the spec lists them.
_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "VERSION": (),
    "STATUS": ("CNI_PATH",),
    "GC": ("CNI_PATH",),
}
# Commands that only exist from 1.1.0 on.
_V11_COMMANDS = frozenset({"STATUS", "GC"})

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_PCI_FULL = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_PCI_SHORT = re.compile(r"^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_MAX_IFNAME = 15


class CniError(Exception):
    """A failure the runtime must see as the spec's error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str = LATEST_VERSION) -> dict[str, Any]:
        doc: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            doc["details"] = self.details
        return doc

    def __repr__(self) -> str:
        return f"CniError({self.code}, {self.msg!r}, {self.details!r})"


@dataclass(frozen=True, slots=True)
class DeviceSelector:
    """How the network config names the device; the first set field wins, in this order."""

    pci_address: str | None = None  # from deviceID, runtimeConfig.deviceID or pciBusID
    netdev: str | None = None  # `device`
    hwaddr: str | None = None  # `hwaddr`, lower case

    @property
    def empty(self) -> bool:
        return not (self.pci_address or self.netdev or self.hwaddr)

    def describe(self) -> str:
        if self.pci_address:
            return f"PCI {self.pci_address}"
        if self.netdev:
            return f"netdev {self.netdev}"
        if self.hwaddr:
            return f"MAC {self.hwaddr}"
        return "no device"


@dataclass(frozen=True, slots=True)
class CniRequest:
    """One validated CNI call."""

    command: str
    cni_version: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    cni_path: tuple[str, ...] = ()
    args: Mapping[str, str] = field(default_factory=dict)
    raw_config: bytes = b""  # the network config as received, for the IPAM plugin
    selector: DeviceSelector = DeviceSelector()
    resource_name: str | None = None
    mtu: int | None = None
    ipam_type: str | None = None
    prev_result: Mapping[str, Any] | None = None
    devinfo_file: str | None = None

    @property
    def pod(self) -> tuple[str, str] | None:
        """(namespace, name) of the Kubernetes pod, from the kubelet's CNI_ARGS."""
        ns, name = self.args.get("K8S_POD_NAMESPACE"), self.args.get("K8S_POD_NAME")
        return (ns, name) if ns and name else None


def normalize_pci(value: str) -> str | None:
    """`0000:00:05.0` from either the full or the bus-relative (`00:05.0`) form."""
    text = value.strip().lower()
    if _PCI_SHORT.match(text):
        text = "0000:" + text
    return text if _PCI_FULL.match(text) else None


def parse_cni_args(text: str) -> dict[str, str]:
    """`K=V;K2=V2` as the kubelet sets it; malformed pairs are an invalid environment."""
    result: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(ERR_INVALID_ENV, "invalid CNI_ARGS", f"pair {pair!r} is not KEY=VALUE")
        result[key] = value
    return result


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def _check_ifname(name: str) -> None:
    problem = None
    if not name:
        problem = "is empty"
    elif len(name.encode("utf-8", "surrogateescape")) > _MAX_IFNAME:  # bytes, as the kernel
        problem = f"is longer than {_MAX_IFNAME} bytes"
    elif name in (".", ".."):
        problem = "is . or .."
    elif any(c in name for c in "/:") or any(c.isspace() for c in name):
        problem = "contains '/', ':' or whitespace"
    if problem:
        raise CniError(ERR_INVALID_ENV, "invalid CNI_IFNAME", f"{name!r} {problem}")


def _opt_str(config: Mapping[str, Any], key: str, where: str = "") -> str | None:
    value = config.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise CniError(ERR_INVALID_CONFIG, f"{where}{key} must be a string", repr(value))
    return value


def _pci_field(config: Mapping[str, Any], key: str, where: str = "") -> str | None:
    value = _opt_str(config, key, where)
    if value is None:
        return None
    pci = normalize_pci(value)
    if pci is None:
        raise CniError(ERR_INVALID_CONFIG, f"{where}{key} is not a PCI address", value)
    return pci


def _selector(config: Mapping[str, Any]) -> DeviceSelector:
    runtime = config.get("runtimeConfig") or {}
    if not isinstance(runtime, Mapping):
        raise CniError(ERR_INVALID_CONFIG, "runtimeConfig must be an object")
    pci = (
        _pci_field(config, "deviceID")
        or _pci_field(runtime, "deviceID", "runtimeConfig.")
        or _pci_field(config, "pciBusID")
    )
    if pci:
        return DeviceSelector(pci_address=pci)
    netdev = _opt_str(config, "device")
    if netdev:
        return DeviceSelector(netdev=netdev)
    hwaddr = _opt_str(config, "hwaddr")
    if hwaddr:
        if not _MAC.match(hwaddr.lower()):
            raise CniError(ERR_INVALID_CONFIG, "hwaddr is not a MAC address", hwaddr)
        return DeviceSelector(hwaddr=hwaddr.lower())
    return DeviceSelector()


def _mtu(config: Mapping[str, Any]) -> int | None:
    mtu = config.get("mtu")
    if mtu is None:
        return None
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535:
        raise CniError(ERR_INVALID_CONFIG, "mtu must be an integer from 68 to 65535", repr(mtu))
    return mtu


def _ipam_type(config: Mapping[str, Any]) -> str | None:
    ipam = config.get("ipam")
    if ipam is None or ipam == {}:
        return None
    if not isinstance(ipam, Mapping):
        raise CniError(ERR_INVALID_CONFIG, "ipam must be an object")
    kind = ipam.get("type")
    if not isinstance(kind, str) or not kind or "/" in kind:
        raise CniError(ERR_INVALID_CONFIG, "ipam.type must be a plugin name", repr(kind))
    return kind


def _decode_config(stdin: bytes) -> dict[str, Any]:
    try:
        config = json.loads(stdin)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to read
        raise CniError(ERR_DECODE, "network config is not valid JSON", str(exc)) from None
    if not isinstance(config, dict):
        raise CniError(ERR_DECODE, "network config must be a JSON object")
    return config


def config_version(stdin: bytes) -> str:
    """The cniVersion to answer in, best effort, for error objects."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
        return LATEST_VERSION
    return version if version in SUPPORTED_VERSIONS else LATEST_VERSION


def parse_request(env: Mapping[str, str], stdin: bytes) -> CniRequest:
    """Validate one call; raises only `CniError`, never anything else."""
    try:
        return _parse_request(env, stdin)
    except CniError:
        raise
    except Exception as exc:  # a bug of ours, not the caller's input: never a traceback
        raise CniError(ERR_INTERNAL, "internal error parsing the CNI request", repr(exc)) from None


def _parse_request(env: Mapping[str, str], stdin: bytes) -> CniRequest:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(ERR_INVALID_ENV, "invalid CNI_COMMAND", repr(command))
    if command == "VERSION":
        return CniRequest(command=command, cni_version=LATEST_VERSION)
    config = _decode_config(stdin)
    version = config.get("cniVersion", "0.1.0")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            f"config has {version!r}; supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    if command in _V11_COMMANDS and _version_tuple(version) < (1, 1, 0):
        raise CniError(
            ERR_INCOMPATIBLE_VERSION, f"config version {version} does not allow {command}"
        )
    if command == "CHECK" and _version_tuple(version) < (0, 4, 0):
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"config version {version} does not allow CHECK")
    missing = [name for name in _REQUIRED_ENV[command] if not env.get(name)]
    if missing:
        raise CniError(
            ERR_INVALID_ENV, "required environment variables missing", ", ".join(missing)
        )
    container_id = env.get("CNI_CONTAINERID", "")
    if container_id and not _CONTAINER_ID.match(container_id):
        raise CniError(ERR_INVALID_ENV, "invalid CNI_CONTAINERID", repr(container_id))
    ifname = env.get("CNI_IFNAME", "")
    if command in ("ADD", "CHECK", "DEL"):
        _check_ifname(ifname)
    name = config.get("name", "")
    if command != "GC" and not (isinstance(name, str) and name):
        raise CniError(ERR_INVALID_CONFIG, "network config needs a name")
    prev = config.get("prevResult")
    if prev is not None and not isinstance(prev, Mapping):
        raise CniError(ERR_INVALID_CONFIG, "prevResult must be an object")
    if command == "CHECK" and prev is None:
        raise CniError(ERR_INVALID_CONFIG, "CHECK needs a prevResult")
    runtime = config.get("runtimeConfig") or {}
    devinfo = runtime.get("CNIDeviceInfoFile") if isinstance(runtime, Mapping) else None
    request = CniRequest(
        command=command,
        cni_version=version,
        container_id=container_id,
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        cni_path=tuple(p for p in env.get("CNI_PATH", "").split(":") if p),
        args=parse_cni_args(env.get("CNI_ARGS", "")),
        raw_config=bytes(stdin),
        selector=_selector(config),
        resource_name=_opt_str(config, "resourceName"),
        mtu=_mtu(config),
        ipam_type=_ipam_type(config),
        prev_result=prev,
        devinfo_file=devinfo if isinstance(devinfo, str) and devinfo else None,
    )
    if command == "ADD" and request.selector.empty and not request.resource_name:
        raise CniError(
            ERR_INVALID_CONFIG,
            "no device given",
            "set deviceID, runtimeConfig.deviceID, pciBusID, device, hwaddr or resourceName",
        )
    return request


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class IpConfig:
    address: str  # CIDR form, "10.1.0.5/24"
    gateway: str | None = None

    @property
    def version(self) -> str:
        return "6" if ":" in self.address else "4"


@dataclass(frozen=True, slots=True)
class Route:
    dst: str
    gw: str | None = None


@dataclass(frozen=True, slots=True)
class IpamResult:
    """What an IPAM plugin handed out, independent of the version it answered in."""

    ips: tuple[IpConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    mac: str
    sandbox: str


def _cidr(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"address {value!r} is not a string")
    ipaddress.ip_interface(value)  # validates
    return value


def _gw(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValueError(f"gateway {value!r} is not a string")
    return str(ipaddress.ip_address(value))


def parse_ipam_result(doc: Mapping[str, Any]) -> IpamResult:
    """Read a 0.3.0+ result (an IPAM answer or a prevResult); ValueError if malformed."""
    ips = doc.get("ips") or []
    routes = doc.get("routes") or []
    dns = doc.get("dns") or {}
    if not isinstance(ips, list) or not isinstance(routes, list) or not isinstance(dns, Mapping):
        raise ValueError("ips and routes must be lists, dns an object")
    return IpamResult(
        ips=tuple(IpConfig(_cidr(ip.get("address")), _gw(ip.get("gateway"))) for ip in ips),
        routes=tuple(Route(_cidr(r.get("dst")), _gw(r.get("gw"))) for r in routes),
        dns=dict(dns),
    )


def parse_ipam_output(out: bytes, plugin: str) -> IpamResult:
    """An IPAM plugin's ADD answer; `CniError` (ERR_IPAM) names the plugin if malformed."""
    try:
        doc = json.loads(out)
        if not isinstance(doc, Mapping):
            raise ValueError("not an object")
        return parse_ipam_result(doc)
    except (ValueError, AttributeError, TypeError) as exc:
        raise CniError(ERR_IPAM, f"IPAM {plugin} returned a bad result", str(exc)) from None


def build_result(
    version: str, interfaces: list[Interface], ipam: IpamResult | None
) -> dict[str, Any]:
    """The ADD answer in the requested version; IPs point at interface 0, the moved NIC."""
    legacy = _version_tuple(version) < (1, 0, 0)
    ips = []
    for ip in ipam.ips if ipam else ():
        entry: dict[str, Any] = {}
        if legacy:
            entry["version"] = ip.version
        entry["interface"] = 0
        entry["address"] = ip.address
        if ip.gateway:
            entry["gateway"] = ip.gateway
        ips.append(entry)
    result: dict[str, Any] = {
        "cniVersion": version,
        "interfaces": [{"name": i.name, "mac": i.mac, "sandbox": i.sandbox} for i in interfaces],
    }
    if ips:
        result["ips"] = ips
    if ipam and ipam.routes:
        result["routes"] = [{"dst": r.dst, **({"gw": r.gw} if r.gw else {})} for r in ipam.routes]
    result["dns"] = dict(ipam.dns) if ipam else {}
    return result


def version_result() -> dict[str, Any]:
    return {"cniVersion": LATEST_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


def prev_interface(
    prev: Mapping[str, Any], ifname: str, netns: str
) -> tuple[Mapping[str, Any], tuple[str, ...]] | None:
    """For CHECK: the prevResult's entry for our interface and the addresses it holds.

    In a chain the prevResult lists every plugin's interfaces, so only the IPs
    pointing at ours (or at none) are ours to check.
    """
    interfaces = prev.get("interfaces") or []
    for index, entry in enumerate(interfaces):
        if not isinstance(entry, Mapping) or entry.get("name") != ifname:
            continue
        if entry.get("sandbox") not in (None, "", netns):
            continue
        addresses = tuple(
            str(ip.get("address"))
            for ip in prev.get("ips") or []
            if isinstance(ip, Mapping) and ip.get("interface", index) == index
        )
        return entry, addresses
    return None
