"""The kubelet and PodResources stand-ins behave like the kubelet towards a plugin.

The other side is a tiny device plugin defined here, so these tests check the
stand-ins alone; the real netdp daemon is tested against them elsewhere.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from deviceplugin.api import constants
from deviceplugin.api.podresources.v1 import api_pb2 as pr_pb2
from deviceplugin.api.podresources.v1 import api_pb2_grpc as pr_grpc
from deviceplugin.api.v1beta1 import api_pb2, api_pb2_grpc
from deviceplugin.kubelet import kubelet_identity
from deviceplugin.model import Health
from deviceplugin.podresources import allocated_devices
from deviceplugin.sim.kubelet import KubeletStandIn, remove_contents
from deviceplugin.sim.plugin_connection import DeviceView, Snapshot, snapshot_from_response
from deviceplugin.sim.podresources import KUBELET_1_20, PodResourcesStandIn

RESOURCE = "example.com/nic"


def devices(health: dict[str, str], numa: dict[str, int] | None = None) -> list[api_pb2.Device]:
    numa = numa or {}
    return [
        api_pb2.Device(
            ID=i,
            health=h,
            topology=api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=numa[i])])
            if i in numa
            else None,
        )
        for i, h in health.items()
    ]


class FakePlugin(api_pb2_grpc.DevicePluginServicer):
    """A device plugin: each ListAndWatch stream starts with the current list, then follows push."""

    def __init__(self, socket_path: Path, initial: list[api_pb2.Device]) -> None:
        self.socket_path = socket_path
        self.known = {d.ID for d in initial}
        self._lock = threading.Lock()
        self._current = initial
        self._streams: set[queue.SimpleQueue[list[api_pb2.Device] | None]] = set()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_DevicePluginServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix:{socket_path}")
        self.server.start()

    def push(self, update: list[api_pb2.Device]) -> None:
        with self._lock:
            self._current = update
            for stream in self._streams:
                stream.put(update)

    def stop(self) -> None:
        self.server.stop(grace=None).wait()

    def GetDevicePluginOptions(self, request, context):
        return api_pb2.DevicePluginOptions(get_preferred_allocation_available=True)

    def ListAndWatch(self, request, context) -> Iterator[api_pb2.ListAndWatchResponse]:
        updates: queue.SimpleQueue[list[api_pb2.Device] | None] = queue.SimpleQueue()
        context.add_callback(lambda: updates.put(None))
        with self._lock:
            updates.put(self._current)
            self._streams.add(updates)
        try:
            while (update := updates.get()) is not None:
                yield api_pb2.ListAndWatchResponse(devices=update)
        finally:
            with self._lock:
                self._streams.discard(updates)

    def GetPreferredAllocation(self, request, context):
        responses = []
        for r in request.container_requests:
            rest = [i for i in sorted(r.available_deviceIDs) if i not in r.must_include_deviceIDs]
            chosen = [*r.must_include_deviceIDs, *rest][: r.allocation_size]
            responses.append(api_pb2.ContainerPreferredAllocationResponse(deviceIDs=chosen))
        return api_pb2.PreferredAllocationResponse(container_responses=responses)

    def Allocate(self, request, context):
        unknown = [
            i for r in request.container_requests for i in r.devices_ids if i not in self.known
        ]
        if unknown:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown devices {unknown}")
        return api_pb2.AllocateResponse(
            container_responses=[
                api_pb2.ContainerAllocateResponse(envs={"IDS": ",".join(r.devices_ids)})
                for r in request.container_requests
            ]
        )


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "dp"
    path.mkdir()
    return path


@pytest.fixture
def kubelet(plugin_dir: Path) -> Iterator[KubeletStandIn]:
    with KubeletStandIn(plugin_dir, dial_timeout=0.5) as standin:
        yield standin


@pytest.fixture
def plugin(plugin_dir: Path, kubelet: KubeletStandIn) -> Iterator[FakePlugin]:
    fake = FakePlugin(
        plugin_dir / "nic.sock",
        devices({"0000:00:04.0": "Healthy", "0000:00:05.0": "Healthy"}, {"0000:00:05.0": 1}),
    )
    yield fake
    fake.stop()


def register(
    plugin_dir: Path,
    *,
    version: str = constants.VERSION,
    endpoint: str = "nic.sock",
    resource: str = RESOURCE,
) -> None:
    target = f"unix://{plugin_dir / constants.KUBELET_SOCKET_NAME}"
    with grpc.insecure_channel(target) as channel:
        api_pb2_grpc.RegistrationStub(channel).Register(
            api_pb2.RegisterRequest(
                version=version,
                endpoint=endpoint,
                resource_name=resource,
                options=api_pb2.DevicePluginOptions(get_preferred_allocation_available=True),
            ),
            timeout=5,
        )


def test_health_constants_match_model() -> None:
    assert (constants.HEALTHY, constants.UNHEALTHY) == (Health.HEALTHY, Health.UNHEALTHY)


# --- registration ---------------------------------------------------------------


def test_register_connects_and_records_snapshots(
    plugin_dir: Path, kubelet: KubeletStandIn, plugin: FakePlugin
) -> None:
    assert kubelet.socket_path.is_socket()
    register(plugin_dir)
    conn = kubelet.wait_registered(RESOURCE)
    assert conn.endpoint == "nic.sock"
    assert conn.options.get_preferred_allocation_available
    assert not conn.options.pre_start_required

    first = conn.wait_snapshot()
    assert first.devices == {
        "0000:00:04.0": DeviceView("Healthy", ()),
        "0000:00:05.0": DeviceView("Healthy", (1,)),
    }

    plugin.push(devices({"0000:00:04.0": "Healthy", "0000:00:05.0": "Unhealthy"}))
    second = conn.wait_snapshot(lambda s: "0000:00:05.0" not in s.healthy)
    assert second.healthy == {"0000:00:04.0"}
    assert second.at >= first.at
    assert conn.latest() is second
    assert conn.snapshots == [first, second]

    (attempt,) = kubelet.registrations
    assert attempt.accepted
    assert (attempt.version, attempt.endpoint, attempt.resource_name) == (
        "v1beta1",
        "nic.sock",
        RESOURCE,
    )
    assert attempt.options is not None and attempt.options.get_preferred_allocation_available


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": "v1alpha"}, 'requested API version "v1alpha" is not supported'),
        ({"version": ""}, "is not supported by kubelet"),
        ({"resource": "nic"}, 'the ResourceName "nic" is invalid'),
        ({"resource": "kubernetes.io/nic"}, "is invalid"),
        ({"endpoint": "../nic.sock"}, "must be a socket file name"),
        ({"endpoint": ""}, "must be a socket file name"),
        ({"endpoint": "missing.sock"}, "failed to dial device plugin"),
    ],
)
def test_register_refusals_are_recorded(
    plugin_dir: Path, kubelet: KubeletStandIn, plugin: FakePlugin, change: dict, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        register(plugin_dir, **change)
    # The kubelet answers with a plain Go error, which gRPC sends as UNKNOWN.
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert message in err.value.details()
    (attempt,) = kubelet.registrations
    assert not attempt.accepted
    assert attempt.error == err.value.details()
    assert kubelet.connections == {}


def test_register_refuses_a_file_that_is_no_socket(
    plugin_dir: Path, kubelet: KubeletStandIn
) -> None:
    (plugin_dir / "plain.sock").write_text("")
    with pytest.raises(grpc.RpcError, match="is not a socket"):
        register(plugin_dir, endpoint="plain.sock")


def test_register_times_out_on_a_socket_nobody_serves(
    plugin_dir: Path, kubelet: KubeletStandIn
) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(plugin_dir / "dead.sock"))  # bound, never listening: connect is refused
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError, match="failed to dial device plugin"):
            register(plugin_dir, endpoint="dead.sock")
        assert time.monotonic() - started < 3
    finally:
        dead.close()


def test_reject_hook_refuses_then_accepts(plugin_dir: Path, plugin: FakePlugin) -> None:
    answers = iter(["come back later", None])
    standin = KubeletStandIn(plugin_dir, reject=lambda request: next(answers))
    standin.start(clean=False)
    try:
        with pytest.raises(grpc.RpcError, match="come back later"):
            register(plugin_dir)
        register(plugin_dir)
        assert [a.error for a in standin.wait_attempts(2)] == ["come back later", None]
        standin.wait_registered(RESOURCE)
    finally:
        standin.stop()


def test_reregistration_replaces_the_connection(
    plugin_dir: Path, kubelet: KubeletStandIn, plugin: FakePlugin
) -> None:
    register(plugin_dir)
    old = kubelet.wait_registered(RESOURCE)
    old.wait_snapshot()
    register(plugin_dir)
    new = kubelet.wait_registered(RESOURCE, newer_than=old)
    assert new is not old
    assert old.wait_stream_end() == grpc.StatusCode.CANCELLED
    assert kubelet.connections == {RESOURCE: new}
    assert new.wait_snapshot().devices == old.latest().devices
    plugin.push(devices({"0000:00:04.0": "Healthy"}))
    assert new.wait_snapshot(lambda s: len(s.devices) == 1).healthy == {"0000:00:04.0"}


def test_plugin_going_away_ends_the_stream(
    plugin_dir: Path, kubelet: KubeletStandIn, plugin: FakePlugin
) -> None:
    register(plugin_dir)
    conn = kubelet.wait_registered(RESOURCE)
    conn.wait_snapshot()
    assert conn.stream_end is None
    plugin.stop()
    assert conn.wait_stream_end() != grpc.StatusCode.OK
    assert kubelet.connections == {}  # the kubelet drops a plugin whose stream ended


# --- driving the plugin ---------------------------------------------------------


def test_allocate_and_preferred(
    plugin_dir: Path, kubelet: KubeletStandIn, plugin: FakePlugin
) -> None:
    register(plugin_dir)
    conn = kubelet.wait_registered(RESOURCE)
    response = conn.allocate(["0000:00:04.0"], ["0000:00:05.0", "0000:00:04.0"])
    assert [dict(r.envs) for r in response.container_responses] == [
        {"IDS": "0000:00:04.0"},
        {"IDS": "0000:00:05.0,0000:00:04.0"},
    ]
    with pytest.raises(grpc.RpcError) as err:
        conn.allocate(["0000:00:99.0"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "0000:00:99.0" in err.value.details()

    assert conn.preferred(["0000:00:05.0", "0000:00:04.0"], [], 1) == ["0000:00:04.0"]
    assert conn.preferred(["0000:00:04.0", "0000:00:05.0"], ["0000:00:05.0"], 1) == ["0000:00:05.0"]


def test_wait_snapshot_times_out_and_can_demand_a_newer_one(
    plugin_dir: Path, kubelet: KubeletStandIn, plugin: FakePlugin
) -> None:
    register(plugin_dir)
    conn = kubelet.wait_registered(RESOURCE)
    first = conn.wait_snapshot()
    with pytest.raises(TimeoutError, match="no matching ListAndWatch snapshot"):
        conn.wait_snapshot(lambda s: not s.devices, timeout=0.2)
    with pytest.raises(TimeoutError):
        conn.wait_snapshot(newer_than=first, timeout=0.2)
    plugin.push(
        devices({"0000:00:04.0": "Healthy", "0000:00:05.0": "Healthy"}, {"0000:00:05.0": 1})
    )
    same_again = conn.wait_snapshot(newer_than=first)
    assert same_again is not first and same_again.devices == first.devices


def test_wait_registered_times_out(kubelet: KubeletStandIn) -> None:
    with pytest.raises(TimeoutError, match="not registered"):
        kubelet.wait_registered(RESOURCE, timeout=0.1)


# --- lifecycle ------------------------------------------------------------------


def test_restart_deletes_sockets_and_disconnects(
    plugin_dir: Path, kubelet: KubeletStandIn, plugin: FakePlugin
) -> None:
    (plugin_dir / "kubelet_internal_checkpoint").write_text("{}")
    register(plugin_dir)
    conn = kubelet.wait_registered(RESOURCE)
    conn.wait_snapshot()
    old = kubelet_identity(plugin_dir)

    kubelet.restart()

    assert not plugin.socket_path.exists()
    assert (plugin_dir / "kubelet_internal_checkpoint").read_text() == "{}"
    assert kubelet.socket_path.is_socket()
    assert kubelet_identity(plugin_dir) not in (None, old), "a new kubelet.sock"
    assert conn.wait_stream_end() == grpc.StatusCode.CANCELLED
    assert kubelet.connections == {}
    assert len(kubelet.registrations) == 1  # history survives a restart

    # A plugin that re-creates its socket and registers again is accepted.
    plugin.stop()
    again = FakePlugin(plugin.socket_path, devices({"0000:00:04.0": "Healthy"}))
    try:
        register(plugin_dir)
        assert kubelet.wait_registered(RESOURCE) is not conn
    finally:
        again.stop()


def test_stop_is_prompt_and_leaves_kubelet_sock_stale(plugin_dir: Path, plugin: FakePlugin) -> None:
    """A real kubelet that exits leaves kubelet.sock behind (seen with v1.20 on SIGTERM):
    the same file, nobody listening. Plugins see nothing change until the next start."""
    standin = KubeletStandIn(plugin_dir)
    standin.start(clean=False)
    register(plugin_dir)
    conn = standin.wait_registered(RESOURCE)
    conn.wait_snapshot()
    identity = kubelet_identity(plugin_dir)
    started = time.monotonic()
    standin.stop()
    assert time.monotonic() - started < 1
    assert conn.wait_stream_end(timeout=1) == grpc.StatusCode.CANCELLED
    assert standin.socket_path.is_socket()
    assert kubelet_identity(plugin_dir) == identity
    with pytest.raises(grpc.RpcError) as refused:
        register(plugin_dir)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not standin.running
    assert plugin.socket_path.is_socket()  # stopping deletes nothing of the plugins'
    assert sorted(p.name for p in plugin_dir.iterdir()) == ["kubelet.sock", "nic.sock"]


def test_restart_shows_plugins_the_kubelets_order(plugin_dir: Path, plugin: FakePlugin) -> None:
    """As a real kubelet v1.20 restart does: the plugin's socket and the stale kubelet.sock
    go (with `gap`, the plugin's first), then a new kubelet.sock appears."""
    standin = KubeletStandIn(plugin_dir)
    standin.start(clean=False)
    stale = kubelet_identity(plugin_dir)
    seen: list[tuple[str, object]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            entry = ("plugin" if plugin.socket_path.exists() else "-", kubelet_identity(plugin_dir))
            if not seen or seen[-1] != entry:
                seen.append(entry)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        standin.restart(gap=0.2)
    finally:
        time.sleep(0.05)
        stop.set()
        watcher.join()
        standin.stop()
    new = seen[-1][1]
    assert new not in (None, stale)
    assert seen[0] == ("plugin", stale)
    assert ("-", stale) in seen, f"the plugin's socket goes before the stale kubelet.sock: {seen}"
    assert seen[-1] == ("-", new)


def test_start_cleans_like_the_kubelet(plugin_dir: Path) -> None:
    """The kubelet removes every entry but its checkpoint and subdirectories, files too."""
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(plugin_dir / "stale.sock"))
    stale.close()
    (plugin_dir / "DEPRECATION").write_text("")
    (plugin_dir / "kubelet_internal_checkpoint").write_text("{}")
    (plugin_dir / "subdir").mkdir()
    assert remove_contents(plugin_dir) == ["DEPRECATION", "stale.sock"]
    assert sorted(p.name for p in plugin_dir.iterdir()) == ["kubelet_internal_checkpoint", "subdir"]


def test_snapshot_from_response_is_pure() -> None:
    response = api_pb2.ListAndWatchResponse(
        devices=devices({"a": "Healthy", "b": "Unhealthy"}, {"b": 0})
    )
    snap = snapshot_from_response(response, at=12.5)
    assert snap == Snapshot(12.5, {"a": DeviceView("Healthy"), "b": DeviceView("Unhealthy", (0,))})
    assert snap.healthy == {"a"}


# --- PodResources ---------------------------------------------------------------


@pytest.fixture
def podresources(
    tmp_path: Path,
) -> Iterator[tuple[PodResourcesStandIn, pr_grpc.PodResourcesListerStub]]:
    standin = PodResourcesStandIn(tmp_path / "pod-resources" / "kubelet.sock")
    with standin, grpc.insecure_channel(f"unix://{standin.socket_path}") as channel:
        yield standin, pr_grpc.PodResourcesListerStub(channel)


def test_podresources_list_and_get(podresources) -> None:
    standin, stub = podresources
    standin.set_pod("ns", "web", {"app": {RESOURCE: ["0000:00:04.0"]}})
    standin.set_pod("ns", "db", {"main": {RESOURCE: ["0000:00:05.0"], "x.io/y": ["7"]}})

    listed = stub.List(pr_pb2.ListPodResourcesRequest(), timeout=5)
    assert [(p.namespace, p.name) for p in listed.pod_resources] == [("ns", "web"), ("ns", "db")]

    got = stub.Get(pr_pb2.GetPodResourcesRequest(pod_namespace="ns", pod_name="db"), timeout=5)
    (container,) = got.pod_resources.containers
    assert container.name == "main"
    assert {d.resource_name: list(d.device_ids) for d in container.devices} == {
        RESOURCE: ["0000:00:05.0"],
        "x.io/y": ["7"],
    }

    standin.remove_pod("ns", "db")
    with pytest.raises(grpc.RpcError) as err:
        stub.Get(pr_pb2.GetPodResourcesRequest(pod_namespace="ns", pod_name="db"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert err.value.details() == "pod db in namespace ns not found"
    assert standin.calls == ["List", "Get", "Get"]


def test_podresources_get_disabled_and_allocatable(podresources) -> None:
    standin, stub = podresources
    standin.get_enabled = False
    standin.set_pod("ns", "web", {"app": {RESOURCE: ["0000:00:04.0"]}})
    with pytest.raises(grpc.RpcError, match="Get method disabled"):
        stub.Get(pr_pb2.GetPodResourcesRequest(pod_namespace="ns", pod_name="web"), timeout=5)

    standin.set_allocatable({RESOURCE: ["0000:00:04.0", "0000:00:05.0"]})
    allocatable = stub.GetAllocatableResources(pr_pb2.AllocatableResourcesRequest(), timeout=5)
    assert [(d.resource_name, list(d.device_ids)) for d in allocatable.devices] == [
        (RESOURCE, ["0000:00:04.0", "0000:00:05.0"])
    ]


def test_podresources_as_kubelet_1_20_serves_only_list(tmp_path: Path) -> None:
    """A real v1.20.2 answered Get and GetAllocatableResources with UNIMPLEMENTED (not
    the UNKNOWN of a newer kubelet with Get switched off); netdp's client falls back."""
    socket_path = tmp_path / "kubelet.sock"
    with PodResourcesStandIn(socket_path, served=KUBELET_1_20) as standin:
        standin.set_pod("default", "web", {"app": {RESOURCE: ["0000:00:04.0"]}})
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            stub = pr_grpc.PodResourcesListerStub(channel)
            for call, request in (
                (stub.Get, pr_pb2.GetPodResourcesRequest(pod_namespace="default", pod_name="web")),
                (stub.GetAllocatableResources, pr_pb2.AllocatableResourcesRequest()),
            ):
                with pytest.raises(grpc.RpcError) as err:
                    call(request, timeout=5)
                assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
                assert err.value.details().startswith("unknown method ")
        assert allocated_devices(socket_path, "default", "web", RESOURCE) == ["0000:00:04.0"]
        assert standin.calls == ["Get", "GetAllocatableResources", "Get", "List"]
