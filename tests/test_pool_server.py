"""The ListAndWatch message built from pool state (pure part of the server)."""

from __future__ import annotations

from deviceplugin.model import Device, Health
from deviceplugin.server import snapshot_message, socket_name


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
