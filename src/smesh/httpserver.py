"""A small HTTP/1.1 server on asyncio streams, framed by h11: the agent's admin endpoint
and the signing service both use it.

One request per connection, bounded in size and time. A malformed request gets a 400 and
the server keeps serving; a handler's typed error becomes its status code.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
READ_TIMEOUT = 5.0
LINGER_SECONDS = 1.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""
    peer_cert: bytes | None = None  # DER, when the server speaks TLS


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())


class HttpError(Exception):
    """Raised by a handler to answer with *status* and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[[Request], Response | Awaitable[Response]]


class HttpServer:
    def __init__(self, handler: Handler, max_body: int = 0) -> None:
        self.handler = handler
        self.max_body = max_body
        self._server: asyncio.Server | None = None

    async def start_tcp(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self._server = await asyncio.start_server(
            self._serve, host, port, reuse_address=True, ssl=tls
        )

    async def start_unix(self, path: str, tls: ssl.SSLContext | None = None) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path, ssl=tls)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        peer_cert = None
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            peer_cert = ssl_object.getpeercert(binary_form=True)
        try:
            request = await asyncio.wait_for(self._read(reader, conn, peer_cert), READ_TIMEOUT)
            response = await self._answer(request)
        except HttpError as exc:
            response = Response(exc.status, f"{exc}\n".encode())
        except (TimeoutError, h11.RemoteProtocolError, ConnectionError, ssl.SSLError):
            response = Response(400, b"bad request\n")
        if conn.our_state is not h11.SEND_RESPONSE:
            conn = h11.Connection(h11.SERVER)  # answer even when the request never parsed
            conn.receive_data(b"GET / HTTP/1.0\r\n\r\n")
            conn.next_event()
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
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()

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
                path = head.target.decode("ascii", "replace").split("?", 1)[0]
                return Request(head.method.decode(), path, bytes(body), peer_cert)
            else:
                raise h11.RemoteProtocolError("connection closed before a complete request")

    async def _answer(self, request: Request) -> Response:
        result = self.handler(request)
        return await result if inspect.isawaitable(result) else result


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


def router(routes: dict[str, Callable[[], Response | Awaitable[Response]]]) -> Handler:
    """GET-only routing by path (the admin endpoint)."""

    async def handle(request: Request) -> Response:
        if request.method not in {"GET", "HEAD"}:
            return Response(405, b"only GET\n")
        route = routes.get(request.path)
        if route is None:
            return Response(404, f"no such endpoint; try {', '.join(sorted(routes))}\n".encode())
        result = route()
        return await result if inspect.isawaitable(result) else result

    return handle
