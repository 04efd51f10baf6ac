"""A small HTTP/1.1 server on asyncio streams, framed by h11: the agent's admin endpoint
and the signing service both use it.

One request per connection, bounded in size and time. A malformed request gets a 400 and
the server keeps serving; a handler's typed error becomes its status code.

Optionally bounded in connections too (:class:`ConnectionCap`): every open connection is a
descriptor and a task in the serving process, and a client that opens connections and
sends nothing used to hold them for the read timeout each, without limit (an attack
trial held 8,328 descriptors in an agent from one pod). Past the cap a connection is
answered 503 and closed at once; one peer address may hold only a share of the cap, so
one pod's flood leaves room for the node's own probes and scrapers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import h11

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
READ_TIMEOUT = 5.0
LINGER_SECONDS = 1.0
REFUSAL_LOG_INTERVAL = 5.0  # a flood logs this often at most
# Sent, then closed, to a connection past the cap: no request is read, so no parser runs.
_AT_CAP = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 32\r\nconnection: close\r\n\r\ntoo many connections; try again\n"
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""
    peer_cert: bytes | None = None  # DER, when the server speaks TLS
    query: str = ""  # what follows the path's "?", undecoded


class Stream(Protocol):
    """A response body sent as it is made (chunked), until it ends or the client goes.

    No time bound applies to it (a follower of live events waits for them): what it holds
    and how long is the stream's own business. ``close`` is called once it is over, however
    it ended, also when it never started.
    """

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())
    stream: Stream | None = None  # the body, instead of *body*


class HttpError(Exception):
    """Raised by a handler to answer with *status* and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[[Request], Response | Awaitable[Response]]


@dataclass(frozen=True)
class ConnectionCap:
    """How many connections the server holds at once, and how long one may stay silent.

    *limit* bounds them all; one peer address may hold at most ``limit // PEER_SHARE``
    (at least one). *on_refused* is told each connection turned away or timed out, with
    the reason (``at_cap``, ``peer_cap``, ``read_timeout``), for a metric.
    """

    PEER_SHARE = 4

    limit: int
    read_timeout: float = READ_TIMEOUT
    on_refused: Callable[[str], None] = lambda reason: None

    @property
    def per_peer(self) -> int:
        return max(1, self.limit // self.PEER_SHARE)


class HttpServer:
    def __init__(
        self, handler: Handler, max_body: int = 0, cap: ConnectionCap | None = None
    ) -> None:
        self.handler = handler
        self.max_body = max_body
        self.cap = cap
        self._server: asyncio.Server | None = None
        self._open = 0
        self._by_peer: collections.Counter[str] = collections.Counter()
        self._refused_since_log = 0
        self._last_log = -REFUSAL_LOG_INTERVAL

    @property
    def open_connections(self) -> int:
        return self._open

    async def start_tcp(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self._server = await asyncio.start_server(
            self._serve, host, port, reuse_address=True, ssl=tls
        )

    async def start_unix(self, path: str, tls: ssl.SSLContext | None = None) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path, ssl=tls)

    async def adopt(self, sock: socket.socket) -> None:
        """Serve on a listening socket another process passed (an agent hand-over)."""
        if sock.family == socket.AF_UNIX:
            self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        else:
            self._server = await asyncio.start_server(self._serve, sock=sock)

    def sockets(self) -> list[socket.socket]:
        """The listening sockets, to pass to another process."""
        return list(self._server.sockets) if self._server is not None else []

    def stop_listening(self) -> None:
        """Stop accepting (closing this process's copy); open connections go on."""
        if self._server is not None:
            self._server.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_host(writer)
        refusal = self._over_cap(peer)
        if refusal is not None:
            self._turn_away(writer, peer, refusal)
            return
        self._open += 1
        self._by_peer[peer] += 1
        try:
            await self._serve_one(reader, writer)
        finally:
            self._open -= 1
            self._by_peer[peer] -= 1
            if not self._by_peer[peer]:
                del self._by_peer[peer]

    def _over_cap(self, peer: str) -> str | None:
        if self.cap is None:
            return None
        if self._open >= self.cap.limit:
            return "at_cap"
        if self._by_peer[peer] >= self.cap.per_peer:
            return "peer_cap"
        return None

    def _turn_away(self, writer: asyncio.StreamWriter, peer: str, reason: str) -> None:
        """Answer 503 and close now: the descriptor is gone before the next accept.

        The 503 is best effort: a client whose request had already arrived sees a reset
        instead (closing with unread input resets), which is a refusal all the same.
        """
        assert self.cap is not None
        self.cap.on_refused(reason)
        with contextlib.suppress(OSError):
            writer.write(_AT_CAP)
        writer.transport.abort()  # no lingering for a peer that may never read
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._last_log >= REFUSAL_LOG_INTERVAL:
            log.warning(
                "turned away %d connection(s) since the last such line (latest from %s: %s); "
                "%d open, limit %d, %d per peer address; raise admin.maxConnections if "
                "these are legitimate clients",
                self._refused_since_log,
                peer or "?",
                reason,
                self._open,
                self.cap.limit,
                self.cap.per_peer,
            )
            self._refused_since_log = 0
            self._last_log = now

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        read_timeout = self.cap.read_timeout if self.cap is not None else READ_TIMEOUT
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        peer_cert = None
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            peer_cert = ssl_object.getpeercert(binary_form=True)
        try:
            request = await asyncio.wait_for(self._read(reader, conn, peer_cert), read_timeout)
            response = await self._answer(request)
        except HttpError as exc:
            response = Response(exc.status, f"{exc}\n".encode())
        except TimeoutError:
            if self.cap is not None:
                self.cap.on_refused("read_timeout")
            response = Response(408, f"no complete request within {read_timeout:g} s\n".encode())
        except (h11.RemoteProtocolError, ConnectionError, ssl.SSLError):
            response = Response(400, b"bad request\n")
        if response.stream is not None:
            try:
                await self._stream(reader, writer, conn, response, response.stream)
            finally:
                response.stream.close()
            return
        if conn.our_state is not h11.SEND_RESPONSE:
            conn = h11.Connection(h11.SERVER)  # answer even when the request never parsed
            conn.receive_data(b"GET / HTTP/1.0\r\n\r\n")
            conn.next_event()
        try:
            # Writing is bounded too: a client that never reads would hold the connection.
            # (asyncio.timeout, not wait_for: no task of its own to outlive a stopped loop.)
            async with asyncio.timeout(read_timeout + LINGER_SECONDS):
                await self._respond(reader, writer, conn, response)
        except TimeoutError:
            writer.transport.abort()
            return
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()

    async def _respond(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: h11.Connection,
        response: Response,
    ) -> None:
        with contextlib.suppress(ConnectionError, h11.LocalProtocolError, ssl.SSLError):
            headers = [
                ("content-type", response.content_type),
                ("content-length", str(len(response.body))),
                ("connection", "close"),
                *response.headers,
            ]
            writer.write(conn.send(h11.Response(status_code=response.status, headers=headers)))
            writer.write(conn.send(h11.Data(data=response.body)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            # Half-close and drain before closing: closing with unread input would make the
            # kernel answer with a reset that can destroy the response before it is read.
            if writer.can_write_eof():
                writer.write_eof()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_discard(reader), LINGER_SECONDS)

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: h11.Connection,
        response: Response,
        stream: Stream,
    ) -> None:
        """Send *stream* until it ends (then the last chunk, and close) or the client goes
        (its end of the connection closed: then abort, whatever the stream had left)."""
        pump = asyncio.ensure_future(self._pump(writer, conn, response, stream))
        gone = asyncio.ensure_future(_discard(reader))
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, gone):
                task.cancel()
            await asyncio.gather(pump, gone, return_exceptions=True)
        if pump.cancelled() or pump.exception() is not None or not pump.result():
            writer.transport.abort()
            return
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()

    async def _pump(
        self, writer: asyncio.StreamWriter, conn: h11.Connection, response: Response, stream: Stream
    ) -> bool:
        """Whether the whole stream went out, its last chunk included."""
        headers = [
            ("content-type", response.content_type),
            ("cache-control", "no-store"),
            ("connection", "close"),
            *response.headers,
        ]
        read_timeout = self.cap.read_timeout if self.cap is not None else READ_TIMEOUT
        try:
            writer.write(conn.send(h11.Response(status_code=response.status, headers=headers)))
            await writer.drain()
            async for chunk in stream.chunks():
                if chunk:
                    writer.write(conn.send(h11.Data(data=chunk)))
                    await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()))
            async with asyncio.timeout(read_timeout + LINGER_SECONDS):
                await writer.drain()
        except (ConnectionError, h11.LocalProtocolError, ssl.SSLError, TimeoutError):
            return False
        except Exception:  # a stream's bug ends its response, never the server
            log.exception("a streamed response failed")
            return False
        return True

    async def _read(
        self, reader: asyncio.StreamReader, conn: h11.Connection, peer_cert: bytes | None
    ) -> Request:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.max_body:
                    raise HttpError(413, f"request body larger than {self.max_body} bytes")
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                path, _, query = head.target.decode("ascii", "replace").partition("?")
                return Request(head.method.decode(), path, bytes(body), peer_cert, query)
            else:
                raise h11.RemoteProtocolError("connection closed before a complete request")

    async def _answer(self, request: Request) -> Response:
        result = self.handler(request)
        return await result if inspect.isawaitable(result) else result


def _peer_host(writer: asyncio.StreamWriter) -> str:
    """The peer's address without its port (a unix socket's peer has none: "")."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return ""


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


@dataclass(frozen=True)
class WithRequest:
    """A route that reads its request (the query), where the others need nothing of it."""

    handler: Handler


Routes = dict[str, Callable[[], Response | Awaitable[Response]] | WithRequest]


def router(routes: Routes) -> Handler:
    """GET-only routing by path (the admin endpoint)."""

    async def handle(request: Request) -> Response:
        if request.method not in {"GET", "HEAD"}:
            return Response(405, b"only GET\n")
        route = routes.get(request.path)
        if route is None:
            return Response(404, f"no such endpoint; try {', '.join(sorted(routes))}\n".encode())
        result = route.handler(request) if isinstance(route, WithRequest) else route()
        return await result if inspect.isawaitable(result) else result

    return handle
