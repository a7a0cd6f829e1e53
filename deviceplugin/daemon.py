"""Wiring of the running daemon: events → device tree → diff → pool servers → kubelet.

There is one change path. A rescan (start-up, hot-plug uevents, a periodic
rescan where events are unavailable, a config reload) reads sysfs and the
default routes off the loop and assigns devices to pools; a link event skips
the scan and reuses the last one. Either way `_apply` builds the new
`diff.NodeState` with fresh health verdicts, diffs it against the previous
one, starts or stops the pools that came or went, and pushes state only to
pools that changed; their servers tell the kubelet only what it can see.
Every device change is logged once, with its pool.

Before each scan, the daemon's CNI side puts back NICs that a lost CNI
call left stranded (`repair`, see `cni/repair.py`), so the scan sees them
under their own names.

The daemon reports what metrics need through a `DaemonObserver`
(`observer.py`), so it knows nothing about Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import structlog

from deviceplugin import diff, pools, sysfs, watch
from deviceplugin.api.constants import DEVICE_PLUGIN_DIR
from deviceplugin.config import Config, ConfigError, load_config
from deviceplugin.devinfo import DEFAULT_DEVINFO_DIR
from deviceplugin.health import LinkState
from deviceplugin.kubelet import Registrar, kubelet_identity
from deviceplugin.model import NodeDevices
from deviceplugin.observer import DaemonObserver
from deviceplugin.routes import default_route_interfaces
from deviceplugin.server import PoolServer

log = structlog.get_logger(__name__)

SHUTDOWN_GRACE_S = 0.5
# How long start-up waits for the pools' first Register calls before it loads the side
# servers and scans anyway; Register takes milliseconds from a kubelet that is well.
OFFER_WAIT_S = 1.0
DEFAULT_RESCAN_INTERVAL_S = 30.0

# Puts back stranded NICs, blocking; returns (PCI address or "", host name) of each.
NicRepair = Callable[[], Sequence[tuple[str, str]]]


class WatchMode(StrEnum):
    """Values of `netdp run --watch`."""

    AUTO = "auto"  # events where the kernel offers them, periodic rescans for the rest
    PERIODIC = "periodic"  # periodic rescans only (an escape hatch, and for tests)


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the daemon reads and writes; every field has a `netdp run` flag and env var."""

    device_plugin_path: Path = DEVICE_PLUGIN_DIR
    sysfs_root: Path = Path("/sys")
    devinfo_dir: Path | None = DEFAULT_DEVINFO_DIR
    config_path: Path | None = None  # None: the built-in config, nothing to reload
    rescan_interval_s: float = DEFAULT_RESCAN_INTERVAL_S
    watch: WatchMode = WatchMode.AUTO


