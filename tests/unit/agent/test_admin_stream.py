"""A streamed admin answer (GET /debug/flows): chunked as it comes, its query read, ended
cleanly by the server or quietly by a client that goes away."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from smesh.agent import client
from smesh.agent.admin import AdminServer, Response, WithRequest
from smesh.httpserver import HttpError, Request


class Lines:
    """A stream of *count* lines, then (if *hold*) waiting until closed."""

    def __init__(self, count: int, hold: bool) -> None:
        self.count = count
        self.hold = hold
        self.closed = asyncio.Event()

    async def chunks(self) -> AsyncIterator[bytes]:
        for i in range(self.count):
            yield f'{{"n": {i}}}\n'.encode()
        if self.hold:
            await self.closed.wait()

    def close(self) -> None:
        self.closed.set()


def test_a_stream_is_sent_chunked_and_its_close_is_called() -> None:
    async def scenario() -> None:
        seen: list[str] = []
        stream = Lines(3, hold=False)

        def flows(request: Request) -> Response:
            seen.append(request.query)
            if "refuse" in request.query:
                raise HttpError(503, "too many")
            return Response(200, b"", "application/x-ndjson", stream=stream)

        server = AdminServer({"/flows": WithRequest(flows)})
        await server.start("127.0.0.1", 0)
        try:
            lines = await asyncio.to_thread(
                lambda: list(client.stream("127.0.0.1", server.port, "/flows?a=1&b=2"))
            )
            assert lines == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
            assert seen == ["a=1&b=2"]
            await asyncio.wait_for(stream.closed.wait(), 5)  # once the server is done with it
            with pytest.raises(client.AdminRefused, match="answered 503: too many"):
                await asyncio.to_thread(
                    lambda: list(client.stream("127.0.0.1", server.port, "/flows?refuse"))
                )
        finally:
            await server.close()

    asyncio.run(scenario())


def test_a_client_that_goes_away_ends_a_waiting_stream() -> None:
    async def scenario() -> None:
        stream = Lines(1, hold=True)
        server = AdminServer({"/flows": WithRequest(lambda _r: Response(200, b"", stream=stream))})
        await server.start("127.0.0.1", 0)
        try:

            def read_one_and_leave() -> bytes:
                lines = client.stream("127.0.0.1", server.port, "/flows", read_timeout=None)
                first = next(lines)
                lines.close()  # the socket closes: the agent must notice without an event
                return first

            assert await asyncio.to_thread(read_one_and_leave) == b'{"n": 0}'
            await asyncio.wait_for(stream.closed.wait(), 5)
            assert await _settles(server)
        finally:
            await server.close()

    asyncio.run(scenario())


async def _settles(server: AdminServer) -> bool:
    for _ in range(100):
        if server.open_connections == 0:
            return True
        await asyncio.sleep(0.01)
    return False


def test_a_cut_stream_is_an_error_not_an_end() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            conn.recv(4096)
            conn.sendall(
                b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\n{"n": 0}\n\r\n'
            )
            conn.close()  # no last chunk: the agent died mid-stream

        async def scenario() -> None:
            server = asyncio.ensure_future(asyncio.to_thread(serve))
            with pytest.raises(client.AdminUnreachable, match="cut its answer short"):
                await asyncio.to_thread(lambda: list(client.stream("127.0.0.1", port, "/flows")))
            await server

        asyncio.run(scenario())
