"""The kubelet's side of one registered device plugin: its ListAndWatch stream and calls.

After a plugin registers, the kubelet's device manager keeps a client
connection to it: a `ListAndWatch` stream whose latest message is the
plugin's capacity, and the stub through which it asks for allocations. The
kubelet stand-in (`sim.kubelet`) makes one `PluginConnection` per accepted
registration; tests read its recorded snapshots and drive `Allocate` and
`GetPreferredAllocation` through it, as the kubelet would for a pod.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from deviceplugin.api.constants import HEALTHY
from deviceplugin.api.v1beta1 import api_pb2, api_pb2_grpc

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceView:
    """One device as the kubelet saw it in a ListAndWatch message."""

    health: str
    numa_nodes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One ListAndWatch message: the plugin's complete device list at `at` (time.monotonic())."""

    at: float
    devices: Mapping[str, DeviceView]

    @property
    def healthy(self) -> frozenset[str]:
        """IDs the kubelet would count as allocatable capacity."""
        return frozenset(i for i, d in self.devices.items() if d.health == HEALTHY)


def snapshot_from_response(response: api_pb2.ListAndWatchResponse, at: float) -> Snapshot:
    """Reduce a ListAndWatch message to what the kubelet keeps: health and NUMA nodes per ID."""
    devices = {
        d.ID: DeviceView(
            health=d.health,
            numa_nodes=tuple(n.ID for n in d.topology.nodes) if d.HasField("topology") else (),
        )
        for d in response.devices
    }
    return Snapshot(at=at, devices=devices)


class PluginConnection:
    """The stand-in's client connection to one registered plugin.

    Holds the plugin's options, the recorded ListAndWatch snapshots and a
    stub for driving the plugin the way the kubelet would. `dropped` turns
    true once its stream ended and the stand-in let go of it.
    """

    def __init__(
        self,
        resource: str,
        endpoint: str,
        socket_path: Path,
        channel: grpc.Channel,
        options: api_pb2.DevicePluginOptions,
        on_stream_end: Callable[[PluginConnection], None] | None = None,
    ) -> None:
        self.resource = resource
        self.endpoint = endpoint
        self.socket_path = socket_path
        self.options = options
        self.registered_at = time.monotonic()
        self.stub = api_pb2_grpc.DevicePluginStub(channel)
        self._channel = channel
        self._cond = threading.Condition()
        self._snapshots: list[Snapshot] = []
        self._stream_end: grpc.StatusCode | None = None
        self._on_stream_end = on_stream_end
        # Set under the stand-in's lock once the stand-in has let go of this connection.
        self.dropped = False
        self._stream = self.stub.ListAndWatch(api_pb2.Empty())
        self._thread = threading.Thread(
            target=self._watch, name=f"standin-listandwatch-{resource}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"PluginConnection({self.resource!r}, endpoint={self.endpoint!r})"

    def _watch(self) -> None:
        code = grpc.StatusCode.OK
        try:
            for response in self._stream:
                snapshot = snapshot_from_response(response, time.monotonic())
                with self._cond:
                    self._snapshots.append(snapshot)
                    self._cond.notify_all()
                log.debug(
                    "kubelet_standin.snapshot",
                    resource=self.resource,
                    devices=len(snapshot.devices),
                    healthy=len(snapshot.healthy),
                )
        except grpc.RpcError as err:
            code = err.code()
        log.info("kubelet_standin.stream_end", resource=self.resource, code=code.name)
        if self._on_stream_end is not None:
            self._on_stream_end(self)
        with self._cond:
            self._stream_end = code
            self._cond.notify_all()

    @property
    def snapshots(self) -> list[Snapshot]:
        """Every snapshot received so far, oldest first (a copy)."""
        with self._cond:
            return list(self._snapshots)

    def latest(self) -> Snapshot | None:
        with self._cond:
            return self._snapshots[-1] if self._snapshots else None

    def wait_snapshot(
        self,
        predicate: Callable[[Snapshot], bool] | None = None,
        timeout: float = 5.0,
        *,
        newer_than: Snapshot | None = None,
    ) -> Snapshot:
        """Wait until the latest snapshot satisfies `predicate` (any snapshot when None).

        Only the latest one counts, as for the kubelet, so a state the plugin
        passed through quickly may be missed. With `newer_than`, the snapshot
        must also have arrived after that one. Raises TimeoutError.
        """

        with self._cond:
            first = 0 if newer_than is None else self._index(newer_than) + 1

            def ready() -> Snapshot | None:
                if len(self._snapshots) <= first:
                    return None
                last = self._snapshots[-1]
                return last if predicate is None or predicate(last) else None

            found = self._cond.wait_for(ready, timeout)
            if found is None:
                last = self._snapshots[-1] if self._snapshots else None
                raise TimeoutError(
                    f"{self.resource}: no matching ListAndWatch snapshot within {timeout}s "
                    f"({len(self._snapshots)} received, latest {last})"
                )
            return found

    def _index(self, snapshot: Snapshot) -> int:
        for i, s in enumerate(self._snapshots):
            if s is snapshot:
                return i
        raise ValueError(f"{snapshot} was not received on this connection")

    @property
    def stream_end(self) -> grpc.StatusCode | None:
        """How ListAndWatch ended: None while open, OK if the plugin ended it, else the error."""
        with self._cond:
            return self._stream_end

    def wait_stream_end(self, timeout: float = 5.0) -> grpc.StatusCode:
        """Wait until ListAndWatch ends (plugin stopped, connection closed); raises TimeoutError."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._stream_end is not None, timeout):
                raise TimeoutError(f"{self.resource}: ListAndWatch still open after {timeout}s")
            assert self._stream_end is not None
            return self._stream_end

    def allocate(
        self, *container_device_ids: Sequence[str], timeout: float = 5.0
    ) -> api_pb2.AllocateResponse:
        """Allocate, one argument per container; a plugin refusal raises its grpc.RpcError."""
        request = api_pb2.AllocateRequest(
            container_requests=[
                api_pb2.ContainerAllocateRequest(devices_ids=list(ids))
                for ids in container_device_ids
            ]
        )
        return self.stub.Allocate(request, timeout=timeout)

    def preferred(
        self,
        available: Sequence[str],
        must_include: Sequence[str],
        size: int,
        *,
        timeout: float = 5.0,
    ) -> list[str]:
        """GetPreferredAllocation for one container; returns the device IDs the plugin prefers."""
        request = api_pb2.PreferredAllocationRequest(
            container_requests=[
                api_pb2.ContainerPreferredAllocationRequest(
                    available_deviceIDs=list(available),
                    must_include_deviceIDs=list(must_include),
                    allocation_size=size,
                )
            ]
        )
        response = self.stub.GetPreferredAllocation(request, timeout=timeout)
        return [i for c in response.container_responses for i in c.deviceIDs]

    def close(self, timeout: float = 2.0) -> None:
        """Cancel ListAndWatch and close the channel, like the kubelet disconnecting a plugin."""
        self._stream.cancel()
        self._channel.close()
        self._thread.join(timeout)
