"""The pool server: its ListAndWatch message (pure), and how its state and socket change."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from deviceplugin.api.v1beta1 import api_pb2, api_pb2_grpc
from deviceplugin.model import Device, Health, NetDev, NetdevState
from deviceplugin.pools import PoolSpec
from deviceplugin.server import PoolServer, snapshot_message, socket_name


def test_snapshot_carries_health_and_numa_unless_excluded() -> None:
    devs = [
        Device("0000:01:00.0", "1af4", "1041", driver="virtio-pci", numa_node=1),
        Device("0000:02:00.0", "1af4", "1041", driver="virtio-pci"),
    ]
    msg = snapshot_message(devs, {"0000:02:00.0": Health.UNHEALTHY})
    by_id = {d.ID: d for d in msg.devices}
    assert by_id["0000:01:00.0"].health == "Healthy"
    assert [n.ID for n in by_id["0000:01:00.0"].topology.nodes] == [1]
    assert by_id["0000:02:00.0"].health == "Unhealthy"
    assert not by_id["0000:02:00.0"].HasField("topology")
    flat = snapshot_message(devs, {}, exclude_topology=True)
    assert not any(d.HasField("topology") for d in flat.devices)


def test_socket_names_are_plain_file_names() -> None:
    assert socket_name("kernel.org/virt") == "netdp-kernel.org_virt.sock"
    assert "/" not in socket_name("a.b/c_d-e")


def test_long_resource_names_get_short_unique_sockets() -> None:
    a = socket_name("a" * 200 + ".example.com/" + "x" * 63)
    b = socket_name("a" * 200 + ".example.com/" + "x" * 62 + "y")
    assert a != b and len(a) <= 60 and len(b) <= 60


# --- lifecycle: a server changes only through its own methods, one change at a time ----


def serve(plugin_dir: Path, test: Callable[[PoolServer], Awaitable[None]]) -> None:
    """Run `test` against a started server of pool `example.com/a`; always stop it."""

    async def main() -> None:
        server = PoolServer(PoolSpec("example.com/a", ()), plugin_dir, None)
        await server.start()
        try:
            await test(server)
        finally:
            await server.stop()
        assert not server.socket_path.exists()

    asyncio.run(asyncio.wait_for(main(), 20))


async def answers(server: PoolServer) -> bool:
    async with grpc.aio.insecure_channel(f"unix://{server.socket_path}") as channel:
        stub = api_pb2_grpc.DevicePluginStub(channel)
        options = await stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=5)
    return options.get_preferred_allocation_available


def test_respecify_restarts_only_for_what_the_kubelet_saw(tmpfs_path: Path) -> None:
    async def test(server: PoolServer) -> None:
        spec = server.spec
        server.mark_registered("kubelet-1")
        inode = server.socket_path.stat().st_ino
        assert not await server.respecify(replace(spec, pf_link_health=False))
        assert server.spec == replace(spec, pf_link_health=False)
        assert server.registered_with == "kubelet-1"
        assert server.socket_path.stat().st_ino == inode
        # NUMA affinity is in every snapshot the kubelet got: a new socket, a new Register.
        assert await server.respecify(replace(spec, exclude_topology=True))
        assert server.spec.exclude_topology and server.registered_with is None
        assert server.socket_alive() and server.socket_path.stat().st_ino != inode
        assert await answers(server)
        with pytest.raises(ValueError):
            await server.respecify(PoolSpec("example.com/b", ()))

    serve(tmpfs_path, test)


def test_revive_serves_again_only_when_the_socket_was_removed(tmpfs_path: Path) -> None:
    async def test(server: PoolServer) -> None:
        assert not await server.revive()
        server.mark_registered("kubelet-1")
        server.socket_path.unlink()  # what the kubelet does when it starts
        assert await server.revive()
        assert server.socket_alive() and server.registered_with is None
        assert await answers(server)

    serve(tmpfs_path, test)


def test_concurrent_lifecycle_calls_take_turns(tmpfs_path: Path) -> None:
    """The daemon re-specifying a pool while the registrar revives its socket."""

    async def test(server: PoolServer) -> None:
        flipped = replace(server.spec, exclude_topology=True)
        server.socket_path.unlink()
        await asyncio.gather(server.respecify(flipped), server.revive(), server.restart())
        assert server.socket_alive()
        assert await answers(server)

    serve(tmpfs_path, test)


def test_a_stopped_server_is_not_revived(tmpfs_path: Path) -> None:
    async def main() -> None:
        server = PoolServer(PoolSpec("example.com/a", ()), tmpfs_path, None)
        await server.start()
        await server.stop()
        assert not await server.revive()
        assert not server.socket_path.exists()

    asyncio.run(asyncio.wait_for(main(), 20))


# --- Allocate answers from what was worked out at the last change ------------------------


class Aborted(Exception):
    pass


class Context:
    """The part of a gRPC servicer context that Allocate uses."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def allocate(server: PoolServer, *ids: str) -> dict[str, str]:
    request = api_pb2.AllocateRequest(
        container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=list(ids))]
    )
    response = asyncio.run(server.Allocate(request, Context()))  # type: ignore[arg-type]
    return dict(response.container_responses[0].envs)


def info(envs: dict[str, str]) -> dict[str, dict[str, dict[str, str]]]:
    return json.loads(envs["PCIDEVICE_EXAMPLE_COM_A_INFO"])


