"""CNI CHECK and STATUS: read-only answers about an attachment and about the plugin."""

from __future__ import annotations

from deviceplugin.cni.origin import parse_alias
from deviceplugin.cni.ports import Ports
from deviceplugin.cni.resolve import pod_namespace
from deviceplugin.cni.types import (
    ERR_DEVICE_NOT_FOUND,
    ERR_INVALID_CONFIG,
    ERR_NOT_AVAILABLE,
    CniError,
    CniRequest,
    parse_ipam_result,
    prev_interface,
)


def check(request: CniRequest, ports: Ports) -> None:
    """The interface of prevResult is in the pod, ours, with its MAC and addresses."""
    assert request.prev_result is not None
    try:
        parse_ipam_result(request.prev_result)  # malformed addresses fail here, clearly
    except (ValueError, AttributeError, TypeError) as exc:
        raise CniError(ERR_INVALID_CONFIG, "prevResult is malformed", str(exc)) from None
    ours = prev_interface(request.prev_result, request.ifname, request.netns)
    if ours is None:
        raise CniError(ERR_INVALID_CONFIG, f"prevResult has no interface {request.ifname}")
    expected, addresses = ours
    with pod_namespace(ports.namespaces, request.netns) as pod:
        link = pod.link(request.ifname, with_addresses=True)
    if link is None or parse_alias(link.alias) is None:
        raise CniError(ERR_DEVICE_NOT_FOUND, f"{request.ifname} is not in the pod namespace")
    mac = str(expected.get("mac") or "").lower()
    if mac and mac != link.mac:
        raise CniError(ERR_INVALID_CONFIG, f"{request.ifname} has MAC {link.mac}, expected {mac}")
    missing = [a for a in addresses if a not in link.addresses]
    if missing:
        raise CniError(ERR_INVALID_CONFIG, f"{request.ifname} lacks {', '.join(missing)}")
    if request.ipam_type:
        ports.ipam.invoke(request, "CHECK")


def status(request: CniRequest, ports: Ports) -> None:
    """Ready when the IPAM plugin is there and, if it speaks STATUS, says so."""
    if not request.ipam_type:
        return
    try:
        ports.ipam.find(request)
    except CniError as exc:
        raise CniError(ERR_NOT_AVAILABLE, exc.msg, exc.details) from None
    if ports.ipam.supports(request, request.cni_version):
        try:
            ports.ipam.invoke(request, "STATUS")
        except CniError as exc:
            raise CniError(ERR_NOT_AVAILABLE, exc.msg, exc.details) from None
