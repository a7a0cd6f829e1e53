"""Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

`Metrics` owns its own `CollectorRegistry` rather than prometheus_client's
global one, so several daemons (tests, the demo) can live in one process
without clashing over metric names. It is the daemon's `DaemonObserver`
(whose hooks `server` and `kubelet` call too), so none of them knows about
Prometheus. Every metric is declared once in `METRICS`, which
both builds the collectors and answers `metric_reference()`: the operator
docs are tested against the same table the code exposes.

The HTTP side is a small asyncio server on the daemon's own event loop, not
a WSGI server in a thread: an answer from `/healthz` then proves the loop is
turning (a wedged loop fails the liveness probe, as it should), the
readiness callable reads daemon state from the thread that owns it, and the
metrics are only ever written there. Only rendering a scrape (~15 ms with
1024 devices) goes to a worker thread, so it cannot delay a ListAndWatch
update; prometheus_client locks its own state for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

from deviceplugin import __version__, diff
from deviceplugin.model import Device, Health
from deviceplugin.observer import DaemonObserver

log = structlog.get_logger(__name__)

# No `_created` series: in the text format they would be one more gauge per counter and
# histogram child, which nothing here needs. The switch is process-wide, the only kind
# prometheus_client offers; netdp exposes no other registry it could surprise.
disable_created_metrics()

DEFAULT_ADDRESS = ":9477"
DISABLED = "0"

# Allocate and GetPreferredAllocation are in-memory work: ~0.1 ms typical, 50 ms is pathological.
RPC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
# A sysfs walk: milliseconds for a VM, up to seconds for hundreds of VFs on a slow sysfs.
DISCOVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

SUCCESS, FAILURE = "success", "failure"
DEVICE_INFO_LABELS = (
    "pool",
    "pci_address",
    "netdev",
    "vendor",
    "device",
    "driver",
    "numa_node",
    "pf",
)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exposed metric: `name` is what a scrape shows (counters with `_total`)."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("netdp_build_info", "gauge", ("version",), "Always 1; the running netdp version."),
    MetricSpec(
        "netdp_ready",
        "gauge",
        (),
        "1 when every configured pool is registered with the kubelet (as /readyz), else 0.",
    ),
    MetricSpec(
        "netdp_pool_devices",
        "gauge",
        ("pool", "health"),
        "Devices a pool advertises to the kubelet, by health (Healthy, Unhealthy).",
    ),
    MetricSpec(
        "netdp_device_info",
        "gauge",
        DEVICE_INFO_LABELS,
        "Always 1; one series per advertised device. pf: PCI address of a VF's PF; "
        "an empty label is not known or does not apply.",
    ),
    MetricSpec(
        "netdp_device_healthy",
        "gauge",
        ("pool", "pci_address"),
        "1 when the device is advertised Healthy, 0 when Unhealthy.",
    ),
    MetricSpec(
        "netdp_health_changes_total",
        "counter",
        ("pool", "health"),
        "Pool members whose health changed, by the health they changed to.",
    ),
    MetricSpec(
        "netdp_discovered_devices",
        "gauge",
        (),
        "PCI network functions the last sysfs scan found, in a pool or not.",
    ),
    MetricSpec(
        "netdp_allocated_devices_total",
        "counter",
        ("pool",),
        "Devices handed out by successful Allocate calls "
        "(calls: netdp_allocate_duration_seconds_count).",
    ),
    MetricSpec(
        "netdp_allocate_errors_total",
        "counter",
        ("pool",),
        "Allocate calls rejected (devices the pool does not have).",
    ),
    MetricSpec(
        "netdp_allocate_duration_seconds",
        "histogram",
        ("pool",),
        "Time to answer an Allocate call, successful or not.",
        RPC_BUCKETS,
    ),
    MetricSpec(
        "netdp_preferred_allocation_duration_seconds",
        "histogram",
        ("pool",),
        "Time to answer a GetPreferredAllocation call.",
        RPC_BUCKETS,
    ),
    MetricSpec(
        "netdp_registrations_total",
        "counter",
        ("pool", "result"),
        "Registration attempts with the kubelet, by result (success, failure).",
    ),
    MetricSpec(
        "netdp_kubelet_restarts_total",
        "counter",
        (),
        "Kubelet restarts seen (a new kubelet.sock after a previous one).",
    ),
    MetricSpec(
        "netdp_discovery_duration_seconds",
        "histogram",
        ("trigger",),
        "Time to scan sysfs and assign devices to pools, by what asked for the scan.",
        DISCOVERY_BUCKETS,
    ),
    MetricSpec(
        "netdp_events_received_total",
        "counter",
        ("source",),
        "Events that can change what is advertised (uevent, netlink, config-file, periodic).",
    ),
    MetricSpec(
        "netdp_events_coalesced_total",
        "counter",
        ("source",),
        "Received events served by another event's rescan instead of their own.",
    ),
    MetricSpec(
        "netdp_config_reloads_total",
        "counter",
        ("result",),
        "Config reloads, by result (success; failure keeps the running config).",
    ),
)


def metric_reference() -> tuple[MetricSpec, ...]:
    """Every metric netdp exposes (besides prometheus_client's `process_*`), for docs and tests."""
    return METRICS


def device_info_labels(pool: str, device: Device) -> tuple[str, ...]:
    """`netdp_device_info` label values, in `DEVICE_INFO_LABELS` order; unknown → ""."""
    return (
        pool,
        device.pci_address,
        device.netdev or "",
        device.vendor,
        device.device,
        device.driver or "",
        "" if device.numa_node is None else str(device.numa_node),
        device.pf_address or "",
    )


def readiness(registered: Mapping[str, bool]) -> tuple[bool, str]:
    """Readiness from each configured pool's registration state, with the laggards named."""
    missing = sorted(pool for pool, ok in registered.items() if not ok)
    if missing:
        return False, "not registered with the kubelet: " + ", ".join(missing)
    return True, "ok"


def _build(spec: MetricSpec, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
    if spec.kind == "counter":
        # prometheus_client appends `_total` itself and wants the base name.
        return Counter(spec.name.removesuffix("_total"), spec.help, spec.labels, registry=registry)
    if spec.kind == "gauge":
        return Gauge(spec.name, spec.help, spec.labels, registry=registry)
    return Histogram(spec.name, spec.help, spec.labels, registry=registry, buckets=spec.buckets)


class Metrics(DaemonObserver):
    """The daemon's metrics on a private registry, fed through the observer hooks."""

    def __init__(self, version: str = __version__) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        m = {spec.name: _build(spec, self.registry) for spec in METRICS}
        self._build_info: Gauge = m["netdp_build_info"]
        self._ready: Gauge = m["netdp_ready"]
        self._pool_devices: Gauge = m["netdp_pool_devices"]
        self._device_info: Gauge = m["netdp_device_info"]
        self._device_healthy: Gauge = m["netdp_device_healthy"]
        self._health_changes: Counter = m["netdp_health_changes_total"]
        self._discovered: Gauge = m["netdp_discovered_devices"]
        self._allocated: Counter = m["netdp_allocated_devices_total"]
        self._allocate_errors: Counter = m["netdp_allocate_errors_total"]
        self._allocate_seconds: Histogram = m["netdp_allocate_duration_seconds"]
        self._preferred_seconds: Histogram = m["netdp_preferred_allocation_duration_seconds"]
        self._registrations: Counter = m["netdp_registrations_total"]
        self._kubelet_restarts: Counter = m["netdp_kubelet_restarts_total"]
        self._discovery_seconds: Histogram = m["netdp_discovery_duration_seconds"]
        self._events_received: Counter = m["netdp_events_received_total"]
        self._events_coalesced: Counter = m["netdp_events_coalesced_total"]
        self._config_reloads: Counter = m["netdp_config_reloads_total"]

        # Per-pool series with the pool as their only label.
        self._per_pool = (
            self._allocated,
            self._allocate_errors,
            self._allocate_seconds,
            self._preferred_seconds,
        )
        self._build_info.labels(version).set(1)
        for result in (SUCCESS, FAILURE):
            self._config_reloads.labels(result)
        self._pools: set[str] = set()
        self._info_series: set[tuple[str, ...]] = set()
        self._health_series: set[tuple[str, str]] = set()

    # ---- gRPC servers and registrar (server.AllocateObserver, kubelet.RegistrationObserver) --
    def allocation(self, resource: str, seconds: float, devices: int, ok: bool) -> None:
        self._touch_pool(resource)
        self._allocate_seconds.labels(resource).observe(seconds)
        if ok:
            self._allocated.labels(resource).inc(devices)
        else:
            self._allocate_errors.labels(resource).inc()

    def preferred_allocation(self, resource: str, seconds: float) -> None:
        self._touch_pool(resource)
        self._preferred_seconds.labels(resource).observe(seconds)

    def registration(self, resource: str, accepted: bool) -> None:
        self._touch_pool(resource)
        self._registrations.labels(resource, SUCCESS if accepted else FAILURE).inc()

    def kubelet_restarted(self) -> None:
        self._kubelet_restarts.inc()

    # ---- daemon ------------------------------------------------------------------------------
    def discovery_done(self, trigger: str, seconds: float, devices: int) -> None:
        self._discovery_seconds.labels(trigger).observe(seconds)
        self._discovered.set(devices)

    def events_received(self, source: str, count: int) -> None:
        self._events_received.labels(source).inc(count)

    def events_coalesced(self, source: str, count: int) -> None:
        self._events_coalesced.labels(source).inc(count)

    def reload_done(self, ok: bool) -> None:
        self._config_reloads.labels(SUCCESS if ok else FAILURE).inc()

    def health_changed(self, resource: str, device: str, health: Health) -> None:
        self._health_changes.labels(resource, health.value).inc()

    def set_ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)

    def state_applied(self, state: diff.NodeState) -> None:
        """Mirror the pools' members and health; forget devices and pools that are gone.

        `state.pools` names every configured pool (empty ones too), so a pool
        missing from it has left the config and all its series go, as do the
        per-device series of devices that left, changed labels (a netdev
        renamed or moved into a pod) or changed pool: no stale label sets.
        """
        for gone in self._pools - state.pools.keys():
            self._forget_pool(gone)
        info: set[tuple[str, ...]] = set()
        healthy: dict[tuple[str, str], bool] = {}
        for name, pool in state.pools.items():
            self._touch_pool(name)
            verdicts = pool.health
            counts = dict.fromkeys(Health, 0)
            for dev in pool.devices:
                health = verdicts.get(dev.pci_address, Health.HEALTHY)
                counts[health] += 1
                info.add(device_info_labels(name, dev))
                healthy[(name, dev.pci_address)] = health is Health.HEALTHY
            for health, count in counts.items():
                self._pool_devices.labels(name, health.value).set(count)
        for labels in self._info_series - info:
            self._device_info.remove(*labels)
        for labels in info - self._info_series:
            self._device_info.labels(*labels).set(1)
        for key in self._health_series - healthy.keys():
            self._device_healthy.remove(*key)
        for key, ok in healthy.items():
            self._device_healthy.labels(*key).set(1 if ok else 0)
        self._info_series, self._health_series = info, set(healthy)

    def _touch_pool(self, pool: str) -> None:
        """Create a pool's zero series on first sight, so rates and alerts work from the start."""
        if pool in self._pools:
            return
        self._pools.add(pool)
        for metric in self._per_pool:
            metric.labels(pool)
        for result in (SUCCESS, FAILURE):
            self._registrations.labels(pool, result)
        for health in Health:
            self._health_changes.labels(pool, health.value)

    def _forget_pool(self, pool: str) -> None:
        self._pools.discard(pool)
        for health in Health:
            self._pool_devices.remove(pool, health.value)
            self._health_changes.remove(pool, health.value)
        for result in (SUCCESS, FAILURE):
            self._registrations.remove(pool, result)
        for metric in self._per_pool:
            metric.remove(pool)


# ---- address --------------------------------------------------------------------------------

_PORT = re.compile(r"[0-9]{1,5}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_DOTTED_NUMBERS = re.compile(r"[0-9.]+")
_FORMS = "expected host:port, :port or [ipv6]:port (0 disables)"


def parse_address(text: str) -> tuple[str, int] | None:
    """`--metrics-address` → (host, port); None for `0` (disabled). Host "" = every interface.

    Port 0 with a host (`127.0.0.1:0`) asks the kernel for a free port, which
    tests use; a bare `0` is the documented way to switch the server off.
    """
    if text == DISABLED:
        return None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"metrics address {text!r}: no closing ']'; {_FORMS}")
        colon, port_text = rest[:1], rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
    if colon != ":":
        raise ValueError(f"metrics address {text!r}: no ':port'; {_FORMS}")
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise ValueError(f"metrics address {text!r}: port {port_text!r} is not 0-65535; {_FORMS}")
    _check_host(text, host, bracketed=text.startswith("["))
    return host, int(port_text)


def _check_host(text: str, host: str, *, bracketed: bool) -> None:
    if bracketed:
        kind, valid = "an IPv6 address", _is_ip(ipaddress.IPv6Address, host)
    elif ":" in host:
        raise ValueError(f"metrics address {text!r}: an IPv6 host needs brackets, as [::1]:9477")
    elif _DOTTED_NUMBERS.fullmatch(host):
        kind, valid = "an IPv4 address", _is_ip(ipaddress.IPv4Address, host)
    else:
        kind, valid = "a host name", not host or _HOSTNAME.fullmatch(host) is not None
    if not valid:
        raise ValueError(f"metrics address {text!r}: {host!r} is not {kind}; {_FORMS}")


def _is_ip(kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address], text: str) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


