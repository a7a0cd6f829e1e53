"""The daemon's Prometheus metrics: what is counted, and the table of what is exposed.

`Metrics` owns its own `CollectorRegistry` rather than prometheus_client's
global one, so several daemons (tests, the demo) can live in one process
without clashing over metric names. It implements the `DaemonObserver`
protocol (`observer.py`; the daemon, `server` and `kubelet` call its hooks),
so none of them knows about Prometheus and this module knows nothing of
them. Every metric is declared once in `METRICS`, which both builds the
collectors and answers `metric_reference()`: the operator docs are tested
against the same table the code exposes. `http_endpoint` serves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

from deviceplugin import __version__, diff
from deviceplugin.model import Device, Health
from deviceplugin.observer import DaemonObserver

# No `_created` series: in the text format they would be one more gauge per counter and
# histogram child, which nothing here needs. The switch is process-wide, the only kind
# prometheus_client offers; netdp exposes no other registry it could surprise.
disable_created_metrics()

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
    MetricSpec(
        "netdp_nic_repairs_total",
        "counter",
        (),
        "NICs stranded by a lost CNI call that the daemon put back under their host names.",
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
        self._nic_repairs: Counter = m["netdp_nic_repairs_total"]

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

    # ---- CNI server and node repair ----------------------------------------------------------
    def nic_repaired(self, device: str, name: str) -> None:
        """One counter, no labels: it exists at 0 from the start, so `increase()` sees the
        first repair; which NIC it was is in the log."""
        self._nic_repairs.inc()

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
