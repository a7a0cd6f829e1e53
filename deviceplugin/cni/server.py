"""The daemon's CNI socket: netdp-cni/2 (`wire.py`) served from asyncio.

The node's `ehost-device` forwarder connects once per CNI call. Each
request's netlink and namespace work runs on a worker thread
(`asyncio.to_thread`), where the executor switches namespaces per thread and
uses the pyroute2 the daemon imported once. Devices are serialised by the
executor's per-device lock, so concurrent calls for different devices run in
parallel and two ADDs for one device cannot interleave.

Whoever can connect can move the node's NICs, so the socket is root's alone:
mode 0600, in a directory only its owner may enter (`listen.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import structlog

from deviceplugin.cni import wire
from deviceplugin.cni.call_labels import call_labels
from deviceplugin.cni.executor import Executor
from deviceplugin.cni.listen import listen
from deviceplugin.cni.settings import Settings, settings_from_env
from deviceplugin.cni.types import ERR_DECODE, CniError
from deviceplugin.listener import Listener
from deviceplugin.observer import DaemonObserver

log = structlog.get_logger(__name__)

READ_TIMEOUT_S = 30.0


class CniServer:
    """Serves netdp-cni/2 on `socket_path` until `stop()`."""

    def __init__(
        self,
        socket_path: Path,
        sysfs_root: Path = Path("/sys"),
        lock_dir: Path | None = None,
        pod_resources_socket: Path | None = None,
        executor: Executor | None = None,
        observer: DaemonObserver | None = None,
    ) -> None:
        """`lock_dir` and `pod_resources_socket` default to NETDP_CNI_LOCK_DIR and
        NETDP_POD_RESOURCES_SOCKET, else the standard paths.
        `observer` hears every answered call (`DaemonObserver.cni_call`).
        """
        self.socket_path = Path(socket_path)
        self.observer = observer or DaemonObserver()
        shared = settings_from_env(os.environ)
        self.executor = executor or Executor(
            Settings(
                sysfs_root=Path(sysfs_root),
                lock_dir=Path(lock_dir) if lock_dir else shared.lock_dir,
                pod_resources_socket=(
                    Path(pod_resources_socket)
                    if pod_resources_socket
                    else shared.pod_resources_socket
                ),
            )
        )
        self._listener: Listener | None = None

    async def start(self, listener: Listener | None = None) -> None:
        """Answer on `listener`, opened by `listen.listen` earlier (`netdp run` opens it
        before it registers), or on one opened now."""
        self._listener = listener or await listen(self.socket_path, self.executor.settings.lock_dir)
        self._listener.serve(self._serve)
        log.info("cni_server_started", socket=str(self.socket_path))

    async def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        await listener.close()
        self.socket_path.unlink(missing_ok=True)
        log.info("cni_server_stopped", socket=str(self.socket_path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                env, stdin = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT_S)
            except wire.WireError as exc:
                log.warning("cni_request_malformed", error=str(exc))
                err = CniError(ERR_DECODE, "malformed request from ehost-device", str(exc))
                text = json.dumps(err.to_json())
                self._count({}, 1, text, time.perf_counter())
                answer = wire.encode_response(1, text.encode())
            else:
                answer = await self._answer(env, stdin)
            writer.write(answer)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.warning("cni_server_connection_failed", error=repr(exc))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, env: dict[str, str], stdin: bytes) -> bytes:
        started = time.perf_counter()
        outcome = await asyncio.to_thread(self.executor.run, env, stdin)
        self._count(env, outcome.exit_code, outcome.stdout, started)
        return wire.encode_response(outcome.exit_code, outcome.stdout.encode())

    def _count(self, env: Mapping[str, str], exit_code: int, stdout: str, started: float) -> None:
        seconds = time.perf_counter() - started
        self.observer.cni_call(*call_labels(env, exit_code, stdout), seconds)


async def _read_request(reader: asyncio.StreamReader) -> tuple[dict[str, str], bytes]:
    """One request, exactly as long as its header says; `WireError` for anything else."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise wire.WireError("no header line") from None
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise wire.WireError(f"no header line: {exc.partial[: wire.MAX_HEADER]!r}") from None
        raise
    head = wire.parse_request_head(line)
    return wire.split_request(head, await reader.readexactly(head.body_bytes))
