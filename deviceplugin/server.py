"""The kubelet-facing gRPC DevicePlugin server of one resource pool.

One server (and one unix socket) per pool, as the kubelet expects one
endpoint per extended resource. The servicer holds the pool's current
devices; the daemon pushes new state with `update`, and every open
ListAndWatch stream sends a fresh snapshot when, and only when, it changed.
The decisions themselves (env keys, preferred ids) live in `allocation`.

What Allocate and GetPreferredAllocation need from the devices (env keys,
each device's `_INFO` entry, NUMA and PF groups: `allocation.PoolIndex`) is
worked out in `update`, once per change, so each call does only the part
that depends on the ids it names; a device-info file is written once per
device, not once per call.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

import grpc
import structlog

from deviceplugin import allocation, devinfo
from deviceplugin.api.v1beta1 import api_pb2, api_pb2_grpc
from deviceplugin.model import Device, Health
from deviceplugin.pools import PoolSpec

log = structlog.get_logger(__name__)

# Observer hooks let metrics count without this module knowing about Prometheus.
AllocateObserver = Callable[[str, float, int, bool], None]  # resource, seconds, devices, ok
PreferredObserver = Callable[[str, float], None]
DeviceReader = Callable[[str], Device | None]  # PCI address -> the device as sysfs has it now


MAX_SOCKET_STEM = 48


def socket_name(resource_name: str) -> str:
    """A stable socket file name for a resource: `netdp-<resource, odd chars as _>.sock`.

    A unix socket path is limited to 107 bytes and a resource name may be 300,
    so long names are cut and made unique with a short hash.
    """
    stem = re.sub(r"[^A-Za-z0-9.-]", "_", resource_name)
    if len(stem) > MAX_SOCKET_STEM:
        digest = hashlib.sha256(resource_name.encode()).hexdigest()[:10]
        stem = f"{stem[: MAX_SOCKET_STEM - 11]}-{digest}"
    return f"netdp-{stem}.sock"


def snapshot_message(
    devices: Sequence[Device], health: Mapping[str, Health], *, exclude_topology: bool = False
) -> api_pb2.ListAndWatchResponse:
    """The ListAndWatch message for a pool's devices.

    NUMA affinity only when known and not switched off by the pool's
    `excludeTopology` (which lets the topology manager place pods across nodes).
    """
    out = []
    for dev in devices:
        msg = api_pb2.Device(
            ID=dev.pci_address, health=health.get(dev.pci_address, Health.HEALTHY).value
        )
        if dev.numa_node is not None and not exclude_topology:
            msg.topology.nodes.add(ID=dev.numa_node)
        out.append(msg)
    return api_pb2.ListAndWatchResponse(devices=out)


class PoolServer(api_pb2_grpc.DevicePluginServicer):
    """Serves one pool on `<plugin_dir>/<socket_name>` and knows if that socket still exists."""

    def __init__(
        self,
        pool: PoolSpec,
        plugin_dir: Path,
        devinfo_dir: Path | None,
        *,
        on_allocate: AllocateObserver | None = None,
        on_preferred: PreferredObserver | None = None,
        read_device: DeviceReader | None = None,
    ) -> None:
        self._spec = pool
        self.resource_name = pool.resource_name
        self.socket_path = plugin_dir / socket_name(pool.resource_name)
        self._devinfo = (
            devinfo.PoolDevinfo(devinfo_dir, pool.resource_name)
            if devinfo_dir is not None
            else None
        )
        self._devices: dict[str, Device] = {}
        self._index = allocation.index_pool(pool.resource_name, (), pool.additional_info)
        self._health: dict[str, Health] = {}
        self._version = 0
        self._changed = asyncio.Condition()
        self._lifecycle = asyncio.Lock()
        self._server: grpc.aio.Server | None = None
        self._socket_inode: int | None = None
        self._stopping = False
        self._on_allocate = on_allocate
        self._on_preferred = on_preferred
        self._read_device = read_device
        self._registered_with: object | None = None
        self.log = log.bind(resource=pool.resource_name)

    # ---- state -------------------------------------------------------------------------
    @property
    def spec(self) -> PoolSpec:
        """The pool's settings; they change only through `respecify`."""
        return self._spec

    @property
    def registered_with(self) -> object | None:
        """Identity of the kubelet.sock this socket is registered with (see
        `kubelet.kubelet_identity`); None before that and after every restart."""
        return self._registered_with

    def mark_registered(self, kubelet: object) -> None:
        """The kubelet identified by `kubelet` accepted this socket's Register call."""
        self._registered_with = kubelet

    async def respecify(self, spec: PoolSpec) -> bool:
        """Take new settings under the same name; returns whether the pool must re-register.

        Whether NUMA nodes are advertised is part of what the kubelet saw, so
        that change restarts the socket (the kubelet drops the old
        registration with it); other settings apply from the next answer on.
        """
        if spec.resource_name != self.resource_name:
            raise ValueError(f"{self.resource_name} cannot become {spec.resource_name}")
        reregister = spec.exclude_topology != self._spec.exclude_topology
        reindex = spec.additional_info != self._spec.additional_info
        self._spec = spec
        if reindex:
            self._reindex()
        if reregister:
            await self.restart()
        return reregister

    @property
    def devices(self) -> tuple[Device, ...]:
        return tuple(self._devices.values())

    @property
    def index(self) -> allocation.PoolIndex:
        """What the allocation calls answer from; rebuilt when devices or settings change."""
        return self._index

    def _reindex(self) -> None:
        self._index = allocation.index_pool(
            self.resource_name, self._devices.values(), self._spec.additional_info
        )

    @property
    def health(self) -> Mapping[str, Health]:
        return dict(self._health)

    async def update(self, devices: Sequence[Device], health: Mapping[str, Health]) -> bool:
        """Replace the pool's devices; wake ListAndWatch streams only if the kubelet's view changes.

        Returns whether anything the kubelet sees (ids, health, NUMA) changed.
        Other attribute changes (a netdev renamed) are stored silently, and
        rebuild what Allocate answers from. The first update always counts:
        until then ListAndWatch holds back, so a server may register before
        the first scan is done without ever advertising a premature empty pool.
        """
        new_devices = {d.pci_address: d for d in sorted(devices, key=lambda d: d.pci_address)}
        new_health = {i: health.get(i, Health.HEALTHY) for i in new_devices}
        before = self._visible()
        changed_devices = new_devices != self._devices
        self._devices, self._health = new_devices, new_health
        if changed_devices:
            self._reindex()
        if before == self._visible() and self._version > 0:  # version 0: never updated
            return False
        async with self._changed:
            self._version += 1
            self._changed.notify_all()
        return True

    def _visible(self) -> tuple[tuple[str, str, int | None], ...]:
        """What a ListAndWatch snapshot says, as plain data: comparing it costs no messages."""
        hide_numa = self._spec.exclude_topology
        return tuple(
            (i, self._health.get(i, Health.HEALTHY).value, None if hide_numa else d.numa_node)
            for i, d in self._devices.items()
        )

    def _snapshot(self) -> api_pb2.ListAndWatchResponse:
        return snapshot_message(
            self.devices, self._health, exclude_topology=self._spec.exclude_topology
        )

    # ---- lifecycle ---------------------------------------------------------------------
    # One transition at a time: the daemon (re-specifying a pool) and the registrar
    # (reviving a socket the kubelet deleted) may both want one at the same moment.
    async def start(self) -> None:
        """Serve on a fresh socket; the kubelet dials it as soon as we register."""
        async with self._lifecycle:
            await self._start()

    async def stop(self, grace: float = 0.2) -> None:
        """Stop serving and remove our socket (only ours: the kubelet may have made a new one)."""
        async with self._lifecycle:
            await self._stop(grace)

    async def restart(self) -> None:
        async with self._lifecycle:
            await self._stop(0)
            await self._start()

    async def revive(self) -> bool:
        """Serve on a new socket if ours was removed while serving (the kubelet deletes every
        socket when it starts); returns whether it had to. A stopped server stays stopped."""
        async with self._lifecycle:
            if self._server is None or self.socket_alive():
                return False
            self.log.warning("plugin_socket_removed_restarting")
            await self._stop(0)
            await self._start()
            return True

    async def _start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        server = grpc.aio.server()
        api_pb2_grpc.add_DevicePluginServicer_to_server(self, server)
        server.add_insecure_port(f"unix://{self.socket_path}")
        await server.start()
        self._server = server
        self._stopping = False
        try:
            self._socket_inode = os.stat(self.socket_path).st_ino
        except FileNotFoundError:  # a starting kubelet emptied the directory just now:
            self._socket_inode = None  # not alive, so the registrar starts us again
        self._registered_with = None
        self.log.info("pool_server_started", socket=str(self.socket_path))

    async def _stop(self, grace: float) -> None:
        self._stopping = True
        async with self._changed:
            self._changed.notify_all()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self.socket_alive():
            self.socket_path.unlink(missing_ok=True)
        self._socket_inode = None
        self._registered_with = None

    def socket_alive(self) -> bool:
        """False once the kubelet (on restart) or anyone else has removed our socket."""
        try:
            return os.stat(self.socket_path).st_ino == self._socket_inode
        except OSError:
            return False

    def remove_devinfo_files(self) -> None:
        if self._devinfo is not None:
            self._devinfo.remove_all()

    # ---- gRPC --------------------------------------------------------------------------
    async def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    async def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.ListAndWatchResponse]:
        self.log.info("list_and_watch_opened")
        seen = [0]  # a cell, so the wait predicate sees the latest value; 0 = before any update
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: self._version != seen[0] or self._stopping)
                if self._stopping:
                    return
                seen[0] = self._version
                message = self._snapshot()
            self.log.info(
                "list_and_watch_sent",
                devices=len(message.devices),
                unhealthy=sum(d.health != Health.HEALTHY for d in message.devices),
            )
            yield message

    async def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PreferredAllocationResponse:
        started = time.perf_counter()
        pool = self._index
        responses = []
        for req in request.container_requests:
            ids = allocation.preferred_allocation(
                pool, req.available_deviceIDs, req.must_include_deviceIDs, req.allocation_size
            )
            responses.append(api_pb2.ContainerPreferredAllocationResponse(deviceIDs=ids))
            self.log.debug("preferred_allocation", size=req.allocation_size, preferred=ids)
        if self._on_preferred:
            self._on_preferred(self.resource_name, time.perf_counter() - started)
        return api_pb2.PreferredAllocationResponse(container_responses=responses)

    async def Allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.AllocateResponse:
        started = time.perf_counter()
        containers = [list(r.devices_ids) for r in request.container_requests]
        pool = self._with_netdevs_back(self._index, [i for ids in containers for i in ids])
        count = sum(map(len, containers))
        responses = []
        try:
            for ids in containers:
                result = allocation.container_allocation(pool, ids)
                responses.append(
                    api_pb2.ContainerAllocateResponse(
                        envs=result.envs,
                        devices=[
                            api_pb2.DeviceSpec(
                                container_path=n.container_path,
                                host_path=n.host_path,
                                permissions=n.permissions,
                            )
                            for n in result.device_nodes
                        ],
                    )
                )
                self._write_devinfo(pool, ids)
        except allocation.UnknownDevicesError as exc:
            self.log.warning("allocate_rejected", unknown=list(exc.unknown))
            if self._on_allocate:
                self._on_allocate(self.resource_name, time.perf_counter() - started, count, False)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        # One line per call, whatever the number of containers.
        self.log.info("allocated", devices=[i for ids in containers for i in ids])
        if self._on_allocate:
            self._on_allocate(self.resource_name, time.perf_counter() - started, count, True)
        return api_pb2.AllocateResponse(container_responses=responses)

    async def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()

    def _with_netdevs_back(
        self, pool: allocation.PoolIndex, ids: Sequence[str]
    ) -> allocation.PoolIndex:
        """The index, with a fresh read of each asked-for device that was in a pod at the
        last scan and may be home by now (its `_INFO` entry then names its netdev)."""
        if self._read_device is None:
            return pool
        fresh = {}
        for i in allocation.away_from_host(pool, ids):
            device = self._read_device(i)
            if device is not None and device.netdev is not None:
                fresh[i] = device
        if fresh:
            self.log.info("allocate_reread_devices", devices=sorted(fresh))
        return allocation.with_devices(pool, fresh)

    def _write_devinfo(self, pool: allocation.PoolIndex, ids: Sequence[str]) -> None:
        """Best effort: a full disk must not fail the pod's admission, only its annotation."""
        if self._devinfo is None:
            return
        for i in ids:
            try:
                self._devinfo.ensure(pool.devices[i])
            except OSError as exc:
                self.log.warning("devinfo_write_failed", device=i, error=str(exc))
