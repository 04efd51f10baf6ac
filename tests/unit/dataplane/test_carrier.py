"""Streams on shared TLS connections (smesh-mux/1): isolation, limits and bad peers."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from smesh.dataplane import carrier, endpoint, pool
from smesh.dataplane.context import Limits
from smesh.identity import tls
from smesh.tunnel import mux, window
from tests.unit.dataplane.harness import CLIENT_ID, SERVER_IP, Mesh, Server, recv_all
from tests.unit.dataplane.test_adversarial import raw_tunnel, still_serving


class MuxPeer:
    """A hand-driven smesh-mux/1 client with a valid certificate (a buggy or hostile agent)."""

    def __init__(self, mesh: Mesh) -> None:
        cred = mesh.ca.issue_credential(str(CLIENT_ID), dt.timedelta(hours=1), "node")
        ctx = tls.client_context(cred, mesh.ca.bundle())
        self.sock = ctx.wrap_socket(raw_tunnel(mesh))
        assert self.sock.selected_alpn_protocol() == mux.ALPN
        self.reader = mux.FrameReader()
        self.events: list[tuple[int, int, bytes]] = []

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def next_event(self, kinds: set[int] | None = None) -> tuple[int, int, bytes]:
        """The next frame (DATA pieces come one by one); b"" kind 0 when the peer closed."""
        while True:
            while self.events:
                event = self.events.pop(0)
                if kinds is None or event[0] in kinds:
                    return event
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            if not data:
                return (0, 0, b"")
            self.events += [(k, s, bytes(p)) for k, s, p in self.reader.feed(memoryview(data))]

    def close(self) -> None:
        self.sock.close()


def open_to(stream: int, host: str, port: int) -> bytes:
    return mux.open_frame(stream, ipaddress.ip_address(host), port)


def data(stream: int, payload: bytes) -> bytes:
    return mux.frame(mux.DATA, stream, payload)


@pytest.fixture
def echo(mesh: Mesh) -> Server:
    server = Server(lambda conn: conn.sendall(recv_all(conn)))
    mesh.destination = (SERVER_IP, server.port)
    return server


def test_an_open_to_another_address_is_refused_and_the_connection_serves_on(
    mesh: Mesh, echo: Server
) -> None:
    peer = MuxPeer(mesh)
    peer.send(open_to(1, "10.1.2.3", 80), open_to(3, "127.0.0.3", 18000))
    kind, stream, payload = peer.next_event()
    assert (kind, stream) == (mux.REFUSE, 1)
    assert mux.parse_refuse(payload) == (403, "10.1.2.3 is not this pod's address")
    kind, stream, payload = peer.next_event()
    assert (kind, stream, mux.parse_refuse(payload)[0]) == (mux.REFUSE, 3, 403)
    peer.send(open_to(5, str(SERVER_IP), echo.port), data(5, b"hello"), mux.frame(mux.FIN, 5))
    assert peer.next_event() == (mux.OK, 5, b"")
    assert peer.next_event({mux.DATA}) == (mux.DATA, 5, b"hello")
    assert peer.next_event({mux.FIN}) == (mux.FIN, 5, b"")
    peer.close()


def test_a_malformed_open_is_a_400_and_an_unknown_frame_ends_the_connection(
    mesh: Mesh, echo: Server
) -> None:
    peer = MuxPeer(mesh)
    peer.send(mux.frame(mux.OPEN, 1, b"\x00"))
    kind, stream, payload = peer.next_event()
    assert (kind, stream, mux.parse_refuse(payload)[0]) == (mux.REFUSE, 1, 400)
    peer.send(mux.HEADER.pack(99, 3, 0))
    assert peer.next_event()[0] == 0  # closed
    peer.close()
    still_serving(mesh)


def test_data_beyond_the_window_resets_the_stream(mesh: Mesh) -> None:
    release = threading.Event()
    server = Server(lambda conn: release.wait(10))  # never reads
    peer = MuxPeer(mesh)
    peer.send(open_to(1, str(SERVER_IP), server.port))
    assert peer.next_event() == (mux.OK, 1, b"")
    chunk = b"x" * 65536
    # More than any credit the agent can have handed back: the largest window it grows
    # plus what the kernel buffers toward an app that never reads (at most ~10 MiB).
    overrun = window.MAX_WINDOW + 24 * 1024 * 1024
    peer.send(*[data(1, chunk)] * (overrun // len(chunk)))
    kind, stream, payload = peer.next_event({mux.RST})
    assert (kind, stream) == (mux.RST, 1)
    assert b"more than its window" in payload
    release.set()
    peer.close()
    server.close()


def test_a_stalled_stream_does_not_hold_up_the_others_on_its_connection(mesh: Mesh) -> None:
    release = threading.Event()
    stalled = Server(lambda conn: release.wait(20))  # never reads
    echo = Server(lambda conn: conn.sendall(recv_all(conn)))
    mesh.destination = (SERVER_IP, stalled.port)
    blocked = mesh.connect()
    blocked.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # fill every buffer on the way to the stalled app
        try:
            sent += blocked.send(b"y" * 65536)
        except BlockingIOError:
            time.sleep(0.05)
            try:
                sent += blocked.send(b"y" * 65536)
            except BlockingIOError:
                break
    assert sent > 2 * mux.INITIAL_WINDOW  # the agents hold a window; the rest waits in kernels
    mesh.destination = (SERVER_IP, echo.port)
    for _ in range(3):
        with mesh.connect(timeout=5) as app:
            app.sendall(b"still moving")
            app.shutdown(socket.SHUT_WR)
            assert recv_all(app) == b"still moving"
    assert mesh.recorder.open_carriers == {"client": 1, "server": 1}  # the same connection
    pending = mesh.call(mesh.server.pending_bytes)
    # The stream's window grew while the kernel took its first bytes fast; never past the cap.
    assert 0 < pending <= window.MAX_WINDOW
    release.set()
    blocked.close()
    mesh.recorder.wait_for(lambda r: any(x.result == "reset" for x in r))
    assert mesh.services.windows.left == window.GROWTH_BUDGET  # handed back when it ended
    stalled.close()
    echo.close()


def test_apps_that_do_not_read_hold_no_more_than_their_pods_budget(tmp_path: Path) -> None:
    """Sixteen streams of 1 MiB into an app that never reads, with a 2 MiB budget for the
    pod: windows shrink, the streams past their share are reset, what the agent holds
    stays near the budget, and a stream to an app that reads still moves."""
    held = window.HeldBudget(limit=64 << 20, pod_limit=2 << 20)
    mesh = Mesh(tmp_path, windows=window.GrowthBudget(held=held))
    release = threading.Event()
    stalled = Server(lambda conn: release.wait(20))  # never reads
    echo = Server(lambda conn: conn.sendall(recv_all(conn)))
    apps: list[socket.socket] = []
    try:
        mesh.destination = (SERVER_IP, stalled.port)
        peak = 0
        for _ in range(16):
            app = mesh.connect()
            app.setblocking(False)
            with contextlib.suppress(BlockingIOError, ConnectionResetError, BrokenPipeError):
                app.send(b"y" * (1 << 20))
            apps.append(app)
            peak = max(peak, mesh.call(lambda: held.held))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and held.resets < 8:
            peak = max(peak, mesh.call(lambda: held.held))
            time.sleep(0.02)
        assert held.resets >= 8  # sixteen stalled streams do not fit in 2 MiB
        # The budget, plus what one stream may bring past it before it is reset.
        assert peak <= (2 << 20) + mux.INITIAL_WINDOW + 2 * mesh.services.scratch.app_send_buffer
        assert any("its memory budget is full" in r.detail for r in mesh.recorder.records)
        mesh.destination = (SERVER_IP, echo.port)
        with mesh.connect(timeout=5) as app:
            app.sendall(b"still moving")
            app.shutdown(socket.SHUT_WR)
            assert recv_all(app) == b"still moving"
        release.set()
        for app in apps:
            app.close()
        deadline = time.monotonic() + 10
        while mesh.call(lambda: held.held) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mesh.call(lambda: (held.held, held.holders)) == (0, 0)  # all given back
    finally:
        release.set()
        for app in apps:
            app.close()
        stalled.close()
        echo.close()
        mesh.close()


def test_more_streams_than_one_connection_carries_open_another(mesh: Mesh) -> None:
    release = threading.Event()
    server = Server(lambda conn: release.wait(20))
    mesh.destination = (SERVER_IP, server.port)
    apps = [mesh.connect() for _ in range(mux.MAX_STREAMS + 10)]
    deadline = time.monotonic() + 10
    while mesh.call(mesh.server.active_connections) < len(apps):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert mesh.recorder.open_carriers == {"client": 2, "server": 2}
    release.set()
    for app in apps:
        app.close()
    server.close()


def test_a_peer_that_asks_but_never_reads_the_answers_is_cut_off(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused OPENs cost the peer 16 bytes and the agent a queued REFUSE each: without a
    bound, a peer that never reads grows the agent (every pod's) without end."""
    monkeypatch.setattr(carrier, "MAX_BACKLOG", 256 * 1024)
    mesh.small_send_buffers()  # the kernel takes little: the answers wait in the agent
    cred = mesh.ca.issue_credential(str(CLIENT_ID), dt.timedelta(hours=1), "node")
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it never reads anyway
    raw.connect((str(SERVER_IP), mesh.tunnel_port))
    with tls.client_context(cred, mesh.ca.bundle()).wrap_socket(raw) as peer:
        refused = ipaddress.ip_address("127.0.0.9")  # not the pod's address: 403 each
        opens = b"".join(mux.open_frame(i, refused, 80) for i in range(1, 80_001, 2))
        with contextlib.suppress(OSError):  # the agent resets it part of the way through
            peer.sendall(opens)
        deadline = time.monotonic() + 30  # generous: 40,000 refusals on a loaded machine
        while "stopped reading" not in caplog.text:
            assert time.monotonic() < deadline, "the peer was never cut off"
            time.sleep(0.05)
    assert mesh.call(lambda: len(mesh.server._carriers)) == 0
    still_serving(mesh)


