"""The ehost-device CNI plugin's entry point: one call from env + stdin to its answer.

The daemon runs it on a worker thread per request (`server.py`). It parses
the call, holds the per-device lock and hands the command to its rules
(`add`, `delete`, `check`) over the ports (`ports.Ports`), which it wires to
the real kernel, sysfs and IPAM plugins unless told otherwise. The daemon's
node repair (`repair.py`) runs over the same ports and the same locks.

Devices are serialised with a per-device `flock`, which holds between the
daemon's threads (each takes its own open file) and between processes.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from deviceplugin.cni import add, check, delete, repair
from deviceplugin.cni.ipam import PluginIpam
from deviceplugin.cni.ports import DeviceResolver, Ipam, Namespaces, Netns, Ports
from deviceplugin.cni.settings import Settings
from deviceplugin.cni.sysfs_devices import SysfsDevices
from deviceplugin.cni.types import (
    ERR_INTERNAL,
    CniError,
    CniRequest,
    config_version,
    parse_request,
    version_result,
)

log = structlog.get_logger(__name__)

# (socket, namespace, pod name, resource) -> device ids the kubelet allocated.
PodDevicesLookup = Callable[[Path, str, str, str], list[str]]

_COMMANDS = {
    "ADD": add.add,
    "DEL": delete.delete,
    "CHECK": check.check,
    "STATUS": check.status,
    "GC": delete.gc,
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the plugin process prints and exits with."""

    stdout: str
    exit_code: int


class _KernelNamespaces:
    """`netlink.NetlinkNamespaces`, whose code is loaded on its first use.

    The daemon builds its executor at start-up; the netlink code then waits
    for the first CNI call or node repair, which run on worker threads, so
    the daemon's start and registration do not pay for it.
    """

    def host(self) -> AbstractContextManager[Netns]:
        return _netlink_namespaces().host()

    def pod(self, path: str) -> AbstractContextManager[Netns]:
        return _netlink_namespaces().pod(path)


@functools.cache
def _netlink_namespaces() -> Namespaces:
    from deviceplugin import pyroute2_loader

    pyroute2_loader.load()
    from deviceplugin.cni.netlink import NetlinkNamespaces

    return NetlinkNamespaces()


def _podresources_lookup(socket: Path, namespace: str, name: str, resource: str) -> list[str]:
    from deviceplugin import podresources  # grpc is only paid for when resourceName is used

    return podresources.allocated_devices(socket, namespace, name, resource)


class Executor:
    """The CNI commands; thread-safe, each call opens its own netlink sockets.

    `namespaces`, `devices` and `ipam` replace the real kernel, sysfs and
    IPAM plugins (tests run the rules on in-memory fakes without root);
    `pod_devices(socket, namespace, pod, resource)` the kubelet's PodResources.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        pod_devices: PodDevicesLookup = _podresources_lookup,
        *,
        namespaces: Namespaces | None = None,
        devices: DeviceResolver | None = None,
        ipam: Ipam | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.ports = Ports(
            namespaces=namespaces or _KernelNamespaces(),
            devices=devices or SysfsDevices(self.settings.sysfs_root),
            ipam=ipam or PluginIpam(),
            pod_devices=functools.partial(pod_devices, self.settings.pod_resources_socket),
            lock=self._device_lock,
        )

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

    def repair(self) -> list[tuple[str, str]]:
        """Put back the NICs lost calls left marked on the host: (device, name) of each."""
        return [(r.device, r.name) for r in repair.repair_stranded(self.ports)]

    def _dispatch(self, request: CniRequest) -> dict[str, Any] | None:
        if request.command == "VERSION":
            return version_result()
        return _COMMANDS[request.command](request, self.ports)

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
