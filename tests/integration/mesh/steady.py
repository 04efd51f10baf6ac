"""A steady client load for upgrade tests; knows nothing of smesh, reports JSON on stdout.

    steady.py HOST PORT STOPFILE [LONG] [RATE] [INTERVAL] [MAX_SECONDS]

Against an echo server: LONG (default 5) long-lived connections, each sending a numbered
message every INTERVAL seconds (default 0.02) and checking that exactly that message comes
back, in order; and new connections at RATE per second (default 20), each a message, a
half-close and its echo. Prints READY once the long-lived connections are up; runs until
STOPFILE exists (at most MAX_SECONDS, default 120), then closes everything and prints one
JSON line: counts, and every failure.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

MARKER = "smesh-handover-marker"
INTERVAL = 0.02
MAX_SECONDS = 120.0


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return data


class Wrong(Exception):
    """An answer that is not the echo of what was sent."""


def check(sent: bytes, answer: bytes) -> None:
    if answer != sent:
        raise Wrong(f"sent {sent!r}, got {answer!r}")


class Steady:
    def __init__(self, host: str, port: int, interval: float = INTERVAL) -> None:
        self.host, self.port = host, port
        self.interval = interval
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.messages = 0
        self.long_failures: list[str] = []
        self.connects = 0
        self.connected = 0
        self.connect_failures: list[str] = []

    def long_lived(self, index: int, sock: socket.socket) -> None:
        seq = 0
        try:
            while not self.stop.is_set():
                message = f"{MARKER} long {index} {seq:08d}\n".encode()
                sock.sendall(message)
                check(message, recv_exact(sock, len(message)))
                with self.lock:
                    self.messages += 1
                seq += 1
                time.sleep(self.interval)
            sock.shutdown(socket.SHUT_WR)
            check(b"", sock.recv(1))  # the server's EOF, nothing more
        except (OSError, Wrong) as exc:
            with self.lock:
                self.long_failures.append(f"connection {index}, message {seq}: {exc!r}")
        finally:
            sock.close()

    def one_connect(self, n: int) -> None:
        message = f"{MARKER} new {n}\n".encode()
        try:
            with socket.create_connection((self.host, self.port), timeout=10) as sock:
                sock.sendall(message)
                sock.shutdown(socket.SHUT_WR)
                answer = b""
                while data := sock.recv(65536):
                    answer += data
            check(message, answer)
            with self.lock:
                self.connected += 1
        except (OSError, Wrong) as exc:
            with self.lock:
                self.connect_failures.append(f"{time.time():.3f} connection {n}: {exc!r}")

    def run(
        self, stopfile: str, long: int, rate: float, max_seconds: float = MAX_SECONDS
    ) -> dict[str, object]:
        socks = [socket.create_connection((self.host, self.port), timeout=10) for _ in range(long)]
        threads = [
            threading.Thread(target=self.long_lived, args=(i, s), daemon=True)
            for i, s in enumerate(socks)
        ]
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
            time.sleep(1 / rate)
        for thread in connecting:
            thread.join(30)
        self.stop.set()
        for thread in threads:
            thread.join(30)
        return {
            "seconds": round(time.monotonic() - started, 1),
            "long_lived": long,
            "messages": self.messages,
            "long_failures": self.long_failures,
            "connects": self.connects,
            "connected": self.connected,
            "connect_failures": self.connect_failures,
        }


def main() -> None:
    host, port, stopfile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    long = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    rate = float(sys.argv[5]) if len(sys.argv) > 5 else 20.0
    interval = float(sys.argv[6]) if len(sys.argv) > 6 else INTERVAL
    max_seconds = float(sys.argv[7]) if len(sys.argv) > 7 else MAX_SECONDS
    report = Steady(host, port, interval).run(stopfile, long, rate, max_seconds)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
