"""Wiring of the running daemon: snapshot → pools → servers → kubelet.

All changes go through `refresh`: scan sysfs, read default routes, assign
devices to pools (pure), and push each pool's devices to its server, which
tells the kubelet only if its view changed. Start-up is the first refresh;
later event sources only have to call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from deviceplugin import health, pools, sysfs
from deviceplugin.api.constants import DEVICE_PLUGIN_DIR
from deviceplugin.config import Config
from deviceplugin.devinfo import DEFAULT_DEVINFO_DIR
from deviceplugin.kubelet import Registrar
from deviceplugin.model import NodeDevices
from deviceplugin.routes import default_route_interfaces
from deviceplugin.server import PoolServer

log = structlog.get_logger(__name__)

SHUTDOWN_GRACE_S = 0.5


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the daemon reads and writes; every field has a `netdp run` flag and env var."""

    device_plugin_path: Path = DEVICE_PLUGIN_DIR
    sysfs_root: Path = Path("/sys")
    devinfo_dir: Path | None = DEFAULT_DEVINFO_DIR


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent view of the node, kept for `list`-style introspection and logs."""

    node: NodeDevices
    default_route_ifaces: frozenset[str]
    assignment: pools.Assignment


def take_snapshot(
    config: Config,
    sysfs_root: Path,
    routes: Callable[[], frozenset[str]] = default_route_interfaces,
    known_netdevs: Mapping[str, str] | None = None,
) -> Snapshot:
    """Scan the node and assign its devices to the configured pools.

    `known_netdevs` (PCI address → last netdev name seen) keeps a NIC whose
    netdev moved into a pod in a pool that selects it by that name.
    """
    node = sysfs.scan(sysfs_root)
    ifaces = routes()
    return Snapshot(
        node, ifaces, pools.assign(node, config.pools, ifaces, known_netdevs=known_netdevs)
    )


class Daemon:
    """Owns the pool servers and the registrar for one configuration."""

    def __init__(
        self,
        config: Config,
        settings: Settings,
        *,
        routes: Callable[[], frozenset[str]] = default_route_interfaces,
    ) -> None:
        self.config = config
        self.settings = settings
        self._routes = routes
        self.servers: dict[str, PoolServer] = {}
        self.snapshot: Snapshot | None = None
        self.registrar = Registrar(settings.device_plugin_path, lambda: self.servers.values())
        self._refresh_lock = asyncio.Lock()
        self._known_netdevs: dict[str, str] = {}

    async def refresh(self) -> None:
        """Rescan and push what changed; the one path every kind of change takes."""
        async with self._refresh_lock:
            started = time.perf_counter()
            snap = await asyncio.to_thread(
                take_snapshot,
                self.config,
                self.settings.sysfs_root,
                self._routes,
                dict(self._known_netdevs),
            )
            self._known_netdevs = {
                a: d.netdev or self._known_netdevs[a]
                for a, d in snap.node.devices.items()
                if d.netdev or a in self._known_netdevs
            }
            for message in snap.node.warnings:
                log.warning("scan_problem", detail=message)
            changed = []
            specs = {p.resource_name: p for p in self.config.pools}
            for resource, devices in snap.assignment.pools.items():
                server = self.servers.get(resource)
                if server is None:
                    server = PoolServer(
                        specs[resource], self.settings.device_plugin_path, self.settings.devinfo_dir
                    )
                    await server.start()
                    self.servers[resource] = server
                    self.registrar.poke()
                states = {d.pci_address: health.device_health(d) for d in devices}
                if await server.update(devices, states):
                    changed.append(resource)
            self._log_changes(self.snapshot, snap)
            self.snapshot = snap
            log.info(
                "discovery_done",
                devices=len(snap.node.devices),
                pools={r: len(d) for r, d in snap.assignment.pools.items()},
                excluded=len(snap.assignment.excluded),
                default_route=sorted(snap.default_route_ifaces),
                changed_pools=changed,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )

    @staticmethod
    def _log_changes(old: Snapshot | None, new: Snapshot) -> None:
        """One log line per device that joined, left or was excluded, with its pool."""

        def placement(snap: Snapshot | None) -> dict[str, str]:
            if snap is None:
                return {}
            out = {d.pci_address: r for r, devs in snap.assignment.pools.items() for d in devs}
            out.update({a: f"excluded: {why}" for a, why in snap.assignment.excluded.items()})
            return out

        before, after = placement(old), placement(new)
        for address in sorted(before.keys() | after.keys()):
            was, now = before.get(address), after.get(address)
            if was == now:
                continue
            dev = new.node.get(address) or (old.node.get(address) if old else None)
            netdev = dev.netdev if dev else None
            if now is None:
                log.info("device_removed", device=address, netdev=netdev, pool=was)
            elif now.startswith("excluded: "):
                log.info("device_excluded", device=address, netdev=netdev, reason=now[10:])
            else:
                log.info("device_added", device=address, netdev=netdev, pool=now, previous=was)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then clean up sockets and device-info files."""
        log.info(
            "daemon_starting",
            config=self.config.source,
            pools=[p.resource_name for p in self.config.pools],
            plugin_dir=str(self.settings.device_plugin_path),
            sysfs_root=str(self.settings.sysfs_root),
        )
        registrar = asyncio.create_task(self.registrar.run(), name="registrar")
        try:
            await self.refresh()
            self.registrar.poke()
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({stopper, registrar}, return_when=asyncio.FIRST_COMPLETED)
            if registrar in done:
                stopper.cancel()
                registrar.result()  # re-raise what killed it
        finally:
            registrar.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await registrar
            await self.shutdown()

    async def shutdown(self) -> None:
        servers = list(self.servers.values())
        await asyncio.gather(*(s.stop(SHUTDOWN_GRACE_S) for s in servers))
        for server in servers:
            server.remove_devinfo_files()
        log.info("daemon_stopped", pools=[s.resource_name for s in servers])
