"""Metrics move with what the daemon reports, and the HTTP endpoints answer as probes expect.

Every scrape is a real HTTP request to 127.0.0.1 on an ephemeral port,
parsed with prometheus_client's own text parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prom import promtool
from prometheus_client.parser import text_string_to_metric_families

from deviceplugin import http_endpoint
from deviceplugin.diff import NodeState, PoolState
from deviceplugin.health import Verdict
from deviceplugin.http_endpoint import MetricsServer, readiness
from deviceplugin.listen_address import DEFAULT_ADDRESS, parse_address
from deviceplugin.metrics import DEVICE_INFO_LABELS, Metrics, metric_reference
from deviceplugin.model import Device, Health, NetDev, NodeDevices
from deviceplugin.observer import DaemonObserver
from deviceplugin.pools import PoolSpec

VIRT, SRIOV = "kernel.org/virt", "intel.com/sriov_a"


def virtio(address: str, netdev: str | None = "ens4", numa: int | None = None) -> Device:
    return Device(
        address,
        "1af4",
        "1041",
        driver="virtio-pci",
        numa_node=numa,
        netdevs=(NetDev(netdev),) if netdev else (),
    )


def vf(address: str, index: int) -> Device:
    return Device(
        address,
        "8086",
        "154c",
        driver="iavf",
        numa_node=1,
        netdevs=(NetDev(f"ens1f0v{index}"),),
        pf_address="0000:3b:00.0",
        vf_index=index,
        pf_netdev="ens1f0",
    )


def state(
    pools: Mapping[str, tuple[Device, ...]], unhealthy: frozenset[str] = frozenset()
) -> NodeState:
    """The daemon's device tree: every device Healthy but those named."""

    def verdict(address: str) -> Verdict:
        if address in unhealthy:
            return Verdict(Health.UNHEALTHY, "carrier lost")
        return Verdict(Health.HEALTHY, "usable")

    return NodeState(
        node=NodeDevices({d.pci_address: d for devs in pools.values() for d in devs}),
        pools={
            name: PoolState(
                PoolSpec(name, ()), devs, {d.pci_address: verdict(d.pci_address) for d in devs}
            )
            for name, devs in pools.items()
        },
    )


@dataclass
class Probe:
    """The callables the daemon hands the server, switchable by a test."""

    healthy: bool = True
    registered: dict[str, bool] = field(default_factory=dict)
    explode: bool = False

    def is_healthy(self) -> bool:
        return self.healthy

    def is_ready(self) -> tuple[bool, str]:
        if self.explode:
            raise RuntimeError("readiness check broke")
        return readiness(self.registered)


def serve(
    test: Callable[[MetricsServer, Metrics, Probe], Awaitable[None]],
) -> None:
    """Run `test` against a started server on an ephemeral loopback port; always stop it."""

    async def main() -> None:
        metrics, probe = Metrics(version="1.2.3"), Probe()
        server = MetricsServer(
            metrics, ("127.0.0.1", 0), healthy=probe.is_healthy, ready=probe.is_ready
        )
        await server.start()
        try:
            await test(server, metrics, probe)
        finally:
            await server.stop()

    asyncio.run(main())


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


async def get(
    port: int, path: str, method: str = "GET", headers: Mapping[str, str] | None = None
) -> Reply:
    def call() -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request(method, path, headers=dict(headers or {}))
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    return await asyncio.to_thread(call)


