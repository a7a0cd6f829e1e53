"""A PodResources API v1 stand-in, for testing the ehost-device CNI without a kubelet.

When a network config names a `resourceName` but no device, the CNI asks the
kubelet which devices it allocated to the pod. This server answers `List`,
`Get` and `GetAllocatableResources` from an in-memory table that tests fill
with `set_pod`. It answers like the kubelet: pods in the order they were set,
a missing pod in `Get` is an UNKNOWN error worded as the kubelet words it, and
`Get` can be switched off as on kubelets without the KubeletPodResourcesGet
feature. Kubelets older than a method do not know it at all: `served` names
the methods a version has (`KUBELET_1_20`: only `List`, as a real v1.20.2
answered in tests/e2e/realnode.py), the others fail with UNIMPLEMENTED.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import grpc
import structlog

from deviceplugin.api.podresources.v1 import api_pb2, api_pb2_grpc
from deviceplugin.sim.standin import StandIn, serve_unix

log = structlog.get_logger(__name__)

# container name -> resource name -> device IDs
ContainerDevices = Mapping[str, Mapping[str, Sequence[str]]]

ALL_METHODS = frozenset({"List", "Get", "GetAllocatableResources"})
KUBELET_1_20 = frozenset({"List"})  # GetAllocatableResources came in 1.21, Get in 1.27


def pod_resources(namespace: str, name: str, containers: ContainerDevices) -> api_pb2.PodResources:
    """Build the PodResources message the kubelet would report for one pod."""
    return api_pb2.PodResources(
        name=name,
        namespace=namespace,
        containers=[
            api_pb2.ContainerResources(
                name=container,
                devices=[
                    api_pb2.ContainerDevices(resource_name=resource, device_ids=list(ids))
                    for resource, ids in resources.items()
                ],
            )
            for container, resources in containers.items()
        ],
    )


class _Servicer(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, standin: PodResourcesStandIn) -> None:
        self._standin = standin

    def _call(
        self, method: str, context: grpc.ServicerContext
    ) -> dict[tuple[str, str], api_pb2.PodResources]:
        pods = self._standin._record_call(method)
        if method not in self._standin.served:  # what gRPC-Go says for an unknown method
            context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"unknown method {method} for service v1.PodResourcesLister",
            )
        return pods

    def List(
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        pods = self._call("List", context)
        return api_pb2.ListPodResourcesResponse(pod_resources=list(pods.values()))

    def Get(
        self, request: api_pb2.GetPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.GetPodResourcesResponse:
        pods = self._call("Get", context)
        if not self._standin.get_enabled:
            context.abort(grpc.StatusCode.UNKNOWN, "PodResources API Get method disabled")
        pod = pods.get((request.pod_namespace, request.pod_name))
        if pod is None:
            context.abort(
                grpc.StatusCode.UNKNOWN,
                f"pod {request.pod_name} in namespace {request.pod_namespace} not found",
            )
        return api_pb2.GetPodResourcesResponse(pod_resources=pod)

    def GetAllocatableResources(
        self, request: api_pb2.AllocatableResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.AllocatableResourcesResponse:
        self._call("GetAllocatableResources", context)
        return api_pb2.AllocatableResourcesResponse(devices=self._standin._allocatable())


class PodResourcesStandIn(StandIn):
    """Serves PodResourcesLister on `socket_path` from a table set by the test.

    `calls` lists the methods called (served or not), in order, so a test can tell
    whether a client used Get or fell back to List. Usable as a context manager.
    """

    def __init__(
        self,
        socket_path: Path,
        *,
        get_enabled: bool = True,
        served: frozenset[str] = ALL_METHODS,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.get_enabled = get_enabled
        self.served = served
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], api_pb2.PodResources] = {}
        self._allocatable_devices: dict[str, list[str]] = {}
        self._calls: list[str] = []
        self._server: grpc.Server | None = None

    def set_pod(self, namespace: str, name: str, containers: ContainerDevices) -> None:
        """Record (or replace) what was allocated to a pod's containers."""
        pod = pod_resources(namespace, name, containers)
        with self._lock:
            self._pods[(namespace, name)] = pod

    def remove_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            self._pods.pop((namespace, name), None)

    def set_allocatable(self, devices: Mapping[str, Sequence[str]]) -> None:
        """Set the node's device capacity per resource name, for GetAllocatableResources."""
        with self._lock:
            self._allocatable_devices = {r: list(ids) for r, ids in devices.items()}

    @property
    def calls(self) -> list[str]:
        with self._lock:
            return list(self._calls)

    def _record_call(self, method: str) -> dict[tuple[str, str], api_pb2.PodResources]:
        with self._lock:
            self._calls.append(method)
            return dict(self._pods)

    def _allocatable(self) -> list[api_pb2.ContainerDevices]:
        with self._lock:
            return [
                api_pb2.ContainerDevices(resource_name=r, device_ids=ids)
                for r, ids in self._allocatable_devices.items()
            ]

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("PodResources stand-in already started")
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self._server = serve_unix(
            self.socket_path,
            partial(api_pb2_grpc.add_PodResourcesListerServicer_to_server, _Servicer(self)),
            workers=4,
            name="podresources",
        )
        log.info("podresources_standin.started", socket=str(self.socket_path))

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=None).wait()
            log.info("podresources_standin.stopped", socket=str(self.socket_path))