# ---- HTTP --------------------------------------------------------------------------------------

MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT_S = 5.0
LINGER_S = 1.0
STOP_TIMEOUT_S = 2.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]

    @property
    def has_body(self) -> bool:
        return "content-length" in self.headers or "transfer-encoding" in self.headers


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = _TEXT
    extra_headers: tuple[tuple[str, str], ...] = ()


def parse_request(head: bytes) -> Request | None:
    """The request line and headers of an HTTP/1.x request head; None if malformed."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return None
        headers[name.lower()] = value.strip()
    return Request(parts[0], parts[1].partition("?")[0], headers)


def render_response(response: Response, *, head_only: bool = False) -> bytes:
    """A complete HTTP/1.1 response; we close after each one, and say so."""
    lines = [
        f"HTTP/1.1 {response.status} {_REASONS[response.status]}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in response.extra_headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


class MetricsServer:
    """Serves `/metrics`, `/healthz` and `/readyz` on the daemon's event loop.

    `healthy` says whether the daemon's own tasks are alive; that the server
    answers at all shows the loop is. `ready` returns (ready, detail), e.g.
    from `readiness`; every scrape also copies it into the `netdp_ready` gauge.
    """

    def __init__(
        self,
        metrics: Metrics,
        address: tuple[str, int],
        *,
        healthy: Callable[[], bool],
        ready: Callable[[], tuple[bool, str]],
    ) -> None:
        self.metrics = metrics
        self.host, self._port = address
        self._healthy = healthy
        self._ready = ready
        self._server: asyncio.Server | None = None
        # Connection handlers and their writers, so `stop` can end them and wait for them.
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def port(self) -> int:
        """The bound port (the kernel's choice when asked for port 0)."""
        if self._server is None:
            return self._port
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve,
            self.host or None,
            self._port,
            limit=MAX_REQUEST_HEAD,
            reuse_address=True,
        )
        log.info("metrics_server_started", host=self.host or "*", port=self.port)

    async def stop(self) -> None:
        """Stop listening and drop open connections (a scrape in flight is simply cut).

        Handlers end on their own once their socket closes; they are not
        cancelled, as asyncio 3.11 logs a cancelled handler as an error.
        """
        if self._server is None:
            return
        self._server.close()
        for writer in self._connections.values():
            writer.close()
        if self._connections:
            await asyncio.wait(self._connections.keys(), timeout=STOP_TIMEOUT_S)
        await self._server.wait_closed()
        self._server = None
        log.info("metrics_server_stopped")

    async def respond(self, request: Request) -> Response:
        """What to answer a well-formed request."""
        if request.path not in ("/metrics", "/healthz", "/readyz"):
            return Response(404, b"not found: try /metrics, /healthz or /readyz\n")
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", extra_headers=(("Allow", "GET, HEAD"),))
        if request.path == "/healthz":
            if self._healthy():
                return Response(200, b"ok\n")
            return Response(503, b"daemon tasks have stopped\n")
        if request.path == "/readyz":
            ok, detail = self._ready()
            return Response(200 if ok else 503, detail.encode() + b"\n")
        # Readiness is read here, on the loop that owns the daemon's state; rendering
        # (~15 ms for 1024 devices) goes to a thread, as prometheus_client locks its own.
        self.metrics.set_ready(self._ready()[0])
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = await asyncio.to_thread(encoder, self.metrics.registry)
        return Response(200, body, content_type)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # asyncio runs every connection handler as a task
        self._connections[task] = writer
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return  # the client went away or never finished its request
            except asyncio.LimitOverrunError:
                head = b""
            request = parse_request(head)
            if request is None:
                response = Response(400, b"bad request\n")
            else:
                try:
                    response = await self.respond(request)
                except Exception:
                    log.exception("metrics_request_failed", path=request.path)
                    response = Response(500, b"internal error, see the daemon's log\n")
            head_only = request is not None and request.method == "HEAD"
            writer.write(render_response(response, head_only=head_only))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
                if request is None or request.has_body:
                    await _discard_input(reader, writer)
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _discard_input(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read what the client still sends after our answer, for a while.

    Closing a socket with unread input makes the kernel send a reset, which
    can destroy our answer before the client reads it; so for requests we
    did not read to the end (too large, or with a body) we half-close and
    wait for the client to finish first.
    """
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LINGER_S):
            while await reader.read(65536):
                pass
