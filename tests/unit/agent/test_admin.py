"""The admin endpoint answers over real sockets and survives bad clients."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from smesh.agent.admin import AdminServer, ConnectionCap, Response, split_routes


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


async def _idle(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from *source* (a loopback address) that sends nothing."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _get(port: int, source: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        data = await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:  # turned away before its request was read
        data = b"reset"
    writer.close()
    return data


def capped(
    limit: int, read_timeout: float, scenario_body: Callable[[AdminServer], Awaitable[None]]
) -> list[str]:
    """Run *scenario_body(server)* against a capped server; the refusals it counted."""
    refused: list[str] = []

    async def scenario() -> None:
        cap = ConnectionCap(limit, read_timeout, refused.append)
        server = AdminServer({"/healthz": lambda: Response(200, b"ok\n")}, cap)
        await server.start("127.0.0.1", 0)
        try:
            await scenario_body(server)
        finally:
            await server.close()

    asyncio.run(scenario())
    return refused


def test_one_peer_holds_a_quarter_of_the_cap_and_others_are_still_served() -> None:
    async def body(server: AdminServer) -> None:
        held = [await _idle(server.port, "127.0.0.9") for _ in range(2)]
        await asyncio.sleep(0.1)
        assert server.open_connections == 2
        third = await _get(server.port, "127.0.0.9")
        assert third.startswith(b"HTTP/1.1 503 ") or third == b"reset"
        assert (await _get(server.port, "127.0.0.1")).startswith(b"HTTP/1.1 200 ")
        for _reader, writer in held:
            writer.close()

    assert capped(8, 30, body) == ["peer_cap"]


def test_past_the_cap_a_connection_gets_503_and_the_descriptor_is_freed() -> None:
    async def body(server: AdminServer) -> None:
        held = [await _idle(server.port, f"127.0.0.{i}") for i in range(10, 14)]
        await asyncio.sleep(0.1)
        flood = [await _idle(server.port, f"127.0.1.{i}") for i in range(50)]
        answers = [await asyncio.wait_for(reader.read(), 10) for reader, _w in flood]
        assert all(a.startswith(b"HTTP/1.1 503 ") for a in answers)
        assert server.open_connections == 4
        for _reader, writer in [*held, *flood]:
            writer.close()

    assert capped(4, 30, body) == ["at_cap"] * 50


def test_a_silent_connection_is_closed_after_the_read_timeout_and_frees_its_place() -> None:
    async def body(server: AdminServer) -> None:
        reader, writer = await _idle(server.port, "127.0.0.1")
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 408 ")
        writer.close()
        await asyncio.sleep(0.05)
        assert server.open_connections == 0
        assert (await _get(server.port)).startswith(b"HTTP/1.1 200 ")

    assert capped(1, 0.3, body) == ["read_timeout"]


def test_a_client_that_never_reads_its_answer_is_dropped() -> None:
    big = b"x" * (64 << 20)  # more than the socket buffers take

    async def body(server: AdminServer) -> None:
        _reader, writer = await _idle(server.port, "127.0.0.1")
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(4.0)  # the deadline for writing is 1.3 s: read timeout + linger
        assert server.open_connections == 0
        writer.close()

    refused: list[str] = []

    async def scenario() -> None:
        cap = ConnectionCap(4, 0.3, refused.append)
        server = AdminServer({"/big": lambda: Response(200, big)}, cap)
        await server.start("127.0.0.1", 0)
        try:
            await body(server)
        finally:
            await server.close()

    asyncio.run(scenario())


def test_debug_routes_go_to_the_debug_listener_by_their_prefix() -> None:
    """A view added later (``/debug/flows``) lands on the node's loopback by its name alone."""

    def ok() -> Response:
        return Response(200, b"ok\n")

    paths = ["/healthz", "/ready", "/metrics", "/debug/workloads", "/debug/flows", "/debugging"]
    scrape, debug = split_routes(dict.fromkeys(paths, ok))
    assert sorted(scrape) == ["/debugging", "/healthz", "/metrics", "/ready"]
    assert sorted(debug) == ["/debug/flows", "/debug/workloads"]
