"""A native hot path: C owns the per-byte loop, Python keeps every decision (issue 23).

The C extension (native/hotpath.c, built by ``make native`` into build/native) runs one
epoll thread without the GIL: the TLS 1.3 handshake and then the relay, through its own
OpenSSL context made from the same files (an ``ssl.SSLObject`` cannot be handed to C).
Python does what smesh's Python would keep: it parses the arguments, loads the TLS
material, listens, accepts, connects, and decides. After the handshake (the chain already
checked against the CA by OpenSSL) it reads the peer's certificate and accepts it only if
it carries one SPIFFE ID of this pod's own trust domain; the server role connects to the
target only then, so a refused peer never reaches the app.
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from cryptography import x509

from smesh.bench.candidates.common import Options, log, run_asyncio
from smesh.bench.errors import BenchError
from smesh.dataplane.relay import APP_SEND_BUFFER
from smesh.dataplane.sockets import abort, bound_send_buffer, prepare
from smesh.identity import certs

HANDSHAKE_TIMEOUT = 10.0  # as the other candidates' wait_for around the handshake
LIBRARY = Path(__file__).resolve().parents[4] / "build" / "native" / "smesh_native.so"
SCHEME = "spiffe://"


class Native(Protocol):
    """The extension's functions (native/hotpath.c documents them)."""

    def start(self, cert: str, key: str, ca: str, server_side: bool, /) -> int: ...
    def open(self, fd: int, /) -> int: ...
    def attach(self, connection: int, fd: int, /) -> None: ...
    def reject(self, connection: int, /) -> None: ...
    def events(self) -> list[tuple[int, str, bytes | str, int, int]]: ...


def load(path: Path = LIBRARY) -> Native:
    """The extension, from the build tree by path (it is never installed)."""
    if not path.exists():
        raise BenchError(f"{path} is missing: run `make native` (needs libssl-dev, python3-dev)")
    loader = importlib.machinery.ExtensionFileLoader("smesh_native", str(path))
    spec = importlib.util.spec_from_file_location("smesh_native", path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return cast(Native, module)


def trust_domain(uri: str | None) -> str | None:
    if uri is None or not uri.startswith(SCHEME):
        return None
    return uri[len(SCHEME) :].split("/", 1)[0] or None


def accepted(der: bytes, domain: str) -> str | None:
    """Why the peer's certificate is refused, or None: one SPIFFE ID in *domain*."""
    try:
        uri = certs.uri_of(x509.load_der_x509_certificate(der))
    except ValueError as exc:
        return f"unreadable certificate: {exc}"
    if trust_domain(uri) != domain:
        return f"peer identity {uri!r} is not in trust domain {domain!r}"
    return None


@dataclass
class _Pending:
    app: socket.socket | None  # the client role's app connection, until attached
    timer: asyncio.TimerHandle


class _ControlPlane:
    """Python's side: accept, connect, decide; the extension's thread does the rest."""

    def __init__(self, opts: Options, native: Native) -> None:
        self.opts = opts
        self.native = native
        self.loop = asyncio.get_running_loop()
        cert, key, ca = opts.files
        own = x509.load_pem_x509_certificate(Path(cert).read_bytes())
        domain = trust_domain(certs.uri_of(own))
        if domain is None:
            raise BenchError(f"{cert}: no SPIFFE ID, so no trust domain to accept peers from")
        self.domain = domain
        self.pending: dict[int, _Pending] = {}  # handshakes not yet decided
        self.tasks: set[asyncio.Task[None]] = set()
        events = native.start(cert, key, ca, opts.role == "server")
        self.loop.add_reader(events, self._on_events)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def accepted(self, conn: socket.socket) -> None:
        prepare(conn)
        if self.opts.role == "client":
            bound_send_buffer(conn, APP_SEND_BUFFER)  # as the MemoryBIO relay bounds its app side
            self._spawn(self._connect(conn))
        else:
            self._begin(conn, None)

    async def _connect(self, app: socket.socket) -> None:
        net = prepare(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        try:
            await self.loop.sock_connect(net, self.opts.target)
        except OSError as exc:
            log(f"connection failed: {exc}")
            abort(app)
            abort(net)
            return
        self._begin(net, app)

    def _begin(self, net: socket.socket, app: socket.socket | None) -> None:
        connection = self.native.open(net.detach())
        timer = self.loop.call_later(HANDSHAKE_TIMEOUT, self._timed_out, connection)
        self.pending[connection] = _Pending(app, timer)

    def _timed_out(self, connection: int) -> None:
        entry = self.pending.pop(connection, None)
        if entry is not None:
            log("connection failed: the TLS handshake took too long")
            self._refuse(connection, entry)

    def _refuse(self, connection: int, entry: _Pending) -> None:
        self.native.reject(connection)
        if entry.app is not None:
            abort(entry.app)

    def _on_events(self) -> None:
        for connection, kind, data, _up, _down in self.native.events():
            entry = self.pending.pop(connection, None)
            if entry is None:  # "done": nothing is kept per relay in this candidate
                continue
            entry.timer.cancel()
            if kind == "failed":  # OpenSSL refused the peer (an alert went out) or I/O failed
                log(f"connection failed: {data!r}")
                if entry.app is not None:
                    abort(entry.app)
                continue
            assert isinstance(data, bytes)
            refusal = accepted(data, self.domain)
            if refusal is not None:
                log(f"connection refused: {refusal}")
                self._refuse(connection, entry)
            elif entry.app is not None:
                self.native.attach(connection, entry.app.detach())
            else:  # the server role reaches its app only for an accepted peer
                self._spawn(self._connect_target(connection))

    async def _connect_target(self, connection: int) -> None:
        app = prepare(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        bound_send_buffer(app, APP_SEND_BUFFER)
        try:
            await self.loop.sock_connect(app, self.opts.target)
        except OSError as exc:
            log(f"connection failed: target: {exc}")
            abort(app)
            self.native.reject(connection)
            return
        self.native.attach(connection, app.detach())


async def _serve(opts: Options, listener: socket.socket) -> None:
    plane = _ControlPlane(opts, load())
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    while True:
        conn, _ = await loop.sock_accept(listener)
        plane.accepted(conn)


def main(opts: Options) -> None:
    load()  # a missing build fails at start, not at the first connection
    run_asyncio(opts, _serve)
