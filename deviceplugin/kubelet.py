"""Staying registered with the kubelet, whatever the kubelet does.

The kubelet's device manager deletes every socket in the device-plugin
directory when it starts (the stale `kubelet.sock` of its predecessor too),
then creates `kubelet.sock`. So the registrar watches that directory with
inotify and, on any change, reconciles: a pool whose socket vanished gets a
new one; a pool not registered with the current `kubelet.sock` (identified by
inode and creation time) registers. The same loop covers "kubelet not up
yet", "kubelet restarted" and "registration refused" (retried with
exponential backoff, reset for a new kubelet), so there is one code path to trust.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc
import structlog
from asyncinotify import Inotify, Mask

from deviceplugin.api.constants import KUBELET_SOCKET_NAME as KUBELET_SOCKET
from deviceplugin.api.constants import VERSION as API_VERSION
from deviceplugin.api.names import extended_resource_name_problems
from deviceplugin.api.v1beta1 import api_pb2, api_pb2_grpc
from deviceplugin.server import PoolServer

log = structlog.get_logger(__name__)

REGISTER_TIMEOUT_S = 5.0
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
# A safety net only: inotify is what makes us notice within milliseconds.
SAFETY_RECHECK_S = 10.0

RegistrationObserver = Callable[[str, bool], None]  # resource, accepted
# A fresh connection per Register call: gRPC otherwise shares one per address in the
# process, and after a refused attempt (a stale kubelet.sock) it keeps failing calls
# at once, without dialing, until its own reconnect backoff ends, new kubelet or not.
_OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def kubelet_identity(plugin_dir: Path) -> tuple[int, int, int] | None:
    """Which kubelet instance is listening: each start makes a new kubelet.sock.

    The inode number alone is not enough, as file systems hand a freed number
    out again at once (ext4 does); a socket's mtime is its creation time (no
    write ever changes it), which tells the new one from the old.
    """
    try:
        st = os.stat(plugin_dir / KUBELET_SOCKET)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


async def register(plugin_dir: Path, server: PoolServer) -> None:
    """One Register call; raises grpc.aio.AioRpcError with the kubelet's reason on refusal."""
    request = api_pb2.RegisterRequest(
        version=API_VERSION,
        endpoint=server.socket_path.name,
        resource_name=server.resource_name,
        options=api_pb2.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        ),
    )
    target = f"unix://{plugin_dir / KUBELET_SOCKET}"
    async with grpc.aio.insecure_channel(target, options=_OWN_CONNECTION) as channel:
        await api_pb2_grpc.RegistrationStub(channel).Register(
            request, timeout=REGISTER_TIMEOUT_S, wait_for_ready=False
        )


class Registrar:
    """Keeps every pool server serving and registered with the current kubelet."""

    def __init__(
        self,
        plugin_dir: Path,
        servers: Callable[[], Iterable[PoolServer]],
        *,
        on_registration: RegistrationObserver | None = None,
        on_kubelet_restart: Callable[[], None] | None = None,
    ) -> None:
        self.plugin_dir = plugin_dir
        self._servers = servers
        self._wake = asyncio.Event()
        self._on_registration = on_registration
        self._on_kubelet_restart = on_kubelet_restart
        self._backoff: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
        self._last_kubelet: tuple[int, int] | None = None
        self._looked = False  # the first reconcile says whether a kubelet is there
        self._passes = 0  # reconcile passes begun
        self._passed = asyncio.Condition()  # notified as each pass ends
        self._ended = 0  # the last pass that has ended

    def poke(self) -> None:
        """Ask for a reconcile soon (pools added, a socket restarted)."""
        self._wake.set()

    async def attempted(self) -> None:
        """Return once a reconcile pass begun after this call has ended: every pool then
        serving has been offered to the kubelet (or found no kubelet to offer it to)."""
        wanted = self._passes + 1
        self.poke()
        async with self._passed:
            await self._passed.wait_for(lambda: self._ended >= wanted)

    async def run(self) -> None:
        """Reconcile on every directory event until cancelled."""
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        with Inotify() as inotify:
            inotify.add_watch(
                self.plugin_dir,
                Mask.CREATE | Mask.DELETE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.ATTRIB,
            )
            watcher = asyncio.create_task(self._pump(inotify))
            try:
                while True:
                    self._passes += 1
                    delay = await self.reconcile()
                    async with self._passed:
                        self._ended = self._passes
                        self._passed.notify_all()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=delay)
                    self._wake.clear()
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    async def _pump(self, inotify: Inotify) -> None:
        async for event in inotify:
            log.debug("plugin_dir_event", name=str(event.name), mask=str(event.mask))
            self._wake.set()

    async def reconcile(self) -> float:
        """Bring every server to 'serving and registered'; return seconds until the next check."""
        loop = asyncio.get_running_loop()
        current = kubelet_identity(self.plugin_dir)
        if current != self._last_kubelet or not self._looked:
            self._looked = True
            if current is None:
                log.warning("kubelet_socket_gone", path=str(self.plugin_dir / KUBELET_SOCKET))
            else:
                log.info("kubelet_socket_found", path=str(self.plugin_dir / KUBELET_SOCKET))
                if self._last_kubelet is not None and self._on_kubelet_restart:
                    self._on_kubelet_restart()
                # A new kubelet gets an attempt at once, whatever its predecessor (or
                # its stale socket, while it was being replaced) refused.
                self._backoff.clear()
                self._retry_at.clear()
            self._last_kubelet = current
        next_check = SAFETY_RECHECK_S
        for server in list(self._servers()):
            if server not in self._servers():
                continue  # removed by a reload while we awaited a registration
            await server.revive()
            if current is None or server.registered_with == current:
                continue
            now = loop.time()
            retry_at = self._retry_at.get(server.resource_name, 0.0)
            if now < retry_at:
                next_check = min(next_check, retry_at - now)
                continue
            invalid = extended_resource_name_problems(server.resource_name)
            if invalid:  # the kubelet's own rule says no, every time: say why, never ask
                self._retry_at[server.resource_name] = math.inf
                server.log.error("registration_skipped", reason="; ".join(invalid))
                if self._on_registration:
                    self._on_registration(server.resource_name, False)
                continue
            try:
                await register(self.plugin_dir, server)
            except grpc.aio.AioRpcError as exc:
                backoff = min(
                    self._backoff.get(server.resource_name, BACKOFF_INITIAL_S / 2) * 2,
                    BACKOFF_MAX_S,
                )
                self._backoff[server.resource_name] = backoff
                self._retry_at[server.resource_name] = now + backoff
                next_check = min(next_check, backoff)
                server.log.warning(
                    "registration_failed",
                    code=exc.code().name,
                    reason=exc.details(),
                    retry_in_s=round(backoff, 2),
                )
                if self._on_registration:
                    self._on_registration(server.resource_name, False)
                continue
            # Whom the call reached: the kubelet listening now. `current` was read before
            # the awaits above, and a restarting kubelet replaces its socket in between
            # (seen with v1.20: our socket goes, then the stale kubelet.sock, then a new
            # one appears). Remembering the stale one made the next event register again.
            current = kubelet_identity(self.plugin_dir)
            server.mark_registered(current)
            self._backoff.pop(server.resource_name, None)
            self._retry_at.pop(server.resource_name, None)
            server.log.info("registered", endpoint=server.socket_path.name, version=API_VERSION)
            if self._on_registration:
                self._on_registration(server.resource_name, True)
        return next_check
