"""A listening socket opened now and answered later, by a handler chosen then.

`netdp run` opens its side servers' sockets (`/metrics` and the probes, the
CNI socket) before it registers, so a port in use or an unusable socket
path stops it before the kubelet hears of it, but loads the code that
answers on them only after registering (`side_servers.py`). The sockets
listen and accept from the start: a probe or CNI call that comes early waits
for its answer until `serve` (a fraction of a second), never finds the
socket refusing, so "the CNI socket exists" still means "calls get through".

Only asyncio is imported here, so opening a socket costs no HTTP,
Prometheus or CNI import.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Listener:
    """One asyncio server whose connections go to the handler given to `serve`."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        # The handler, once served; None if closed without ever serving.
        self._handler: asyncio.Future[ConnectionHandler | None] = (
            asyncio.get_running_loop().create_future()
        )

    @classmethod
    async def tcp(cls, host: str, port: int) -> Listener:
        """Listening on `host` ("" = every interface) and `port` (0: the kernel picks one)."""
        listener = cls()
        listener._server = await asyncio.start_server(
            listener._connected, host or None, port, reuse_address=True
        )
        return listener

    @classmethod
    async def unix(cls, path: Path) -> Listener:
        """Listening on a new unix socket file at `path` (one left there makes this fail)."""
        listener = cls()
        listener._server = await asyncio.start_unix_server(listener._connected, path=str(path))
        return listener

    @property
    def server(self) -> asyncio.Server:
        assert self._server is not None, "opened by tcp() or unix()"
        return self._server

    @property
    def port(self) -> int:
        """The TCP port listened on (the kernel's choice when asked for port 0)."""
        return self.server.sockets[0].getsockname()[1]

    def serve(self, handler: ConnectionHandler) -> None:
        """Hand every connection, those already waiting too, to `handler`."""
        self._handler.set_result(handler)

    async def close(self) -> None:
        """Stop listening; connections still waiting for a handler that never came end."""
        self.server.close()
        if not self._handler.done():
            self._handler.set_result(None)
        await self.server.wait_closed()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = await self._handler
        if handler is None:
            writer.close()
            return
        await handler(reader, writer)
