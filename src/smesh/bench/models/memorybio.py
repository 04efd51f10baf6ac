"""smesh's own design: one event loop, raw non-blocking sockets, TLS over memory BIOs.

This runs the data plane's real :class:`~smesh.dataplane.relay.Relay` (shared 256 KiB
scratch buffers, many TLS records per ``send``, half-close, backpressure) and
:class:`~smesh.dataplane.tlsio.TlsSession` for the handshake, so the figure measured is
the production code's, minus capture, the CONNECT exchange and policy.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from smesh.bench.models.common import (
    CONNECT_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    Options,
    Ready,
    ResumingContext,
    log,
    run_asyncio,
    until_stopped,
)
from smesh.dataplane.records import ConnectionRecord
from smesh.dataplane.relay import Relay, Scratch
from smesh.dataplane.sockets import abort, endpoint, prepare
from smesh.dataplane.tlsio import TlsSession

ACCEPT_BATCH = 64


class _Proxy:
    def __init__(self, opts: Options, ctx: ResumingContext) -> None:
        self.opts = opts
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.scratch = Scratch()  # one pair of buffers for every connection of this loop
        self.relays: set[Relay] = set()
        self.setting_up: set[asyncio.Task[None]] = set()
        self.family = socket.AF_INET6 if ":" in opts.target[0] else socket.AF_INET

    def start(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self.loop.add_reader(listener.fileno(), self._accept, listener)

    def stop(self, listener: socket.socket) -> None:
        self.loop.remove_reader(listener.fileno())
        listener.close()

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of descriptors: try again on the next event
                log.warning("accept: %s", exc)
                return
            task = self.loop.create_task(self._set_up(prepare(sock), endpoint(addr)))
            self.setting_up.add(task)
            task.add_done_callback(self.setting_up.discard)

    async def _connect(self) -> socket.socket:
        sock = prepare(socket.socket(self.family, socket.SOCK_STREAM))
        try:
            await asyncio.wait_for(self.loop.sock_connect(sock, self.opts.target), CONNECT_TIMEOUT)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _set_up(self, accepted: socket.socket, source: str) -> None:
        client = self.opts.client
        record = ConnectionRecord("outbound" if client else "inbound", self.opts.role, source)
        upstream: socket.socket | None = None
        try:
            if client:
                upstream = await self._connect()
                tls = TlsSession(self.ctx, upstream, server_side=False, session=self.ctx.kept)
            else:
                tls = TlsSession(self.ctx, accepted, server_side=True)
            await asyncio.wait_for(tls.handshake(), HANDSHAKE_TIMEOUT)
            if client:
                plain = accepted
            else:
                plain = upstream = await self._connect()
        except ssl.SSLError as exc:
            log.warning("%s: TLS handshake failed: %s", source, exc.reason or exc)
            if client:
                abort(accepted)  # the app sees a reset, never a clean but empty answer
            else:
                accepted.close()  # the alert is on its way; a reset could overtake it
            if upstream is not None:
                upstream.close()
            return
        except (OSError, TimeoutError) as exc:
            what = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or exc
            log.warning("%s: setting up the connection failed: %s", source, what)
            abort(accepted)
            if upstream is not None:
                abort(upstream)
            return
        relay = Relay(plain, tls, record, self.scratch, self._done)
        self.relays.add(relay)
        relay.start()

    def _done(self, relay: Relay) -> None:
        self.relays.discard(relay)
        if self.opts.client:
            self.ctx.keep(relay.tls.obj)


async def _main(opts: Options, ctx: ResumingContext, listener: socket.socket, ready: Ready) -> None:
    proxy = _Proxy(opts, ctx)
    proxy.start(listener)
    try:
        await until_stopped(ready)
    finally:
        proxy.stop(listener)


def serve(opts: Options, ctx: ResumingContext, listener: socket.socket, ready: Ready) -> None:
    run_asyncio(opts.loop, _main(opts, ctx, listener, ready))
