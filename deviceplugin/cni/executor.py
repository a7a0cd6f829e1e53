"""ADD, DEL, CHECK, VERSION, STATUS and GC of the ehost-device CNI plugin.

One executor for both entry points: the daemon runs it on a worker thread per
request, the shim runs it in its own process when the daemon is absent. It
works on the records of `cni.types` and keeps the rules the issue sets:

- a device moved into a pod carries its identity in the link alias
  (`netdp:pci=...;orig=...;mtu=...`), which survives namespace moves, so DEL
  can restore the host name and MTU even after the namespace is gone and the
  kernel handed the NIC back under its pod name;
- every ADD step after the move is undone on failure (IPAM released, device
  renamed back and returned), so an error never leaves a half-plumbed NIC;
- DEL never fails on what is already gone.

Devices are serialised with a per-device `flock`, which holds between the
daemon's threads and in-process shims alike.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from deviceplugin import sysfs
from deviceplugin.api.constants import POD_RESOURCES_SOCKET
from deviceplugin.cni import ipam
from deviceplugin.cni.netlink import Link, Namespace, NamespaceGone, netns_socket, open_netns
from deviceplugin.cni.types import (
    ERR_DEFAULT_ROUTE,
    ERR_DEVICE_BUSY,
    ERR_DEVICE_NOT_FOUND,
    ERR_INTERNAL,
    ERR_INVALID_CONFIG,
    ERR_INVALID_ENV,
    ERR_NETLINK,
    ERR_NOT_ALLOCATED,
    ERR_NOT_AVAILABLE,
    ERR_POD_RESOURCES,
    ERR_UNKNOWN_CONTAINER,
    CniError,
    CniRequest,
    DeviceSelector,
    Interface,
    IpamResult,
    build_result,
    config_version,
    parse_ipam_result,
    parse_request,
    prev_interface,
    version_result,
)
from deviceplugin.devinfo import devinfo_document
from deviceplugin.model import Device, NetdevState

log = structlog.get_logger(__name__)

DEFAULT_LOCK_DIR = Path("/run/netdp/cni-locks")
ALIAS_PREFIX = "netdp:"
_ALIAS_FIELD = re.compile(r"(pci|orig|mtu)=([^;]*)")

# (socket, namespace, pod name, resource) -> device ids the kubelet allocated.
PodDevicesLookup = Callable[[Path, str, str, str], list[str]]


@dataclass(frozen=True, slots=True)
class Settings:
    sysfs_root: Path = Path("/sys")
    lock_dir: Path = DEFAULT_LOCK_DIR
    pod_resources_socket: Path = POD_RESOURCES_SOCKET


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the plugin process prints and exits with."""

    stdout: str
    exit_code: int


@dataclass(frozen=True, slots=True)
class Origin:
    """What DEL needs to put a device back as it was, kept in the link alias."""

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
        mtu=int(mtu) if mtu.isdigit() else None,
    )


@dataclass(slots=True)
class _Target:
    """The host device an ADD works on."""

    link: Link
    pci_address: str | None
    device: Device | None = None


@dataclass(slots=True)
class _AddProgress:
    """What an ADD has done so far, for the rollback."""

    moved: bool = False
    ipam_call: ipam.Call | None = None
    devinfo_written: Path | None = None


def _podresources_lookup(socket: Path, namespace: str, name: str, resource: str) -> list[str]:
    from deviceplugin import podresources  # grpc is only paid for when resourceName is used

    return podresources.allocated_devices(socket, namespace, name, resource)


def _open_pod_netns(netns: str) -> int:
    """The pod's namespace for ADD and CHECK, where its absence is the caller's error."""
    try:
        return open_netns(netns)
    except NamespaceGone:
        raise CniError(ERR_UNKNOWN_CONTAINER, f"network namespace {netns} not found") from None