def test_streams_ended_for_the_client_do_not_fill_the_servers_stream_limit(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload whose server app reads late ends for the client once both FINs are
    through, but lives on in the server agent: counted there, it made the server refuse
    new streams (503) that the client's pool, counting none, kept sending it."""
    monkeypatch.setattr(mux, "MAX_STREAMS", 4)
    monkeypatch.setattr(pool, "MAX_STREAMS", 4)
    release = threading.Event()

    def reads_late(conn: socket.socket) -> None:
        conn.sendall(b"ack")
        conn.shutdown(socket.SHUT_WR)
        release.wait(30)
        recv_all(conn)

    mesh.small_send_buffers()
    late = Server(reads_late)
    late.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    echo = Server(lambda conn: conn.sendall(recv_all(conn)))
    try:
        mesh.destination = (SERVER_IP, late.port)
        for _ in range(4):
            with mesh.connect() as app:
                app.sendall(b"u" * 400_000)
                app.shutdown(socket.SHUT_WR)
                assert recv_all(app) == b"ack"
        mesh.destination = (SERVER_IP, echo.port)
        for _ in range(3):
            with mesh.connect() as app:
                app.sendall(b"ping")
                app.shutdown(socket.SHUT_WR)
                assert recv_all(app) == b"ping"
    finally:
        release.set()
        late.close()
        echo.close()


def mux_connection(mesh: Mesh) -> ssl.SSLSocket:
    cred = mesh.ca.issue_credential(str(CLIENT_ID), dt.timedelta(hours=1), "node")
    sock = tls.client_context(cred, mesh.ca.bundle()).wrap_socket(raw_tunnel(mesh))
    assert sock.selected_alpn_protocol() == mux.ALPN
    return sock


def test_carriers_count_against_the_pods_cap_and_idle_ones_make_room(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, Limits(max_connections=5))
    held: list[ssl.SSLSocket] = []
    release = threading.Event()
    server = Server(lambda conn: release.wait(10))
    try:
        held += [mux_connection(mesh) for _ in range(5)]
        deadline = time.monotonic() + 5
        while mesh.call(lambda: len(mesh.server._carriers)) < 5:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        held.append(mux_connection(mesh))  # the sixth: the oldest idle one makes room
        held[0].settimeout(5)
        assert held[0].recv(100) == b""
        for sock in held[1:]:  # five carriers, each busy with a stream
            assert first_answer(sock, 1, server.port)[0] == mux.OK
        refused = mux_connection(mesh)  # no idle carrier left: reset after its handshake
        assert first_answer(refused, 1, server.port) == (0, b"")
        assert ("inbound", "at_cap") in mesh.recorder.away
    finally:
        release.set()
        server.close()
        for sock in held:
            sock.close()
        mesh.close()


def test_the_server_closes_a_carrier_its_client_left_idle(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoint, "SERVER_IDLE_CLOSE", 0.2)
    monkeypatch.setattr(endpoint, "IDLE_CLOSE", 0.2)  # sweeps every 0.05 s
    with mux_connection(mesh) as idle:
        idle.settimeout(5)
        assert idle.recv(100) == b""  # closed with close_notify, after about 0.2 s
    assert mesh.call(lambda: len(mesh.server._carriers)) == 0


def first_answer(sock: ssl.SSLSocket, stream: int, port: int) -> tuple[int, bytes]:
    """OPEN *stream* (with one DATA and FIN); the OK or REFUSE, or (0, b"") if closed."""
    request = open_to(stream, str(SERVER_IP), port) + data(stream, b"hi")
    try:
        sock.sendall(request + mux.frame(mux.FIN, stream))
    except (OSError, ssl.SSLError):  # closed before it was sent
        return 0, b""
    reader = mux.FrameReader()
    while True:
        try:
            chunk = sock.recv(65536)
        except (OSError, ssl.SSLError):
            chunk = b""
        if not chunk:
            return 0, b""
        for kind, _stream, payload in reader.feed(memoryview(chunk)):
            if kind in (mux.OK, mux.REFUSE):
                return kind, bytes(payload)


def test_an_expired_certificate_opens_no_new_streams_and_resumes_no_session(
    mesh: Mesh, echo: Server
) -> None:
    """A full handshake checks the dates; a connection kept open, or a session resumed,
    must not outlive them."""
    short = mesh.ca.issue_credential(str(CLIENT_ID), dt.timedelta(seconds=2), "node")
    ctx = tls.client_context(short, mesh.ca.bundle())
    kept = ctx.wrap_socket(raw_tunnel(mesh))
    assert first_answer(kept, 1, echo.port)[0] == mux.OK
    with ctx.wrap_socket(raw_tunnel(mesh)) as other:
        assert first_answer(other, 1, echo.port)[0] == mux.OK
        ticket = other.session
    time.sleep(max(0.0, short.not_after.timestamp() - time.time()) + 0.2)

    kind, payload = first_answer(kept, 3, echo.port)
    assert kind == mux.REFUSE
    assert mux.parse_refuse(payload) == (403, "the certificate of this connection has expired")
    with ctx.wrap_socket(raw_tunnel(mesh), session=ticket) as resumed:
        assert resumed.session_reused
        assert first_answer(resumed, 1, echo.port) == (0, b"")  # closed, not served
    kept.close()
    mesh.recorder.wait_for(lambda r: any("is not valid now" in x.detail for x in r))


def test_a_handshake_under_way_when_the_pod_leaves_does_not_become_a_carrier(
    mesh: Mesh, echo: Server
) -> None:
    raw = raw_tunnel(mesh)  # accepted now; its handshake finishes after the drain began
    deadline = time.monotonic() + 5
    while mesh.call(lambda: len(mesh.server._unproven)) < 1:
        assert time.monotonic() < deadline, "never accepted"
        time.sleep(0.01)
    mesh.call(mesh.server.stop_accepting)
    cred = mesh.ca.issue_credential(str(CLIENT_ID), dt.timedelta(hours=1), "node")
    with tls.client_context(cred, mesh.ca.bundle()).wrap_socket(raw) as sock:
        assert first_answer(sock, 1, echo.port) == (0, b"")  # reset, not a carrier
    records = mesh.recorder.wait_for(lambda r: any(x.result == "refused" for x in r))
    assert any("pod-3 is leaving the mesh" in r.detail for r in records)
    assert mesh.call(lambda: len(mesh.server._carriers)) == 0


class CutPeer:
    """A smesh-mux client whose ciphertext leaves in the pieces the test chooses: records
    cut anywhere, several in one segment, as a busy network delivers them."""

    def __init__(self, mesh: Mesh) -> None:
        cred = mesh.ca.issue_credential(str(CLIENT_ID), dt.timedelta(hours=1), "node")
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = tls.client_context(cred, mesh.ca.bundle())
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing)
        self.sock = raw_tunnel(mesh)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                self.incoming.write(self.sock.recv(65536))
        self.sock.sendall(self.outgoing.read())  # the client's Finished
        self.reader = mux.FrameReader()

    def record(self, *frames: bytes) -> bytes:
        """The ciphertext of one TLS record holding *frames*."""
        self.obj.write(b"".join(frames))
        return self.outgoing.read()

    def send(self, *pieces: bytes) -> None:
        for piece in pieces:  # apart, so each tends to be a read of its own
            self.sock.sendall(piece)
            time.sleep(0.02)

    def answers(self, stream: int) -> tuple[bytes, bool]:
        """What the stream's DATA said until its FIN (True) or the connection's end."""
        got = bytearray()
        while True:
            try:
                plain = self.obj.read(65536)
            except ssl.SSLWantReadError:
                cipher = self.sock.recv(65536)
                if not cipher:
                    return bytes(got), False
                self.incoming.write(cipher)
                continue
            for kind, sid, payload in self.reader.feed(memoryview(plain)):
                if sid == stream and kind == mux.DATA:
                    got += payload
                elif sid == stream and kind == mux.FIN:
                    return bytes(got), True


