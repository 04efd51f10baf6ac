"""The data plane end to end on loopback: byte-exact, half-close, resets, backpressure, scale."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smesh.dataplane.context import Limits, Route
from smesh.tunnel import mux, window
from tests.unit.dataplane.harness import SERVER_IP, Mesh, Server, recv_all
from tests.unit.dataplane.test_adversarial import peer_context

MB = 1024 * 1024


def test_payload_round_trips_byte_exact_both_directions_at_once(mesh: Mesh) -> None:
    up = os.urandom(50 * MB)
    down = os.urandom(50 * MB)
    seen: dict[str, str] = {}
    handled = threading.Event()

    def handler(conn: socket.socket) -> None:
        sender = threading.Thread(
            target=lambda: (conn.sendall(down), conn.shutdown(socket.SHUT_WR))
        )
        sender.start()
        seen["server"] = hashlib.sha256(recv_all(conn)).hexdigest()
        sender.join()
        handled.set()

    server = Server(handler)
    mesh.destination = (SERVER_IP, server.port)
    with mesh.connect() as app:
        sender = threading.Thread(target=lambda: (app.sendall(up), app.shutdown(socket.SHUT_WR)))
        sender.start()
        got = recv_all(app)
        sender.join()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(down).hexdigest()
    mesh.recorder.wait_for(lambda r: len(r) == 2 and all(x.result == "ok" for x in r))
    assert handled.wait(10)
    assert seen["server"] == hashlib.sha256(up).hexdigest()
    outbound = next(r for r in mesh.recorder.records if r.direction == "outbound")
    assert (outbound.bytes_sent, outbound.bytes_received) == (len(up), len(down))
    assert outbound.peer_identity == "spiffe://cluster.local/ns/default/sa/pod-3"
    inbound = next(r for r in mesh.recorder.records if r.direction == "inbound")
    assert inbound.peer_identity == "spiffe://cluster.local/ns/default/sa/pod-1"
    assert (inbound.bytes_sent, inbound.bytes_received) == (len(up), len(down))
    server.close()


def test_half_close_the_client_still_gets_the_full_reply(mesh: Mesh) -> None:
    def handler(conn: socket.socket) -> None:
        request = recv_all(conn)  # waits for the client's EOF to come through
        conn.sendall(b"reply to " + request + b"!" * 100_000)

    server = Server(handler)
    mesh.destination = (SERVER_IP, server.port)
    with mesh.connect() as app:
        app.sendall(b"my request")
        app.shutdown(socket.SHUT_WR)
        assert recv_all(app) == b"reply to my request" + b"!" * 100_000
    server.close()


def test_a_closed_port_resets_the_app_within_a_second(mesh: Mesh) -> None:
    probe = socket.socket()
    probe.bind((str(SERVER_IP), 0))
    closed_port = probe.getsockname()[1]
    probe.close()
    mesh.destination = (SERVER_IP, closed_port)
    started = time.monotonic()
    mesh.expect_reset(b"hello")
    assert time.monotonic() - started < 1.0
    records = mesh.recorder.wait_for(lambda r: len(r) == 2)
    assert {r.result for r in records} == {"refused"}


def test_a_reset_mid_stream_resets_the_other_side(mesh: Mesh) -> None:
    def handler(conn: socket.socket) -> None:
        conn.recv(5)
        conn.sendall(b"partial")
        time.sleep(0.2)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    server = Server(handler)
    mesh.destination = (SERVER_IP, server.port)
    with mesh.connect() as app:
        app.sendall(b"hello")
        assert app.recv(7) == b"partial"
        with pytest.raises(ConnectionResetError):
            recv_all(app)
    records = mesh.recorder.wait_for(lambda r: len(r) == 2)
    assert {r.result for r in records} == {"reset"}
    server.close()


def slow_reader_peak(mesh: Mesh) -> int:
    """What the agents hold at most while an app reads a fast download ~1 KB a second."""
    total = 64 * MB
    done = threading.Event()

    def handler(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(b"x" * total)
        done.set()

    server = Server(handler)
    mesh.destination = (SERVER_IP, server.port)
    peak = 0
    with mesh.connect() as app:
        app.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(30):  # about 1 KB every 0.1 s for 3 s
            app.recv(100)
            time.sleep(0.1)
            peak = max(
                peak, mesh.call(lambda: mesh.client.pending_bytes() + mesh.server.pending_bytes())
            )
        # before the app closes: closing with unread data resets, which ends the sendall
        assert not done.is_set(), "the server could send everything: nothing pushed back"
    assert peak > 0, "the agents never held anything: the test did not create backpressure"
    server.close()
    return peak


def test_a_slow_reader_does_not_make_the_agents_buffer_without_bound(mesh: Mesh) -> None:
    # The kernel took the first megabytes fast, so the stream's window grew; never past this.
    assert slow_reader_peak(mesh) <= window.MAX_WINDOW


def test_without_a_growth_budget_a_slow_reader_holds_one_initial_window(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, windows=window.GrowthBudget(0))
    try:
        assert slow_reader_peak(mesh) <= mux.INITIAL_WINDOW
    finally:
        mesh.close()


def test_a_thousand_concurrent_tunnels_open_exchange_and_close(mesh: Mesh) -> None:
    server = Server(lambda conn: conn.sendall(recv_all(conn)))
    mesh.destination = (SERVER_IP, server.port)
    apps = [mesh.connect(timeout=30) for _ in range(1000)]
    for i, app in enumerate(apps):
        app.sendall(b"%d" % i)
        app.shutdown(socket.SHUT_WR)
    for i, app in enumerate(apps):
        assert recv_all(app) == b"%d" % i
        app.close()
    records = mesh.recorder.wait_for(lambda r: len(r) == 2000, timeout=30)
    assert {r.result for r in records} == {"ok"}
    assert mesh.call(mesh.client.active_connections) == 0
    server.close()


def echo_server() -> Server:
    return Server(lambda conn: conn.sendall(recv_all(conn)))


def ping(mesh: Mesh) -> None:
    with mesh.connect() as app:
        app.sendall(b"ping")
        app.shutdown(socket.SHUT_WR)
        assert recv_all(app) == b"ping"


def test_connections_to_one_pod_share_one_tls_connection(mesh: Mesh) -> None:
    server = echo_server()
    mesh.destination = (SERVER_IP, server.port)
    for _ in range(3):
        ping(mesh)
    records = mesh.recorder.wait_for(lambda r: len(r) == 6)
    assert {r.result for r in records} == {"ok"}
    assert mesh.recorder.handshakes == [("client", False), ("server", False)]
    assert mesh.recorder.open_carriers == {"client": 1, "server": 1}
    server.close()


def test_a_new_tls_connection_resumes_the_session_of_the_last(mesh: Mesh) -> None:
    server = echo_server()
    mesh.destination = (SERVER_IP, server.port)
    ping(mesh)
    mesh.call(lambda: [c.close() for c in mesh.client.pool.carriers()])  # as if idle
    deadline = time.monotonic() + 5
    while mesh.recorder.open_carriers != {"client": 0, "server": 0}:
        assert time.monotonic() < deadline, mesh.recorder.open_carriers
        time.sleep(0.01)
    ping(mesh)
    mesh.recorder.wait_for(lambda r: len(r) == 4)
    assert [h for h in mesh.recorder.handshakes if h[0] == "client"] == [
        ("client", False),
        ("client", True),
    ]
    server.close()


def test_parallel_first_connections_wait_for_one_handshake(mesh: Mesh) -> None:
    server = echo_server()
    mesh.destination = (SERVER_IP, server.port)
    apps = [mesh.connect() for _ in range(32)]
    for app in apps:
        app.sendall(b"ping")
        app.shutdown(socket.SHUT_WR)
    for app in apps:
        assert recv_all(app) == b"ping"
        app.close()
    records = mesh.recorder.wait_for(lambda r: len(r) == 64)
    assert {r.result for r in records} == {"ok"}
    assert mesh.recorder.handshakes == [("client", False), ("server", False)]
    server.close()


def test_the_per_pod_connection_cap_resets_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mesh = Mesh(tmp_path, Limits(max_connections=2))
    try:
        release = threading.Event()
        server = Server(lambda conn: release.wait(10))
        mesh.destination = (SERVER_IP, server.port)
        held = [mesh.connect(), mesh.connect()]
        time.sleep(0.3)
        mesh.expect_reset()
        assert "at its cap of 2 concurrent connections" in caplog.text
        assert mesh.recorder.away == [("outbound", "at_cap")]
        release.set()
        for app in held:
            app.close()
        server.close()
    finally:
        mesh.close()


def test_idle_connections_time_out(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, Limits(idle_timeout=0.3))
    try:
        server = Server(lambda conn: conn.recv(1))
        mesh.destination = (SERVER_IP, server.port)
        with mesh.connect() as app, pytest.raises(ConnectionResetError):
            app.recv(1)
        records = mesh.recorder.wait_for(lambda r: len(r) >= 1)
        assert "timeout" in {r.result for r in records}
        server.close()
    finally:
        mesh.close()


def small_reader(address: tuple[str, int]) -> socket.socket:
    """A connection whose kernel takes in little, so the agent's sends follow the reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.settimeout(10)
    sock.connect(address)
    return sock