class Executor:
    """The CNI commands; thread-safe, each call opens its own netlink sockets."""

    def __init__(
        self,
        settings: Settings | None = None,
        pod_devices: PodDevicesLookup = _podresources_lookup,
    ) -> None:
        self.settings = settings or Settings()
        self._pod_devices = pod_devices

    # ------------------------------------------------------------ entry point

    def run(self, env: Mapping[str, str], stdin: bytes) -> Outcome:
        """One CNI call from env + stdin to printed answer; never raises."""
        version = config_version(stdin)
        try:
            request = parse_request(env, stdin)
            version = request.cni_version
            answer = self._dispatch(request)
        except CniError as exc:
            log.warning(
                "cni_failed",
                command=env.get("CNI_COMMAND"),
                container=env.get("CNI_CONTAINERID"),
                code=exc.code,
                msg=exc.msg,
                details=exc.details,
            )
            return Outcome(json.dumps(exc.to_json(version)), 1)
        except Exception as exc:
            log.exception("cni_internal_error", command=env.get("CNI_COMMAND"))
            err = CniError(ERR_INTERNAL, "internal error in ehost-device", repr(exc))
            return Outcome(json.dumps(err.to_json(version)), 1)
        return Outcome(json.dumps(answer) if answer is not None else "", 0)

    def _dispatch(self, request: CniRequest) -> dict[str, Any] | None:
        if request.command == "VERSION":
            return version_result()
        handler = {
            "ADD": self.add,
            "DEL": self.delete,
            "CHECK": self.check,
            "STATUS": self.status,
            "GC": self.gc,
        }[request.command]
        return handler(request)

    # ------------------------------------------------------------ locking

    @contextmanager
    def _device_lock(self, key: str) -> Iterator[None]:
        """Serialise work on one device across threads and processes (flock per key)."""
        self.settings.lock_dir.mkdir(parents=True, exist_ok=True)
        path = self.settings.lock_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------ device resolution

    def _allocated(self, request: CniRequest) -> list[str]:
        assert request.resource_name
        pod = request.pod
        if pod is None:
            raise CniError(
                ERR_INVALID_ENV,
                "resourceName is set but CNI_ARGS names no pod",
                "need K8S_POD_NAMESPACE and K8S_POD_NAME to check the allocation",
            )
        try:
            return self._pod_devices(
                self.settings.pod_resources_socket, pod[0], pod[1], request.resource_name
            )
        except CniError:
            raise
        except Exception as exc:
            raise CniError(
                ERR_POD_RESOURCES, "kubelet PodResources lookup failed", str(exc)
            ) from None

    def _pci_of_netdev(self, name: str) -> str | None:
        device = sysfs.scan(self.settings.sysfs_root).by_netdev(name)
        return device.pci_address if device else None

    def _lock_key(self, request: CniRequest, host: Namespace) -> str:
        """The device identity to lock on, known before the locked resolution."""
        sel = request.selector
        if sel.pci_address:
            return sel.pci_address
        name = sel.netdev
        if sel.hwaddr:
            name = next((lk.name for lk in host.links() if lk.mac == sel.hwaddr), None)
        if name:
            return self._pci_of_netdev(name) or f"netdev-{name}"
        return f"attachment-{request.container_id}-{request.ifname}"

    def _target_by_pci(self, pci: str, host: Namespace) -> _Target:
        device = sysfs.read_device(self.settings.sysfs_root, pci)
        if device is None:
            raise CniError(ERR_DEVICE_NOT_FOUND, f"no network device at PCI {pci}")
        if device.netdev_state is NetdevState.ELSEWHERE:
            raise CniError(
                ERR_DEVICE_BUSY,
                f"device {pci} is in use",
                "its netdev is in another network namespace",
            )
        if device.netdev is None:
            raise CniError(
                ERR_DEVICE_NOT_FOUND,
                f"device {pci} has no network interface",
                f"driver {device.driver or 'none'}; a vfio-pci device cannot be moved into a pod",
            )
        link = host.link(device.netdev)
        if link is None:
            raise CniError(
                ERR_DEVICE_BUSY,
                f"device {pci} is in use",
                f"its netdev {device.netdev} is not in the host namespace",
            )
        return _Target(link=link, pci_address=pci, device=device)

    def _resolve(self, request: CniRequest, host: Namespace) -> _Target:
        sel = request.selector
        if sel.pci_address:
            return self._target_by_pci(sel.pci_address, host)
        link = None
        if sel.netdev:
            link = host.link(sel.netdev)
        elif sel.hwaddr:
            link = next((lk for lk in host.links() if lk.mac == sel.hwaddr), None)
        if link is None:
            raise CniError(ERR_DEVICE_NOT_FOUND, f"{sel.describe()} not found on the host")
        pci = self._pci_of_netdev(link.name)
        device = sysfs.read_device(self.settings.sysfs_root, pci) if pci else None
        return _Target(link=link, pci_address=pci, device=device)

    def _pick_allocated(self, request: CniRequest, allocated: list[str], host: Namespace) -> str:
        """Without a device in the config: the first allocated device still on the host."""
        for candidate in allocated:
            pci = candidate.lower()
            device = sysfs.read_device(self.settings.sysfs_root, pci)
            netdev = device.netdev if device is not None else None
            if netdev is not None and host.link(netdev) is not None:
                return pci
        raise CniError(
            ERR_DEVICE_NOT_FOUND,
            f"no free device of {request.resource_name} allocated to the pod",
            f"allocated: {', '.join(allocated) or 'none'}",
        )

    def _check_safety(
        self, request: CniRequest, target: _Target, allocated: list[str] | None, host: Namespace
    ) -> None:
        if target.link.index in host.default_route_ifindexes():
            raise CniError(
                ERR_DEFAULT_ROUTE,
                f"refusing {target.link.name}: it carries the node's default route",
                "moving it into a pod would cut the node off the network",
            )
        if allocated is not None and (target.pci_address or "") not in {
            a.lower() for a in allocated
        }:
            raise CniError(
                ERR_NOT_ALLOCATED,
                f"device {target.pci_address or target.link.name} is not allocated to the pod",
                f"kubelet allocated {request.resource_name}: {', '.join(allocated) or 'nothing'}",
            )

    # ------------------------------------------------------------ ADD

    def add(self, request: CniRequest) -> dict[str, Any]:
        ns_fd = _open_pod_netns(request.netns)
        try:
            with IPRoute() as host_ipr:
                host = Namespace(host_ipr)
                allocated = self._allocated(request) if request.resource_name else None
                if request.selector.empty:
                    assert allocated is not None
                    request = _with_pci(request, self._pick_allocated(request, allocated, host))
                with self._device_lock(self._lock_key(request, host)):
                    target = self._resolve(request, host)
                    _undo_dead_pod_name(host, target)
                    self._check_safety(request, target, allocated, host)
                    return self._add_locked(request, target, host, ns_fd)
        finally:
            os.close(ns_fd)

    def _add_locked(
        self, request: CniRequest, target: _Target, host: Namespace, ns_fd: int
    ) -> dict[str, Any]:
        origin = Origin(
            orig_name=target.link.name,
            pci_address=target.pci_address,
            mtu=target.link.mtu if request.mtu is not None else None,
        )
        progress = _AddProgress()
        log.info(
            "cni_add",
            container=request.container_id,
            device=target.link.name,
            pci=target.pci_address,
            ifname=request.ifname,
        )
        with netns_socket(ns_fd) as pod_ipr:
            pod = Namespace(pod_ipr)
            try:
                if request.ipam_type and ipam.runs_detached(request.ipam_type):
                    progress.ipam_call = ipam.Call(request, "ADD")
                # The kernel moves first and renames after: when the pod already has
                # the name, the device is in the pod under its host name, so the
                # rollback looks for it there in any case.
                progress.moved = True
                if target.link.up:
                    host.set_down(target.link.index)
                try:
                    host.move(target.link.index, ns_fd, request.ifname, origin.to_alias())
                except NetlinkError as exc:
                    if exc.code == errno.EEXIST:
                        raise CniError(
                            ERR_INVALID_CONFIG,
                            f"interface {request.ifname} already exists in the pod",
                        ) from None
                    raise
                return self._plumb(request, target, pod, progress)
            except BaseException as exc:
                self._rollback(request, target, origin, host, pod, progress)
                if isinstance(exc, NetlinkError):
                    raise CniError(
                        ERR_NETLINK, f"netlink refused to plumb {target.link.name}", str(exc)
                    ) from None
                raise

    def _plumb(
        self, request: CniRequest, target: _Target, pod: Namespace, progress: _AddProgress
    ) -> dict[str, Any]:
        link = pod.link(request.ifname)
        if link is None:
            raise CniError(ERR_NETLINK, f"{request.ifname} vanished from the pod after the move")
        result: IpamResult | None = None
        if request.ipam_type:
            if progress.ipam_call is None:
                progress.ipam_call = ipam.Call(request, "ADD")
            result = ipam.parse_add(progress.ipam_call.finish(), request.ipam_type)
        pod.configure(
            link.index, request.mtu, result.ips if result else (), result.routes if result else ()
        )
        self._write_devinfo(request, target, progress)
        iface = Interface(name=link.name, mac=link.mac, sandbox=request.netns)
        return build_result(request.cni_version, [iface], result)

    def _write_devinfo(self, request: CniRequest, target: _Target, progress: _AddProgress) -> None:
        """The Multus CNI device-info file, when Multus asked for it and did not fill it."""
        if not request.devinfo_file or not target.pci_address:
            return
        path = Path(request.devinfo_file)
        if path.exists():
            return
        doc = (
            devinfo_document(target.device)
            if target.device is not None
            else {"type": "pci", "version": "1.1.0", "pci": {"pci-address": target.pci_address}}
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)
        progress.devinfo_written = path

    def _rollback(
        self,
        request: CniRequest,
        target: _Target,
        origin: Origin,
        host: Namespace,
        pod: Namespace,
        progress: _AddProgress,
    ) -> None:
        """Undo an ADD step by step; each step is tried even if an earlier one failed."""
        log.warning("cni_add_rollback", container=request.container_id, device=origin.orig_name)
        if progress.devinfo_written:
            progress.devinfo_written.unlink(missing_ok=True)
        if progress.ipam_call is not None:
            # Let the ADD end first, whatever it answers, then release what it may hold.
            with contextlib.suppress(CniError):
                progress.ipam_call.finish()
            try:
                ipam.invoke(request, "DEL")
            except CniError as exc:
                log.error("cni_rollback_ipam_failed", msg=exc.msg, details=exc.details)
        if not progress.moved:
            return
        try:
            link = _find_moved(pod, target.link, (request.ifname, origin.orig_name))
            if link is not None:
                self._return_to_host(pod, link, origin, up=target.link.up)
            elif target.link.up:
                host.set_up(target.link.index)  # the move failed: only the "down" to undo
        except NetlinkError as exc:
            log.error("cni_rollback_netlink_failed", device=origin.orig_name, error=str(exc))

    def _return_to_host(self, pod: Namespace, link: Link, origin: Origin, up: bool = False) -> None:
        """Back to the host under its original name and MTU, alias cleared, in one message."""
        host_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if link.up:
                pod.set_down(link.index)
            try:
                pod.move(link.index, host_fd, origin.orig_name, "", origin.mtu, up)
            except NetlinkError as exc:
                # A name clash on the host. If the kernel moved it but could not rename
                # it, it is on the host under its pod name with the netdp alias, which
                # a later DEL or GC restores; if it is still here, send it under a
                # free name, alias kept for the same reason.
                log.error("cni_return_name_taken", device=origin.orig_name, error=str(exc))
                if _find_moved(pod, link, (link.name,)) is not None:
                    pod.move(link.index, host_fd, "netdp%d", origin.to_alias())
        finally:
            os.close(host_fd)

    # ------------------------------------------------------------ DEL

    def delete(self, request: CniRequest) -> None:
        ipam_call = None
        if request.ipam_type and ipam.runs_detached(request.ipam_type):
            ipam_call = ipam.Call(request, "DEL")
        try:
            self._delete_device(request)
        except BaseException:
            if ipam_call is not None:  # reap it; the device error is the one to report
                with contextlib.suppress(CniError):
                    ipam_call.finish()
            raise
        if request.ipam_type:
            (ipam_call or ipam.Call(request, "DEL")).finish()
        if request.devinfo_file:
            Path(request.devinfo_file).unlink(missing_ok=True)
        log.info("cni_del", container=request.container_id, ifname=request.ifname)

    def _delete_device(self, request: CniRequest) -> None:
        key = request.selector.pci_address or f"attachment-{request.container_id}-{request.ifname}"
        with self._device_lock(key):
            if self._delete_in_pod(request):
                return
            # Not in the pod (or no pod any more): the kernel may have handed the NIC
            # back under its pod name. With a PCI address sysfs names it directly;
            # otherwise every netdp-marked link is looked at.
            with IPRoute() as host_ipr:
                host = Namespace(host_ipr)
                if request.selector.pci_address:
                    self._restore_device_at(host, request.selector.pci_address)
                else:
                    restore_returned_devices(host)

    def _restore_device_at(self, host: Namespace, pci: str) -> None:
        device = sysfs.read_device(self.settings.sysfs_root, pci)
        for netdev in device.netdevs if device is not None else ():
            link = host.link(netdev.name)
            origin = parse_alias(link.alias) if link is not None else None
            if link is not None and origin is not None and origin.orig_name != link.name:
                log.info("cni_restore_returned_device", name=link.name, orig=origin.orig_name)
                _restore_host_link(host, link.index, origin)

    def _delete_in_pod(self, request: CniRequest) -> bool:
        """Return our device from the pod; False if there was none to return."""
        if not request.netns:
            return False
        try:
            ns_fd = open_netns(request.netns)
        except NamespaceGone:
            log.info("cni_del_netns_gone", netns=request.netns)
            return False
        try:
            with netns_socket(ns_fd) as pod_ipr:
                pod = Namespace(pod_ipr)
                link = pod.link(request.ifname)
                if link is None:
                    return False
                origin = parse_alias(link.alias)
                if origin is None:
                    log.warning(
                        "cni_del_foreign_interface", ifname=request.ifname, alias=link.alias
                    )
                    return False
                self._return_to_host(pod, link, origin)
                return True
        finally:
            os.close(ns_fd)

    # ------------------------------------------------------------ CHECK, STATUS, GC

    def check(self, request: CniRequest) -> None:
        assert request.prev_result is not None
        try:
            parse_ipam_result(request.prev_result)  # malformed addresses fail here, clearly
        except (ValueError, AttributeError, TypeError) as exc:
            raise CniError(ERR_INVALID_CONFIG, "prevResult is malformed", str(exc)) from None
        ours = prev_interface(request.prev_result, request.ifname, request.netns)
        if ours is None:
            raise CniError(ERR_INVALID_CONFIG, f"prevResult has no interface {request.ifname}")
        expected, addresses = ours
        ns_fd = _open_pod_netns(request.netns)
        try:
            with netns_socket(ns_fd) as pod_ipr:
                link = Namespace(pod_ipr).link(request.ifname, with_addresses=True)
        finally:
            os.close(ns_fd)
        if link is None or parse_alias(link.alias) is None:
            raise CniError(ERR_DEVICE_NOT_FOUND, f"{request.ifname} is not in the pod namespace")
        mac = str(expected.get("mac") or "").lower()
        if mac and mac != link.mac:
            raise CniError(
                ERR_INVALID_CONFIG, f"{request.ifname} has MAC {link.mac}, expected {mac}"
            )
        missing = [a for a in addresses if a not in link.addresses]
        if missing:
            raise CniError(ERR_INVALID_CONFIG, f"{request.ifname} lacks {', '.join(missing)}")
        if request.ipam_type:
            ipam.check(request)
        return None

    def status(self, request: CniRequest) -> None:
        if not request.ipam_type:
            return None
        try:
            ipam.find_plugin(request.ipam_type, request.cni_path)
        except CniError as exc:
            raise CniError(ERR_NOT_AVAILABLE, exc.msg, exc.details) from None
        if ipam.supports(request, request.cni_version):
            try:
                ipam.invoke(request, "STATUS")
            except CniError as exc:
                raise CniError(ERR_NOT_AVAILABLE, exc.msg, exc.details) from None
        return None

    def gc(self, request: CniRequest) -> None:
        """Give back devices whose pods died; let the IPAM plugin collect its leases."""
        with IPRoute() as host_ipr:
            restored = restore_returned_devices(Namespace(host_ipr))
        log.info("cni_gc", restored=restored)
        if request.ipam_type and ipam.supports(request, request.cni_version):
            ipam.invoke(request, "GC")
        return None


