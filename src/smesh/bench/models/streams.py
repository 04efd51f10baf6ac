"""asyncio streams: the textbook design, ``start_server``/``open_connection`` with ``ssl=``.

Two tasks per connection copy ``await reader.read()`` into ``writer.write()`` and wait
on ``drain()`` (which is the backpressure). asyncio's TLS transport has no half-close:
``write_eof()`` raises, and a received close_notify shuts the whole transport down. So
an EOF from the app becomes close_notify and the connection ends when the peer answers
it; a close_notify from the peer ends the connection too. Data the far side sends after
the first EOF is lost, which the tests record.
"""

from __future__ import annotations

import asyncio
import socket

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

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while data := await src.read(READ_SIZE):
        dst.write(data)
        await dst.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    linger_reset(writer.get_extra_info("socket"))
    writer.transport.abort()


async def _relay(plain: Stream, tls: Stream) -> None:
    for _, writer in (plain, tls):
        writer.transport.set_write_buffer_limits(high=READ_SIZE)
    up = asyncio.ensure_future(_copy(plain[0], tls[1]))
    down = asyncio.ensure_future(_copy(tls[0], plain[1]))
    try:
        pending: set[asyncio.Future[None]] = {up, down}
        while down in pending:  # the connection lasts as long as its TLS side
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # an error or reset on either side: see below
            if up in done:
                tls[1].close()  # the app's EOF: close_notify, then the peer's ends `down`
        plain[1].close()
        tls[1].close()
    except OSError:  # ssl.SSLError is one too
        _reset(plain[1])
        _reset(tls[1])
    finally:
        up.cancel()
        down.cancel()


async def _handle(
    opts: Options, ctx: ResumingContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        if opts.client:
            tls = await asyncio.wait_for(
                asyncio.open_connection(
                    *opts.target,
                    ssl=ctx,  # ResumingContext offers the last session
                    limit=READ_SIZE,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                ),
                CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT,
            )
            plain: Stream = (reader, writer)
        else:
            tls = (reader, writer)
            plain = await asyncio.wait_for(
                asyncio.open_connection(*opts.target, limit=READ_SIZE), CONNECT_TIMEOUT
            )
    except (OSError, TimeoutError) as exc:
        what = "timed out" if isinstance(exc, TimeoutError) else exc
        log.warning("%s: setting up the connection failed: %s", _peer(writer), what)
        _reset(writer)
        return
    # Taken now: once the transport is closed, asyncio's TLS transport no longer answers.
    ssl_object = tls[1].get_extra_info("ssl_object") if opts.client else None
    try:
        await _relay(plain, tls)
    finally:
        if ssl_object is not None:
            ctx.keep(ssl_object)


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"


async def _main(opts: Options, ctx: ResumingContext, listener: socket.socket, ready: Ready) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _handle(opts, ctx, reader, writer)

    server = await asyncio.start_server(
        handle,
        sock=listener,
        ssl=None if opts.client else ctx,
        limit=READ_SIZE,
        ssl_handshake_timeout=None if opts.client else HANDSHAKE_TIMEOUT,
        backlog=BACKLOG,
    )
    try:
        await until_stopped(ready)
    finally:
        server.close()


def serve(opts: Options, ctx: ResumingContext, listener: socket.socket, ready: Ready) -> None:
    run_asyncio(opts.loop, _main(opts, ctx, listener, ready))
