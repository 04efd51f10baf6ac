"""The handshake budget and the peers' fair shares, on real sockets and real TLS.

Attackers connect from other loopback addresses (127.0.0.9, ...) than the client pod's
agent (127.0.0.1): a source address is what the handshake budget counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smesh.dataplane import pool
from smesh.dataplane.context import Limits
from smesh.dataplane.tlsio import TlsSession
from smesh.identity import tls
from smesh.identity.spiffe import SpiffeId
from smesh.tunnel import mux
from tests.unit.dataplane.harness import SERVER_IP, Mesh, Server, peer_ended, recv_all
from tests.unit.dataplane.test_adversarial import still_serving, tls_tunnel
from tests.unit.dataplane.test_carrier import first_answer, mux_connection

OTHER_ID = SpiffeId.for_workload("default", "pod-2")


def client_hello() -> bytes:
    """The first flight of a TLS client, to send and then never finish the handshake."""
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="x")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def stall(mesh: Mesh, source: str, count: int, hello: bool = False) -> list[socket.socket]:
    """*count* connections from *source* to the tunnel port that never finish a handshake."""
    held = []
    first = client_hello() if hello else b""
    for _ in range(count):
        try:
            sock = socket.create_connection(
                (str(SERVER_IP), mesh.tunnel_port), timeout=5, source_address=(source, 0)
            )
        except ConnectionResetError:  # turned away as soon as it was accepted
            continue
        held.append(sock)
        if first:
            with contextlib.suppress(OSError):
                sock.sendall(first)
    return held


@contextlib.contextmanager
def holding_server(mesh: Mesh) -> Iterator[threading.Event]:
    """A server app that keeps every connection open until the event is set."""
    release = threading.Event()
    server = Server(lambda conn: release.wait(10))
    mesh.destination = (SERVER_IP, server.port)
    try:
        yield release
    finally:
        release.set()
        server.close()


def wait_until(condition: object, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_unfinished_handshakes_do_not_take_the_pods_cap(tmp_path: Path) -> None:
    """Forty connections that never finish a handshake, against a cap of four: the pod's
    own callers still get through (before, the stalled ones filled the cap)."""
    mesh = Mesh(tmp_path, Limits(handshake_timeout=5, max_connections=4))
    held: list[socket.socket] = []
    try:
        held += stall(mesh, "127.0.0.9", 20)
        held += stall(mesh, "127.0.0.9", 20, hello=True)
        time.sleep(0.3)
        still_serving(mesh)
        assert ("inbound", "handshakes_per_source") in mesh.recorder.away
        assert ("inbound", "at_cap") not in mesh.recorder.away
        assert sum(not peer_ended(s) for s in held) <= Limits().max_handshakes_per_source
    finally:
        for sock in held:
            sock.close()
        mesh.close()


def test_a_full_handshake_budget_still_lets_a_new_source_in(tmp_path: Path) -> None:
    limits = Limits(handshake_timeout=5, max_handshakes_per_source=3, max_handshakes=6)
    mesh = Mesh(tmp_path, limits)
    held: list[socket.socket] = []
    try:
        for source in ("127.0.0.9", "127.0.0.10", "127.0.0.11"):
            held += stall(mesh, source, 5, hello=True)
        time.sleep(0.3)
        assert mesh.call(lambda: len(mesh.server._handshakes)) == 6
        still_serving(mesh)  # the client pod's agent (127.0.0.1) had none under way
        away = mesh.recorder.away
        assert ("inbound", "handshakes_total") in away
        assert ("inbound", "handshakes_per_source") in away
    finally:
        for sock in held:
            sock.close()
        mesh.close()


def test_an_unfinished_handshake_is_dropped_after_the_short_inbound_deadline(
    tmp_path: Path,
) -> None:
    mesh = Mesh(tmp_path, Limits(handshake_timeout=10, inbound_handshake_timeout=0.3))
    try:
        (silent,) = stall(mesh, "127.0.0.9", 1, hello=True)
        started = time.monotonic()
        silent.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            while silent.recv(65536):
                pass
        assert time.monotonic() - started < 3  # not tlsHandshake's 10 s
        records = mesh.recorder.wait_for(lambda r: any(x.result == "timeout" for x in r))
        assert mesh.call(lambda: len(mesh.server._handshakes)) == 0
        assert records[-1].direction == "inbound"
        silent.close()
    finally:
        mesh.close()


def test_a_peer_at_its_carrier_share_gives_up_an_idle_one_then_is_refused(
    tmp_path: Path,
) -> None:
    mesh = Mesh(tmp_path, Limits(handshake_timeout=5, max_carriers_per_peer=2))
    held: list[ssl.SSLSocket] = []
    try:
        with holding_server(mesh):
            port = mesh.destination[1]
            held += [mux_connection(mesh), mux_connection(mesh)]
            wait_until(lambda: mesh.call(lambda: len(mesh.server._carriers)) == 2)
            held.append(mux_connection(mesh))  # the oldest idle one makes room
            held[0].settimeout(5)
            assert held[0].recv(100) == b""  # closed with close_notify
            for sock in held[1:]:
                assert first_answer(sock, 1, port)[0] == mux.OK  # both busy now
            refused = mux_connection(mesh)  # handshake done, then reset: no idle one left
            assert first_answer(refused, 1, port) == (0, b"")
            assert ("inbound", "peer_carriers") in mesh.recorder.away
            records = mesh.recorder.wait_for(lambda r: any(x.result == "refused" for x in r))
            refused_record = next(x for x in records if x.result == "refused")
            assert "holds its share of 2 carriers" in refused_record.detail
            # Another identity from the same address is another peer, with its own share.
            cred = mesh.ca.issue_credential(str(OTHER_ID), dt.timedelta(hours=1), "node")
            ctx = tls.client_context(cred, mesh.ca.bundle())
            sock = socket.create_connection((str(SERVER_IP), mesh.tunnel_port), timeout=5)
            other = ctx.wrap_socket(sock)
            held.append(other)
            assert first_answer(other, 1, port)[0] == mux.OK
    finally:
        for sock in held:
            sock.close()
        mesh.close()


def test_a_peer_at_its_stream_share_is_refused_503_on_its_carrier(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, Limits(handshake_timeout=5, max_streams_per_peer=2))
    try:
        with holding_server(mesh), mux_connection(mesh) as peer:
            port = mesh.destination[1]
            assert first_answer(peer, 1, port)[0] == mux.OK
            assert first_answer(peer, 3, port)[0] == mux.OK
            kind, payload = first_answer(peer, 5, port)
            assert kind == mux.REFUSE
            assert mux.parse_refuse(payload)[0] == 503
            assert ("inbound", "peer_streams") in mesh.recorder.away
    finally:
        mesh.close()


def test_a_connect_tunnel_past_the_peers_share_is_a_503(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, Limits(handshake_timeout=5, max_streams_per_peer=1))
    try:
        with holding_server(mesh):
            target = f"{SERVER_IP}:{mesh.destination[1]}"
            request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
            with tls_tunnel(mesh) as first:
                first.sendall(request)
                assert first.recv(100).startswith(b"HTTP/1.1 200")
                with tls_tunnel(mesh) as second:
                    second.sendall(request)
                    reply = recv_all(second)
            assert reply.startswith(b"HTTP/1.1 503"), reply
            assert b"holds its share of 1 connections" in reply
    finally:
        mesh.close()


def test_an_app_gets_at_most_its_share_of_connections_to_one_pod(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mesh = Mesh(tmp_path, Limits(handshake_timeout=5, max_streams_per_peer=2))
    try:
        with holding_server(mesh):
            held = [mesh.connect(), mesh.connect()]
            wait_until(lambda: mesh.call(lambda: len(mesh.client._connections)) == 2)
            time.sleep(0.2)
            mesh.expect_reset()
            assert ("outbound", "peer_streams") in mesh.recorder.away
            assert "holds its share of 2 connections to 127.0.0.3" in caplog.text
            records = mesh.recorder.wait_for(lambda r: any(x.result == "refused" for x in r))
            assert any(r.direction == "outbound" for r in records)
            for app in held:
                app.close()
    finally:
        mesh.close()


def test_a_pod_rotating_carriers_past_max_age_stays_within_the_servers_carrier_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long connections keep retired carriers open; at the destination's carrier share the
    pool reuses the youngest of them instead of dialling one the server would reset."""
    monkeypatch.setattr(pool, "MAX_AGE", 0.2)
    mesh = Mesh(tmp_path, Limits(handshake_timeout=5, max_carriers_per_peer=2))
    server = Server(lambda conn: [conn.sendall(d) for d in iter(lambda: conn.recv(65536), b"")])
    mesh.destination = (SERVER_IP, server.port)
    held: list[socket.socket] = []
    try:
        for n in range(4):  # each after the previous carrier is retired: 4 would need 4
            app = mesh.connect()
            held.append(app)
            app.sendall(b"ping %d" % n)
            assert app.recv(100) == b"ping %d" % n
            time.sleep(0.3)
        assert mesh.call(lambda: len(mesh.client.pool.carriers())) == 2
        assert mesh.call(lambda: len(mesh.server._carriers)) == 2
        assert ("inbound", "peer_carriers") not in mesh.recorder.away
    finally:
        for app in held:
            app.close()
        server.close()
        mesh.close()


