"""Load for the budget tests, run inside lab pods and nodes; JSON lines on stdout.

    stall HOST PORT IDLE HELLOS SECS   hold IDLE TCP connections that send nothing and
                                       HELLOS that send a TLS ClientHello and stop there;
                                       every second, open again the ones that were reset.
                                       Prints READY after the first round, then a report.
    hold HOST PORT COUNT SECS          open COUNT connections (through the mesh, from a
                                       pod) and hold them; a report of how many are alive
                                       once that number settles, then one at the end.
    carriers HOST PORT COUNT CERT KEY SECS
                                       open COUNT idle carriers (TLS, ALPN smesh-mux/1) with
                                       a valid certificate, one after the other; a report of
                                       how many are still open, then one at the end.
    sink PORT                          echo server for thousands of connections (selectors):
                                       READY, then it runs until killed.

The clients stop by themselves after SECS (stall: and at most 15 s more, while the
agent resets its last round): a test that dies leaves no flood behind.
"""

from __future__ import annotations

import contextlib
import json
import resource
import selectors
import socket
import ssl
import sys
import time
from typing import TypeVar

S = TypeVar("S", bound=socket.socket)
ROUND = 1.0  # seconds between top-ups


def report(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def more_descriptors(count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(count + 200, hard) if hard != resource.RLIM_INFINITY else count + 200
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def client_hello() -> bytes:
    ctx = ssl.create_default_context()
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="pod-3")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


class Full(Exception):
    """The listener's backlog is full (a connect timed out): try again next round."""


def open_one(host: str, port: int, first: bytes) -> socket.socket | None:
    """A connection (with *first* sent), None if it was reset at once; raises Full."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(2)
    try:
        sock.connect((host, port))
        if first:
            sock.sendall(first)
    except TimeoutError:
        sock.close()
        raise Full from None
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def alive(sock: socket.socket) -> bool:
    """Not reset or closed by the other side (whatever it sent is read and dropped). A TLS
    socket with nothing to read says so with SSLWantReadError, a plain one with
    BlockingIOError."""
    try:
        while True:
            if not sock.recv(65536):
                return False
    except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
        return True
    except OSError:  # ssl.SSLError too
        return False


def top_up(
    held: list[socket.socket], target: int, host: str, port: int, first: bytes
) -> tuple[list[socket.socket], int]:
    """Drop the dead, open new ones up to *target*; the list and how many were opened."""
    live = []
    for sock in held:
        if alive(sock):
            live.append(sock)
        else:
            sock.close()
    opened = 0
    for _ in range(target - len(live)):
        try:
            new = open_one(host, port, first)
        except Full:
            break
        opened += 1
        if new is not None:
            live.append(new)
    return live, opened


def settle(socks: list[S], *, none_within: float, quiet: float, cap: float) -> list[S]:
    """What of *socks* is alive once nothing more has been reset for *quiet* seconds after
    the first reset, or after *none_within* seconds if none comes (at most *cap* seconds:
    a loaded agent may take a while)."""
    start = time.monotonic()
    until = start + none_within
    while time.monotonic() < min(until, start + cap):
        time.sleep(0.2)
        before, socks = len(socks), [s for s in socks if alive(s)]
        if len(socks) < before:
            until = time.monotonic() + quiet
    return socks


def stall(host: str, port: int, idle: int, hellos: int, seconds: float) -> None:
    more_descriptors(idle + hellos)
    hello = client_hello()
    end = time.monotonic() + seconds
    plain: list[socket.socket] = []
    tls: list[socket.socket] = []
    opened = rounds = 0
    while True:
        plain, n = top_up(plain, idle, host, port, b"")
        opened += n
        tls, n = top_up(tls, hellos, host, port, hello)
        opened += n
        rounds += 1
        if rounds == 1:
            print("READY", flush=True)
        if time.monotonic() >= end:
            break
        time.sleep(ROUND)
    # What the last round opened is accepted (and reset past the share) meanwhile.
    live = settle(plain + tls, none_within=3, quiet=1, cap=15)
    report(opened=opened, rounds=rounds, alive=len(live))


def hold(host: str, port: int, count: int, seconds: float) -> None:
    more_descriptors(count)
    end = time.monotonic() + seconds
    held = []
    for _ in range(count):
        with contextlib.suppress(Full):
            sock = open_one(host, port, b"")
            if sock is not None:
                held.append(sock)
    held = settle(held, none_within=2, quiet=2, cap=30)  # the mesh resets past its share
    report(ready=True, held=len(held))
    while time.monotonic() < end:
        time.sleep(ROUND)
    report(held=sum(map(alive, held)))


def carriers(host: str, port: int, count: int, pem: tuple[str, str], seconds: float) -> None:
    more_descriptors(count)
    end = time.monotonic() + seconds
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the attacker does not care who answers
    ctx.load_cert_chain(*pem)
    ctx.set_alpn_protocols(["smesh-mux/1"])
    held: list[ssl.SSLSocket] = []
    refused = 0
    for _ in range(count):
        try:
            sock = ctx.wrap_socket(socket.create_connection((host, port), timeout=5))
            sock.setblocking(False)
            held.append(sock)
        except OSError:
            refused += 1
    held = settle(held, none_within=1, quiet=1, cap=15)
    report(ready=True, held=len(held), refused=refused)
    while time.monotonic() < end:
        time.sleep(ROUND)
    report(held=sum(map(alive, held)))


def sink(port: int) -> None:
    more_descriptors(16000)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(4096)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    print("READY", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        conn, _ = listener.accept()
                        conn.setblocking(False)
                        sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
                if data:
                    sock.send(data)  # small echoes: the buffer takes them
                    continue
            except OSError:
                pass
            sel.unregister(sock)
            sock.close()


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "stall":
        stall(args[0], int(args[1]), int(args[2]), int(args[3]), float(args[4]))
    elif mode == "hold":
        hold(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif mode == "carriers":
        carriers(args[0], int(args[1]), int(args[2]), (args[3], args[4]), float(args[5]))
    elif mode == "sink":
        sink(int(args[0]))
    else:
        raise SystemExit(f"unknown mode {mode} {args}")


if __name__ == "__main__":
    main()