def _with_pci(request: CniRequest, pci: str) -> CniRequest:
    return replace(request, selector=DeviceSelector(pci_address=pci))


def _undo_dead_pod_name(host: Namespace, target: _Target) -> None:
    """A device still named as in a dead pod gets its host name back before a new ADD.

    Otherwise the new ADD would record the pod name as the original one.
    """
    origin = parse_alias(target.link.alias)
    if origin is None or origin.orig_name == target.link.name:
        return
    _restore_host_link(host, target.link.index, origin)
    target.link = host.link_by_index(target.link.index) or target.link


def _find_moved(ns: Namespace, moved: Link, names: tuple[str, ...]) -> Link | None:
    """The moved device in `ns`: same MAC under one of `names` or its old index.

    Indexes are per namespace, so an index alone could name someone else's link.
    """
    candidates = [ns.link(name) for name in names] + [ns.link_by_index(moved.index)]
    return next((c for c in candidates if c is not None and c.mac == moved.mac), None)


def _restore_host_link(host: Namespace, index: int, origin: Origin) -> None:
    """Back to the name and MTU the device had before ADD; the netdp alias goes."""
    try:
        host.restore(index, origin.orig_name, origin.mtu, "")
    except NetlinkError as exc:
        log.error("cni_restore_failed", device=origin.orig_name, error=str(exc))


