"""`netdp run`'s two side servers, `/metrics` with the probes and the CNI socket:
listening before the daemon registers, loaded and answering after.

Registering is what the kubelet waits for, and importing prometheus_client,
h11 and the CNI code before it cost about 60 ms of a 0.4 s start. So the
sockets are opened first, which is where a port in use or a CNI socket
directory netdp must not use shows, and stops `netdp run` before the kubelet
hears of it; the code that answers on them is loaded once every pool has been
offered to the kubelet, before the first scan (`Daemon.run`'s
`after_register`), so liveness answers during a slow first scan and the CNI
side puts back stranded NICs before it. What the daemon reports until then
is held by a `DeferredObserver` and replayed into the metrics. A side server
that is switched off is not imported at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from deviceplugin.cni.listen import listen
from deviceplugin.cni.settings import settings_from_env
from deviceplugin.listener import Listener
from deviceplugin.observer import DaemonObserver, DeferredObserver

if TYPE_CHECKING:
    from deviceplugin.cni.server import CniServer
    from deviceplugin.daemon import NicRepair
    from deviceplugin.http_endpoint import MetricsServer


class SideServers:
    """The metrics endpoint (None: `--metrics-address 0`) and the CNI server (None: no
    `--cni-socket`) of one daemon; `observer` and `repair` are what the daemon is given."""

    def __init__(
        self, metrics_address: tuple[str, int] | None, cni_socket: Path | None, sysfs_root: Path
    ) -> None:
        self._metrics_address = metrics_address
        self._cni_socket = cni_socket
        self._sysfs_root = sysfs_root
        self._deferred = DeferredObserver() if metrics_address is not None else None
        self.observer: DaemonObserver = self._deferred or DaemonObserver()
        # Opened by `listen`; each is handed to its server by `start`.
        self._metrics_listener: Listener | None = None
        self._cni_listener: Listener | None = None
        self._servers: list[MetricsServer | CniServer] = []
        self._cni: CniServer | None = None

    @property
    def repair(self) -> NicRepair | None:
        """The CNI side's repair of stranded NICs, run before each scan; None without it."""
        return self._repair if self._cni_socket is not None else None

    def _repair(self) -> Sequence[tuple[str, str]]:
        assert self._cni is not None, "the daemon scans only after start()"
        return self._cni.executor.repair()

    async def listen(self) -> None:
        """Open both sockets; `OSError` says which could not be opened, and why."""
        if self._metrics_address is not None:
            self._metrics_listener = await Listener.tcp(*self._metrics_address)
        if self._cni_socket is not None:
            lock_dir = settings_from_env(os.environ).lock_dir
            self._cni_listener = await listen(self._cni_socket, lock_dir)

    async def start(
        self, *, healthy: Callable[[], bool], registered: Callable[[], Mapping[str, bool]]
    ) -> None:
        """Load both servers and answer on the open sockets; the metrics first hear all
        the daemon reported so far. `healthy`: the daemon's tasks are alive (`/healthz`);
        `registered`: each pool is registered with the current kubelet (`/readyz`)."""
        if self._metrics_listener is not None:
            from deviceplugin.http_endpoint import MetricsServer, readiness
            from deviceplugin.metrics import Metrics

            assert self._deferred is not None and self._metrics_address is not None
            metrics = Metrics()
            self._deferred.attach(metrics)
            server = MetricsServer(
                metrics,
                self._metrics_address,
                healthy=healthy,
                ready=lambda: readiness(registered()),
            )
            listener, self._metrics_listener = self._metrics_listener, None
            self._servers.append(server)
            await server.start(listener)
        if self._cni_listener is not None:
            from deviceplugin.cni.server import CniServer

            assert self._cni_socket is not None
            self._cni = CniServer(self._cni_socket, self._sysfs_root, observer=self.observer)
            listener, self._cni_listener = self._cni_listener, None
            self._servers.append(self._cni)
            await self._cni.start(listener)

    async def stop(self) -> None:
        """Stop what serves; close what was opened but never served (the daemon
        failed before its pools were registered)."""
        for server in reversed(self._servers):
            await server.stop()
        if self._metrics_listener is not None:
            await self._metrics_listener.close()
        if self._cni_listener is not None:
            await self._cni_listener.close()
            assert self._cni_socket is not None
            self._cni_socket.unlink(missing_ok=True)
        self._servers, self._metrics_listener, self._cni_listener = [], None, None
