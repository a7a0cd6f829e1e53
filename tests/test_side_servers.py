"""`netdp run` registers before it loads its side servers, and loses nothing by it.

The metrics endpoint and the CNI server listen before the daemon starts (a
port in use or an unusable socket directory stops it before the kubelet
hears of it) and are loaded after its pools are offered to the kubelet; a
call that comes in between waits for its answer, and what the daemon
reports meanwhile is held and replayed into the metrics.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
from pathlib import Path
from urllib.request import urlopen

from helpers import NETDP, DaemonProcess, Node, start_daemon
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from deviceplugin.kubelet import Registrar
from deviceplugin.listener import Listener
from deviceplugin.metrics import Metrics
from deviceplugin.observer import DaemonObserver, DeferredObserver
from deviceplugin.sim.fakesysfs import virtio_lab
from deviceplugin.sim.kubelet import KubeletStandIn

VIRT = "kernel.org/virt"
HOOKS = sorted(name for name in vars(DaemonObserver) if not name.startswith("_"))


class Recorder(DaemonObserver):
    """Records every hook it hears, with its arguments, in order."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, tuple[object, ...]]] = []


for _hook in HOOKS:
    setattr(
        Recorder,
        _hook,
        lambda self, *args, _hook=_hook: self.heard.append((_hook, args)),
    )


def test_deferred_observer_replays_every_hook_in_order_then_forwards() -> None:
    deferred = DeferredObserver()
    before = [(hook, (f"arg-{i}", i)) for i, hook in enumerate(HOOKS)]
    before += [("registration", ("again", False))]  # a hook heard twice is replayed twice
    for hook, args in before:
        getattr(deferred, hook)(*args)
    real = Recorder()
    deferred.attach(real)
    assert real.heard == before
    deferred.allocation("late", 0.001, 1, True)
    assert real.heard[-1] == ("allocation", ("late", 0.001, 1, True))
    assert len(real.heard) == len(before) + 1  # nothing replayed twice


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_attached_late_count_what_the_daemon_reported_before() -> None:
    deferred = DeferredObserver()
    deferred.registration(VIRT, True)
    deferred.kubelet_restarted()
    deferred.events_received("config-file", 2)
    metrics = Metrics()
    deferred.attach(metrics)
    deferred.registration(VIRT, True)
    seen = samples(metrics)
    assert seen[("netdp_registrations_total", (("pool", VIRT), ("result", "success")))] == 2
    assert seen[("netdp_kubelet_restarts_total", ())] == 1
    assert seen[("netdp_events_received_total", (("source", "config-file"),))] == 2


def test_registrar_attempted_waits_for_a_pass_begun_after_the_call(tmp_path: Path) -> None:
    """`attempted` returns after a whole reconcile pass that began after it was called,
    not after one that was already running (which may predate the pools)."""

    async def main() -> list[str]:
        order: list[str] = []
        registrar = Registrar(tmp_path, list)
        real = registrar.reconcile

        async def reconcile() -> float:
            order.append("pass begins")
            await asyncio.sleep(0.05)
            order.append("pass ends")
            return await real()

        registrar.reconcile = reconcile  # type: ignore[method-assign]
        task = asyncio.create_task(registrar.run())
        await asyncio.sleep(0.01)  # the first pass is under way
        await registrar.attempted()
        order.append("attempted")
        task.cancel()
        return order

    order = asyncio.run(asyncio.wait_for(main(), 10))
    assert order[:5] == ["pass begins", "pass ends", "pass begins", "pass ends", "attempted"]


def test_a_connection_before_serve_waits_for_its_answer(tmp_path: Path) -> None:
    """Accepted from the start, answered once served: an early caller is never refused."""

    async def main() -> tuple[bytes, bytes]:
        tcp = await Listener.tcp("127.0.0.1", 0)
        unix = await Listener.unix(tmp_path / "s.sock")
        early = [
            await asyncio.open_connection("127.0.0.1", tcp.port),
            await asyncio.open_unix_connection(str(tmp_path / "s.sock")),
        ]

        async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello " + await reader.readline())
            await writer.drain()
            writer.close()

        for _, writer in early:
            writer.write(b"early\n")
        await asyncio.sleep(0.05)  # the requests sit there: nobody answers yet
        tcp.serve(hello)
        unix.serve(hello)
        answers = [await asyncio.wait_for(r.read(), 5) for r, _ in early]
        for listener in (tcp, unix):
            await listener.close()
        return answers[0], answers[1]

    assert asyncio.run(main()) == (b"hello early\n", b"hello early\n")