class Daemon:
    """Owns the pool servers, the registrar and the event sources for one node."""

    def __init__(
        self,
        config: Config,
        settings: Settings,
        *,
        routes: Callable[[], frozenset[str]] = default_route_interfaces,
        observer: DaemonObserver | None = None,
        repair: NicRepair | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.observer = observer or DaemonObserver()
        self._routes = routes
        self._repair = repair
        self.servers: dict[str, PoolServer] = {}
        self.placement: diff.Placement | None = None  # the last scan, for link changes
        self.state: diff.NodeState | None = None
        self.mode: watch.LiveMode | None = None
        self.registrar = Registrar(
            settings.device_plugin_path,
            lambda: self.servers.values(),
            on_registration=self.observer.registration,
            on_kubelet_restart=self.observer.kubelet_restarted,
        )
        self._scan_lock = asyncio.Lock()  # rescans apply in the order they scanned
        self._apply_lock = asyncio.Lock()  # one state transition at a time
        self._known_netdevs: dict[str, str] = {}
        self._watched: frozenset[str] = frozenset()  # netdev names whose links matter
        self._background: set[asyncio.Task[object]] = set()  # SIGHUP reloads in flight
        self._links: watch.LinkMonitor | None = None
        self._uevents: watch.UeventMonitor | None = None
        self._hotplug = self._coalescer(
            "uevent", lambda n: self.refresh("uevent", n), quiet=watch.HOTPLUG_QUIET_S
        )
        self._link_updates = self._coalescer("netlink", self._relink_logged, quiet=0, max_delay=0)
        self._config_updates = self._coalescer(
            "config-file", lambda _: self.reload("config-file"), quiet=watch.CONFIG_QUIET_S
        )

    def _coalescer(
        self,
        source: str,
        action: Callable[[int], Awaitable[object]],
        *,
        quiet: float,
        max_delay: float = watch.HOTPLUG_MAX_DELAY_S,
    ) -> watch.Coalescer:
        """One run of `action` per burst of `source` events; the observer hears what it spared."""

        async def run(events: int) -> None:
            self.observer.events_coalesced(source, events - 1)
            await action(events)

        return watch.Coalescer(run, quiet=quiet, max_delay=max_delay, name=source)

    def registration_status(self) -> dict[str, bool]:
        """Per configured pool: serving and registered with the current kubelet.

        Keyed by the config, not by the servers, so a pool whose server does not
        exist yet (first scan still running) counts as not registered.
        """
        current = kubelet_identity(self.settings.device_plugin_path)
        status = {}
        for pool in self.config.pools:
            server = self.servers.get(pool.resource_name)
            status[pool.resource_name] = (
                self.state is not None
                and current is not None
                and server is not None
                and server.registered_with == current
            )
        return status

    # ---- the change path ------------------------------------------------------------

    async def refresh(
        self, trigger: str = "start", events: int = 0, config: Config | None = None
    ) -> None:
        """Rescan sysfs and apply what changed; hot-plug, periodic and reload come here.

        A reload passes its new `config`; it takes over together with the scan
        it is applied to, so no state ever pairs one config with another's pools.
        """
        async with self._scan_lock:
            if self._repair is not None:
                for device, name in await asyncio.to_thread(self._repair_nics, self._repair):
                    self.observer.nic_repaired(device, name)
            started = time.perf_counter()
            node, ifaces = await asyncio.to_thread(self._scan)
            seconds = time.perf_counter() - started
            self.observer.discovery_done(trigger, seconds, len(node.devices))
            for message in node.warnings:
                log.warning("scan_problem", detail=message)
            async with self._apply_lock:
                if config is not None:
                    self.config = config
                self.placement = diff.place(node, ifaces, self.config.pools, self._known_netdevs)
                self._known_netdevs = pools.remember_netdevs(self._known_netdevs, node)
                state, changed = await self._apply(self.placement)
            log.info(
                "discovery_done",
                trigger=trigger,
                events=events,
                devices=len(node.devices),
                pools={r: len(p.devices) for r, p in state.pools.items()},
                excluded=len(state.excluded),
                default_route=sorted(ifaces),
                changed_pools=changed,
                duration_ms=round(seconds * 1000, 1),
            )

    def _scan(self) -> tuple[NodeDevices, frozenset[str]]:
        return sysfs.scan(self.settings.sysfs_root), self._routes()

    @staticmethod
    def _repair_nics(repair: NicRepair) -> Sequence[tuple[str, str]]:
        """The CNI side's repair (it logs each NIC); its failure never stops a rescan."""
        try:
            return repair()
        except Exception:
            log.exception("nic_repair_failed")
            return ()

    async def relink(self) -> list[str]:
        """New verdicts from the last scan and the current link states; no sysfs read."""
        async with self._apply_lock:
            if self.placement is None:
                return []
            _, changed = await self._apply(self.placement)
            return changed

    async def _relink_logged(self, events: int) -> None:
        started = time.perf_counter()
        changed = await self.relink()
        log.debug(
            "links_applied",
            events=events,
            changed_pools=changed,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    def _current_links(self) -> Mapping[str, LinkState]:
        return self._links.links if self._links is not None else {}

    async def _apply(self, placement: diff.Placement) -> tuple[diff.NodeState, list[str]]:
        """Go from the current state to the one this scan gives; returns it and the pools
        whose kubelet-visible state changed."""
        state = diff.build_state(placement, self._current_links(), self.state)
        changes = diff.diff(self.state, state)
        for resource in changes.removed_pools:
            await self._remove_pool(resource)
        for resource in changes.respecified_pools:
            await self._respecify_pool(state.pools[resource].spec)
        for resource in changes.added_pools:
            await self._add_pool(state.pools[resource])
        updated = []
        for resource in changes.updated_pools:
            pool = state.pools[resource]
            if await self.servers[resource].update(pool.devices, pool.health):
                updated.append(resource)
        self._log_device_changes(changes)
        self.state = state
        self._watched = state.netdev_names()
        self.observer.state_applied(state)
        return state, updated

    async def _start_server(self, spec: pools.PoolSpec) -> None:
        server = PoolServer(
            spec,
            self.settings.device_plugin_path,
            self.settings.devinfo_dir,
            on_allocate=self.observer.allocation,
            on_preferred=self.observer.preferred_allocation,
            read_device=functools.partial(sysfs.read_device, self.settings.sysfs_root),
        )
        await server.start()
        self.servers[spec.resource_name] = server
        self.registrar.poke()

    async def _add_pool(self, pool: diff.PoolState) -> None:
        if pool.spec.resource_name not in self.servers:  # else started early by run()
            await self._start_server(pool.spec)
        log.info("pool_added", pool=pool.spec.resource_name, devices=len(pool.devices))

    async def _remove_pool(self, resource: str) -> None:
        """Stop serving: the socket goes, and with it the kubelet's registration."""
        server = self.servers.pop(resource)
        await server.stop(SHUTDOWN_GRACE_S)
        server.remove_devinfo_files()
        log.info("pool_removed", pool=resource, socket=str(server.socket_path))

    async def _respecify_pool(self, spec: pools.PoolSpec) -> None:
        """New settings under the same name; the server says whether it re-registers."""
        reregister = await self.servers[spec.resource_name].respecify(spec)
        log.info("pool_respecified", pool=spec.resource_name, reregister=reregister)
        if reregister:
            self.registrar.poke()

    def _log_device_changes(self, changes: diff.Changes) -> None:
        """One event per device change, named for its kind, always with the same fields."""
        for c in changes.devices:
            log.info(
                c.kind.value,
                device=c.device,
                netdev=c.netdev,
                pool=c.pool,
                previous=c.previous_pool,
                health=c.health,
                reason=c.reason,
            )
            if c.kind is diff.ChangeKind.HEALTH:
                assert c.pool is not None and c.health is not None
                self.observer.health_changed(c.pool, c.device, c.health)

    # ---- event handlers -------------------------------------------------------------

    def on_uevent(self, event: watch.Uevent) -> None:
        """What the uevent source calls: a relevant event asks for one coalesced rescan."""
        if watch.uevent_relevant(event, self._watched):
            log.debug(
                "uevent", action=event.action, subsystem=event.subsystem, devpath=event.devpath
            )
            self.observer.events_received("uevent", 1)
            self._hotplug.trigger()

    def on_link_change(self, names: frozenset[str]) -> None:
        """What the link source calls: new verdicts if a netdev we advertise changed."""
        relevant = len(names & self._watched)
        if relevant:
            self.observer.events_received("netlink", relevant)
            self._link_updates.trigger(relevant)

    def on_config_event(self) -> None:
        """What the config file watcher calls: the file may read differently now."""
        self.observer.events_received("config-file", 1)
        self._config_updates.trigger()

    def request_reload(self) -> None:
        """SIGHUP: re-read the config and rescan (as a task: signal handlers cannot await)."""
        task = asyncio.get_running_loop().create_task(self._sighup())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _sighup(self) -> None:
        try:
            await self.reload("sighup")
        except Exception:  # a failed rescan must not go unnoticed in a detached task
            log.exception("reload_failed", trigger="sighup")

    async def reload(self, trigger: str) -> bool:
        """Re-read the config; keep the running one if the new one is invalid.

        Returns whether the running config is now the file's. Either way the
        node is rescanned, so a SIGHUP also catches changes no event announced.
        """
        path = self.settings.config_path
        config = None
        ok = True
        if path is not None:
            ok, config = await self._load(path, trigger)
            self.observer.reload_done(ok)
        await self.refresh(trigger, config=config)
        return ok

    async def _load(self, path: Path, trigger: str) -> tuple[bool, Config | None]:
        """(valid, the new config if it differs from the running one)."""
        try:
            config = await asyncio.to_thread(load_config, path)
        except ConfigError as exc:
            # Same text as `netdp run` prints when the file is invalid at start.
            log.error("config_reload_failed", config=str(path), trigger=trigger, error=str(exc))
            return False, None
        for warning in config.warnings:
            log.warning("config_warning", config=str(path), warning=warning)
        if config.pools == self.config.pools:
            log.info("config_unchanged", config=str(path), trigger=trigger)
            return True, None
        old = [p.resource_name for p in self.config.pools]
        new = [p.resource_name for p in config.pools]
        log.info(
            "config_reloaded",
            config=str(path),
            trigger=trigger,
            pools=new,
            added=[p for p in new if p not in old],
            removed=[p for p in old if p not in new],
        )
        return True, config

    # ---- lifecycle ------------------------------------------------------------------

    async def _open_sources(self) -> None:
        """Open the event sources on a worker thread, then read them on the loop.

        Opening loads pyroute2 and libudev and dumps every link: about 0.1 s
        of CPU that the loop spends registering the pools meanwhile.
        """
        self.mode, self._uevents, self._links = await asyncio.to_thread(
            watch.open_sources,
            self.on_uevent,
            self.on_link_change,
            rescan_interval_s=self.settings.rescan_interval_s,
            periodic_only=self.settings.watch == WatchMode.PERIODIC,
        )
        loop = asyncio.get_running_loop()
        for source in (self._uevents, self._links):
            if source is not None:
                source.attach(loop)
        log.info(
            "live_updates",
            mode=self.mode.describe(),
            uevents=self.mode.uevents,
            netlink=self.mode.netlink,
            rescan_interval_s=self.mode.rescan_interval_s,
            problems=list(self.mode.problems),
        )

    def _close_sources(self) -> None:
        for source in (self._uevents, self._links):
            if source is not None:
                source.close()
        self._uevents = self._links = None

    async def _periodic(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.observer.events_received("periodic", 1)
            try:
                await self.refresh("periodic")
            except Exception:  # the next round may fare better; never stop rescanning
                log.exception("periodic_rescan_failed")

    async def _watch_config(self, path: Path) -> None:
        try:
            await watch.FileWatcher(path, self.on_config_event).run()
        except OSError as exc:
            log.warning("config_watch_unavailable", config=str(path), error=str(exc))

    async def run(
        self, stop: asyncio.Event, after_register: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Serve until `stop` is set, then clean up sockets and device-info files.

        `after_register` is awaited once every pool is served and has been offered
        to the kubelet, before the event sources open and the first scan: what
        registering does not need starts there.
        """
        log.info(
            "daemon_starting",
            config=self.config.source,
            pools=[p.resource_name for p in self.config.pools],
            plugin_dir=str(self.settings.device_plugin_path),
            sysfs_root=str(self.settings.sysfs_root),
        )
        registrar = asyncio.create_task(self.registrar.run(), name="registrar")
        helpers = []
        if self.settings.config_path is not None:  # watching before the first scan: no gap
            watcher = self._watch_config(self.settings.config_path)
            helpers.append(asyncio.create_task(watcher, name="config-watch"))
        try:
            # Serve and register first, then open the event sources and scan: a pool's
            # ListAndWatch holds back until its first update, so the kubelet never sees
            # a premature empty pool, and start-up to registered waits neither for the
            # sources nor for sysfs, nor for what `after_register` loads. The sources
            # are open before the first scan, so no change falls between the two.
            for spec in self.config.pools:
                await self._start_server(spec)
            await self._offered(registrar)
            if after_register is not None:
                await after_register()
            await self._open_sources()
            assert self.mode is not None
            if self.mode.rescan_interval_s is not None:
                periodic = self._periodic(self.mode.rescan_interval_s)
                helpers.append(asyncio.create_task(periodic, name="periodic-rescan"))
            await self.refresh()
            self.registrar.poke()
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({stopper, registrar}, return_when=asyncio.FIRST_COMPLETED)
            if registrar in done:
                stopper.cancel()
                registrar.result()  # re-raise what killed it
        finally:
            self._close_sources()
            tasks = [registrar, *helpers, *self._background]
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    try:
                        await task
                    except Exception:  # already raised above (registrar) or only logged now
                        log.exception("task_failed", task=task.get_name())
            for coalescer in (self._hotplug, self._link_updates, self._config_updates):
                await coalescer.aclose()
            await self.shutdown()

    async def _offered(self, registrar: asyncio.Task[None]) -> None:
        """Wait until the registrar has offered every pool to the kubelet (whatever the
        answer, or no kubelet there to ask); raise what killed it if it died instead.

        At most `OFFER_WAIT_S`: a kubelet that takes Register calls and never answers
        must not hold back the probes, the CNI socket and the first scan (each Register
        may wait its full timeout, per pool); the registrar goes on on its own.
        """
        attempted = asyncio.create_task(self.registrar.attempted())
        try:
            done, _ = await asyncio.wait(
                {attempted, registrar}, timeout=OFFER_WAIT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            attempted.cancel()
        if registrar.done():
            registrar.result()
        elif not done:
            log.warning("kubelet_slow_to_answer", waited_s=OFFER_WAIT_S)

    async def shutdown(self) -> None:
        servers = list(self.servers.values())
        await asyncio.gather(*(s.stop(SHUTDOWN_GRACE_S) for s in servers))
        for server in servers:
            server.remove_devinfo_files()
        log.info("daemon_stopped", pools=[s.resource_name for s in servers])
