"""asyncio Protocols: callbacks on transports, the loop's own TLS, pause/resume for flow."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import cast

from smesh.bench.candidates.common import Options, nodelay, run_asyncio

HIGH_WATER = 256 * 1024


class _Half(asyncio.Protocol):
    """One side of a proxied connection; *peer* is the other side's protocol."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.early: list[bytes] = []
        self.early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport.set_write_buffer_limits(HIGH_WATER)
        raw = transport.get_extra_info("socket")
        if raw is not None:
            nodelay(raw)

    def link(self, peer: _Half) -> None:
        self.peer = peer
        for data in self.early:
            self.data_received(data)
        self.early.clear()
        if self.early_eof:
            self.eof_received()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early.append(data)
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early_eof = True
            return True
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
            return True  # keep our write side open (half-close)
        peer.transport.close()  # TLS transports cannot half-close
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            if exc is None:
                peer.transport.close()
            else:
                peer.transport.abort()

    def pause_writing(self) -> None:  # our buffer is full: stop reading the other side
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Inbound(_Half):
    def __init__(self, opts: Options) -> None:
        super().__init__()
        self.opts = opts

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.pause_reading()  # type: ignore[attr-defined]
        self.connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        opts = self.opts
        tls = opts.context if opts.role == "client" else None
        try:
            _, upstream = await loop.create_connection(
                _Half, *opts.target, ssl=tls, server_hostname=None if tls is None else ""
            )
        except (OSError, ssl.SSLError):
            if self.transport is not None:
                self.transport.abort()
            return
        upstream.link(self)
        self.link(upstream)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


async def _serve(opts: Options, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    tls = opts.context if opts.role == "server" else None
    server = await loop.create_server(lambda: _Inbound(opts), sock=sock, ssl=tls)
    await server.serve_forever()


def main(opts: Options) -> None:
    run_asyncio(opts, _serve)
