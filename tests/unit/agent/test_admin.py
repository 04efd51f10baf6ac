"""The admin endpoint answers over real sockets and survives bad clients."""

from __future__ import annotations

import asyncio

from smesh.agent.admin import AdminServer, Response


async def request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


def run(raw_requests: list[bytes]) -> list[bytes]:
    async def scenario() -> list[bytes]:
        async def ready() -> Response:
            return Response(503, b"not ready\n")

        server = AdminServer({"/healthz": lambda: Response(200, b"ok\n"), "/ready": ready})
        await server.start("127.0.0.1", 0)
        try:
            return [await request(server.port, raw) for raw in raw_requests]
        finally:
            await server.close()

    return asyncio.run(scenario())


def test_routes_sync_and_async_handlers() -> None:
    ok, ready = run(
        [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"]
    )
    assert ok.startswith(b"HTTP/1.1 200 ")
    assert ok.endswith(b"\r\n\r\nok\n")
    assert ready.startswith(b"HTTP/1.1 503 ")


def test_bad_requests_get_a_status_and_the_server_keeps_serving() -> None:
    garbage, unknown, post, huge, after = run(
        [
            b"\x16\x03\x01 not http at all\r\n\r\n",
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
    )
    assert garbage.startswith(b"HTTP/1.1 400 ")
    assert unknown.startswith(b"HTTP/1.1 404 ")
    assert b"/healthz" in unknown
    assert post.startswith(b"HTTP/1.1 405 ")
    assert huge.startswith(b"HTTP/1.1 400 ")
    assert after.startswith(b"HTTP/1.1 200 ")