async def raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return out


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> Samples:
    reply = await get(port, "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(reply.body.decode())
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def series(samples: Samples, name: str) -> set[frozenset[tuple[str, str]]]:
    return {labels for n, labels in samples if n == name}


def info_row(*values: str) -> frozenset[tuple[str, str]]:
    return frozenset(zip(DEVICE_INFO_LABELS, values, strict=True))


# ---- values ------------------------------------------------------------------------------


def test_values_move_with_calls() -> None:
    async def test(server: MetricsServer, metrics: Metrics, probe: Probe) -> None:
        lab = {VIRT: (virtio("0000:00:04.0"), virtio("0000:00:05.0", "ens5")), SRIOV: ()}
        metrics.state_applied(state(lab, unhealthy=frozenset({"0000:00:05.0"})))
        before = await scrape(server.port)
        assert value(before, "netdp_build_info", version="1.2.3") == 1
        assert value(before, "netdp_pool_devices", pool=VIRT, health="Healthy") == 1
        assert value(before, "netdp_pool_devices", pool=VIRT, health="Unhealthy") == 1
        assert value(before, "netdp_pool_devices", pool=SRIOV, health="Healthy") == 0
        # Pools get zero series before anything happens to them, so rate() works at once.
        assert value(before, "netdp_allocated_devices_total", pool=SRIOV) == 0
        assert value(before, "netdp_registrations_total", pool=SRIOV, result="failure") == 0
        assert value(before, "netdp_config_reloads_total", result="failure") == 0
        assert value(before, "netdp_config_last_reload_successful") == 1
        assert value(before, "netdp_nic_repairs_total") == 0

        metrics.allocation(VIRT, 0.0003, 2, True)
        metrics.allocation(VIRT, 0.0002, 1, True)
        metrics.allocation(VIRT, 0.02, 5, False)
        metrics.preferred_allocation(VIRT, 0.0004)
        metrics.registration(VIRT, True)
        metrics.registration(SRIOV, False)
        metrics.registration(SRIOV, True)
        metrics.kubelet_restarted()
        metrics.discovery_done("uevent", 0.03, 7)
        metrics.events_received("uevent", 64)
        metrics.events_coalesced("uevent", 63)
        metrics.events_received("netlink", 1)
        metrics.events_coalesced("netlink", 0)
        metrics.health_changed(VIRT, "0000:00:05.0", Health.HEALTHY)
        metrics.reload_done(True)
        metrics.reload_done(False)
        metrics.reload_done(False)
        metrics.cni_call("ADD", "ok", 0.03)
        metrics.cni_call("ADD", "104", 0.2)
        metrics.cni_call("DEL", "ok", 0.004)
        metrics.nic_repaired("0000:00:05.0", "ens5")
        metrics.state_applied(state(lab))
        after = await scrape(server.port)

        assert value(after, "netdp_allocated_devices_total", pool=VIRT) == 3
        assert value(after, "netdp_allocate_errors_total", pool=VIRT) == 1
        assert value(after, "netdp_allocate_duration_seconds_count", pool=VIRT) == 3
        assert value(after, "netdp_allocate_duration_seconds_bucket", pool=VIRT, le="0.00025") == 1
        assert value(after, "netdp_allocate_duration_seconds_bucket", pool=VIRT, le="0.0005") == 2
        assert value(after, "netdp_allocate_duration_seconds_sum", pool=VIRT) == pytest.approx(
            0.0205
        )
        assert value(after, "netdp_preferred_allocation_duration_seconds_count", pool=VIRT) == 1
        assert value(after, "netdp_registrations_total", pool=VIRT, result="success") == 1
        assert value(after, "netdp_registrations_total", pool=SRIOV, result="failure") == 1
        assert value(after, "netdp_registrations_total", pool=SRIOV, result="success") == 1
        assert value(after, "netdp_kubelet_restarts_total") == 1
        assert (
            value(after, "netdp_discovery_duration_seconds_bucket", trigger="uevent", le="0.05")
            == 1
        )
        assert (
            value(after, "netdp_discovery_duration_seconds_bucket", trigger="uevent", le="0.025")
            == 0
        )
        assert value(after, "netdp_discovered_devices") == 7
        assert value(after, "netdp_health_changes_total", pool=VIRT, health="Healthy") == 1
        assert value(after, "netdp_health_changes_total", pool=VIRT, health="Unhealthy") == 0
        assert value(after, "netdp_events_received_total", source="uevent") == 64
        assert value(after, "netdp_events_coalesced_total", source="uevent") == 63
        assert value(after, "netdp_events_received_total", source="netlink") == 1
        assert value(after, "netdp_events_coalesced_total", source="netlink") == 0
        assert value(after, "netdp_config_reloads_total", result="success") == 1
        assert value(after, "netdp_config_reloads_total", result="failure") == 2
        assert value(after, "netdp_config_last_reload_successful") == 0
        assert value(after, "netdp_cni_calls_total", command="ADD", result="ok") == 1
        assert value(after, "netdp_cni_calls_total", command="ADD", result="104") == 1
        assert value(after, "netdp_cni_calls_total", command="DEL", result="ok") == 1
        assert value(after, "netdp_cni_call_duration_seconds_count", command="ADD") == 2
        assert value(after, "netdp_cni_call_duration_seconds_bucket", command="ADD", le="0.05") == 1
        assert (
            value(after, "netdp_cni_call_duration_seconds_bucket", command="DEL", le="0.005") == 1
        )
        assert value(after, "netdp_nic_repairs_total") == 1
        # Health recovered: the gauges follow.
        assert value(after, "netdp_pool_devices", pool=VIRT, health="Healthy") == 2
        assert value(after, "netdp_pool_devices", pool=VIRT, health="Unhealthy") == 0
        assert value(after, "netdp_device_healthy", pool=VIRT, pci_address="0000:00:05.0") == 1

    serve(test)


def test_device_series_follow_devices_and_pools_without_stale_label_sets() -> None:
    async def test(server: MetricsServer, metrics: Metrics, probe: Probe) -> None:
        metrics.state_applied(
            state(
                {
                    VIRT: (virtio("0000:00:04.0", numa=0), virtio("0000:00:05.0", "ens5")),
                    SRIOV: (vf("0000:3b:02.0", 0), vf("0000:3b:02.1", 1)),
                },
                unhealthy=frozenset({"0000:3b:02.1"}),
            )
        )
        first = await scrape(server.port)
        assert series(first, "netdp_device_info") == {
            info_row(
                SRIOV, "0000:3b:02.0", "ens1f0v0", "8086", "154c", "iavf", "1", "0000:3b:00.0"
            ),
            info_row(
                SRIOV, "0000:3b:02.1", "ens1f0v1", "8086", "154c", "iavf", "1", "0000:3b:00.0"
            ),
            info_row(VIRT, "0000:00:04.0", "ens4", "1af4", "1041", "virtio-pci", "0", ""),
            info_row(VIRT, "0000:00:05.0", "ens5", "1af4", "1041", "virtio-pci", "", ""),
        }
        assert all(v == 1 for (n, _), v in first.items() if n == "netdp_device_info")
        assert value(first, "netdp_device_healthy", pool=SRIOV, pci_address="0000:3b:02.1") == 0

        # 00:05.0 unplugged, 00:04.0's netdev moved into a pod, the SR-IOV pool dropped
        # from the config after it saw some traffic.
        metrics.allocation(SRIOV, 0.001, 1, True)
        metrics.state_applied(state({VIRT: (virtio("0000:00:04.0", None, numa=0),)}))
        second = await scrape(server.port)
        assert series(second, "netdp_device_info") == {
            info_row(VIRT, "0000:00:04.0", "", "1af4", "1041", "virtio-pci", "0", "")
        }
        assert series(second, "netdp_device_healthy") == {
            frozenset({("pool", VIRT), ("pci_address", "0000:00:04.0")})
        }
        leftovers = [
            (name, dict(labels))
            for name, labels in second
            if name.startswith("netdp_") and dict(labels).get("pool") == SRIOV
        ]
        assert leftovers == []
        assert value(second, "netdp_pool_devices", pool=VIRT, health="Healthy") == 1

    serve(test)


def test_two_instances_in_one_process_do_not_clash() -> None:
    a, b = Metrics(), Metrics()
    a.kubelet_restarted()
    assert a.registry.get_sample_value("netdp_kubelet_restarts_total") == 1
    assert b.registry.get_sample_value("netdp_kubelet_restarts_total") == 0


# ---- endpoints ---------------------------------------------------------------------------


def test_healthz_follows_the_health_callable() -> None:
    async def test(server: MetricsServer, metrics: Metrics, probe: Probe) -> None:
        ok = await get(server.port, "/healthz")
        assert (ok.status, ok.body) == (200, b"ok\n")
        probe.healthy = False
        assert (await get(server.port, "/healthz")).status == 503

    serve(test)


def test_readyz_names_the_pools_not_registered_and_feeds_the_gauge() -> None:
    async def test(server: MetricsServer, metrics: Metrics, probe: Probe) -> None:
        probe.registered = {VIRT: True, SRIOV: False, "b.org/x": False}
        not_ready = await get(server.port, "/readyz")
        assert not_ready.status == 503
        assert not_ready.body == b"not registered with the kubelet: b.org/x, intel.com/sriov_a\n"
        assert value(await scrape(server.port), "netdp_ready") == 0
        probe.registered = {VIRT: True, SRIOV: True, "b.org/x": True}
        assert (await get(server.port, "/readyz")).status == 200
        assert value(await scrape(server.port), "netdp_ready") == 1

    serve(test)


def test_http_edges() -> None:
    async def test(server: MetricsServer, metrics: Metrics, probe: Probe) -> None:
        port = server.port
        head = await get(port, "/metrics", method="HEAD")
        assert head.status == 200 and head.body == b""
        assert int(head.headers["content-length"]) > 0
        assert head.headers["connection"] == "close"
        assert (await get(port, "/metrics?name[]=netdp_ready")).status == 200
        assert (await get(port, "/nope")).status == 404
        post = await get(port, "/metrics", method="POST")
        assert post.status == 405 and post.headers["allow"] == "GET, HEAD"
        om = await get(port, "/metrics", headers={"Accept": "application/openmetrics-text"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert (await raw(port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        # Too large a head: the answer must survive the unread rest (no reset on close).
        huge = b"GET /metrics HTTP/1.1\r\n" + b"X-Padding: yyyyyyyyyyyyyyyyyyyy\r\n" * 10000
        assert (await raw(port, huge)).startswith(b"HTTP/1.1 400 ")
        # A broken callable answers 500 and the server carries on.
        probe.explode = True
        assert (await get(port, "/readyz")).status == 500
        probe.explode = False
        assert (await get(port, "/readyz")).status == 200

    serve(test)


def test_bodies_and_slow_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_endpoint, "REQUEST_TIMEOUT_S", 0.3)

    async def test(server: MetricsServer, metrics: Metrics, probe: Probe) -> None:
        port = server.port
        # A body we never read: the answer must survive it (no reset on close).
        body = b"x" * 200_000
        post = b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
        assert (await raw(port, post + body)).startswith(b"HTTP/1.1 405 ")
        # HTTP/1.1 requires Host; HTTP/1.0 does not.
        assert (await raw(port, b"GET /healthz HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert (await raw(port, b"GET /healthz HTTP/1.0\r\n\r\n")).endswith(b"\r\n\r\nok\n")
        # A client that never finishes its request is dropped without an answer.
        started = asyncio.get_running_loop().time()
        assert await raw(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n") == b""
        assert asyncio.get_running_loop().time() - started < 3

    serve(test)


def test_stop_closes_the_port_and_idle_connections() -> None:
    async def main() -> None:
        server = MetricsServer(
            Metrics(), ("127.0.0.1", 0), healthy=lambda: True, ready=lambda: (True, "ok")
        )
        await server.start()
        port = server.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /hea")  # never finishes its request
        await writer.drain()
        await asyncio.sleep(0.05)
        await asyncio.wait_for(server.stop(), 2)
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    asyncio.run(main())


# ---- address -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", None),
        (DEFAULT_ADDRESS, ("", 9477)),
        (":9477", ("", 9477)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("0.0.0.0:9477", ("0.0.0.0", 9477)),
        ("[::1]:9477", ("::1", 9477)),
        ("[::]:80", ("::", 80)),
        ("localhost:65535", ("localhost", 65535)),
        ("metrics.node-1.example:9477", ("metrics.node-1.example", 9477)),
    ],
)
def test_parse_address_accepts(text: str, expected: tuple[str, int] | None) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no ':port'"),
        ("9477", "no ':port'"),
        ("[::1]", "no ':port'"),
        ("[::1]9477", "no ':port'"),
        ("[::1:9477", "no closing"),
        (":65536", "not 0-65535"),
        (":http", "not 0-65535"),
        ("host:", "not 0-65535"),
        ("::1:9477", "needs brackets"),
        ("[nope]:1", "not an IPv6 address"),
        ("300.1.1.1:1", "not an IPv4 address"),
        ("bad_host:1", "not a host name"),
    ],
)
def test_parse_address_refuses_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_address(text)


@given(
    st.one_of(
        st.text(max_size=40),
        # Mostly the characters addresses are made of, so the parser's branches get exercised.
        st.text(alphabet=st.sampled_from("[]:.%0123456789abcdefx-_ \n\u0661"), max_size=30),
    )
)
def test_parse_address_only_ever_raises_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_address(text)


@given(
    st.one_of(
        st.just(""),
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9](\.[a-z][a-z0-9]{0,10}){0,3}", fullmatch=True),
    ),
    st.integers(0, 65535),
)
def test_parse_address_round_trips(host: str, port: int) -> None:
    assert parse_address(f"{host}:{port}") == (host.strip("[]"), port)


# ---- naming ------------------------------------------------------------------------------


def test_reference_follows_prometheus_conventions() -> None:
    names = [m.name for m in metric_reference()]
    assert len(names) == len(set(names))
    for m in metric_reference():
        assert re.fullmatch(r"netdp_[a-z][a-z0-9_]*[a-z0-9]", m.name), m.name
        assert m.help.endswith(".") and not m.help[0].islower(), m.name
        assert all(re.fullmatch(r"[a-z][a-z0-9_]*", label) for label in m.labels), m.name
        assert not {"le", "quantile"} & set(m.labels), m.name
        assert (m.kind == "counter") == m.name.endswith("_total"), m.name
        if m.kind == "histogram":
            assert m.name.endswith("_seconds") and m.buckets == tuple(sorted(m.buckets)), m.name
        if m.name.endswith("_info"):
            assert m.kind == "gauge", m.name
    rpc = next(m for m in metric_reference() if m.name == "netdp_allocate_duration_seconds")
    assert rpc.buckets[0] <= 0.0001 and rpc.buckets[-1] >= 0.05


def test_exposition_matches_the_reference() -> None:
    """What a scrape shows is exactly the documented table: names, types, labels, help."""

    async def test(server: MetricsServer, metrics: Metrics, probe: Probe) -> None:
        metrics.state_applied(state({VIRT: (virtio("0000:00:04.0"),)}))
        metrics.events_received("uevent", 1)
        metrics.events_coalesced("uevent", 0)
        metrics.discovery_done("start", 0.01, 1)
        metrics.registration(VIRT, True)
        metrics.cni_call("ADD", "ok", 0.03)
        reply = await get(server.port, "/metrics")
        exposed = {}
        for family in text_string_to_metric_families(reply.body.decode()):
            if not family.name.startswith("netdp_"):
                assert family.name.startswith("process_"), family.name
                continue
            name = family.name + ("_total" if family.type == "counter" else "")
            labels = {k for s in family.samples for k in s.labels if k not in ("le", "quantile")}
            exposed[name] = (family.type, labels, family.documentation)
        assert exposed == {m.name: (m.kind, set(m.labels), m.help) for m in metric_reference()}

    serve(test)


def test_metrics_count_every_daemon_hook() -> None:
    """A hook the daemon gains must not be silently inherited as a no-op."""
    hooks = [n for n, v in vars(DaemonObserver).items() if callable(v) and not n.startswith("_")]
    assert hooks
    assert [n for n in hooks if getattr(Metrics, n) is getattr(DaemonObserver, n)] == []


def test_promtool_finds_nothing_to_complain_about() -> None:
    """`promtool check metrics` (names, units, help, histogram and counter conventions) on a
    scrape where every metric has series."""

    async def test(server: MetricsServer, metrics: Metrics, probe: Probe) -> None:
        metrics.state_applied(state({VIRT: (virtio("0000:00:04.0"),)}))
        metrics.allocation(VIRT, 0.0003, 1, True)
        metrics.preferred_allocation(VIRT, 0.0001)
        metrics.registration(VIRT, True)
        metrics.kubelet_restarted()
        metrics.discovery_done("start", 0.01, 1)
        metrics.events_received("uevent", 1)
        metrics.events_coalesced("uevent", 0)
        metrics.health_changed(VIRT, "0000:00:04.0", Health.UNHEALTHY)
        metrics.reload_done(False)
        metrics.cni_call("ADD", "ok", 0.03)
        metrics.nic_repaired("0000:00:04.0", "ens4")
        body = (await get(server.port, "/metrics")).body.decode()
        names = {f.name for f in text_string_to_metric_families(body)}
        assert {m.name.removesuffix("_total") for m in metric_reference()} <= names
        result = promtool("check", "metrics", stdin=body)
        assert (result.returncode, result.stdout + result.stderr) == (0, "")

    serve(test)