def restore_returned_devices(host: Namespace) -> list[str]:
    """Rename devices the kernel returned from dead pods back to their host names.

    When a pod's namespace is destroyed the kernel moves a physical NIC back to
    the host under the name it had in the pod (or `devN`); only its netdp alias
    tells what it was. A device still under its original name is left alone: it
    is either untouched or in the middle of someone's ADD.
    """
    restored = []
    for link in host.links():
        origin = parse_alias(link.alias)
        if origin is None or link.name == origin.orig_name:
            continue
        log.info("cni_restore_returned_device", name=link.name, orig=origin.orig_name)
        _restore_host_link(host, link.index, origin)
        restored.append(origin.orig_name)
    return restored


def settings_from_env(environ: Mapping[str, str]) -> Settings:
    """Settings of the in-process fallback, which has no daemon flags to read."""
    return Settings(
        sysfs_root=Path(environ.get("NETDP_SYSFS_ROOT") or "/sys"),
        lock_dir=Path(environ.get("NETDP_CNI_LOCK_DIR") or DEFAULT_LOCK_DIR),
        pod_resources_socket=Path(
            environ.get("NETDP_POD_RESOURCES_SOCKET") or POD_RESOURCES_SOCKET
        ),
    )


def run_local(env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    """The shim's in-process mode: one call, logs to stderr (stdout is the CNI answer)."""
    from deviceplugin import logs

    logs.configure(level=os.environ.get("NETDP_LOG_LEVEL", "warning"), fmt="json")
    outcome = Executor(settings_from_env(os.environ)).run(env, stdin)
    return outcome.exit_code, outcome.stdout.encode()
