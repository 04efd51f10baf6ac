"""asyncio streams: the textbook design (StreamReader/StreamWriter, ssl= on the stream)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

from smesh.bench.candidates.common import BUFFER, Options, nodelay, run_asyncio


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(BUFFER):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        else:  # TLS streams cannot half-close: close the whole connection
            writer.close()
    except (OSError, ssl.SSLError):
        writer.transport.abort()


async def _serve(opts: Options, sock: socket.socket) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if opts.role == "client":
                up_reader, up_writer = await asyncio.open_connection(
                    *opts.target, ssl=opts.context, server_hostname=None
                )  # streams offer no way to pass a session: every handshake is a full one
            else:
                up_reader, up_writer = await asyncio.open_connection(*opts.target)
        except (OSError, ssl.SSLError):
            writer.transport.abort()
            return
        for w in (writer, up_writer):
            raw = w.get_extra_info("socket")
            if raw is not None:
                nodelay(raw)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        for w in (writer, up_writer):
            with contextlib.suppress(OSError):
                w.close()

    tls = opts.context if opts.role == "server" else None
    server = await asyncio.start_server(handle, sock=sock, ssl=tls, limit=BUFFER)
    await server.serve_forever()


def main(opts: Options) -> None:
    run_asyncio(opts, _serve)
