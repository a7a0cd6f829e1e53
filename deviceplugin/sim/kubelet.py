"""A kubelet stand-in: the device manager's side of the Device Plugin API.

Integration tests, benchmarks and `netdp demo` need something that behaves
like the kubelet towards a device plugin without running a kubelet. This one
serves `Registration` on a real unix socket, `<plugin_dir>/kubelet.sock`, and
follows what the kubelet's device manager does:

- `Register` checks the version and the extended resource name, then dials the
  plugin back on `<plugin_dir>/<endpoint>`, asks `GetDevicePluginOptions` and
  only then answers; a refusal is a gRPC error with code UNKNOWN and the
  kubelet's wording (the kubelet returns plain Go errors, which gRPC turns into
  UNKNOWN). Two deliberate additions make mistakes visible at once instead of
  after the kubelet's 10 s dial timeout: the endpoint must be a bare file name
  and a socket must exist there.
- After a successful registration it keeps a `ListAndWatch` stream open
  through a `PluginConnection` (`sim/plugin_connection.py`), which records
  every snapshot with a monotonic timestamp.
- A new registration of the same resource replaces the previous connection,
  and a connection whose ListAndWatch stream ends is dropped, so
  `connections` holds only plugins the kubelet would still be using.
- `start()` empties the plugin directory before listening, as the kubelet's
  device manager does (every entry but its checkpoint file and
  subdirectories). `stop()` leaves `kubelet.sock` behind, stale, as an exiting
  kubelet does; so `restart()` shows plugins what a real kubelet restart does
  (checked against kubelet v1.20, tests/e2e/realnode.py): their sockets and
  the old `kubelet.sock` vanish, then a new `kubelet.sock` appears.

Where a real kubelet v1.20 differs on purpose: it answers `Register` before
dialing the plugin (a bad endpoint only shows in its log) and takes the
plugin's options from the request instead of asking `GetDevicePluginOptions`;
the stand-in does what newer kubelets do (dial and ask first, then answer),
which shows a broken endpoint at once. Not emulated: the checkpoint file the
kubelet rewrites (dotfile, then rename) in the directory after every
ListAndWatch update and allocation, and v1.20's empty `DEPRECATION` file.

Everything is synchronous (a thread-pool gRPC server, one thread per
ListAndWatch stream), so plain pytest code can drive it; waiting is done on
condition variables, never by polling.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import structlog

from deviceplugin.api.constants import KUBELET_SOCKET_NAME, SUPPORTED_VERSIONS
from deviceplugin.api.names import extended_resource_name_problems
from deviceplugin.api.v1beta1 import api_pb2, api_pb2_grpc
from deviceplugin.sim.plugin_connection import PluginConnection
from deviceplugin.sim.standin import StandIn, serve_unix

log = structlog.get_logger(__name__)

# The one entry of the plugin directory that the kubelet keeps when it starts.
CHECKPOINT_NAME = "kubelet_internal_checkpoint"

# Each plugin connection gets its own subchannel, as each kubelet client conn
# does: a plugin restarting its socket must not inherit a broken shared one.
_CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)

Rejecter = Callable[[api_pb2.RegisterRequest], str | None]


@dataclass(frozen=True, slots=True)
class RegistrationAttempt:
    """One Register call, accepted (`error is None`) or refused with the kubelet's reason."""

    at: float
    version: str
    endpoint: str
    resource_name: str
    options: api_pb2.DevicePluginOptions | None
    error: str | None

    @property
    def accepted(self) -> bool:
        return self.error is None


def register_problem(request: api_pb2.RegisterRequest, plugin_dir: Path) -> str | None:
    """The kubelet's reason to refuse `request` before dialing the plugin; None when it is fine."""
    if request.version not in SUPPORTED_VERSIONS:
        supported = ", ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
        return (
            f'requested API version "{request.version}" is not supported by kubelet. '
            f"Supported version is [{supported}]"
        )
    if extended_resource_name_problems(request.resource_name):
        return f'the ResourceName "{request.resource_name}" is invalid'
    endpoint = request.endpoint
    if not endpoint or "/" in endpoint or endpoint in (".", ".."):
        return f'endpoint "{endpoint}" must be a socket file name in {plugin_dir}'
    try:
        mode = (plugin_dir / endpoint).lstat().st_mode
    except OSError as err:
        return f"failed to dial device plugin: {plugin_dir / endpoint}: {err.strerror}"
    if not stat.S_ISSOCK(mode):
        return f"failed to dial device plugin: {plugin_dir / endpoint} is not a socket"
    return None


