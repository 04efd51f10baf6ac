"""Blocking sockets and a thread per direction: the simplest code, SSLSocket for TLS."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading

from smesh.bench.candidates.common import BUFFER, Options, log, nodelay, run_workers


def _pipe(src: socket.socket, dst: socket.socket, done: threading.Event) -> None:
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    try:
        while n := src.recv_into(view):
            dst.sendall(view[:n])
        with contextlib.suppress(OSError):
            # Half-close. SSLSocket.shutdown would drop TLS for the other direction too
            # (its reads would return raw records), so shut the TCP socket underneath:
            # a FIN without close_notify, which Python's ssl reads as a clean end.
            socket.socket.shutdown(dst, socket.SHUT_WR)
    except (OSError, ssl.SSLError):
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    if done.is_set():
        src.close()
        dst.close()
    done.set()


class _Sessions:
    """The client role offers the last session for resumption, like stunnel's cache."""

    def __init__(self) -> None:
        self.session: ssl.SSLSession | None = None
        self.lock = threading.Lock()


def _handle(opts: Options, conn: socket.socket, sessions: _Sessions) -> None:
    try:
        nodelay(conn)
        if opts.role == "client":
            raw = socket.create_connection(opts.target)
            nodelay(raw)
            with sessions.lock:
                session = sessions.session
            upstream = opts.context.wrap_socket(raw, session=session)
            if not upstream.session_reused:
                with sessions.lock:
                    sessions.session = upstream.session
            inside: socket.socket = conn
        else:
            inside = socket.create_connection(opts.target)
            nodelay(inside)
            upstream = opts.context.wrap_socket(conn, server_side=True)
    except (OSError, ssl.SSLError) as exc:
        log(f"connection failed: {exc}")
        conn.close()
        return
    done = threading.Event()
    threading.Thread(target=_pipe, args=(inside, upstream, done), daemon=True).start()
    _pipe(upstream, inside, done)


def main(opts: Options) -> None:
    sessions = _Sessions()

    def serve(sock: socket.socket) -> None:
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=_handle, args=(opts, conn, sessions), daemon=True).start()

    run_workers(opts, serve)
