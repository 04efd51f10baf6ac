"""Faults inside the agent: the app sees a reset, the log says why, and the agent serves on."""

from __future__ import annotations

import socket
import time

import pytest

from smesh.dataplane import flows
from smesh.dataplane.endpoint import ACCEPT_RETRY_DELAY
from tests.unit.dataplane.harness import SERVER_IP, Mesh, descriptors_left
from tests.unit.dataplane.test_adversarial import answer, tls_tunnel
from tests.unit.dataplane.test_relay import echo_server, ping, recv_all


def test_a_server_pod_out_of_descriptors_answers_502_and_serves_on(mesh: Mesh) -> None:
    server = echo_server()
    mesh.destination = (SERVER_IP, server.port)
    ping(mesh)  # the carrier is up: a new stream costs the server side one socket
    mesh.recorder.wait_for(lambda r: len(r) == 2)
    mesh.server_sockets.exhausted = True
    mesh.expect_reset(b"hello")
    records = mesh.recorder.wait_for(lambda r: len(r) == 4)
    mesh.server_sockets.exhausted = False
    inbound = next(r for r in records[2:] if r.direction == "inbound")
    outbound = next(r for r in records[2:] if r.direction == "outbound")
    assert inbound.result == "error"
    assert "Too many open files" in inbound.detail
    assert outbound.result == "refused"
    assert "502" in outbound.detail
    ping(mesh)  # same carrier, next stream
    assert mesh.recorder.open_carriers == {"client": 1, "server": 1}
    server.close()


def test_a_connect_tunnel_into_a_pod_out_of_descriptors_answers_502(mesh: Mesh) -> None:
    """The same fault on the HTTP/1.1 CONNECT path (peers without smesh-mux/1)."""
    server = echo_server()
    mesh.server_sockets.exhausted = True
    try:
        with tls_tunnel(mesh) as peer:
            target = f"{SERVER_IP}:{server.port}".encode()
            reply = answer(peer, b"CONNECT " + target + b" HTTP/1.1\r\nhost: x\r\n\r\n")
    finally:
        mesh.server_sockets.exhausted = False
    assert reply.startswith(b"HTTP/1.1 502"), reply
    assert b"Too many open files" in reply
    [record] = mesh.recorder.wait_for(lambda r: len(r) == 1)
    assert (record.result, record.detail) == (
        "error",
        f"502: connecting to {target.decode()}: [Errno 24] Too many open files",
    )
    server.close()


def test_an_app_socket_connected_for_a_stream_that_ended_meanwhile_is_closed(mesh: Mesh) -> None:
    """The server side's OK can find the carrier broken (a send failing with EPIPE ends it,
    and its streams); the app's socket, connected just then, must not be kept."""
    app_listener = socket.socket()
    app_listener.bind((str(SERVER_IP), 0))
    app_listener.listen(0)
    queue_filler = socket.create_connection(app_listener.getsockname())
    mesh.destination = (SERVER_IP, app_listener.getsockname()[1])
    with mesh.connect() as app:
        app.sendall(b"hello")  # the server side's connect to the full listener waits
        deadline = time.monotonic() + 5
        while not mesh.call(lambda: [s for c in mesh.server._carriers for s in c.streams.values()]):
            assert time.monotonic() < deadline, "the stream never reached the server side"
            time.sleep(0.01)
        other = echo_server()
        connected = socket.create_connection((str(SERVER_IP), other.port))  # the app's, say

        def ok_into_a_broken_carrier() -> tuple[str, int]:
            (carrier,) = mesh.server._carriers
            (stream,) = carrier.streams.values()
            carrier.tls.sock.shutdown(socket.SHUT_WR)  # the next send fails: EPIPE
            flows._stream_connected(carrier, stream, connected)
            return stream.record.result, connected.fileno()

        result, fd = mesh.call(ok_into_a_broken_carrier)
        assert result == "reset"
        assert fd == -1, "the app's socket was kept for a stream that had ended"
    queue_filler.close()
    app_listener.close()
    other.close()


def test_a_bug_setting_up_an_outbound_connection_resets_only_that_one(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = echo_server()
    mesh.destination = (SERVER_IP, server.port)
    real = flows.outbound
    calls = []

    def first_one_fails(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(flows, "outbound", first_one_fails)
    mesh.expect_reset(b"hello")
    records = mesh.recorder.wait_for(lambda r: len(r) == 1)
    assert (records[0].result, records[0].detail) == ("error", "internal error")
    assert "unexpected error setting up a connection of pod-1" in caplog.text
    assert "RuntimeError: a bug" in caplog.text
    ping(mesh)
    server.close()


def test_a_pod_out_of_descriptors_keeps_connections_waiting_and_does_not_spin(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    server = echo_server()
    mesh.destination = (SERVER_IP, server.port)
    ping(mesh)
    mesh.recorder.wait_for(lambda r: len(r) == 2)  # its sockets are closed: no holes open up
    app = socket.socket()
    app.settimeout(10)
    with descriptors_left(0):  # the client agent's accept gets EMFILE from the kernel
        app.connect(mesh.outbound_address)  # the kernel queues it in the backlog
        deadline = time.monotonic() + 5
        while "cannot accept outbound connections" not in caplog.text:
            assert time.monotonic() < deadline, "the agent never tried to accept"
            time.sleep(0.01)
        time.sleep(4 * ACCEPT_RETRY_DELAY)
        failures = mesh.call(lambda: mesh.client.accept_failures)
    assert 1 <= failures <= 6, f"{failures} failed accepts: the listener did not rest"
    assert "Too many open files" in caplog.text
    assert caplog.text.count("cannot accept") == 1  # one line, not one per try
    assert set(mesh.recorder.away) == {("outbound", "accept_failed")}
    with app:  # with descriptors again, the waiting connection is served
        app.sendall(b"waited")
        app.shutdown(socket.SHUT_WR)
        assert recv_all(app) == b"waited"
    server.close()