def test_closing_a_listener_never_served_ends_its_waiting_connections() -> None:
    async def main() -> bytes:
        listener = await Listener.tcp("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        await asyncio.sleep(0.05)
        await listener.close()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return answer

    assert asyncio.run(main()) == b""


def test_metrics_start_after_registering_and_before_the_first_scan_and_miss_nothing(
    node: Node, kubelet: KubeletStandIn, daemons: list[DaemonProcess]
) -> None:
    """With the kubelet there from the start, the first Register is answered before
    the metrics exist; the scrape counts it all the same."""
    virtio_lab(node.sysfs, 2, primary_netdev="ndpuplink")
    d = start_daemon(daemons, node)
    conn = kubelet.wait_registered(VIRT, timeout=10)
    conn.wait_snapshot(lambda s: len(s.devices) == 3)
    d.wait_event("discovery_done")
    order = [e["event"] for e in d.events]
    assert (
        order.index("registered")
        < order.index("metrics_server_started")
        < order.index("discovery_done")
    ), order
    port = d.wait_event("metrics_server_started")["port"]
    text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    seen = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert seen[("netdp_registrations_total", (("pool", VIRT), ("result", "success")))] == 1
    assert seen[("netdp_discovery_duration_seconds_count", (("trigger", "start"),))] == 1
    assert seen[("netdp_pool_devices", (("health", "Healthy"), ("pool", VIRT)))] == 3


def refused(node: Node, *flags: str) -> subprocess.CompletedProcess[str]:
    """`netdp run` with `flags` for its side servers, next to a live kubelet stand-in."""
    return subprocess.run(
        [*NETDP, "run", *node.args(), "--log-format", "json", *flags],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_metrics_port_in_use_stops_run_before_it_registers(
    node: Node, kubelet: KubeletStandIn
) -> None:
    virtio_lab(node.sysfs, 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = refused(node, "--metrics-address", f"127.0.0.1:{port}", "--cni-socket", "")
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"netdp: cannot serve: [Errno 98] error while attempting to bind on address "
        f"('127.0.0.1', {port}): address already in use"
    )
    assert kubelet.registrations == []
    assert sorted(p.name for p in node.plugins.iterdir()) == ["kubelet.sock"]  # no pool socket


def test_shared_cni_socket_directory_stops_run_before_it_registers(
    node: Node, kubelet: KubeletStandIn, tmp_path: Path
) -> None:
    virtio_lab(node.sysfs, 1)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    sock = shared / "cni.sock"
    result = refused(node, "--metrics-address", "127.0.0.1:0", "--cni-socket", str(sock))
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"netdp: cannot serve: CNI socket directory {shared} is shared (has the sticky bit, "
        "mode 1777) and netdp makes its socket's directory root-only: give the socket a "
        "directory of its own"
    )
    assert kubelet.registrations == []
    assert not sock.exists()


def test_side_servers_stop_cleanly_when_the_daemon_fails_before_serving(
    node: Node, tmp_path: Path
) -> None:
    """Opened but never served (here: the pools' directory cannot be made): the CNI
    socket file goes, and the exit says why."""
    virtio_lab(node.sysfs, 1)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    sock = tmp_path / "cni" / "cni.sock"
    result = subprocess.run(
        [*NETDP, "run", "--sysfs-root", str(node.sysfs), "--device-plugin-path",
         str(blocker / "dp"), "--devinfo-dir", "", "--log-format", "json",
         "--metrics-address", "127.0.0.1:0", "--cni-socket", str(sock)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1].startswith("netdp: cannot serve: [Errno 20]")
    assert not sock.exists()


def test_a_kubelet_that_never_answers_register_holds_back_neither_probes_nor_scan(
    node: Node, daemons: list[DaemonProcess]
) -> None:
    """Register taken but unanswered: after `OFFER_WAIT_S` the side servers and the first
    scan go ahead (liveness must not fail on a hung kubelet); registering goes on."""
    virtio_lab(node.sysfs, 2, primary_netdev="ndpuplink")
    answer = threading.Event()

    def hang(request: object) -> str | None:
        """Hold every call until released, then refuse those held (the daemon has given
        them up): only a call made after the release registers, and dials the pool."""
        if answer.is_set():
            return None
        answer.wait(60)
        return "held until the test released it"

    with KubeletStandIn(node.plugins, reject=hang) as kubelet:
        try:
            d = start_daemon(daemons, node)
            port = d.wait_event("metrics_server_started", timeout=30)["port"]
            assert urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
            d.wait_event("registration_failed", timeout=30)  # DEADLINE_EXCEEDED, after 5 s
        finally:
            answer.set()
        order = [e["event"] for e in d.events]
        assert (
            order.index("kubelet_slow_to_answer")
            < order.index("metrics_server_started")
            < order.index("discovery_done")
            < order.index("registration_failed")
        ), order
        assert "registered" not in order
        conn = kubelet.wait_registered(VIRT, timeout=30)
        conn.wait_snapshot(lambda s: len(s.devices) == 3)
