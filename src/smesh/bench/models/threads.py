"""Blocking sockets and ``ssl.SSLSocket``, one thread per direction of each connection.

The simplest code: each thread loops ``recv_into`` → ``sendall``. Its limits are the
model's, and the benchmark should see them:

* the two threads use one SSL object at once (one reads, one writes); OpenSSL does not
  promise that is safe, CPython does not prevent it, and in practice it works;
* ``SSLSocket`` cannot send close_notify while another thread reads (``unwrap()`` reads
  until the peer's close_notify, ``shutdown()`` drops TLS altogether), so an app's EOF
  becomes a TCP half-close under TLS, and a FIN without close_notify is taken as the end
  of the stream (Python sets ``OP_IGNORE_UNEXPECTED_EOF`` by default). Half-close works;
  a truncation of the stream by a third party would not be noticed. A reset still is:
  with ``suppress_ragged_eofs`` off it raises instead of reading as an EOF;
* ``SSLSocket.recv_into`` returns one TLS record (≤ 16 KiB) per call, and ``sendall``
  writes one record per system call.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import threading
import time
from types import FrameType

from smesh.bench.models.common import (
    CONNECT_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    READ_SIZE,
    Options,
    Ready,
    ResumingContext,
    linger_reset,
    log,
    nodelay,
)

STACK_SIZE = 512 * 1024  # thousands of threads: 8 MiB of address space each is needless


class _Stopped(Exception):
    pass


class _Connection:
    """Two threads, one per direction; the last one out closes both sockets."""

    __slots__ = ("app", "failed", "keep", "left", "lock", "tls")

    def __init__(
        self, app: socket.socket, tls: ssl.SSLSocket, keep: ResumingContext | None
    ) -> None:
        self.app = app
        self.tls = tls
        self.keep = keep
        self.lock = threading.Lock()
        self.left = 2
        self.failed = False

    def pump(self, src: socket.socket, dst: socket.socket) -> None:
        view = memoryview(bytearray(READ_SIZE))
        try:
            while n := src.recv_into(view):
                dst.sendall(view[:n])
            if not self.failed:  # an EOF we caused ourselves (below) is not passed on
                # Half-close. SSLSocket.shutdown() would drop TLS for the other direction,
                # so the TCP socket underneath is shut (see the module's docstring).
                socket.socket.shutdown(dst, socket.SHUT_WR)
        except OSError:  # resets, broken pipes, TLS errors (ssl.SSLError is an OSError)
            self._fail()
        finally:
            self._leave()

    def _fail(self) -> None:
        with self.lock:
            if self.failed:
                return
            self.failed = True
        for sock in (self.app, self.tls):
            linger_reset(sock)  # closing sends a reset, passed on to both ends
            with contextlib.suppress(OSError):  # wakes the other thread, sends nothing
                socket.socket.shutdown(sock, socket.SHUT_RD)

    def _leave(self) -> None:
        with self.lock:
            self.left -= 1
            if self.left:
                return
        if self.keep is not None:  # the client role: offer this session next time
            self.keep.keep(self.tls)
        self.app.close()
        self.tls.close()


def _reset(sock: socket.socket) -> None:
    linger_reset(sock)
    sock.close()


def _connection(opts: Options, ctx: ResumingContext, accepted: socket.socket) -> None:
    """Connect and shake hands (bounded by timeouts), then relay in this thread and one more."""
    nodelay(accepted)
    source = _peer(accepted)
    other: socket.socket | None = None
    try:
        if opts.client:
            other = socket.create_connection(opts.target, timeout=CONNECT_TIMEOUT)
            other.settimeout(HANDSHAKE_TIMEOUT)
            tls = ctx.wrap_socket(other, session=ctx.kept, suppress_ragged_eofs=False)
            app = accepted
        else:
            accepted.settimeout(HANDSHAKE_TIMEOUT)
            tls = ctx.wrap_socket(accepted, server_side=True, suppress_ragged_eofs=False)
            app = other = socket.create_connection(opts.target, timeout=CONNECT_TIMEOUT)
    except ssl.SSLError as exc:  # wrap_socket closed the TLS socket, after sending an alert
        log.warning("%s: TLS handshake failed: %s", source, exc.reason or exc)
        if opts.client:
            _reset(accepted)
        return
    except OSError as exc:
        log.warning("%s: setting up the connection failed: %s", source, exc.strerror or exc)
        _reset(accepted)
        if other is not None:
            _reset(other)
        return
    for sock in (app, tls):
        sock.settimeout(None)
        nodelay(sock)
    conn = _Connection(app, tls, ctx if opts.client else None)
    try:
        threading.Thread(target=conn.pump, args=(app, tls), daemon=True).start()
    except RuntimeError as exc:  # can't start new thread
        log.warning("%s: %s", source, exc)
        _reset(app)
        _reset(tls)
        return
    conn.pump(tls, app)


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped


def serve(opts: Options, ctx: ResumingContext, listener: socket.socket, ready: Ready) -> None:
    threading.stack_size(STACK_SIZE)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        ready()  # a stop signal may come at once
        while True:
            try:
                sock, _ = listener.accept()
            except OSError as exc:  # out of descriptors: let some connections end
                log.warning("accept: %s", exc)
                time.sleep(0.05)
                continue
            try:
                threading.Thread(target=_connection, args=(opts, ctx, sock), daemon=True).start()
            except RuntimeError as exc:
                log.warning("accept: %s", exc)
                _reset(sock)
    except _Stopped:
        pass
    finally:
        listener.close()