def test_records_cut_anywhere_or_several_in_a_read_reach_the_app_whole(
    mesh: Mesh, echo: Server
) -> None:
    """Whatever the reads make of the records (one cut in its header or body, several whole
    ones and a partial one in one read), each byte reaches the app once and in order: the
    guard for any shortcut taken for small reads (docs/benchmarks.md, "A reworked Python
    path, measured": a one-read path for a round trip's message was measured, not kept)."""
    peer = CutPeer(mesh)
    sent = [b"m%d-" % i + bytes([65 + i]) * (10 * i + 1) for i in range(12)]
    first = peer.record(open_to(1, str(SERVER_IP), echo.port), data(1, sent[0]))
    peer.send(first)
    r = [peer.record(data(1, payload)) for payload in sent[1:]]
    peer.send(r[0][:2], r[0][2:4], r[0][4:])  # the header cut twice, then the body
    peer.send(r[1][:20], r[1][20:])  # the body cut
    peer.send(r[2] + r[3] + r[4])  # three whole records in one segment
    peer.send(r[5] + r[6][:7], r[6][7:] + r[7])  # a whole record and a cut one, twice
    peer.send(b"".join(r[8:]) + peer.record(mux.frame(mux.FIN, 1)))
    echoed, fin = peer.answers(1)
    assert fin
    assert echoed == b"".join(sent)
    peer.sock.close()
    still_serving(mesh)
