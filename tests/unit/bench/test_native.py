"""The native hot-path candidate (model-native) beyond what every candidate must do.

test_candidates.py checks it carries bytes exactly both ways, half-closes, and refuses a
peer without a certificate. Here: the decisions that stay in Python really decide (a
peer with a good chain but a foreign identity reaches nothing), a refused peer gets a TLS
alert and never reaches the app, resets cross the tunnel as resets, and the C side's
descriptors are all closed again.
"""

from __future__ import annotations

import collections.abc
import contextlib
import datetime as dt
import os
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from smesh.bench.candidates import native
from smesh.bench.errors import BenchError
from smesh.identity import certs
from tests.unit.bench.candidatekit import running_pair

LIFETIME = dt.timedelta(hours=1)


class _Target:
    """Echoes until EOF; a connection that sends b"reset" is reset instead."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.received: list[bytes] = []
        self.endings: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        got = b""
        with conn:
            try:
                while data := conn.recv(65536):
                    got += data
                    if got == b"reset":
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                        self.endings.append("reset by the target")
                        return
                    conn.sendall(data)
                self.endings.append("eof")
            except ConnectionResetError:
                self.endings.append("reset")
            finally:
                self.received.append(got)


@dataclass(frozen=True)
class Tls:
    ca: Path
    files: dict[str, tuple[Path, Path]]  # name: (certificate, key)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """The bench's kind of material (material.py), plus a leaf of the same CA whose ID is
    in another trust domain: a chain OpenSSL accepts, an identity Python must not."""
    directory = tmp_path_factory.mktemp("tls")
    root_key = certs.new_key()
    root = certs.root_certificate(root_key, "bench.smesh", LIFETIME)
    ca = directory / "ca.pem"
    ca.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    files = {}
    for name, uri in (
        ("node-1", "spiffe://bench.smesh/node/node-1"),
        ("node-2", "spiffe://bench.smesh/node/node-2"),
        ("intruder", "spiffe://elsewhere.example/node/intruder"),
    ):
        key = certs.new_key()
        leaf = certs.leaf_certificate(key.public_key(), uri, root, root_key, LIFETIME)
        paths = directory / f"{name}.crt", directory / f"{name}.key"
        paths[0].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        paths[1].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        files[name] = paths
    return Tls(ca, files)


class _Pair:
    def __init__(
        self, target: _Target, front: int, tunnel: int, procs: list[subprocess.Popen[bytes]]
    ):
        self.target, self.front, self.tunnel, self.procs = target, front, tunnel, procs

    def fds(self) -> list[int]:
        return [len(os.listdir(f"/proc/{p.pid}/fd")) for p in self.procs]


@pytest.fixture
def pair(tls: Tls, tmp_path: Path) -> collections.abc.Iterator[_Pair]:
    target = _Target()
    try:
        with running_pair("native", target.port, tls.ca, tls.files, logs=tmp_path) as (
            front,
            tunnel,
            started,
        ):
            yield _Pair(target, front, tunnel, started)
    finally:
        target.sock.close()


def _client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def _roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_bytes_go_both_ways_and_half_close_passes_on(pair: _Pair) -> None:
    payload = os.urandom(300 * 1024)
    assert _roundtrip(pair.front, payload) == payload  # the echo ends after our EOF
    assert pair.target.endings == ["eof"]


def test_a_peer_without_certificate_gets_an_alert_and_reaches_nothing(
    pair: _Pair, tls: Tls
) -> None:
    raw = socket.create_connection(("127.0.0.1", pair.tunnel), timeout=10)
    with _client_context(tls.ca).wrap_socket(raw) as conn:  # TLS 1.3: the client is done first
        conn.sendall(b"let me in")
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
            conn.recv(100)
    assert pair.target.accepted == 0
    assert _roundtrip(pair.front, b"still serving") == b"still serving"


def test_a_good_chain_with_a_foreign_identity_is_refused_by_python(
    pair: _Pair, tls: Tls, tmp_path: Path
) -> None:
    with socket.create_connection(("127.0.0.1", pair.tunnel), timeout=10) as raw:
        ctx = _client_context(tls.ca, *tls.files["intruder"])
        # OpenSSL accepts the chain, so the handshake ends; then the tunnel is reset
        with ctx.wrap_socket(raw, suppress_ragged_eofs=False) as conn:
            conn.sendall(b"let me in")
            with pytest.raises((ConnectionResetError, ssl.SSLEOFError)):
                conn.recv(100)  # an echo, or a clean end (close_notify: b""), fails the test
    assert pair.target.accepted == 0
    assert b"connection refused: peer identity" in (tmp_path / "server.log").read_bytes()
    assert _roundtrip(pair.front, b"still serving") == b"still serving"


def test_a_reset_crosses_the_tunnel_as_a_reset(pair: _Pair) -> None:
    with socket.create_connection(("127.0.0.1", pair.front), timeout=10) as sock:
        sock.sendall(b"reset")
        with pytest.raises(ConnectionResetError):
            sock.recv(100)


def test_a_tunnel_cut_without_close_notify_resets_the_app(pair: _Pair, tls: Tls) -> None:
    ctx = _client_context(tls.ca, *tls.files["node-1"])
    conn = ctx.wrap_socket(socket.create_connection(("127.0.0.1", pair.tunnel), timeout=10))
    conn.sendall(b"partial")
    assert conn.recv(100) == b"partial"
    conn.close()  # without unwrap(): no close_notify, the stream is cut
    _wait(lambda: pair.target.endings == ["reset"])


def test_every_descriptor_is_closed_again(pair: _Pair, tls: Tls) -> None:
    # The extension and the event loop start after "ready": count once they run and the
    # first connection has ended (its last close follows the app's EOF by microseconds)
    assert _roundtrip(pair.front, b"warm") == b"warm"
    before = pair.fds()
    for _ in range(20):
        time.sleep(0.1)
        before, settled = pair.fds(), before
        if before == settled:
            break
    for _ in range(20):
        assert _roundtrip(pair.front, b"x" * 1000) == b"x" * 1000
    with contextlib.suppress(ConnectionResetError, OSError):
        sock = socket.create_connection(("127.0.0.1", pair.front), timeout=10)
        sock.sendall(b"reset")
        sock.recv(10)
        sock.close()
    for name in (None, "intruder", None, "intruder"):  # refused by OpenSSL, then by Python
        ctx = _client_context(tls.ca, *tls.files[name]) if name else _client_context(tls.ca)
        with contextlib.suppress(ssl.SSLError, OSError):
            raw = socket.create_connection(("127.0.0.1", pair.tunnel), timeout=10)
            with ctx.wrap_socket(raw) as conn:
                conn.sendall(b"no")
                conn.recv(10)
    _wait(lambda: pair.fds() == before)


def _wait(condition: collections.abc.Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("uri", "domain"),
    [
        ("spiffe://bench.smesh/node/node-1", "bench.smesh"),
        ("spiffe://bench.smesh", "bench.smesh"),
        ("spiffe:///node/x", None),
        ("https://bench.smesh/node/x", None),
        (None, None),
    ],
)
def test_the_trust_domain_is_read_from_the_spiffe_id(uri: str | None, domain: str | None) -> None:
    assert native.trust_domain(uri) == domain


def test_a_missing_build_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="make native"):
        native.load(tmp_path / "smesh_native.so")
