"""The data plane's own connect: done at once on loopback, or on the loop with a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Iterator

import pytest

from smesh.dataplane.dial import ConnectFailed, Connecting, Outcome, sockaddr
from smesh.dataplane.loop import LOOP_KINDS, loop_factory
from smesh.dataplane.sockets import prepare

LOCALHOST = ipaddress.ip_address("127.0.0.1")


@pytest.fixture(params=LOOP_KINDS)
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    loop = loop_factory(request.param)()
    yield loop
    loop.close()


@contextlib.contextmanager
def listener(backlog: int = 16) -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    with sock:
        yield sock


@contextlib.contextmanager
def full_listener() -> Iterator[socket.socket]:
    """A listener whose accept queue is full: the kernel drops new SYNs, connects hang."""
    with listener(backlog=0) as sock:
        port = sock.getsockname()[1]
        fillers = [prepare(socket.socket()) for _ in range(3)]
        for filler in fillers:
            filler.connect_ex(("127.0.0.1", port))
        try:
            yield sock
        finally:
            for filler in fillers:
                filler.close()


def connect(loop: asyncio.AbstractEventLoop, port: int, timeout: float = 2.0) -> Outcome:
    async def go() -> Outcome:
        done: asyncio.Future[Outcome] = loop.create_future()
        Connecting(loop, prepare(socket.socket()), (LOCALHOST, port), timeout, done.set_result)
        return await done

    return loop.run_until_complete(go())


def test_a_loopback_connect_is_done_before_the_constructor_returns(
    loop: asyncio.AbstractEventLoop,
) -> None:
    outcomes: list[Outcome] = []

    async def go() -> Connecting:
        return Connecting(loop, prepare(socket.socket()), (LOCALHOST, port), 2.0, outcomes.append)

    with listener() as server:
        port = server.getsockname()[1]
        connecting = loop.run_until_complete(go())
        assert not connecting.pending
        assert len(outcomes) == 1
        sock = outcomes[0]
        assert isinstance(sock, socket.socket)
        peer, _ = server.accept()
        with sock, peer:
            sock.send(b"hi")
            assert peer.recv(2) == b"hi"


def test_a_closed_port_is_refused_with_the_address_in_the_detail(
    loop: asyncio.AbstractEventLoop,
) -> None:
    with listener() as server:
        port = server.getsockname()[1]
    outcome = connect(loop, port)
    assert isinstance(outcome, ConnectFailed)
    assert outcome.result == "refused"
    assert f"127.0.0.1:{port}" in outcome.detail


def test_a_connect_that_hangs_times_out(loop: asyncio.AbstractEventLoop) -> None:
    with full_listener() as server:
        outcome = connect(loop, server.getsockname()[1], timeout=0.3)
    assert isinstance(outcome, ConnectFailed)
    assert outcome.result == "timeout"
    assert "timed out" in outcome.detail


def test_cancel_closes_the_socket_and_reports_nothing(loop: asyncio.AbstractEventLoop) -> None:
    outcomes: list[Outcome] = []
    sock = prepare(socket.socket())

    async def go(port: int) -> None:
        connecting = Connecting(loop, sock, (LOCALHOST, port), 0.2, outcomes.append)
        assert connecting.pending
        connecting.cancel()
        assert not connecting.pending
        await asyncio.sleep(0.4)  # past the timeout: the timer was cancelled too

    with full_listener() as server:
        loop.run_until_complete(go(server.getsockname()[1]))
    assert outcomes == []
    assert sock.fileno() == -1


def test_a_connect_that_waits_for_room_completes_on_the_loop(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """The SYN is dropped until the server accepts; the kernel's retry then gets through."""
    with full_listener() as server:
        server.setblocking(False)

        async def go() -> tuple[bool, Outcome]:
            done: asyncio.Future[Outcome] = loop.create_future()
            connecting = Connecting(
                loop,
                prepare(socket.socket()),
                (LOCALHOST, server.getsockname()[1]),
                10.0,
                done.set_result,
            )
            waiting = connecting.pending
            await asyncio.sleep(0.1)
            with contextlib.suppress(BlockingIOError):
                while True:
                    server.accept()[0].close()  # room in the queue for the retried SYN
            return waiting, await done

        waiting, outcome = loop.run_until_complete(go())
        assert waiting
        assert isinstance(outcome, socket.socket)
        with outcome:
            server.settimeout(5)
            peer, _ = server.accept()
            with peer:
                outcome.send(b"hi")
                assert peer.recv(2) == b"hi"


def test_a_scoped_ipv6_address_keeps_its_scope_in_the_socket_address() -> None:
    # With a 2-tuple Python sets sin6_scope_id to 0 and a link-local connect fails (EINVAL).
    assert sockaddr(ipaddress.IPv6Address("fe80::1%3"), 80) == ("fe80::1", 80, 0, 3)
    assert sockaddr(ipaddress.IPv6Address("fd00::1"), 80) == ("fd00::1", 80)
    assert sockaddr(LOCALHOST, 80) == ("127.0.0.1", 80)