async def _never_drains(self: TlsSession) -> None:
    """A peer whose receive window stays shut: the close_notify never leaves."""
    await asyncio.Event().wait()


def test_a_503_the_peer_never_takes_is_reset_after_the_request_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refused connection holds no handshake slot: without a deadline of its own, a
    peer that reads nothing would keep it (socket, TLS state, task) for good."""
    limits = Limits(handshake_timeout=5, request_timeout=0.3, max_streams_per_peer=1)
    mesh = Mesh(tmp_path, limits)
    try:
        with holding_server(mesh):
            target = f"{SERVER_IP}:{mesh.destination[1]}"
            request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
            with tls_tunnel(mesh) as first:
                first.sendall(request)
                assert first.recv(100).startswith(b"HTTP/1.1 200")
                monkeypatch.setattr(TlsSession, "close", _never_drains)
                with tls_tunnel(mesh) as second:
                    second.sendall(request)
                    second.settimeout(5)
                    with contextlib.suppress(ConnectionResetError, ssl.SSLError):
                        recv_all(second)  # ends (reset) instead of timing out
            records = mesh.recorder.wait_for(lambda r: any(x.result == "refused" for x in r))
            refused = next(x for x in records if x.result == "refused")  # the first tunnel's
            assert "holds its share of 1 connections" in refused.detail  # may close later
            assert mesh.call(lambda: len(mesh.server._unproven)) == 0
    finally:
        mesh.close()
