"""Each concurrency-model candidate does the tunnel's job, checked on loopback.

A proxy pair per candidate (node-1 role ``client``, node-2 role ``server``, real mutual
TLS 1.3 with the harness's certificates) between a test client and a target the test
drives itself. A fast figure from a proxy that loses bytes, buffers without bound or
serves a peer without a certificate would be worthless, so each is checked here.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from smesh.bench import material
from smesh.bench.models.common import parse_address

LOCAL = "127.0.0.1"
TIMEOUT = 10.0
BIG = 5 * 1024 * 1024


@dataclass(frozen=True)
class Variant:
    model: str
    loop: str = "default"
    workers: int = 1

    @property
    def id(self) -> str:
        return "-".join(
            [self.model]
            + ([self.loop] if self.loop != "default" else [])
            + ([f"{self.workers}-workers"] if self.workers > 1 else [])
        )


VARIANTS = [
    Variant("streams"),
    Variant("streams", "uvloop"),
    Variant("protocols"),
    Variant("protocols", "uvloop"),
    Variant("threads"),
    Variant("memorybio"),
    Variant("memorybio", "uvloop"),
    Variant("memorybio", workers=2),
]
SINGLE = [v for v in VARIANTS if v.workers == 1]
LOOP_TLS = {"streams", "protocols"}  # asyncio's TLS transport: no write_eof, no half-close

Files = tuple[Path, dict[str, material.NodeFiles]]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return material.write(tmp_path_factory.mktemp("tls"), ("node-1", "node-2"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


class Proxy:
    """One ``python -m smesh.bench.models`` process, stopped by its pid at the end."""

    def __init__(
        self, variant: Variant, role: str, ports: tuple[int, int], files: Files, log: Path
    ) -> None:
        listen, target = ports
        ca, nodes = files
        node = nodes["node-1" if role == "client" else "node-2"]
        self.listen = listen
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "smesh.bench.models", variant.model,
                    "--role", role, "--listen", f"{LOCAL}:{listen}",
                    "--target", f"{LOCAL}:{target}",
                    "--cert", str(node.cert), "--key", str(node.key), "--ca", str(ca),
                    "--loop", variant.loop, "--workers", str(variant.workers),
                ],
                stdout=subprocess.PIPE,
                stderr=err,
            )  # fmt: skip
        self.log = log
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        assert line == b"ready\n", f"no ready line: {self.log.read_text()[-400:]}"

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@dataclass
class Pair:
    variant: Variant
    front: int  # the client-role proxy's plain port (where the app connects)
    tunnel: int  # the server-role proxy's TLS port
    target: socket.socket  # the target app's listening socket, driven by the test

    def connect(self) -> tuple[socket.socket, socket.socket]:
        """An app connection through the pair, and the target's end of it."""
        app = socket.create_connection((LOCAL, self.front), timeout=TIMEOUT)
        far, _ = self.target.accept()
        far.settimeout(TIMEOUT)
        return app, far


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: v.id)
def pair(
    request: pytest.FixtureRequest, tls_files: Files, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    variant: Variant = request.param
    log = tmp_path_factory.mktemp(variant.id) / "proxies.log"
    target = socket.create_server((LOCAL, 0))
    target.settimeout(TIMEOUT)
    started: list[Proxy] = []
    try:
        tunnel, front = _free_port(), _free_port()
        port = target.getsockname()[1]
        started.append(Proxy(variant, "server", (tunnel, port), tls_files, log))
        started.append(Proxy(variant, "client", (front, tunnel), tls_files, log))
        yield Pair(variant, front, tunnel, target)
    finally:
        for proxy in started:
            proxy.stop()
        target.close()


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(1 << 20, size - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _read_to_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def test_bytes_arrive_exactly_both_ways_at_once(pair: Pair) -> None:
    up, down = os.urandom(BIG), os.urandom(BIG)
    app, far = pair.connect()
    with app, far:
        senders = [
            threading.Thread(target=app.sendall, args=(up,), daemon=True),
            threading.Thread(target=far.sendall, args=(down,), daemon=True),
        ]
        for sender in senders:
            sender.start()
        assert _read_exactly(far, BIG) == up
        assert _read_exactly(app, BIG) == down
        for sender in senders:
            sender.join(TIMEOUT)


def test_half_close_reaches_the_far_app_and_the_answer_still_comes_back(
    pair: Pair, request: pytest.FixtureRequest
) -> None:
    if pair.variant.model in LOOP_TLS:
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                raises=AssertionError,
                reason="asyncio's TLS transport cannot half-close: the EOF ends the tunnel",
            )
        )
    app, far = pair.connect()
    with app, far:
        app.sendall(b"question")
        app.shutdown(socket.SHUT_WR)
        assert _read_to_eof(far) == b"question"  # every model gets this far
        with contextlib.suppress(OSError):  # where the tunnel is gone already
            far.sendall(b"answer")
            far.shutdown(socket.SHUT_WR)
        received = _read_to_eof(app)  # an EOF comes in any case, not a hang
        assert received == b"answer"


def test_a_reset_reaches_the_far_app_as_a_reset(pair: Pair) -> None:
    """A truncated stream must never look complete: a reset is passed on as a reset."""
    app, far = pair.connect()
    with app, far:
        app.sendall(b"partial")
        assert _read_exactly(far, 7) == b"partial"
        app.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        app.close()
        with pytest.raises(ConnectionResetError):
            _read_to_eof(far)


