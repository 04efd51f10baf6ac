"""A steady load for agent upgrades and crashes; knows nothing of smesh, reports JSON.

Run inside lab pods with ``python -m smesh.bench.steady`` (one implementation for the
integration tests and ``smesh bench --only upgrade``)::

    serve PORT [--bulk-port P]
    client HOST PORT STOPFILE [--long N] [--rate R] [--interval S] [--max-seconds T]
                              [--bulk-port P --bulk-bytes N --bulk-seconds T] [--reconnect]

The server echoes on PORT and, on the bulk port, reads until EOF while hashing and answers
``BYTES SHA256HEX``. The client keeps N long-lived connections, each sending a numbered
message every S seconds and checking that exactly that message comes back, in order; opens
new connections at R per second, each a message, a half-close and its echo; and sends one
bulk transfer of N bytes (a seeded generator, spread over T seconds so it overlaps what
happens meanwhile, and hashed on both sides). It prints READY once the long-lived
connections are up, runs until STOPFILE exists (at most T seconds), and prints one JSON
line: counts, every failure (the first thousand), and the longest window of consecutive
failed connects. With ``--reconnect`` a cut long-lived connection is counted and opened
again, so that every crash of an agent cuts (and counts) every connection it carried; a
reopened connection that fails before its first answer is a failed reopening, not a cut.

The checking and the arithmetic are sans-IO functions, unit-tested apart from sockets.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

#: In every message the client sends, so a packet capture can look for it in clear.
MARKER = "smesh-handover-marker"
INTERVAL = 0.02
MAX_SECONDS = 120.0
CONNECT_TIMEOUT = 10.0
CHUNK = 256 * 1024
BLOCK = 1024 * 1024  # the bulk generator repeats one seeded block of this size
MAX_LISTED = 1000  # failures listed in the report (all are counted)


# -- sans-IO: messages, checks, pacing, windows --------------------------------------------


class Wrong(Exception):
    """An answer that is not the echo of what was sent."""


def long_message(index: int, seq: int) -> bytes:
    return f"{MARKER} long {index} {seq:08d}\n".encode()


def new_message(n: int) -> bytes:
    return f"{MARKER} new {n}\n".encode()


def check(sent: bytes, answer: bytes) -> None:
    """*answer* must be exactly *sent*: a lost, repeated or reordered byte is Wrong."""
    if answer != sent:
        raise Wrong(f"sent {sent!r}, got {answer!r}")


def bulk_chunks(size: int, seed: int = 19, chunk: int = CHUNK) -> Iterator[bytes]:
    """*size* bytes of a seeded block repeated, in pieces of at most *chunk*."""
    block = random.Random(seed).randbytes(BLOCK)
    sent = 0
    while sent < size:
        offset = sent % BLOCK
        piece = block[offset : offset + min(chunk, size - sent, BLOCK - offset)]
        sent += len(piece)
        yield piece


def pace_delay(sent: int, total: int, elapsed: float, seconds: float) -> float:
    """How long to wait so that *sent* of *total* bytes are not ahead of an even spread over
    *seconds* (0: send at once)."""
    if seconds <= 0 or total <= 0:
        return 0.0
    due = sent / total * seconds
    return max(0.0, due - elapsed)


def bulk_answer(text: bytes) -> tuple[int, str]:
    """The server's ``BYTES SHA256HEX`` answer; Wrong if it is anything else."""
    parts = text.decode(errors="replace").split()
    if len(parts) != 2 or not parts[0].isdigit() or len(parts[1]) != 64:
        raise Wrong(f"not a bulk answer: {text[:100]!r}")
    return int(parts[0]), parts[1]


@dataclass(frozen=True)
class Attempt:
    """One new connection: when it started and ended (seconds) and whether it worked."""

    start: float
    end: float
    ok: bool


def failure_windows(attempts: Sequence[Attempt]) -> list[tuple[float, float]]:
    """Each run of consecutive failed connects as (start, end): from the start of its first
    failure to the start of the next connect that worked (or the end of its last failure
    if none did). Attempts are ordered by their start."""
    windows: list[tuple[float, float]] = []
    first: Attempt | None = None
    last: Attempt | None = None
    for attempt in sorted(attempts, key=lambda a: a.start):
        if not attempt.ok:
            first = first or attempt
            last = attempt
            continue
        if first is not None:
            windows.append((first.start, attempt.start))
            first = last = None
    if first is not None and last is not None:
        windows.append((first.start, last.end))
    return windows


