"""The daemon's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.

It runs on the daemon's own event loop, not as a WSGI server in a thread:
an answer from `/healthz` then proves the loop is turning (a wedged loop
fails the liveness probe, as it should), the readiness callable reads
daemon state from the thread that owns it, and the metrics are only ever
written there. Only rendering a scrape (~15 ms with 1024 devices) goes to
a worker thread, so it cannot delay a ListAndWatch update; prometheus_client
locks its own state for that.

h11 does the HTTP/1.1 (parsing, framing, HEAD); this module only moves
bytes and decides the answers. One request per connection, said with
`Connection: close`: probes and scrapes come seconds apart, and a
connection that ends with its answer needs no idle bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

import h11
import structlog
from prometheus_client.exposition import choose_encoder

from deviceplugin.listener import Listener
from deviceplugin.metrics import Metrics

log = structlog.get_logger(__name__)

MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT_S = 5.0  # to send a request, and to take the answer
LINGER_S = 1.0
STOP_TIMEOUT_S = 2.0
READ_BYTES = 65536
PATHS = ("/metrics", "/healthz", "/readyz")
_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Request:
    """What the answer depends on: method, path without the query, headers (lower-case names)."""

    method: str
    path: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = _TEXT
    extra_headers: tuple[tuple[str, str], ...] = ()


BAD_REQUEST = Response(400, b"bad request\n")


def readiness(registered: Mapping[str, bool]) -> tuple[bool, str]:
    """Readiness from each configured pool's registration state, with the laggards named."""
    missing = sorted(pool for pool, ok in registered.items() if not ok)
    if missing:
        return False, "not registered with the kubelet: " + ", ".join(missing)
    return True, "ok"


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
        self._listener: Listener | None = None
        # Connection handlers and their writers, so `stop` can end them and wait for them.
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def port(self) -> int:
        """The port listened on (the kernel's choice when asked for port 0)."""
        return self._port if self._listener is None else self._listener.port

    async def start(self, listener: Listener | None = None) -> None:
        """Answer on `listener`, opened on the address earlier (`netdp run` opens it before
        it registers), or on a socket opened now."""
        self._listener = listener or await Listener.tcp(self.host, self._port)
        self._listener.serve(self._serve)
        log.info("metrics_server_started", host=self.host or "*", port=self.port)

    async def stop(self) -> None:
        """Stop listening and drop open connections (a scrape in flight is simply cut).

        Handlers end on their own once their socket closes; they are not
        cancelled, as asyncio 3.11 logs a cancelled handler as an error.
        """
        listener, self._listener = self._listener, None
        if listener is None:
            return
        listener.server.close()
        for writer in self._connections.values():
            writer.close()
        if self._connections:
            await asyncio.wait(self._connections.keys(), timeout=STOP_TIMEOUT_S)
        await listener.close()
        log.info("metrics_server_stopped")

    async def respond(self, request: Request) -> Response:
        """What to answer a well-formed request."""
        if request.path not in PATHS:
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
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    event = await _next_request(conn, reader)
            except (TimeoutError, ConnectionError):
                return  # the client never finished its request
            if event is None:
                return  # the client went away without asking anything
            request, response = await self._answer(event)
            head_only = request is not None and request.method == "HEAD"
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    writer.write(_render(conn, response, head_only=head_only))
                    await writer.drain()
                if not _read_to_end(conn):
                    await _discard_input(reader, writer)
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(
        self, event: h11.Request | h11.RemoteProtocolError
    ) -> tuple[Request | None, Response]:
        if isinstance(event, h11.RemoteProtocolError):
            return None, BAD_REQUEST
        request = Request(
            event.method.decode("ascii"),
            event.target.decode("ascii").partition("?")[0],
            {name.decode("ascii"): value.decode("latin-1") for name, value in event.headers},
        )
        try:
            return request, await self.respond(request)
        except Exception:
            log.exception("metrics_request_failed", path=request.path)
            return request, Response(500, b"internal error, see the daemon's log\n")


async def _next_request(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> h11.Request | h11.RemoteProtocolError | None:
    """The request head; the protocol error if the client sent no valid one; None on EOF."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:  # malformed, or a head over MAX_REQUEST_HEAD
            return exc
        if isinstance(event, h11.Request):
            return event
        if event is not h11.NEED_DATA:
            return None  # ConnectionClosed
        conn.receive_data(await reader.read(READ_BYTES))


def _render(conn: h11.Connection, response: Response, *, head_only: bool) -> bytes:
    """The whole answer; h11 leaves out the body of a HEAD answer but keeps its length."""
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        ("Connection", "close"),
        *response.extra_headers,
    ]
    reason = HTTPStatus(response.status).phrase.encode()
    out = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
    if not head_only:
        out += conn.send(h11.Data(data=response.body))
    return out + conn.send(h11.EndOfMessage())


def _read_to_end(conn: h11.Connection) -> bool:
    """Whether everything the client sent is read: a request without a body, fully received."""
    if conn.their_state is h11.ERROR:
        return False
    with contextlib.suppress(h11.RemoteProtocolError):
        return conn.next_event() is h11.EndOfMessage or conn.their_state is h11.DONE
    return False


async def _discard_input(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read what the client still sends after our answer, for a while.

    Closing a socket with unread input makes the kernel send a reset, which
    can destroy our answer before the client reads it; so for requests we
    did not read to the end (too large, or with a body) we half-close and
    wait for the client to finish first.
    """
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(LINGER_S):
            while await reader.read(READ_BYTES):
                pass
