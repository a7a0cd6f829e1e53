"""The committed gRPC code is fresh, and the wire format is the kubelet's.

The field table below is the contract: every message, field name, number,
type and cardinality of the kubelet's Device Plugin v1beta1 and PodResources
v1 APIs. A change to a .proto that would break talking to a real kubelet
fails here, not on a node.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor, descriptor_pb2, runtime_version
from helpers import load_script

from deviceplugin.api.podresources.v1 import api_pb2 as pr_pb2
from deviceplugin.api.podresources.v1 import api_pb2_grpc as pr_grpc
from deviceplugin.api.v1beta1 import api_pb2 as dp_pb2
from deviceplugin.api.v1beta1 import api_pb2_grpc as dp_grpc

REPO = Path(__file__).resolve().parent.parent

T = descriptor.FieldDescriptor
STR, BOOL, MSG = T.TYPE_STRING, T.TYPE_BOOL, T.TYPE_MESSAGE
I32, I64, U64 = T.TYPE_INT32, T.TYPE_INT64, T.TYPE_UINT64
ONE, MANY = "optional", "repeated"

# message -> (field name, number, type, cardinality, message type or None)
DEVICE_PLUGIN_FIELDS = {
    "DevicePluginOptions": [
        ("pre_start_required", 1, BOOL, ONE, None),
        ("get_preferred_allocation_available", 2, BOOL, ONE, None),
    ],
    "RegisterRequest": [
        ("version", 1, STR, ONE, None),
        ("endpoint", 2, STR, ONE, None),
        ("resource_name", 3, STR, ONE, None),
        ("options", 4, MSG, ONE, "v1beta1.DevicePluginOptions"),
    ],
    "Empty": [],
    "ListAndWatchResponse": [("devices", 1, MSG, MANY, "v1beta1.Device")],
    "TopologyInfo": [("nodes", 1, MSG, MANY, "v1beta1.NUMANode")],
    "NUMANode": [("ID", 1, I64, ONE, None)],
    "Device": [
        ("ID", 1, STR, ONE, None),
        ("health", 2, STR, ONE, None),
        ("topology", 3, MSG, ONE, "v1beta1.TopologyInfo"),
    ],
    "PreStartContainerRequest": [("devices_ids", 1, STR, MANY, None)],
    "PreStartContainerResponse": [],
    "PreferredAllocationRequest": [
        ("container_requests", 1, MSG, MANY, "v1beta1.ContainerPreferredAllocationRequest"),
    ],
    "ContainerPreferredAllocationRequest": [
        ("available_deviceIDs", 1, STR, MANY, None),
        ("must_include_deviceIDs", 2, STR, MANY, None),
        ("allocation_size", 3, I32, ONE, None),
    ],
    "PreferredAllocationResponse": [
        ("container_responses", 1, MSG, MANY, "v1beta1.ContainerPreferredAllocationResponse"),
    ],
    "ContainerPreferredAllocationResponse": [("deviceIDs", 1, STR, MANY, None)],
    "AllocateRequest": [
        ("container_requests", 1, MSG, MANY, "v1beta1.ContainerAllocateRequest"),
    ],
    "ContainerAllocateRequest": [("devices_ids", 1, STR, MANY, None)],
    "CDIDevice": [("name", 1, STR, ONE, None)],
    "AllocateResponse": [
        ("container_responses", 1, MSG, MANY, "v1beta1.ContainerAllocateResponse"),
    ],
    "ContainerAllocateResponse": [
        ("envs", 1, MSG, MANY, "v1beta1.ContainerAllocateResponse.EnvsEntry"),
        ("mounts", 2, MSG, MANY, "v1beta1.Mount"),
        ("devices", 3, MSG, MANY, "v1beta1.DeviceSpec"),
        ("annotations", 4, MSG, MANY, "v1beta1.ContainerAllocateResponse.AnnotationsEntry"),
        ("cdi_devices", 5, MSG, MANY, "v1beta1.CDIDevice"),
    ],
    "Mount": [
        ("container_path", 1, STR, ONE, None),
        ("host_path", 2, STR, ONE, None),
        ("read_only", 3, BOOL, ONE, None),
    ],
    "DeviceSpec": [
        ("container_path", 1, STR, ONE, None),
        ("host_path", 2, STR, ONE, None),
        ("permissions", 3, STR, ONE, None),
    ],
}

POD_RESOURCES_FIELDS = {
    "AllocatableResourcesRequest": [],
    "AllocatableResourcesResponse": [
        ("devices", 1, MSG, MANY, "v1.ContainerDevices"),
        ("cpu_ids", 2, I64, MANY, None),
        ("memory", 3, MSG, MANY, "v1.ContainerMemory"),
    ],
    "ListPodResourcesRequest": [],
    "ListPodResourcesResponse": [("pod_resources", 1, MSG, MANY, "v1.PodResources")],
    "PodResources": [
        ("name", 1, STR, ONE, None),
        ("namespace", 2, STR, ONE, None),
        ("containers", 3, MSG, MANY, "v1.ContainerResources"),
    ],
    "ContainerResources": [
        ("name", 1, STR, ONE, None),
        ("devices", 2, MSG, MANY, "v1.ContainerDevices"),
        ("cpu_ids", 3, I64, MANY, None),
        ("memory", 4, MSG, MANY, "v1.ContainerMemory"),
        ("dynamic_resources", 5, MSG, MANY, "v1.DynamicResource"),
    ],
    "ContainerMemory": [
        ("memory_type", 1, STR, ONE, None),
        ("size", 2, U64, ONE, None),
        ("topology", 3, MSG, ONE, "v1.TopologyInfo"),
    ],
    "ContainerDevices": [
        ("resource_name", 1, STR, ONE, None),
        ("device_ids", 2, STR, MANY, None),
        ("topology", 3, MSG, ONE, "v1.TopologyInfo"),
    ],
    "TopologyInfo": [("nodes", 1, MSG, MANY, "v1.NUMANode")],
    "NUMANode": [("ID", 1, I64, ONE, None)],
    "DynamicResource": [
        ("claim_name", 2, STR, ONE, None),
        ("claim_namespace", 3, STR, ONE, None),
        ("claim_resources", 4, MSG, MANY, "v1.ClaimResource"),
    ],
    "ClaimResource": [
        ("cdi_devices", 1, MSG, MANY, "v1.CDIDevice"),
        ("driver_name", 2, STR, ONE, None),
        ("pool_name", 3, STR, ONE, None),
        ("device_name", 4, STR, ONE, None),
    ],
    "CDIDevice": [("name", 1, STR, ONE, None)],
    "GetPodResourcesRequest": [
        ("pod_name", 1, STR, ONE, None),
        ("pod_namespace", 2, STR, ONE, None),
    ],
    "GetPodResourcesResponse": [("pod_resources", 1, MSG, ONE, "v1.PodResources")],
}

# service -> [(method, input, output, server streaming)]
DEVICE_PLUGIN_SERVICES = {
    "Registration": [("Register", "RegisterRequest", "Empty", False)],
    "DevicePlugin": [
        ("GetDevicePluginOptions", "Empty", "DevicePluginOptions", False),
        ("ListAndWatch", "Empty", "ListAndWatchResponse", True),
        (
            "GetPreferredAllocation",
            "PreferredAllocationRequest",
            "PreferredAllocationResponse",
            False,
        ),
        ("Allocate", "AllocateRequest", "AllocateResponse", False),
        ("PreStartContainer", "PreStartContainerRequest", "PreStartContainerResponse", False),
    ],
}
POD_RESOURCES_SERVICES = {
    "PodResourcesLister": [
        ("List", "ListPodResourcesRequest", "ListPodResourcesResponse", False),
        (
            "GetAllocatableResources",
            "AllocatableResourcesRequest",
            "AllocatableResourcesResponse",
            False,
        ),
        ("Get", "GetPodResourcesRequest", "GetPodResourcesResponse", False),
    ],
}


def _field_rows(message: descriptor.Descriptor) -> list[tuple]:
    return [
        (
            f.name,
            f.number,
            f.type,
            MANY if f.is_repeated else ONE,
            f.message_type.full_name if f.message_type else None,
        )
        for f in message.fields
    ]


@pytest.mark.parametrize(
    ("module", "package", "expected"),
    [(dp_pb2, "v1beta1", DEVICE_PLUGIN_FIELDS), (pr_pb2, "v1", POD_RESOURCES_FIELDS)],
    ids=["deviceplugin", "podresources"],
)
def test_messages_match_kubelet(module: ModuleType, package: str, expected: dict) -> None:
    file = module.DESCRIPTOR
    assert file.package == package
    as_proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(as_proto)
    # proto3: packed repeated scalars, no field presence for scalars, as upstream.
    assert as_proto.syntax == "proto3"
    assert set(file.message_types_by_name) == set(expected)
    for name, fields in expected.items():
        assert _field_rows(file.message_types_by_name[name]) == fields, name


@pytest.mark.parametrize(
    ("module", "package", "expected"),
    [(dp_pb2, "v1beta1", DEVICE_PLUGIN_SERVICES), (pr_pb2, "v1", POD_RESOURCES_SERVICES)],
    ids=["deviceplugin", "podresources"],
)
def test_services_match_kubelet(module: ModuleType, package: str, expected: dict) -> None:
    file = module.DESCRIPTOR
    assert set(file.services_by_name) == set(expected)
    for service_name, methods in expected.items():
        service = file.services_by_name[service_name]
        assert service.full_name == f"{package}.{service_name}"
        rows = [
            (
                m.name,
                m.input_type.full_name,
                m.output_type.full_name,
                m.server_streaming,
            )
            for m in service.methods
        ]
        assert rows == [(n, f"{package}.{i}", f"{package}.{o}", s) for n, i, o, s in methods]
        assert not any(m.client_streaming for m in service.methods)


def test_grpc_paths_are_the_kubelets() -> None:
    """The HTTP/2 paths the generated stubs call are what the kubelet serves and calls."""

    class Recorder:
        def __init__(self) -> None:
            self.paths: list[str] = []

        def _record(self, path: str, *args: object, **kwargs: object) -> None:
            self.paths.append(path)

        unary_unary = unary_stream = _record

    channel = Recorder()
    dp_grpc.RegistrationStub(channel)
    dp_grpc.DevicePluginStub(channel)
    pr_grpc.PodResourcesListerStub(channel)
    assert channel.paths == [
        "/v1beta1.Registration/Register",
        "/v1beta1.DevicePlugin/GetDevicePluginOptions",
        "/v1beta1.DevicePlugin/ListAndWatch",
        "/v1beta1.DevicePlugin/GetPreferredAllocation",
        "/v1beta1.DevicePlugin/Allocate",
        "/v1beta1.DevicePlugin/PreStartContainer",
        "/v1.PodResourcesLister/List",
        "/v1.PodResourcesLister/GetAllocatableResources",
        "/v1.PodResourcesLister/Get",
    ]


def test_wire_bytes() -> None:
    """A few hand-encoded messages, independent of the descriptors above."""
    register = dp_pb2.RegisterRequest(version="v1beta1", endpoint="a.sock", resource_name="x.io/y")
    assert register.SerializeToString() == b"\n\x07v1beta1\x12\x06a.sock\x1a\x06x.io/y"
    device = dp_pb2.Device(
        ID="0000:00:04.0",
        health="Healthy",
        topology=dp_pb2.TopologyInfo(nodes=[dp_pb2.NUMANode(ID=1)]),
    )
    assert device.SerializeToString() == (
        b"\n\x0c0000:00:04.0\x12\x07Healthy\x1a\x04\n\x02\x08\x01"
    )
    request = pr_pb2.GetPodResourcesRequest(pod_name="p", pod_namespace="ns")
    assert request.SerializeToString() == b"\n\x01p\x12\x02ns"


def _load_generator() -> ModuleType:
    return load_script(REPO / "scripts" / "gen_proto.py")


def test_committed_code_is_fresh() -> None:
    gen = _load_generator()
    assert gen.stale_files() == [], "generated code is stale: run python scripts/gen_proto.py"


def test_staleness_is_detected(tmp_path: Path) -> None:
    gen = _load_generator()
    for rel in gen.generated_files():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / rel, tmp_path / rel)
    assert gen.stale_files(repo_root=tmp_path) == []

    tampered = "deviceplugin/api/v1beta1/api_pb2.py"
    with (tmp_path / tampered).open("a") as f:
        f.write("# edited\n")
    (tmp_path / "deviceplugin/api/podresources/v1/api_pb2_grpc.py").unlink()
    assert gen.stale_files(repo_root=tmp_path) == [
        tampered,
        "deviceplugin/api/podresources/v1/api_pb2_grpc.py",
    ]


def test_gencode_fits_installed_runtime() -> None:
    """The gencode version check passes with the installed protobuf (the import above proved it);
    pin the gencode version here so that a regeneration that raises the floor is noticed."""
    header = (REPO / "deviceplugin/api/v1beta1/api_pb2.py").read_text()
    assert "# Protobuf Python Version: 7.35.1" in header
    assert (runtime_version.MAJOR, runtime_version.MINOR) >= (7, 35)