def read_slowly(sock: socket.socket) -> int:
    """4 KiB every 40 ms for 2.4 s, almost five times the idle timeout below: slow, not idle."""
    got = 0
    for _ in range(60):
        chunk = sock.recv(4096)
        assert chunk, f"the connection ended after {got} bytes"
        got += len(chunk)
        time.sleep(0.04)
    return got


@contextlib.contextmanager
def sending_mesh(tmp_path: Path, idle: float, route: str) -> Iterator[Mesh]:
    """A mesh with an idle timeout whose server app sends 4 MiB to whoever connects."""
    mesh = Mesh(tmp_path, Limits(idle_timeout=idle))
    try:
        mesh.small_send_buffers()
        server = Server(lambda conn: conn.sendall(b"x" * (4 << 20)))
        mesh.destination = (SERVER_IP, server.port)
        if route == "passthrough":
            mesh.route = Route("passthrough", None, "")
        yield mesh
        server.close()
    finally:
        mesh.close()


@pytest.mark.parametrize("route", ["tunnel", "passthrough"])
def test_a_slow_reader_is_not_idle(tmp_path: Path, route: str) -> None:
    """What the agent holds for a slow app leaves in its write callbacks, and that is
    activity: only reads counted once, and a quarter of a window at 100 KB/s (1.3 s, when
    the next DATA comes) looked idle."""
    with sending_mesh(tmp_path, 0.5, route) as mesh:
        with small_reader(mesh.outbound_address) as app:
            assert read_slowly(app) >= 60 * 1024
            assert mesh.call(mesh.client.pending_bytes) > 0  # the agent held some back
        assert "timeout" not in {r.result for r in mesh.recorder.records}