def longest_failure_ms(attempts: Sequence[Attempt]) -> float:
    """The longest of :func:`failure_windows`, in ms; 0 when no connect failed."""
    lengths = [end - start for start, end in failure_windows(attempts)]
    return round(max(lengths, default=0.0) * 1000, 1)


# -- the server ----------------------------------------------------------------------------


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn: socket.socket = self.request
        try:
            while data := conn.recv(CHUNK):
                conn.sendall(data)
        except OSError:
            pass


class _Bulk(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn: socket.socket = self.request
        digest = hashlib.sha256()
        size = 0
        try:
            while data := conn.recv(CHUNK):
                digest.update(data)
                size += len(data)
            conn.sendall(f"{size} {digest.hexdigest()}\n".encode())
        except OSError:
            pass


class _Server(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def serve(port: int, bulk_port: int | None) -> None:
    servers = [_Server(("::", port), _Echo)]
    if bulk_port is not None:
        servers.append(_Server(("::", bulk_port), _Bulk))
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("READY", flush=True)
    servers[0].serve_forever()


# -- the client ----------------------------------------------------------------------------


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return data


@dataclass
class Bulk:
    port: int
    size: int
    seconds: float
    sent: int = 0
    matched: bool = False
    cut: bool = False  # reset, EOF or no answer: not a completed transfer with a wrong hash
    error: str | None = None
    ms: float = 0.0


@dataclass
class Steady:
    host: str
    port: int
    interval: float = INTERVAL
    reconnect: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    messages: int = 0
    long_failures: list[str] = field(default_factory=list)
    long_cut: int = 0
    reopen_failures: int = 0  # --reconnect: reopenings that failed before a first answer
    connects: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    connect_failures: list[str] = field(default_factory=list)
    #: failures by exception name: what an app would have seen
    connect_errors: dict[str, int] = field(default_factory=dict)
    cut_errors: dict[str, int] = field(default_factory=dict)

    def _connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT)

    def _cut(self, text: str, exc: Exception) -> None:
        with self.lock:
            self.long_cut += 1
            kind = type(exc).__name__
            self.cut_errors[kind] = self.cut_errors.get(kind, 0) + 1
            if len(self.long_failures) < MAX_LISTED:
                self.long_failures.append(text)

    def long_lived(self, index: int, sock: socket.socket | None) -> None:
        reopened = False
        while not self.stop.is_set():
            if sock is None:  # --reconnect: open it again, as an app's pool would
                reopened = True
                try:
                    sock = self._connect()
                except OSError:
                    with self.lock:
                        self.reopen_failures += 1
                    time.sleep(0.05)
                    continue
            seq = 0
            try:
                while not self.stop.is_set():
                    message = long_message(index, seq)
                    sock.sendall(message)
                    check(message, recv_exact(sock, len(message)))
                    with self.lock:
                        self.messages += 1
                    seq += 1
                    time.sleep(self.interval)
                sock.shutdown(socket.SHUT_WR)
                check(b"", sock.recv(1))  # the server's EOF, nothing more
            except (OSError, Wrong) as exc:
                if reopened and seq == 0:  # never worked: a failed reopening, not a cut
                    with self.lock:
                        self.reopen_failures += 1
                    time.sleep(0.05)
                else:
                    text = f"{time.time():.3f} connection {index}, message {seq}: {exc!r}"
                    self._cut(text, exc)
                if not self.reconnect:
                    return
            finally:
                sock.close()
                sock = None

    def one_connect(self, n: int) -> None:
        message = new_message(n)
        start = time.time()
        try:
            with self._connect() as sock:
                sock.sendall(message)
                sock.shutdown(socket.SHUT_WR)
                answer = b""
                while data := sock.recv(65536):
                    answer += data
            if not answer:
                raise ConnectionError("EOF before the answer")  # closed, not a wrong byte
            check(message, answer)
            ok = True
        except (OSError, Wrong) as exc:
            ok = False
            with self.lock:
                kind = type(exc).__name__
                self.connect_errors[kind] = self.connect_errors.get(kind, 0) + 1
                if len(self.connect_failures) < MAX_LISTED:
                    self.connect_failures.append(f"{start:.3f} connection {n}: {exc!r}")
        with self.lock:
            self.attempts.append(Attempt(start, time.time(), ok))

    def bulk(self, bulk: Bulk) -> None:
        started = time.monotonic()
        digest = hashlib.sha256()
        try:
            with socket.create_connection((self.host, bulk.port), timeout=30) as sock:
                for piece in bulk_chunks(bulk.size):
                    time.sleep(
                        pace_delay(bulk.sent, bulk.size, time.monotonic() - started, bulk.seconds)
                    )
                    sock.sendall(piece)
                    digest.update(piece)
                    bulk.sent += len(piece)
                sock.shutdown(socket.SHUT_WR)
                answer = b""
                while data := sock.recv(256):
                    answer += data
            size, hexdigest = bulk_answer(answer)
            bulk.matched = size == bulk.size and hexdigest == digest.hexdigest()
            if not bulk.matched:
                bulk.error = f"the server got {size} bytes hashing {hexdigest}"
        except (OSError, Wrong) as exc:
            bulk.cut = True
            bulk.error = f"after {bulk.sent} bytes: {exc!r}"
        bulk.ms = round((time.monotonic() - started) * 1000, 1)

    def run(
        self, stopfile: str, long: int, rate: float, max_seconds: float, bulk: Bulk | None
    ) -> dict[str, Any]:
        socks = [self._connect() for _ in range(long)]
        threads = [
            threading.Thread(target=self.long_lived, args=(i, s), daemon=True)
            for i, s in enumerate(socks)
        ]
        if bulk is not None:
            threads.append(threading.Thread(target=self.bulk, args=(bulk,), daemon=True))
        for thread in threads:
            thread.start()
        print("READY", flush=True)
        started = time.monotonic()
        connecting: list[threading.Thread] = []
        n = 0
        while not os.path.exists(stopfile) and time.monotonic() - started < max_seconds:
            thread = threading.Thread(target=self.one_connect, args=(n,), daemon=True)
            thread.start()
            connecting.append(thread)
            n += 1
            self.connects = n
            # a fixed rate: the n-th connect starts at n / rate, however long each took
            time.sleep(max(0.0, n / rate - (time.monotonic() - started)))
        for thread in connecting:
            thread.join(CONNECT_TIMEOUT * 3)
        if bulk is not None:
            threads[-1].join(max_seconds)
        self.stop.set()
        for thread in threads:
            thread.join(30)
        return self.report(time.monotonic() - started, long, bulk)

    def report(self, seconds: float, long: int, bulk: Bulk | None) -> dict[str, Any]:
        with self.lock:
            connected = sum(1 for a in self.attempts if a.ok)
            report: dict[str, Any] = {
                "seconds": round(seconds, 1),
                "long_lived": long,
                "messages": self.messages,
                "long_cut": self.long_cut,
                "long_failures": list(self.long_failures),
                "long_reopen_failures": self.reopen_failures,
                "connects": self.connects,
                "connected": connected,
                "failed_connects": len(self.attempts) - connected,
                "longest_failure_ms": longest_failure_ms(self.attempts),
                "failure_windows": [
                    [round(start, 3), round(end, 3)]
                    for start, end in failure_windows(self.attempts)
                ],
                "connect_errors": dict(self.connect_errors),
                "cut_errors": dict(self.cut_errors),
                "connect_failures": list(self.connect_failures),
            }
        if bulk is not None:
            report["bulk"] = {
                "bytes": bulk.size,
                "sent": bulk.sent,
                "sha256_ok": bulk.matched,
                "cut": bulk.cut,
                "error": bulk.error,
                "ms": bulk.ms,
            }
        return report


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m smesh.bench.steady")
    sub = parser.add_subparsers(dest="role", required=True)
    server = sub.add_parser("serve")
    server.add_argument("port", type=int)
    server.add_argument("--bulk-port", type=int)
    client = sub.add_parser("client")
    client.add_argument("host")
    client.add_argument("port", type=int)
    client.add_argument("stopfile")
    client.add_argument("--long", type=int, default=5)
    client.add_argument("--rate", type=float, default=20.0)
    client.add_argument("--interval", type=float, default=INTERVAL)
    client.add_argument("--max-seconds", type=float, default=MAX_SECONDS)
    client.add_argument("--bulk-port", type=int)
    client.add_argument("--bulk-bytes", type=int, default=0)
    client.add_argument("--bulk-seconds", type=float, default=0.0)
    client.add_argument("--reconnect", action="store_true")
    args = parser.parse_args(argv)
    if args.role == "client" and args.bulk_bytes and args.bulk_port is None:
        parser.error("--bulk-bytes needs --bulk-port (the server's bulk port)")
    if args.role == "client" and args.rate <= 0:
        parser.error("--rate must be positive (new connections per second)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.role == "serve":
        serve(args.port, args.bulk_port)
        return
    bulk = None
    if args.bulk_bytes > 0:
        bulk = Bulk(args.bulk_port, args.bulk_bytes, args.bulk_seconds)
    steady = Steady(args.host, args.port, args.interval, args.reconnect)
    report = steady.run(args.stopfile, args.long, args.rate, args.max_seconds, bulk)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
