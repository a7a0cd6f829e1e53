"""The daemon side of the ehost-device shim: a unix socket served from asyncio.

Each request's netlink and namespace work runs on a worker thread
(`asyncio.to_thread`), where the executor switches namespaces per thread and
uses the pyroute2 the daemon imported once. Devices are serialised by the
executor's per-device lock, so concurrent calls for different devices run in
parallel and two ADDs for one device cannot interleave.
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

from deviceplugin.cni.call_labels import call_labels
from deviceplugin.cni.executor import Executor, Settings, settings_from_env
from deviceplugin.cni.shim import (
    MAX_MESSAGE,
    decode_request,
    encode_response,
)
from deviceplugin.cni.types import ERR_DECODE, CniError
from deviceplugin.observer import DaemonObserver

log = structlog.get_logger(__name__)

READ_TIMEOUT_S = 30.0


class CniServer:
    """Serves the shim protocol on `socket_path` until `stop()`."""

    def __init__(
        self,
        socket_path: Path,
        sysfs_root: Path = Path("/sys"),
        lock_dir: Path | None = None,
        pod_resources_socket: Path | None = None,
        executor: Executor | None = None,
        observer: DaemonObserver | None = None,
    ) -> None:
        """`lock_dir` and `pod_resources_socket` default to what the shim's in-process
        mode uses (NETDP_CNI_LOCK_DIR, NETDP_POD_RESOURCES_SOCKET, else the standard
        paths): daemon and fallback must lock the same files to exclude each other.
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
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        # A socket file left by a dead daemon would make bind fail.
        self.socket_path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path))
        os.chmod(self.socket_path, 0o600)
        log.info("cni_server_started", socket=str(self.socket_path))

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await server.wait_closed()
        self.socket_path.unlink(missing_ok=True)
        log.info("cni_server_stopped", socket=str(self.socket_path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            chunks: list[bytes] = []
            size = 0
            # The shim closes its side after the request; read to that point, bounded.
            while size <= MAX_MESSAGE:
                chunk = await asyncio.wait_for(reader.read(65536), READ_TIMEOUT_S)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            writer.write(await self._answer(b"".join(chunks)))
            await writer.drain()
        except (TimeoutError, ConnectionError) as exc:
            log.warning("cni_server_connection_failed", error=repr(exc))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, data: bytes) -> bytes:
        started = time.perf_counter()
        try:
            if len(data) > MAX_MESSAGE:
                raise ValueError("request too large")
            env, stdin = decode_request(data)
        except ValueError as exc:
            err = CniError(ERR_DECODE, "malformed request from the ehost-device shim", str(exc))
            answer = json.dumps(err.to_json())
            self._count({}, 1, answer, started)
            return encode_response(1, answer.encode())
        outcome = await asyncio.to_thread(self.executor.run, env, stdin)
        self._count(env, outcome.exit_code, outcome.stdout, started)
        return encode_response(outcome.exit_code, outcome.stdout.encode())

    def _count(self, env: Mapping[str, str], exit_code: int, stdout: str, started: float) -> None:
        seconds = time.perf_counter() - started
        self.observer.cni_call(*call_labels(env, exit_code, stdout), seconds)
