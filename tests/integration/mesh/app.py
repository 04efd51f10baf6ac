"""Test apps run inside lab pods; they know nothing of smesh and report JSON on stdout.

Servers print READY once listening, then one JSON line per finished connection.

    echo PORT                       echo until EOF
    xfer PORT N SEED                send N seeded bytes while receiving; report hashes
    halfclose PORT                  read until EOF, then answer with a digest of the request
    reset PORT                      read 5 bytes, send "partial", then reset the connection
    source PORT                     send forever (as fast as the reader allows)

Clients print one JSON line:

    xfer HOST PORT N SEED [SECS]    the same, from the client side (spread over SECS)
    halfclose HOST PORT N           send N bytes, shut down writing, read the whole answer
    expect-reset HOST PORT          how the connection ended (reset, eof, data) and when
    read-to-end HOST PORT           send "hello", read until EOF or reset; report which
    slow-read HOST PORT RATE SECS   read RATE bytes per second for SECS
    many HOST PORT COUNT            COUNT connections at once, each an echo of its number
    try-connect HOST PORT SECS      whether a connection is established within SECS
    loop HOST PORT STOPFILE         halfclose exchanges one after another until STOPFILE
                                    exists (at most 300 s): the wall-clock times of those
                                    that worked, and how the others failed
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import selectors
import socket
import struct
import sys
import threading
import time

CHUNK = 256 * 1024


def report(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.listen(4096)
    print("READY", flush=True)
    return sock


def connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=120)


def seeded(n: int, seed: int):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    left = n
    while left:
        size = min(CHUNK, left)
        yield rng.randbytes(size)
        left -= size


def transfer(sock: socket.socket, n: int, seed: int, seconds: float = 0) -> dict[str, object]:
    sent = hashlib.sha256()
    pause = seconds / max(1, n // CHUNK)

    def send() -> None:
        for block in seeded(n, seed):
            sent.update(block)
            sock.sendall(block)
            if pause:
                time.sleep(pause)
        sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    got = hashlib.sha256()
    total = 0
    while data := sock.recv(CHUNK):
        got.update(data)
        total += len(data)
    sender.join()
    return {"sent_sha256": sent.hexdigest(), "received_sha256": got.hexdigest(), "received": total}


def serve(port: int, handler) -> None:  # type: ignore[no-untyped-def]
    sock = listen(port)
    while True:
        conn, peer = sock.accept()

        def run(conn: socket.socket = conn, peer: object = peer) -> None:
            with conn:
                try:
                    result = handler(conn)
                except OSError as exc:
                    result = {"error": type(exc).__name__}
                if result is not None:
                    report(peer=str(peer[0]) if isinstance(peer, tuple) else "", **result)

        threading.Thread(target=run, daemon=True).start()


def echo(conn: socket.socket) -> None:
    while data := conn.recv(CHUNK):
        conn.sendall(data)


def halfclose_server(conn: socket.socket) -> dict[str, object]:
    digest = hashlib.sha256()
    size = 0
    while data := conn.recv(CHUNK):
        digest.update(data)
        size += len(data)
    answer = f"got {size} bytes {digest.hexdigest()}\n".encode()
    conn.sendall(answer)
    return {"request_bytes": size}


def reset_server(conn: socket.socket) -> None:
    conn.recv(5)
    conn.sendall(b"partial")
    time.sleep(0.3)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def source(conn: socket.socket) -> None:
    block = b"s" * CHUNK
    while True:
        conn.sendall(block)


def expect_reset(host: str, port: int) -> dict[str, object]:
    started = time.monotonic()
    try:
        with connect(host, port) as sock:
            sock.sendall(b"hello")
            data = sock.recv(100)
            outcome = "eof" if not data else "data"
    except ConnectionResetError:
        outcome = "reset"
    except OSError as exc:
        outcome = type(exc).__name__
    return {"outcome": outcome, "seconds": time.monotonic() - started}


def try_connect(host: str, port: int, seconds: float) -> dict[str, object]:
    try:
        with socket.create_connection((host, port), timeout=seconds):
            return {"connected": True, "error": None}
    except OSError as exc:
        return {"connected": False, "error": type(exc).__name__}


def read_to_end(host: str, port: int) -> dict[str, object]:
    data = b""
    with connect(host, port) as sock:
        sock.sendall(b"hello")
        try:
            while chunk := sock.recv(CHUNK):
                data += chunk
            ended = "eof"
        except ConnectionResetError:
            ended = "reset"
    return {"received": data.decode(errors="replace"), "ended": ended}


def slow_read(host: str, port: int, rate: int, seconds: float) -> dict[str, object]:
    sock = connect(host, port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    total = 0
    ended = "time"
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data = sock.recv(rate // 10 or 1)
        except ConnectionResetError:
            ended = "reset"
            break
        if not data:
            ended = "eof"
            break
        total += len(data)
        time.sleep(0.1)
    sock.close()
    return {"read": total, "ended": ended}


def many(host: str, port: int, count: int) -> dict[str, object]:
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (count * 4 + 100, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    )
    socks = [connect(host, port) for _ in range(count)]
    for i, sock in enumerate(socks):
        sock.sendall(b"%d" % i)
        sock.shutdown(socket.SHUT_WR)
    ok = 0
    sel = selectors.DefaultSelector()
    buffers = {}
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        buffers[sock] = (i, bytearray())
        sel.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + 120
    while buffers and time.monotonic() < deadline:
        for key, _ in sel.select(1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            i, buf = buffers[sock]
            data = sock.recv(4096)
            if data:
                buf += data
                continue
            ok += bytes(buf) == b"%d" % i
            sel.unregister(sock)
            sock.close()
            del buffers[sock]
    return {"ok": ok, "unfinished": len(buffers)}


def loop(host: str, port: int, stop: str) -> dict[str, object]:
    worked: list[float] = []
    failed: dict[str, int] = {}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not os.path.exists(stop):
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.sendall(b"q" * 100)
                sock.shutdown(socket.SHUT_WR)
                answer = b""
                while data := sock.recv(CHUNK):
                    answer += data
            if answer.startswith(b"got 100 bytes"):
                worked.append(time.time())
            else:
                failed["short"] = failed.get("short", 0) + 1
        except OSError as exc:
            failed[type(exc).__name__] = failed.get(type(exc).__name__, 0) + 1
        time.sleep(0.05)
    return {"worked": worked, "failed": failed}


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "echo":
        serve(int(args[0]), echo)
    elif mode == "xfer" and len(args) == 3:
        n, seed = int(args[1]), int(args[2])
        serve(int(args[0]), lambda conn: transfer(conn, n, seed))
    elif mode == "xfer":
        seconds = float(args[4]) if len(args) > 4 else 0.0
        with connect(args[0], int(args[1])) as sock:
            report(**transfer(sock, int(args[2]), int(args[3]), seconds))
    elif mode == "halfclose" and len(args) == 1:
        serve(int(args[0]), halfclose_server)
    elif mode == "halfclose":
        with connect(args[0], int(args[1])) as sock:
            payload = b"r" * int(args[2])
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while data := sock.recv(CHUNK):
                answer += data
            expected = f"got {len(payload)} bytes {hashlib.sha256(payload).hexdigest()}\n"
            report(answer=answer.decode(), ok=answer.decode() == expected)
    elif mode == "reset":
        serve(int(args[0]), reset_server)
    elif mode == "source":
        serve(int(args[0]), source)
    elif mode == "expect-reset":
        report(**expect_reset(args[0], int(args[1])))
    elif mode == "read-to-end":
        report(**read_to_end(args[0], int(args[1])))
    elif mode == "slow-read":
        report(**slow_read(args[0], int(args[1]), int(args[2]), float(args[3])))
    elif mode == "try-connect":
        report(**try_connect(args[0], int(args[1]), float(args[2])))
    elif mode == "loop":
        report(**loop(args[0], int(args[1]), args[2]))
    elif mode == "many":
        report(**many(args[0], int(args[1]), int(args[2])))
    else:
        raise SystemExit(f"unknown mode {mode} {args}")


if __name__ == "__main__":
    main()
