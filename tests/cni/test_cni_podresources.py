"""The kubelet PodResources client the CNI uses for `resourceName`, against the stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from deviceplugin.podresources import allocated_devices
from deviceplugin.sim.podresources import PodResourcesStandIn

RES = "netdp.io/virtio"


@pytest.fixture(params=[True, False], ids=["get", "list-fallback"])
def kubelet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PodResourcesStandIn]:
    with PodResourcesStandIn(tmp_path / "kubelet.sock", get_enabled=request.param) as standin:
        standin.set_pod(
            "default",
            "web",
            {
                "app": {RES: ["0000:00:05.0"], "other.io/x": ["x1"]},
                "sidecar": {RES: ["0000:00:06.0", "0000:00:05.0"]},
            },
        )
        standin.set_pod("default", "db", {"app": {RES: ["0000:00:07.0"]}})
        yield standin


def test_devices_of_one_pod_all_containers(kubelet: PodResourcesStandIn) -> None:
    found = allocated_devices(kubelet.socket_path, "default", "web", RES)
    assert found == ["0000:00:05.0", "0000:00:06.0"]
    expected_calls = ["Get"] if kubelet.get_enabled else ["Get", "List"]
    assert kubelet.calls == expected_calls


def test_unknown_pod_or_resource_is_empty(kubelet: PodResourcesStandIn) -> None:
    assert allocated_devices(kubelet.socket_path, "default", "nope", RES) == []
    assert allocated_devices(kubelet.socket_path, "default", "db", "none.io/x") == []


def test_kubelet_absent_raises(tmp_path: Path) -> None:
    with pytest.raises(grpc.RpcError):
        allocated_devices(tmp_path / "missing.sock", "default", "web", RES)