class _RegistrationServicer(api_pb2_grpc.RegistrationServicer):
    def __init__(self, standin: KubeletStandIn, generation: int) -> None:
        self._standin = standin
        self._generation = generation

    def Register(
        self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> api_pb2.Empty:
        error = self._standin._register(request, self._generation)
        if error is not None:
            context.abort(grpc.StatusCode.UNKNOWN, error)
        return api_pb2.Empty()


class KubeletStandIn(StandIn):
    """Serves Registration on `<plugin_dir>/kubelet.sock` and talks back to the plugins.

    `reject`, if given, is asked after the kubelet's own checks pass; a string
    it returns refuses the registration with that message (to test a plugin's
    retry path). `dial_timeout` bounds dialing a plugin and its
    GetDevicePluginOptions answer.

    Usable as a context manager (start on enter, stop on exit).
    """

    def __init__(
        self,
        plugin_dir: Path,
        *,
        reject: Rejecter | None = None,
        dial_timeout: float = 2.0,
    ) -> None:
        self.plugin_dir = Path(plugin_dir)
        self._reject = reject
        self._dial_timeout = dial_timeout
        self._cond = threading.Condition()
        self._registrations: list[RegistrationAttempt] = []
        self._connections: dict[str, PluginConnection] = {}
        self._server: grpc.Server | None = None
        self._server_dir: Path | None = None  # where the gRPC server's own socket lives
        # Bumped on every start, so a Register still in flight across a
        # restart cannot land in the new incarnation.
        self._generation = 0

    @property
    def socket_path(self) -> Path:
        return self.plugin_dir / KUBELET_SOCKET_NAME

    @property
    def running(self) -> bool:
        with self._cond:
            return self._server is not None

    def start(self, *, clean: bool = True) -> None:
        """Listen on a new kubelet.sock; with `clean`, first empty the directory like the kubelet.

        The real kubelet always cleans, so a plugin started before it loses
        its socket; `clean=False` is for tests that want to skip that.
        """
        with self._cond:
            if self._server is not None:
                raise RuntimeError("kubelet stand-in already started")
            self.plugin_dir.mkdir(parents=True, exist_ok=True)
            if clean:
                removed = remove_contents(self.plugin_dir)
                log.info("kubelet_standin.cleaned", dir=str(self.plugin_dir), removed=removed)
            self._generation += 1
            # gRPC removes its socket when it stops, a kubelet that exits does not: the
            # server listens on a private path and kubelet.sock is a second name (a hard
            # link) for that socket, which outlives the server as a stale kubelet.sock.
            server_dir = _server_dir(self.plugin_dir)
            self._server = serve_unix(
                server_dir / KUBELET_SOCKET_NAME,
                partial(
                    api_pb2_grpc.add_RegistrationServicer_to_server,
                    _RegistrationServicer(self, self._generation),
                ),
                workers=8,
                name="kubelet",
            )
            self._server_dir = server_dir
            self.socket_path.unlink(missing_ok=True)  # stale, when not cleaned
            os.link(server_dir / KUBELET_SOCKET_NAME, self.socket_path)
        log.info("kubelet_standin.started", socket=str(self.socket_path))

    def stop(self) -> None:
        """Disconnect every plugin and stop serving; kubelet.sock stays behind, stale.

        That is what an exiting kubelet leaves: the next one removes it when
        it starts, so plugins see no change in the directory until then.
        """
        with self._cond:
            server, self._server = self._server, None
            server_dir, self._server_dir = self._server_dir, None
            connections = list(self._connections.values())
            self._connections.clear()
            self._cond.notify_all()
        for connection in connections:
            connection.close()
        if server is not None:
            server.stop(grace=None).wait()
            log.info("kubelet_standin.stopped", socket=str(self.socket_path))
        if server_dir is not None:
            shutil.rmtree(server_dir, ignore_errors=True)

    def restart(self, *, gap: float = 0.0) -> None:
        """A kubelet restart as plugins see it: disconnected, the directory emptied, the
        stale kubelet.sock last, then a new kubelet.sock.

        The kubelet deletes the entries it listed at start-up one by one, in
        directory order; on tmpfs (kubelet v1.20 in tests/e2e/realnode.py)
        that put the plugins' sockets, being newer, before the stale
        kubelet.sock. `gap`: seconds between the two, as a busy kubelet may take.
        """
        self.stop()
        removed = remove_contents(self.plugin_dir, keep=KUBELET_SOCKET_NAME)
        if gap:
            time.sleep(gap)
        self.socket_path.unlink(missing_ok=True)
        log.info("kubelet_standin.cleaned", dir=str(self.plugin_dir), removed=removed)
        self.start(clean=False)

    @property
    def registrations(self) -> list[RegistrationAttempt]:
        """Every Register call seen since construction (across restarts), oldest first."""
        with self._cond:
            return list(self._registrations)

    @property
    def connections(self) -> dict[str, PluginConnection]:
        """The live connection per resource name (a copy)."""
        with self._cond:
            return dict(self._connections)

    def wait_registered(
        self,
        resource: str,
        timeout: float = 5.0,
        *,
        newer_than: PluginConnection | None = None,
    ) -> PluginConnection:
        """Wait for a live connection for `resource` other than `newer_than`; else TimeoutError."""

        def ready() -> PluginConnection | None:
            current = self._connections.get(resource)
            return current if current is not None and current is not newer_than else None

        with self._cond:
            found = self._cond.wait_for(ready, timeout)
            if found is None:
                tried = [r for r in self._registrations if r.resource_name == resource]
                raise TimeoutError(
                    f"{resource} not registered within {timeout}s; attempts: {tried}"
                )
            return found

    def wait_attempts(self, count: int, timeout: float = 5.0) -> list[RegistrationAttempt]:
        """Wait until at least `count` Register calls were seen; raises TimeoutError."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._registrations) >= count, timeout):
                raise TimeoutError(
                    f"{len(self._registrations)} of {count} registration attempts within {timeout}s"
                )
            return list(self._registrations)

    def _register(self, request: api_pb2.RegisterRequest, generation: int) -> str | None:
        """Handle one Register call; returns the refusal message or None when connected."""
        log.info(
            "kubelet_standin.register",
            resource=request.resource_name,
            endpoint=request.endpoint,
            version=request.version,
        )
        error = register_problem(request, self.plugin_dir)
        if error is None and self._reject is not None:
            error = self._reject(request)
        connection = None
        if error is None:
            connection, error = self._connect(request)
        replaced = None
        with self._cond:
            if connection is not None and (self._server is None or generation != self._generation):
                error = "kubelet stand-in is stopping"
            if connection is not None and connection.dropped:
                error = "ListAndWatch ended during registration"
            if error is None:
                replaced = self._connections.get(request.resource_name)
                self._connections[request.resource_name] = connection
            self._registrations.append(
                RegistrationAttempt(
                    at=time.monotonic(),
                    version=request.version,
                    endpoint=request.endpoint,
                    resource_name=request.resource_name,
                    options=request.options if request.HasField("options") else None,
                    error=error,
                )
            )
            self._cond.notify_all()
        if replaced is not None:
            replaced.close()
        if error is not None:
            if connection is not None:
                connection.close()
            log.warning("kubelet_standin.refused", resource=request.resource_name, error=error)
        return error

    def _connect(
        self, request: api_pb2.RegisterRequest
    ) -> tuple[PluginConnection, None] | tuple[None, str]:
        """Dial the plugin and ask its options, as the kubelet does before answering Register."""
        socket_path = self.plugin_dir / request.endpoint
        channel = grpc.insecure_channel(f"unix://{socket_path}", options=_CHANNEL_OPTIONS)
        try:
            # wait_for_ready: block until connected or timed out, like the kubelet's
            # blocking dial. (channel_ready_future would make close() take 200 ms.)
            options = api_pb2_grpc.DevicePluginStub(channel).GetDevicePluginOptions(
                api_pb2.Empty(), timeout=self._dial_timeout, wait_for_ready=True
            )
        except grpc.RpcError as err:
            channel.close()
            if err.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                return None, f"failed to dial device plugin: {socket_path}: {err.details()}"
            return None, f"GetDevicePluginOptions failed: {err.code().name}: {err.details()}"
        connection = PluginConnection(
            request.resource_name, request.endpoint, socket_path, channel, options, self._forget
        )
        return connection, None

    def _forget(self, connection: PluginConnection) -> None:
        """Drop a connection whose ListAndWatch ended, as the kubelet disconnects such a plugin."""
        with self._cond:
            connection.dropped = True
            if self._connections.get(connection.resource) is connection:
                del self._connections[connection.resource]
                self._cond.notify_all()


def remove_contents(directory: Path, keep: str = CHECKPOINT_NAME) -> list[str]:
    """Delete every entry directly in `directory` but `keep` and subdirectories, as the
    kubelet's device manager does on start-up (with its checkpoint file as `keep`)."""
    removed = []
    for entry in directory.iterdir():
        if entry.name in (keep, CHECKPOINT_NAME):
            continue
        try:
            if not stat.S_ISDIR(entry.lstat().st_mode):
                entry.unlink()
                removed.append(entry.name)
        except FileNotFoundError:
            continue
    return sorted(removed)


def _server_dir(plugin_dir: Path) -> Path:
    """A fresh directory on the plugin dir's file system (hard links cannot cross one),
    beside the plugin dir where possible, so that holds only what a kubelet puts there."""
    beside = plugin_dir.parent
    where = beside if os.stat(beside).st_dev == os.stat(plugin_dir).st_dev else plugin_dir
    return Path(tempfile.mkdtemp(prefix=".kubelet-standin-", dir=where))
