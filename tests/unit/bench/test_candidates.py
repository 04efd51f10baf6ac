"""Each concurrency-model candidate really does the tunnel's job, on loopback.

The benchmark compares them, so each must carry bytes exactly, end connections the way
the model allows, and refuse a peer without a client certificate; otherwise a fast
figure would be a figure of a broken proxy.
"""

from __future__ import annotations

import collections.abc
import contextlib
import hashlib
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest

from smesh.bench import material
from tests.unit.bench.candidatekit import running_pair

CANDIDATES = [
    ("streams", "default", 1),
    ("protocols", "uvloop", 1),
    ("memorybio", "default", 1),
    ("memorybio", "uvloop", 2),
    ("native", "default", 1),
]
HALF_CLOSE = {"memorybio", "native"}  # asyncio's TLS transports cannot half-close


class _Target:
    """Answers with the SHA-256 of everything it read, once the client is done sending."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    @staticmethod
    def _one(conn: socket.socket) -> None:
        digest = hashlib.sha256()
        with conn, contextlib.suppress(ConnectionError):  # a refused peer's half-open link
            while data := conn.recv(65536):
                digest.update(data)
            conn.sendall(digest.hexdigest().encode())


@pytest.fixture(scope="module")
def tls_files(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, material.NodeFiles]]:
    return material.write(tmp_path_factory.mktemp("tls"), ("node-1", "node-2"))


@pytest.fixture(params=CANDIDATES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def pair(
    request: pytest.FixtureRequest, tls_files: tuple[Path, dict[str, material.NodeFiles]]
) -> collections.abc.Iterator[tuple[str, int, int]]:
    model, loop, workers = request.param
    ca, files = tls_files
    target = _Target()
    node_files = {node: (f.cert, f.key) for node, f in files.items()}
    options = ("--loop", loop, "--workers", str(workers))
    try:
        with running_pair(model, target.port, ca, node_files, *options) as (front, tunnel, _):
            yield model, front, tunnel
    finally:
        target.sock.close()


def test_bytes_arrive_exactly_and_the_answer_comes_back(pair: tuple[str, int, int]) -> None:
    model, front, _ = pair
    payload = os.urandom(5 * 1024 * 1024)
    for _ in range(3):  # later connections may resume the first one's session
        with socket.create_connection(("127.0.0.1", front), timeout=20) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        if model in HALF_CLOSE:
            assert answer == hashlib.sha256(payload).hexdigest().encode()
        else:  # no half-close: the target's answer is lost when the tunnel closes
            assert answer in (b"", hashlib.sha256(payload).hexdigest().encode())


def _served_without_certificate(ctx: ssl.SSLContext, port: int) -> bool:
    """Whether a TLS client without certificate gets any answer from the tunnel port."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"hello")
                return tls.recv(10) != b""
        except (ssl.SSLError, ConnectionError):
            return False


def test_a_peer_without_certificate_is_refused_and_service_goes_on(
    pair: tuple[str, int, int], tls_files: tuple[Path, dict[str, material.NodeFiles]]
) -> None:
    model, front, tunnel = pair
    ca, _ = tls_files
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    assert not _served_without_certificate(ctx, tunnel)
    with contextlib.closing(socket.create_connection(("127.0.0.1", front), timeout=10)) as sock:
        sock.sendall(b"still serving")
        sock.shutdown(socket.SHUT_WR)
        answer = sock.recv(4096)
    if model in HALF_CLOSE:
        assert answer == hashlib.sha256(b"still serving").hexdigest().encode()
