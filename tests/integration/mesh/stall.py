"""Apps for the memory test, run inside lab pods; they know nothing of smesh.

sink PORT                       accept connections and never read them; print READY
stall HOST PORT COUNT BYTES     open COUNT connections, each sending up to BYTES without
                                waiting; print one JSON line once nothing moves any more,
                                then hold the connections until stdin closes
"""

from __future__ import annotations

import json
import select
import selectors
import socket
import sys
import time

SETTLE = 2.0  # seconds without progress: every connection sent what the path takes


def sink(port: int) -> None:
    server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.bind(("::", port))
    server.listen(4096)
    print("READY", flush=True)
    poller = select.poll()
    poller.register(server, select.POLLIN)
    held: dict[int, socket.socket] = {}
    while True:
        for fd, events in poller.poll():
            if fd == server.fileno():
                conn, _ = server.accept()
                held[conn.fileno()] = conn
                poller.register(conn, select.POLLERR | select.POLLHUP)  # never POLLIN
            elif events & (select.POLLERR | select.POLLHUP):
                poller.unregister(fd)
                held.pop(fd).close()  # what its receive buffer held goes with it


def stall(host: str, port: int, count: int, size: int) -> None:
    """The senders keep their own send buffers small, so what is measured is the mesh's."""
    sel = selectors.DefaultSelector()
    left: dict[socket.socket, int] = {}
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        sock.connect((host, port))
        sock.setblocking(False)
        left[sock] = size
        sel.register(sock, selectors.EVENT_WRITE)
    chunk = b"z" * 65536
    sent = resets = 0
    moved = time.monotonic()
    while time.monotonic() - moved < SETTLE and left:
        for key, _ in sel.select(0.2):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                n = sock.send(chunk[: min(len(chunk), left[sock])])
            except BlockingIOError:
                continue
            except OSError:  # reset by the mesh
                resets += 1
                sel.unregister(sock)
                del left[sock]
                continue
            sent += n
            moved = time.monotonic()
            left[sock] -= n
            if not left[sock]:
                sel.unregister(sock)
                del left[sock]
    print(json.dumps({"sent": sent, "resets_seen": resets, "blocked": len(left)}), flush=True)
    sys.stdin.read()  # hold every connection until the test lets go


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "sink":
        sink(int(args[0]))
    else:
        stall(args[0], int(args[1]), int(args[2]), int(args[3]))
