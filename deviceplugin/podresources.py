"""Asking the kubelet which devices it allocated to a pod (PodResources API v1).

The CNI uses it for `resourceName`: to pick the pod's device when the config
names none, and to refuse a device the kubelet did not give that pod. `Get`
asks about one pod; kubelets without the KubeletPodResourcesGet feature answer
it with an error, so the client then lists all pods, as older consumers do.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import grpc
import structlog

from deviceplugin.api.podresources.v1 import api_pb2, api_pb2_grpc

log = structlog.get_logger(__name__)

TIMEOUT_S = 5.0


def devices_of(pod: api_pb2.PodResources, resource: str) -> list[str]:
    """Device ids of `resource` over all containers of the pod, in kubelet order."""
    ids: list[str] = []
    for container in pod.containers:
        for devices in container.devices:
            if devices.resource_name == resource:
                ids.extend(i for i in devices.device_ids if i not in ids)
    return ids


def find_pod(
    pods: Iterable[api_pb2.PodResources], namespace: str, name: str
) -> api_pb2.PodResources | None:
    return next((p for p in pods if p.namespace == namespace and p.name == name), None)


def allocated_devices(socket: Path, namespace: str, name: str, resource: str) -> list[str]:
    """Ids of `resource` the kubelet allocated to the pod; empty if it has none.

    Raises `grpc.RpcError` when the kubelet cannot be reached at all.
    """
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        stub = api_pb2_grpc.PodResourcesListerStub(channel)
        try:
            reply = stub.Get(
                api_pb2.GetPodResourcesRequest(pod_name=name, pod_namespace=namespace),
                timeout=TIMEOUT_S,
            )
            return devices_of(reply.pod_resources, resource)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            log.info("podresources_get_fallback_to_list", code=str(exc.code()), pod=name)
        listing = stub.List(api_pb2.ListPodResourcesRequest(), timeout=TIMEOUT_S)
        pod = find_pod(listing.pod_resources, namespace, name)
        return devices_of(pod, resource) if pod is not None else []
