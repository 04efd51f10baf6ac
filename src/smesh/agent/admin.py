"""The agent's admin HTTP endpoint: health, readiness, metrics and debug views.

HTTP/1.1 framed by h11, one request per connection. Requests are small and bounded; a
malformed request gets a 400 and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h11

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 16 * 1024
READ_TIMEOUT = 5.0
LINGER_SECONDS = 1.0


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Handler = Callable[[], Response | Awaitable[Response]]


class AdminServer:
    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            response = await asyncio.wait_for(self._respond(reader, conn), READ_TIMEOUT)
        except (TimeoutError, h11.RemoteProtocolError, ConnectionError):
            response = Response(400, b"bad request\n")
            conn = h11.Connection(h11.SERVER)
            conn.receive_data(b"GET / HTTP/1.0\r\n\r\n")
            conn.next_event()
        with contextlib.suppress(ConnectionError, h11.LocalProtocolError):
            headers = [
                ("content-type", response.content_type),
                ("content-length", str(len(response.body))),
                ("connection", "close"),
            ]
            writer.write(conn.send(h11.Response(status_code=response.status, headers=headers)))
            writer.write(conn.send(h11.Data(data=response.body)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            # Half-close and drain before closing: closing with unread input would make the
            # kernel answer with a reset that can destroy the response before it is read.
            writer.write_eof()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_discard(reader), LINGER_SECONDS)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader, conn: h11.Connection) -> Response:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(4096)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                if event.method not in (b"GET", b"HEAD"):
                    return Response(405, b"only GET\n")
                path = event.target.decode("ascii", "replace").split("?", 1)[0]
                handler = self.routes.get(path)
                if handler is None:
                    known = ", ".join(sorted(self.routes))
                    return Response(404, f"no such endpoint; try {known}\n".encode())
                result = handler()
                return await result if inspect.isawaitable(result) else result
            raise h11.RemoteProtocolError("connection closed before a request")


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass
