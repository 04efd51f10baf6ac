"""asyncio Protocols and Transports, with the loop's own TLS (``create_server(ssl=...)``).

Callbacks instead of tasks: each connection is two linked :class:`_Side` objects, data
is written to the other side's transport as it arrives, and a transport whose write
buffer fills pauses reading on the other side (``pause_writing``/``resume_writing``).
As with streams, the loop's TLS transport cannot half-close (no ``write_eof``; a
close_notify received shuts it down), so an EOF on either side ends the connection.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import cast

from smesh.bench.models.common import (
    BACKLOG,
    CONNECT_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    READ_SIZE,
    Options,
    Ready,
    ResumingContext,
    linger_reset,
    log,
    run_asyncio,
    until_stopped,
)

Keep = Callable[[ssl.SSLObject | None], None]


def _reset(transport: asyncio.BaseTransport) -> None:
    linger_reset(transport.get_extra_info("socket"))
    cast(asyncio.Transport, transport).abort()


class _Side(asyncio.Protocol):
    """One end of a proxied connection; ``peer`` is the other end."""

    def __init__(self, tls: bool, peer: _Side | None = None, keep: Keep | None = None) -> None:
        self.tls = tls
        self.peer = peer
        self.keep = keep  # the client role's TLS side hands its session on when it ends
        self.transport: asyncio.Transport | None = None
        self.ssl_object: ssl.SSLObject | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, hence the cast
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=READ_SIZE)
        if self.tls:
            self.ssl_object = transport.get_extra_info("ssl_object")
        if self.peer is not None:  # the side we connected for an accepted one: link back
            self.peer.link(self)

    def link(self, other: _Side) -> None:
        self.peer = other

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()  # TLS: close_notify; plain: after flushing what is queued
        # An app's EOF: keep its side open for what still comes back until the TLS side ends.
        # (A TLS transport ignores the answer: it shuts itself down on close_notify.)
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            if exc is None:
                peer.transport.close()
            else:
                _reset(peer.transport)
        self.peer = None
        if peer is not None:
            peer.peer = None
        if self.keep is not None:
            self.keep(self.ssl_object)
            self.ssl_object = None

    def pause_writing(self) -> None:  # our transport's buffer is full: stop reading the peer
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.resume_reading()


class _Accepted(_Side):
    """The side the listener accepted: it waits, not reading, until its peer is connected."""

    def __init__(self, opts: Options, ctx: ResumingContext) -> None:
        super().__init__(tls=not opts.client)
        self.opts = opts
        self.ctx = ctx
        self.connecting: asyncio.Task[None] | None = None
        self.early: list[bytes] = []  # what arrived before the other side was connected
        self.early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()  # not immediate: a first read may still come
        self.connecting = asyncio.get_running_loop().create_task(self._connect())

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        else:
            super().data_received(data)

    def eof_received(self) -> bool:
        if self.peer is None:
            self.early_eof = True
            return True
        return super().eof_received()

    def link(self, other: _Side) -> None:
        super().link(other)
        assert other.transport is not None
        if self.transport is None or self.transport.is_closing():
            other.transport.close()
            return
        if self.early:
            other.transport.write(b"".join(self.early))
            self.early.clear()
        if self.early_eof:
            self.eof_received()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        opts = self.opts
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Side(opts.client, self, self.ctx.keep if opts.client else None),
                    *opts.target,
                    ssl=self.ctx if opts.client else None,  # ResumingContext offers a session
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT if opts.client else None,
                ),
                CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT,
            )
        except (OSError, TimeoutError) as exc:
            what = "timed out" if isinstance(exc, TimeoutError) else exc
            log.warning("setting up a connection failed: %s", what)
            if self.transport is not None and not self.transport.is_closing():
                _reset(self.transport)
            return
        finally:
            self.connecting = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        else:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        super().connection_lost(exc)


async def _main(opts: Options, ctx: ResumingContext, listener: socket.socket, ready: Ready) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Accepted(opts, ctx),
        sock=listener,
        ssl=None if opts.client else ctx,
        ssl_handshake_timeout=None if opts.client else HANDSHAKE_TIMEOUT,
        backlog=BACKLOG,
    )
    try:
        await until_stopped(ready)
    finally:
        server.close()


def serve(opts: Options, ctx: ResumingContext, listener: socket.socket, ready: Ready) -> None:
    run_asyncio(opts.loop, _main(opts, ctx, listener, ready))
