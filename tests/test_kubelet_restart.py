"""A kubelet restart, as a real kubelet does it, costs netdp exactly one registration.

A real kubelet (v1.20, tests/e2e/realnode.py) exits leaving a stale
`kubelet.sock`; the next one deletes the plugins' sockets and that stale
socket one by one, then listens on a new `kubelet.sock`. The daemon sees
its socket vanish while the stale `kubelet.sock` is still there, restarts its
server and registers. Before the fix it remembered the stale socket as the
kubelet it registered with although the call reached the new one, and so
registered a second time when the new socket's event arrived; or, when the
stale socket refused the call, it waited out its 0.5 s backoff although a
new kubelet was there. `gap` spreads the kubelet's steps as a busy kubelet
would, which makes both outcomes likely instead of rare.
"""

from __future__ import annotations

import asyncio
import socket
import time

import grpc
import pytest
from helpers import start_daemon

from deviceplugin.kubelet import kubelet_identity
from deviceplugin.pools import PoolSpec
from deviceplugin.server import PoolServer, socket_name
from deviceplugin.sim.fakesysfs import virtio_lab

VIRT = "kernel.org/virt"
QUIET_S = 0.5  # a second registration follows the first within milliseconds
FAST_S = 0.3  # well under the 0.5 s backoff a refused attempt would cost


@pytest.mark.parametrize("gap", [0.0, 0.002, 0.01, 0.05])
def test_kubelet_restart_registers_once_and_at_once(node, kubelet, daemons, gap: float) -> None:
    virtio_lab(node.sysfs, 2, primary_netdev="ndpuplink")
    start_daemon(daemons, node)
    conn = kubelet.wait_registered(VIRT, timeout=10)
    conn.wait_snapshot(lambda s: len(s.devices) == 3)
    for _ in range(3):
        seen = len(kubelet.registrations)
        old = kubelet_identity(node.plugins)
        kubelet.restart(gap=gap)
        ready = time.monotonic()
        assert kubelet_identity(node.plugins) not in (None, old)
        again = kubelet.wait_registered(VIRT, timeout=5, newer_than=conn)
        latency = again.registered_at - ready
        time.sleep(QUIET_S)
        attempts = kubelet.registrations[seen:]
        assert [a.accepted for a in attempts] == [True], attempts
        assert latency < FAST_S, f"registered {latency:.3f} s after the new kubelet.sock"
        assert again.wait_snapshot(lambda s: len(s.devices) == 3)
        conn = again


def test_identity_tells_a_new_socket_from_a_reused_inode(tmp_path) -> None:
    """File systems reuse a freed inode number at once (ext4 does); a new kubelet.sock
    that got the old one's number is still a new kubelet."""

    def bind() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(tmp_path / "kubelet.sock"))
        return s

    first = bind()
    before = kubelet_identity(tmp_path)
    first.close()
    (tmp_path / "kubelet.sock").unlink()
    time.sleep(0.01)
    second = bind()
    try:
        after = kubelet_identity(tmp_path)
        assert before is not None and after is not None
        assert after != before
    finally:
        second.close()


def test_pool_server_survives_its_socket_vanishing_as_it_starts(tmp_path, monkeypatch) -> None:
    """A starting kubelet deletes what it listed, which may include a plugin socket made a
    moment ago. The server must come up not alive (so the registrar starts it again),
    not crash the registrar (as it did against the stand-in's faithful restart)."""
    real_server = grpc.aio.server
    vanish = [True]

    def server_whose_socket_vanishes(*args, **kwargs):
        made = real_server(*args, **kwargs)
        start = made.start

        async def start_then_lose_the_socket() -> None:
            await start()
            if vanish.pop() if vanish else False:
                (tmp_path / socket_name(VIRT)).unlink()

        made.start = start_then_lose_the_socket
        return made

    monkeypatch.setattr(grpc.aio, "server", server_whose_socket_vanishes)

    async def start_twice() -> tuple[bool, bool]:
        server = PoolServer(PoolSpec(resource_name=VIRT, selectors=()), tmp_path, None)
        await server.start()
        first = server.socket_alive()
        await server.restart()  # what the registrar does on seeing it not alive
        try:
            return first, server.socket_alive()
        finally:
            await server.stop(grace=0)

    assert asyncio.run(start_twice()) == (False, True)