@pytest.mark.parametrize("route", ["tunnel", "passthrough"])
def test_a_reader_that_stalls_with_data_waiting_times_out(tmp_path: Path, route: str) -> None:
    with sending_mesh(tmp_path, 0.3, route) as mesh:
        with small_reader(mesh.outbound_address) as app:
            assert app.recv(4096)
            records = mesh.recorder.wait_for(lambda r: any(x.result == "timeout" for x in r))
            assert mesh.call(mesh.client.pending_bytes) == 0  # nothing left held for it
        timed_out = next(r for r in records if r.result == "timeout")
        assert timed_out.direction == "outbound"  # the side that holds the data decides


def test_a_slow_reader_of_a_connect_tunnel_is_not_idle(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, Limits(idle_timeout=0.5))
    try:
        mesh.small_send_buffers()
        server = Server(lambda conn: conn.sendall(b"x" * (4 << 20)))
        ctx = peer_context(mesh)
        with ctx.wrap_socket(small_reader((str(SERVER_IP), mesh.tunnel_port))) as peer:
            target = f"{SERVER_IP}:{server.port}".encode()
            peer.sendall(b"CONNECT " + target + b" HTTP/1.1\r\nhost: x\r\n\r\n")
            assert peer.recv(4096).startswith(b"HTTP/1.1 200")
            assert read_slowly(peer) >= 60 * 1024
            assert mesh.call(mesh.server.pending_bytes) > 0
        assert "timeout" not in {r.result for r in mesh.recorder.records}
        server.close()
    finally:
        mesh.close()


