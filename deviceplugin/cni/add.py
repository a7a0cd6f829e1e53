"""CNI ADD: the host device into the pod, renamed, addressed; every step undone on failure.

Each step registers its undo on an `ExitStack` right where it is taken, like
Go host-device's defers; on success the stack is dropped, on failure it
unwinds in reverse. Every undo runs even if an earlier one failed (its own
failure is logged), so an error never leaves a half-plumbed NIC, and the
caller gets the error of the step that failed, not of the clean-up.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import structlog

from deviceplugin.cni.origin import Origin
from deviceplugin.cni.ports import Ipam, IpamCall, NetlinkRefused, Netns, Ports
from deviceplugin.cni.resolve import (
    Target,
    allocated_devices,
    check_safety,
    lock_key,
    pick_allocated,
    pod_namespace,
    resolve,
)
from deviceplugin.cni.restore import find_moved, restore_host_link, return_to_host
from deviceplugin.cni.types import (
    ERR_INVALID_CONFIG,
    ERR_NETLINK,
    CniError,
    CniRequest,
    Interface,
    IpamResult,
    build_result,
    parse_ipam_output,
)
from deviceplugin.devinfo import remove_devinfo, write_devinfo_file

log = structlog.get_logger(__name__)


def add(request: CniRequest, ports: Ports) -> dict[str, Any]:
    with pod_namespace(ports.namespaces, request.netns) as pod, ports.namespaces.host() as host:
        allocated = allocated_devices(request, ports) if request.resource_name else None
        if request.selector.empty:
            assert allocated is not None
            request = pick_allocated(request, allocated, host, ports.devices)
        with ports.lock(lock_key(request, host, ports.devices)):
            target = resolve(request, host, ports.devices)
            # A device still named as in a dead pod gets its host name back first;
            # otherwise this ADD would record the pod name as the original one.
            if restore_host_link(host, target.link) is not None:
                target = Target(host.link_by_index(target.link.index) or target.link, target.device)
            check_safety(request, target, allocated, host)
            try:
                return _plumb(request, target, host, pod, ports.ipam)
            except NetlinkRefused as exc:
                raise CniError(
                    ERR_NETLINK, f"netlink refused to plumb {target.link.name}", str(exc)
                ) from None


def _plumb(
    request: CniRequest, target: Target, host: Netns, pod: Netns, ipam: Ipam
) -> dict[str, Any]:
    origin = Origin(
        orig_name=target.link.name,
        pci_address=target.pci_address,
        mtu=target.link.mtu if request.mtu is not None else None,
    )
    log.info(
        "cni_add",
        container=request.container_id,
        device=target.link.name,
        pci=target.pci_address,
        ifname=request.ifname,
    )
    with ExitStack() as undo:
        try:
            answer = _steps(undo, request, target, origin, host, pod, ipam)
        except BaseException:
            log.warning("cni_add_rollback", container=request.container_id, device=origin.orig_name)
            raise
        undo.pop_all()  # success: nothing to undo
        return answer


def _steps(
    undo: ExitStack,
    request: CniRequest,
    target: Target,
    origin: Origin,
    host: Netns,
    pod: Netns,
    ipam: Ipam,
) -> dict[str, Any]:
    call = None
    if request.ipam_type and ipam.detached(request.ipam_type):
        call = _start_ipam(undo, ipam, request)  # its exec overlaps the move
    _move_into_pod(undo, request, target, origin, host, pod)
    link = pod.link(request.ifname)
    if link is None:
        raise CniError(ERR_NETLINK, f"{request.ifname} vanished from the pod after the move")
    result: IpamResult | None = None
    if request.ipam_type:
        call = call or _start_ipam(undo, ipam, request)
        result = parse_ipam_output(call.finish(), request.ipam_type)
    pod.configure(
        link.index, request.mtu, result.ips if result else (), result.routes if result else ()
    )
    _write_devinfo(undo, request, target)
    iface = Interface(name=link.name, mac=link.mac, sandbox=request.netns)
    return build_result(request.cni_version, [iface], result)


def _on_failure(undo: ExitStack, event: str, step: Callable[[], None]) -> None:
    """Register an undo whose own failure is logged, so the undos after it still run."""

    def run() -> None:
        try:
            step()
        except Exception as exc:
            log.error(event, error=repr(exc))

    undo.callback(run)


def _start_ipam(undo: ExitStack, ipam: Ipam, request: CniRequest) -> IpamCall:
    call = ipam.start(request, "ADD")

    def release() -> None:
        with suppress(CniError):  # let the ADD end first, whatever it answers
            call.finish()
        ipam.invoke(request, "DEL")

    _on_failure(undo, "cni_rollback_ipam_failed", release)
    return call


def _move_into_pod(
    undo: ExitStack, request: CniRequest, target: Target, origin: Origin, host: Netns, pod: Netns
) -> None:
    """Down (a move closes the device; closing it first is faster), then into the pod
    under its pod name with the origin marker, in one message."""
    dev = target.link
    if dev.up:
        host.set_down(dev.index)

        def up_again() -> None:
            back = find_moved(host, dev, (dev.name,))
            if back is not None and not back.up:
                host.set_up(back.index)

        _on_failure(undo, "cni_rollback_netlink_failed", up_again)

    def take_back() -> None:
        # Looked for under both names: a kernel that moves first and renames
        # after leaves the device in the pod under its host name on a clash.
        moved = find_moved(pod, dev, (request.ifname, origin.orig_name))
        if moved is not None:
            return_to_host(pod, host, moved, origin)

    _on_failure(undo, "cni_rollback_netlink_failed", take_back)
    try:
        host.move(dev.index, pod, request.ifname, origin.to_alias())
    except NetlinkRefused as exc:
        if exc.code == errno.EEXIST:
            raise CniError(
                ERR_INVALID_CONFIG, f"interface {request.ifname} already exists in the pod"
            ) from None
        raise


def _write_devinfo(undo: ExitStack, request: CniRequest, target: Target) -> None:
    """The Multus CNI device-info file, when Multus asked for it and did not fill it."""
    if not request.devinfo_file or target.device is None:
        return
    path = Path(request.devinfo_file)
    if path.exists():
        return
    write_devinfo_file(path, target.device)
    _on_failure(undo, "cni_rollback_devinfo_failed", lambda: remove_devinfo([path]))
