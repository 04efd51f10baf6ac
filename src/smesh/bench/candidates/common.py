"""What every candidate shares: arguments, TLS contexts, workers, the ready line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

BUFFER = 256 * 1024


@dataclass(frozen=True)
class Options:
    role: str  # client: plain in, TLS out; server: TLS in, plain out
    listen: tuple[str, int]
    target: tuple[str, int]
    context: ssl.SSLContext
    loop: str
    workers: int
    files: tuple[str, str, str] = ("", "", "")  # cert, key, CA: for a TLS stack of its own


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def context(role: str, cert: str, key: str, ca: str) -> ssl.SSLContext:
    """TLS 1.3, chain checked against *ca*; the server requires a client certificate."""
    protocol = ssl.PROTOCOL_TLS_CLIENT if role == "client" else ssl.PROTOCOL_TLS_SERVER
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.check_hostname = False  # the bench certificates carry SPIFFE IDs, no host names
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def parse(argv: list[str]) -> tuple[str, Options]:
    parser = argparse.ArgumentParser(prog="python -m smesh.bench.candidates")
    parser.add_argument("model", choices=["streams", "protocols", "memorybio", "native"])
    parser.add_argument("--role", choices=["client", "server"], required=True)
    parser.add_argument("--listen", type=_address, required=True)
    parser.add_argument("--target", type=_address, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--loop", choices=["default", "uvloop"], default="default")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    ctx = context(args.role, args.cert, args.key, args.ca)
    files = (args.cert, args.key, args.ca)
    opts = Options(args.role, args.listen, args.target, ctx, args.loop, args.workers, files)
    return args.model, opts


def listener(address: tuple[str, int]) -> socket.socket:
    """A listening socket of its own per worker: the kernel spreads connections."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(4096)
    return sock


def nodelay(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def run_asyncio(
    opts: Options, main: Callable[[Options, socket.socket], Coroutine[Any, Any, None]]
) -> None:
    def one(sock: socket.socket) -> None:
        if opts.loop == "uvloop":
            import uvloop  # noqa: PLC0415 - only when asked for

            uvloop.run(main(opts, sock))
        else:
            asyncio.run(main(opts, sock))

    run_workers(opts, one)


def run_workers(opts: Options, serve: Callable[[socket.socket], None]) -> None:
    """Bind, fork the extra workers, say ready, serve until SIGTERM."""
    socks = [listener(opts.listen) for _ in range(opts.workers)]
    children = []
    for sock in socks[1:]:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
            serve(sock)
            os._exit(0)
        children.append(pid)

    def stop(*_: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    try:
        serve(socks[0])
    finally:
        stop()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
