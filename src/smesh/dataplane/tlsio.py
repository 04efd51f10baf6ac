"""TLS over memory BIOs on a raw non-blocking socket: the control path of a connection.

The handshake and the CONNECT exchange run here as coroutines with timeouts. The same
:class:`TlsSession` is then handed to the relay, which drives it on callbacks, so one
SSL object serves a connection from its first byte to its last.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
READ_CHUNK = 65536
MAX_RECORD = 16 * 1024 + 256
# Bytes moved through a TLS memory BIO at a time. A memory BIO keeps the largest size it
# ever held, so a connection of its own (one per app connection) moves one record's worth;
# a carrier, one per pair of pods, can afford more: fewer calls and fewer failed reads
# (docs/benchmarks.md, "Throughput: the credit loop, and slices through the TLS buffers").
SLICE = 16 * 1024
CARRIER_SLICE = 64 * 1024


def decrypt_into(obj: ssl.SSLObject) -> Callable[[int, memoryview], int]:
    """*obj*'s read with a buffer, which returns a count, not bytes (typeshed says bytes)."""
    read: Any = obj.read
    return read  # type: ignore[no-any-return]


class TlsSession:
    """An SSL object with its two memory BIOs and the socket they feed."""

    __slots__ = ("incoming", "obj", "outgoing", "slice", "sock")

    def __init__(
        self,
        ctx: ssl.SSLContext,
        sock: socket.socket,
        server_side: bool,
        session: ssl.SSLSession | None = None,
    ) -> None:
        self.sock = sock
        self.slice = SLICE
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(
            self.incoming, self.outgoing, server_side=server_side, session=session
        )

    # -- the per-byte path: bytes go through the BIOs a slice at a time, never a whole batch.

    def seal(self, plain: memoryview, records: list[bytes]) -> None:
        """Encrypt *plain*, appending its records to *records* (raises ssl.SSLError)."""
        obj, outgoing, size = self.obj, self.outgoing, self.slice
        if len(plain) <= size:  # most messages
            obj.write(plain)
            records.append(outgoing.read())
            return
        for start in range(0, len(plain), size):
            obj.write(plain[start : start + size])
            records.append(outgoing.read())

    def open_into(
        self, view: memoryview, cipher: memoryview | None, fed: int
    ) -> tuple[int, int, bool]:
        """Decrypt into *view* while a whole record fits, feeding *cipher* from *fed* on.

        Returns (bytes decrypted, how much of *cipher* is fed now, whether the peer sent
        close_notify); raises ssl.SSLError. Ciphertext already queued is decrypted before
        more is fed; a read is skipped when nothing is left to decrypt (a failing read costs
        an exception).
        """
        obj, incoming, size = self.obj, self.incoming, self.slice
        read = decrypt_into(obj)
        total = 0 if cipher is None else len(cipher)
        room, filled = len(view), 0
        while room - filled >= MAX_RECORD:
            if not incoming.pending:
                if fed < total:
                    assert cipher is not None
                    incoming.write(cipher[fed : fed + size])
                    fed += size
                elif not obj.pending():  # no plaintext left inside the SSL object either
                    break
            try:
                n = read(room - filled, view[filled:])
            except ssl.SSLWantReadError:  # a record is still incomplete
                if fed >= total:
                    break
                assert cipher is not None
                incoming.write(cipher[fed : fed + size])
                fed += size
                continue
            except ssl.SSLZeroReturnError:
                return filled, fed, True
            if n == 0:
                return filled, fed, True
            filled += n
        return filled, fed, False

    async def flush(self) -> None:
        data = self.outgoing.read()
        if data:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _receive(self) -> bool:
        chunk = await asyncio.get_running_loop().sock_recv(self.sock, READ_CHUNK)
        if not chunk:
            return False
        self.incoming.write(chunk)
        return True

    async def handshake(self, flush_last: bool = True) -> None:
        """Complete the TLS handshake (the caller bounds it with a timeout).

        With *flush_last* false the final flight stays queued, so it leaves in one segment
        with what the caller sends next (the client's Finished with its CONNECT; the
        server's session tickets with its answer): one send and one wake-up less each.
        """
        while True:
            try:
                self.obj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            except ssl.SSLError:
                with contextlib.suppress(OSError):  # the alert tells the peer what went wrong
                    self.sock.send(self.outgoing.read())
                raise
            if done:
                if flush_last:
                    await self.flush()
                return
            await self.flush()
            if not await self._receive():
                raise ConnectionError("the peer closed the connection during the TLS handshake")

    async def read_until(self, parse: Callable[[bytes], T | None]) -> T:
        """Feed decrypted bytes to *parse* until it returns a result (b"" means: closed)."""
        while True:
            try:
                data = self.obj.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                await self.flush()  # e.g. a key update or ticket acknowledgement
                if not await self._receive():
                    data = b""
                else:
                    continue
            except ssl.SSLZeroReturnError:
                data = b""
            result = parse(data)
            if result is not None:
                return result

    async def send(self, data: bytes) -> None:
        self.obj.write(data)
        await self.flush()

    async def close(self) -> None:
        """Send close_notify and stop writing (used after an error answer)."""
        with contextlib.suppress(ssl.SSLError):  # SSLWantReadError: the peer's comes later
            self.obj.unwrap()
        try:
            await self.flush()
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
