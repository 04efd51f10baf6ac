"""smesh's design: one event loop, non-blocking sockets, TLS over MemoryBIO, batched I/O.

Runs the data plane's own :class:`Relay` and :class:`TlsSession`, so the candidate is the
production code minus capture, CONNECT and policy.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from smesh.bench.candidates.common import Options, log, run_asyncio
from smesh.dataplane.records import ConnectionRecord
from smesh.dataplane.relay import Relay, Scratch
from smesh.dataplane.sockets import abort, prepare
from smesh.dataplane.tlsio import TlsSession


async def _serve(opts: Options, listener: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    scratch = Scratch()
    relays: set[Relay] = set()
    cached: list[ssl.SSLSession | None] = [None]
    listener.setblocking(False)

    def done(relay: Relay) -> None:
        relays.discard(relay)
        obj = relay.tls.obj
        if opts.role == "client" and not obj.session_reused:  # tickets arrived by now
            session = obj.session
            if session is not None and session.has_ticket:
                cached[0] = session

    async def handle(conn: socket.socket) -> None:
        prepare(conn)
        record = ConnectionRecord(direction="bench", pod="-", source="-")
        upstream = prepare(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        try:
            await loop.sock_connect(upstream, opts.target)
            if opts.role == "client":
                tls = TlsSession(opts.context, upstream, server_side=False, session=cached[0])
                plain = conn
            else:
                tls = TlsSession(opts.context, conn, server_side=True)
                plain = upstream
            await asyncio.wait_for(tls.handshake(), 10)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            log(f"connection failed: {exc}")
            abort(conn)
            abort(upstream)
            return
        relay = Relay(plain, tls, record, scratch, done)
        relays.add(relay)
        relay.start()

    tasks: set[asyncio.Task[None]] = set()
    while True:
        conn, _ = await loop.sock_accept(listener)
        task = loop.create_task(handle(conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def main(opts: Options) -> None:
    run_asyncio(opts, _serve)
