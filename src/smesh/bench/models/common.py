"""What every candidate shares: options, TLS set-up, listening sockets, the asyncio runner.

The candidates differ only in how they move bytes, so everything else is decided once
here: the same TLS settings as the C tunnels (TLS 1.3, chain checked against the CA,
client certificate required), the same 256 KiB reads, the same backlog, the same
session offer on the client role, the same way of starting and stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
import ssl
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from smesh.bench.errors import BenchError
from smesh.dataplane.relay import BATCH

log = logging.getLogger("smesh.bench.models")

MODELS = ("streams", "protocols", "threads", "memorybio")
ASYNCIO_MODELS = frozenset({"streams", "protocols", "memorybio"})
READ_SIZE = BATCH  # 256 KiB: one read feeds many TLS records into one send
BACKLOG = 4096
CONNECT_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 10.0
_LINGER_RESET = struct.pack("ii", 1, 0)

Role = Literal["client", "server"]
Address = tuple[str, int]
Ready = Callable[[], None]


class ModelError(BenchError):
    """A candidate proxy cannot start (bad option, unreadable certificate, port in use)."""


@dataclass(frozen=True)
class Options:
    """One proxy of a pair. ``client``: plain in, TLS out; ``server``: TLS in, plain out."""

    model: str
    role: Role
    listen: Address
    target: Address
    cert: Path
    key: Path
    ca: Path
    loop: str = "default"
    workers: int = 1

    @property
    def client(self) -> bool:
        return self.role == "client"


def parse_address(text: str) -> Address:
    """``IP:PORT`` or ``[IPv6]:PORT``."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not IP:PORT")
    return host, int(port)


class ResumingContext(ssl.SSLContext):
    """A client context that offers the last session it kept, like stunnel's session cache.

    asyncio's TLS transports (the default loop's and uvloop's) take no ``session=``, but
    both make their SSL object with ``context.wrap_bio(...)``, so the offer is made here;
    the models that create the SSL object themselves pass ``session=`` explicitly.
    """

    kept: ssl.SSLSession | None = None

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if session is None and not server_side:
            session = self.kept
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def keep(self, obj: ssl.SSLObject | ssl.SSLSocket | None) -> None:
        """Remember the session of a finished full handshake (its tickets arrived by now).

        Reading ``.session`` copies it (~100 µs), so resumed connections are not asked:
        the session they resumed is still good for the tickets' lifetime.
        """
        if obj is None or obj.session_reused:
            return
        with contextlib.suppress(ValueError):  # not connected (any more)
            session = obj.session
            if session is not None and session.has_ticket:
                self.kept = session


def tls_context(opts: Options) -> ResumingContext:
    """The TLS side of this proxy: client (node-1) or server (node-2)."""
    protocol = ssl.PROTOCOL_TLS_CLIENT if opts.client else ssl.PROTOCOL_TLS_SERVER
    ctx = ResumingContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the harness's certificates carry only a SPIFFE URI
    ctx.verify_mode = ssl.CERT_REQUIRED  # server side: a client certificate is required
    try:
        ctx.load_cert_chain(opts.cert, opts.key)
    except (OSError, ssl.SSLError) as exc:
        raise ModelError(f"cannot load {opts.cert} with key {opts.key}: {exc}") from None
    try:
        ctx.load_verify_locations(cafile=opts.ca)
    except (OSError, ssl.SSLError) as exc:
        raise ModelError(f"cannot load the CA bundle {opts.ca}: {exc}") from None
    return ctx


def listen(address: Address, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    try:
        return socket.create_server(address, family=family, backlog=BACKLOG, reuse_port=reuse_port)
    except OSError as exc:
        raise ModelError(f"cannot listen on {address[0]}:{address[1]}: {exc}") from None


def raise_fd_limit() -> None:
    """Two descriptors per connection: 1,000 idle tunnels need more than the default 1,024."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def nodelay(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def linger_reset(sock: Any) -> None:
    """Make the next close a TCP reset (takes a socket or asyncio's TransportSocket)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


# -- asyncio ------------------------------------------------------------------------------


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if loop == "uvloop":
        try:
            import uvloop  # noqa: PLC0415 - only when asked for; an optional dependency
        except ImportError:
            raise ModelError(
                "--loop uvloop needs the uvloop package: pip install 'smesh[bench]'"
            ) from None
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_asyncio(loop: str, main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.run(main)


async def until_stopped(ready: Ready) -> None:
    """Say ready, then wait for SIGTERM or SIGINT; the loop's own errors become one line."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_brief_exception)
    stopped: asyncio.Future[None] = loop.create_future()

    def stop() -> None:
        if not stopped.done():
            stopped.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    ready()
    await stopped


def _brief_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    log.warning("%s%s", context.get("message", "error"), f": {exc}" if exc else "")