def _refused_without_certificate(ca: Path, port: int) -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    with socket.create_connection((LOCAL, port), timeout=TIMEOUT) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:  # TLS 1.3: the server judges after our Finished
                tls.sendall(b"let me in")
                return tls.recv(100) == b""
        except (ssl.SSLError, OSError):
            return True


def test_a_peer_without_certificate_is_refused_and_the_next_is_served(
    pair: Pair, tls_files: Files
) -> None:
    ca, _ = tls_files
    assert _refused_without_certificate(ca, pair.tunnel)
    pair.target.settimeout(0.3)
    try:
        with pytest.raises(TimeoutError):  # nothing reached the target app
            pair.target.accept()
    finally:
        pair.target.settimeout(TIMEOUT)
    app, far = pair.connect()
    with app, far:
        app.sendall(b"ping")
        assert _read_exactly(far, 4) == b"ping"
        far.sendall(b"pong")
        assert _read_exactly(app, 4) == b"pong"


def test_a_target_that_does_not_read_holds_the_sender_back(pair: Pair) -> None:
    """Bounded buffering: the app is blocked by TCP, not absorbed into proxy memory."""
    limit = 96 * 1024 * 1024  # an unbounded proxy takes this in well under a second
    chunk = os.urandom(1 << 20)
    app, far = pair.connect()
    with app, far:
        app.setblocking(False)
        sent = 0
        stalled_since = time.monotonic()
        while sent < limit and time.monotonic() - stalled_since < 0.5:
            try:
                sent += app.send(chunk)
                stalled_since = time.monotonic()
            except BlockingIOError:
                select.select([], [app], [], 0.05)
        # Kernel buffers of three TCP hops (autotuned on loopback) and one batch per proxy.
        assert sent < 64 * 1024 * 1024
        assert len(_read_exactly(far, sent)) == sent  # and everything flows on afterwards


class _TlsServer:
    """Stands in for the node-2 proxy, to see what the client role offers."""

    def __init__(self, files: Files) -> None:
        ca, nodes = files
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_cert_chain(nodes["node-2"].cert, nodes["node-2"].key)
        self.ctx.load_verify_locations(ca)
        self.sock = socket.create_server((LOCAL, 0))
        self.port = self.sock.getsockname()[1]
        self.resumed: list[bool] = []

    def serve_one(self) -> None:
        conn, _ = self.sock.accept()
        conn.settimeout(TIMEOUT)
        with self.ctx.wrap_socket(conn, server_side=True) as tls:
            self.resumed.append(tls.session_reused)
            while data := tls.recv(65536):
                tls.sendall(data)
            with contextlib.suppress(OSError):  # answer a close_notify with ours
                tls.unwrap()


@pytest.mark.parametrize("variant", SINGLE, ids=lambda v: v.id)
def test_the_client_role_offers_its_last_session_again(
    variant: Variant, tls_files: Files, tmp_path: Path
) -> None:
    server = _TlsServer(tls_files)
    front = _free_port()
    proxy = Proxy(variant, "client", (front, server.port), tls_files, tmp_path / "proxy.log")
    try:
        for _ in range(3):
            serving = threading.Thread(target=server.serve_one, daemon=True)
            serving.start()
            with socket.create_connection((LOCAL, front), timeout=TIMEOUT) as app:
                app.sendall(b"ping")
                assert _read_exactly(app, 4) == b"ping"
                app.shutdown(socket.SHUT_WR)
                _read_to_eof(app)
            serving.join(TIMEOUT)
    finally:
        proxy.stop()
        server.sock.close()
    assert server.resumed == [False, True, True]


STOPS = [(v, signal.SIGTERM) for v in VARIANTS] + [
    (Variant("memorybio"), signal.SIGINT),  # asyncio's signal handlers
    (Variant("threads"), signal.SIGINT),  # signal.signal in the accepting thread
    (Variant("memorybio", workers=2), signal.SIGINT),  # the supervisor's
]


@pytest.mark.parametrize(
    ("variant", "sig"), STOPS, ids=[f"{v.id}-{signal.Signals(s).name}" for v, s in STOPS]
)
def test_a_stop_signal_ends_the_proxy_with_status_0(
    variant: Variant, sig: int, tls_files: Files, tmp_path: Path
) -> None:
    proxy = Proxy(variant, "server", (_free_port(), _free_port()), tls_files, tmp_path / "log")
    workers = proxy.children()
    assert len(workers) == (variant.workers if variant.workers > 1 else 0)
    assert proxy.stop(sig) == 0
    assert not any(_our_worker_runs(pid) for pid in workers)


def _our_worker_runs(pid: int) -> bool:
    """Whether *pid* still runs our module (a pid could be reused by the time we look)."""
    try:
        return b"smesh.bench.models" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_workers_die_with_a_killed_supervisor(tls_files: Files, tmp_path: Path) -> None:
    variant = Variant("memorybio", workers=2)
    proxy = Proxy(variant, "server", (_free_port(), _free_port()), tls_files, tmp_path / "log")
    workers = proxy.children()
    assert len(workers) == 2
    proxy.stop(signal.SIGKILL)
    deadline = time.monotonic() + TIMEOUT
    while any(_our_worker_runs(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(_our_worker_runs(pid) for pid in workers)


def test_addresses_are_ip_and_port() -> None:
    assert parse_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_address("[fd00::1]:443") == ("fd00::1", 443)
    for bad in ("127.0.0.1", "127.0.0.1:http", ":80", "1.2.3.4:70000"):
        with pytest.raises(ValueError, match="IP:PORT"):
            parse_address(bad)