def test_passthrough_relays_plain(mesh: Mesh) -> None:
    server = Server(lambda conn: conn.sendall(b"plain:" + recv_all(conn)))
    mesh.destination = (SERVER_IP, server.port)
    mesh.route = Route("passthrough", None, "")
    with mesh.connect() as app:
        app.sendall(b"abc")
        app.shutdown(socket.SHUT_WR)
        assert recv_all(app) == b"plain:abc"
    [record] = mesh.recorder.wait_for(lambda r: len(r) == 1)
    assert (record.route, record.result) == ("passthrough", "ok")
    server.close()


@pytest.mark.parametrize("port", [18000, 18001, 15000])
def test_a_destination_that_is_the_agent_itself_is_refused_not_looped(
    mesh: Mesh, port: int
) -> None:
    """An app that dials 127.0.0.1:18000 itself, in a pod whose namespace tracks
    connections, gets that very address as its "original destination"."""
    mesh.destination = (ipaddress.ip_address("127.0.0.1"), port)
    mesh.route = Route("passthrough", None, "")
    mesh.expect_reset()
    [record] = mesh.recorder.wait_for(lambda r: len(r) == 1)
    assert (record.result, record.detail) == (
        "error",
        f"127.0.0.1:{port} is this agent, not a destination",
    )


def test_deny_route_resets_the_app(mesh: Mesh) -> None:
    mesh.route = Route("deny")
    mesh.expect_reset()
    [record] = mesh.recorder.wait_for(lambda r: len(r) == 1)
    assert record.result == "denied"


def _rss_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS:")).split()[1])


def test_connections_idle_after_bulk_data_hold_no_batch_buffers(mesh: Mesh) -> None:
    """A TLS memory BIO keeps the largest size it ever held: feeding it a whole 256 KiB
    batch at once pinned ~1 MiB per connection (four BIOs) for as long as it stayed open."""

    def echo(conn: socket.socket) -> None:  # small fixed buffers: the test's own share
        buffer = memoryview(bytearray(16384))
        with contextlib.suppress(OSError):
            while n := conn.recv_into(buffer):
                conn.sendall(buffer[:n])

    server = Server(echo)
    mesh.destination = (SERVER_IP, server.port)
    payload = os.urandom(4 * MB)
    sink = memoryview(bytearray(1 << 20))
    warm = mesh.connect()  # one-time costs (scratch buffers, caches) before measuring
    apps = [warm]
    before = 0
    for i in range(41):
        app = warm if i == 0 else mesh.connect()
        if i == 1:
            before = _rss_kib()
        sender = threading.Thread(target=app.sendall, args=(payload,))
        sender.start()
        got = 0
        while got < len(payload):
            got += app.recv_into(sink)
        sender.join()
        if i:
            apps.append(app)
    per_connection = (_rss_kib() - before) / 40
    for app in apps:
        app.close()
    server.close()
    assert per_connection < 400, f"{per_connection:.0f} KiB stay with each idle connection"


def test_a_link_local_destination_without_a_single_link_is_refused_naming_why(
    mesh: Mesh,
) -> None:
    """Capture keeps a link-local address but not the app's scope id; a pod with no single
    interface to put it on (the harness's has none) cannot be dialled for it."""
    mesh.destination = (ipaddress.ip_address("fe80::1"), 8080)
    mesh.route = Route("passthrough", None, "")
    mesh.expect_reset()
    [record] = mesh.recorder.wait_for(lambda r: len(r) == 1)
    assert record.result == "denied"
    assert "fe80::1 is link-local" in record.detail