def nic(address: str, netdev: str) -> Device:
    return Device(address, "1af4", "1041", driver="virtio-pci", netdevs=(NetDev(netdev),))


def test_allocate_follows_every_device_change_even_one_the_kubelet_cannot_see(
    tmpfs_path: Path,
) -> None:
    server = PoolServer(PoolSpec("example.com/a", ()), tmpfs_path, None)
    a = "0000:01:00.0"
    assert asyncio.run(server.update([nic(a, "eth1")], {}))
    assert info(allocate(server, a))[a]["generic"]["netdev"] == "eth1"
    # A rename changes nothing in ListAndWatch, but the next Allocate names the new netdev.
    assert not asyncio.run(server.update([nic(a, "eth9")], {}))
    assert info(allocate(server, a))[a]["generic"]["netdev"] == "eth9"
    # additionalInfo is a pool setting: a respecified pool answers with the new one.
    extra = {"*": {"site": "lab"}}
    asyncio.run(server.respecify(replace(server.spec, additional_info=extra)))
    assert info(allocate(server, a))[a]["extra"] == {"site": "lab"}
    # A device that left the pool is refused, not answered from what was known before.
    assert asyncio.run(server.update([nic("0000:02:00.0", "eth2")], {}))
    with pytest.raises(Aborted) as refused:
        allocate(server, a)
    assert refused.value.args[0] == grpc.StatusCode.INVALID_ARGUMENT


def preferred(server: PoolServer, available: list[str], must: list[str], size: int) -> list[str]:
    request = api_pb2.PreferredAllocationRequest(
        container_requests=[
            api_pb2.ContainerPreferredAllocationRequest(
                available_deviceIDs=available, must_include_deviceIDs=must, allocation_size=size
            )
        ]
    )
    response = asyncio.run(server.GetPreferredAllocation(request, Context()))  # type: ignore[arg-type]
    return list(response.container_responses[0].deviceIDs)


def vf(pf: int, index: int, numa: int) -> Device:
    return Device(
        f"0000:{pf:02x}:10.{index}",
        "8086",
        "154c",
        driver="iavf",
        numa_node=numa,
        pf_address=f"0000:{pf:02x}:00.0",
    )


def test_preference_follows_the_pool_from_one_pf_to_two(tmpfs_path: Path) -> None:
    """A pool of one PF on one NUMA node answers from its own path; a device change that adds
    a PF on another node brings the NUMA and PF rules back."""
    server = PoolServer(PoolSpec("example.com/a", ()), tmpfs_path, None)
    pf1 = [vf(1, i, numa=0) for i in range(3)]
    asyncio.run(server.update(pf1, {}))
    ids1 = [d.pci_address for d in pf1]
    assert preferred(server, ids1, [], 2) == ids1[:2]
    pf2 = [vf(2, i, numa=1) for i in range(2)]
    ids2 = [d.pci_address for d in pf2]
    asyncio.run(server.update(pf1 + pf2, {}))
    # Best fit: node 1 can take the whole request and is the smaller node.
    assert preferred(server, ids1 + ids2, [], 2) == ids2
    # A device of node 1 must be included: its company comes from node 1 too.
    assert preferred(server, ids1 + ids2, [ids2[1]], 2) == [ids2[1], ids2[0]]
    # Back to one PF: the lowest free addresses again.
    asyncio.run(server.update(pf2, {}))
    assert preferred(server, ids1 + ids2, [], 1) == ids2[:1]


def test_a_nic_in_a_pod_at_the_last_scan_is_looked_at_again_when_allocated(
    tmpfs_path: Path,
) -> None:
    a, b = "0000:01:00.0", "0000:02:00.0"
    away = replace(nic(a, "unused"), netdevs=(), netdev_state=NetdevState.ELSEWHERE)
    now: dict[str, Device] = {}
    reads: list[str] = []

    def read_device(address: str) -> Device | None:
        reads.append(address)
        return now.get(address)

    server = PoolServer(PoolSpec("example.com/a", ()), tmpfs_path, None, read_device=read_device)
    asyncio.run(server.update([away, nic(b, "eth2")], {}))
    # Still in the pod (or gone): the entry stays without a netdev.
    now[a] = away
    assert info(allocate(server, a, b)) == {
        a: {"generic": {"deviceID": a}},
        b: {"generic": {"deviceID": b, "netdev": "eth2"}},
    }
    # Home again before the rescan: named; a device present at the last scan is not re-read.
    now[a] = nic(a, "eth1")
    reads.clear()
    assert info(allocate(server, a, b))[a] == {"generic": {"deviceID": a, "netdev": "eth1"}}
    assert reads == [a]
    # The pool's own state is the last scan's until the next one.
    assert server.devices[0].netdev_state is NetdevState.ELSEWHERE


def test_a_device_info_file_is_written_once_and_again_when_it_went_away(
    tmpfs_path: Path,
) -> None:
    devinfo_dir = tmpfs_path / "devinfo"
    server = PoolServer(PoolSpec("example.com/a", ()), tmpfs_path, devinfo_dir)
    a = "0000:01:00.0"
    asyncio.run(server.update([nic(a, "eth1")], {}))
    allocate(server, a)
    path = devinfo_dir / f"example.com-a-{a}-device.json"
    first = path.stat()
    allocate(server, a)
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    path.unlink()
    allocate(server, a)
    assert json.loads(path.read_text())["pci"] == {"pci-address": a}
    server.remove_devinfo_files()
    assert list(devinfo_dir.iterdir()) == []
