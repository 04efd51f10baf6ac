"""The relay: bytes both ways between an app's plain socket and a TLS tunnel.

This is the per-byte path, so it is written for speed and small idle memory:

* reads go into two scratch buffers shared by every connection of the event loop
  (:class:`Scratch`); one ``recv`` takes up to 256 KiB, so one ``send`` on the tunnel
  carries many TLS records, and the decrypted side is gathered from many records into one
  ``send`` to the app;
* bytes pass through the TLS object's memory BIOs one record-sized slice at a time: a BIO
  keeps the largest size it ever held, so a whole batch would stay pinned per connection;
* a connection owns memory only while its reader is slower than its writer: the unsent
  remainder of one batch. Then it stops reading that direction (backpressure), so pending
  data per direction is bounded by one batch plus TLS overhead (:data:`PENDING_BOUND`);
* each direction ends on its own (half-close): an app's EOF becomes a TLS close_notify and
  a TCP half-close toward the peer; the peer's close_notify becomes an EOF for the app;
* a reset on either side becomes a reset on the other (``SO_LINGER`` 0), and so does a
  tunnel that ends without close_notify, so a truncated stream never looks complete.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

from smesh.dataplane.records import ConnectionRecord
from smesh.dataplane.sockets import (
    abort,
    bound_receive_buffer,
    bound_send_buffer,
    send_buffer,
    send_gathered,
    send_rest,
)
from smesh.dataplane.tlsio import MAX_RECORD, TlsSession, decrypt_into

log = logging.getLogger("smesh.dataplane")

BATCH = 256 * 1024
PENDING_BOUND = 2 * (BATCH + BATCH // 16 + MAX_RECORD)  # both directions, worst case


# A carrier reads an app this much at a time: its ciphertext then leaves in fuller TCP
# segments, and the veth path costs per segment (docs/benchmarks.md, "Batch size"). A
# relay or splice keeps BATCH, which bounds what one connection may hold.
CARRIER_BATCH = 512 * 1024


# The kernel's send buffer on the agent's sockets to apps (limits.appSendBufferKiB): what a
# stalled app's connection may keep queued in the kernel, beside what the agent holds.
APP_SEND_BUFFER = 64 * 1024
# The receive buffer of a stream's socket from its app (limits.appReceiveBufferKiB): what
# an app may write ahead while its stream waits for credit. 64 KiB is what the kernel
# starts every TCP socket with (tcp_rmem's default, which it counts as 128 KiB).
APP_RECEIVE_BUFFER = 64 * 1024
# What both get once the stream has shown it is fast (its or its peer's window grew):
# about what the kernel's autotuning gives a bulk loopback connection.
FAST_APP_BUFFER = 2 * 1024 * 1024


class Scratch:
    """Buffers shared by all relays and carriers of one event loop (callbacks never
    interleave): relays and splices use the first :data:`BATCH` bytes, carriers all.

    It also carries the settings of the loop's app-facing sockets: the bound on their
    kernel send buffer (*app_send_buffer*) and, for streams, receive buffer
    (*app_receive_buffer*); 0 leaves either to the kernel's autotuning.
    """

    def __init__(
        self,
        size: int = BATCH,
        carrier_size: int = CARRIER_BATCH,
        app_send_buffer: int = APP_SEND_BUFFER,
        app_receive_buffer: int = APP_RECEIVE_BUFFER,
    ) -> None:
        self.size = size
        self.app_send_buffer = app_send_buffer
        self.app_receive_buffer = app_receive_buffer
        total = max(size, carrier_size)
        recv, plain = memoryview(bytearray(total)), memoryview(bytearray(total))
        self.recv, self.plain = recv[:size], plain[:size]
        self.carrier_recv, self.carrier_plain = recv[:carrier_size], plain[:carrier_size]

    def bound(self, app: socket.socket) -> int:
        """Give an app-facing socket the bounded kernel send buffer; what it may hold."""
        if not self.app_send_buffer:
            return send_buffer(app)  # autotuned: what it is now, an estimate
        bound_send_buffer(app, self.app_send_buffer)
        return 2 * self.app_send_buffer  # as the kernel counts it, bookkeeping included

    def unbound(self, app: socket.socket) -> int:
        """Give a fast app's socket a bulk stream's send buffer; what it may hold now."""
        if not self.app_send_buffer:
            return send_buffer(app)
        size = max(self.app_send_buffer, FAST_APP_BUFFER)
        if size > self.app_send_buffer:
            bound_send_buffer(app, size)
        return 2 * size

    def bound_receive(self, app: socket.socket) -> None:
        """Give a stream's app socket the bounded receive buffer."""
        if self.app_receive_buffer:
            bound_receive_buffer(app, self.app_receive_buffer)

    def unbound_receive(self, app: socket.socket) -> None:
        """The stream's peer reads fast: its app may write ahead as a bulk sender does."""
        if self.app_receive_buffer and self.app_receive_buffer < FAST_APP_BUFFER:
            bound_receive_buffer(app, FAST_APP_BUFFER)


class Relay:
    __slots__ = (
        "_down_eof",
        "_down_pending",
        "_loop",
        "_on_done",
        "_plain_fd",
        "_tls_fd",
        "_up_eof",
        "_up_pending",
        "_up_shutdown",
        "down_done",
        "last_active",
        "plain",
        "record",
        "scratch",
        "tls",
        "up_done",
    )

    def __init__(
        self,
        plain: socket.socket,
        tls: TlsSession,
        record: ConnectionRecord,
        scratch: Scratch,
        on_done: Callable[[Relay], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.plain = plain
        self.tls = tls
        self.record = record
        self.scratch = scratch
        self._on_done = on_done
        scratch.bound(plain)  # the app's socket: a stalled app keeps a bounded queue
        self._plain_fd = plain.fileno()
        self._tls_fd = tls.sock.fileno()
        self._up_pending: memoryview | None = None  # ciphertext not yet sent to the tunnel
        self._down_pending: memoryview | None = None  # plaintext not yet sent to the app
        self._up_eof = False  # the app sent EOF
        self._up_shutdown = False  # close_notify queued after the app's EOF
        self._down_eof = False  # the peer sent close_notify
        self.up_done = False
        self.down_done = False
        self.last_active = self._loop.time()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, initial_down: bytes = b"") -> None:
        """Begin relaying; *initial_down* is app data that arrived with the CONNECT exchange."""
        self._loop.add_reader(self._plain_fd, self._read_plain)
        self._loop.add_reader(self._tls_fd, self._read_tls)
        if initial_down:
            self._send_plain(memoryview(initial_down), copy=False)
        if self._down_pending is None and not self.down_done:
            self._decrypt()  # records that came along with the handshake or the 200

    def pending_bytes(self) -> int:
        return sum(len(p) for p in (self._up_pending, self._down_pending) if p is not None)

    def _finish(self, result: str, detail: str = "") -> None:
        loop = self._loop
        for fd in (self._plain_fd, self._tls_fd):
            loop.remove_reader(fd)
            loop.remove_writer(fd)
        self._up_pending = self._down_pending = None
        self.record.finish(result, detail)
        self._on_done(self)

    def abort(self, detail: str, result: str = "reset") -> None:
        """Reset both sides (an error, a reset, an idle timeout or a forced stop)."""
        if self.record.result != "open":
            return
        self._finish(result, detail)
        abort(self.plain)
        abort(self.tls.sock)

    def _maybe_done(self) -> None:
        if self.up_done and self.down_done and self.record.result == "open":
            self._finish("ok")
            self.plain.close()
            self.tls.sock.close()

    # -- app → tunnel ------------------------------------------------------------------

    def _read_plain(self) -> None:
        view = self.scratch.recv
        try:
            n = self.plain.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.abort(f"app side: {exc.strerror or exc}")
            return
        self.last_active = self._loop.time()
        if n == 0:
            self._loop.remove_reader(self._plain_fd)
            self._up_eof = True
            self._close_up()
            return
        self.record.bytes_from_app += n
        parts: list[bytes] = []
        try:
            self.tls.seal(view[:n], parts)
        except ssl.SSLError as exc:
            self.abort(f"TLS: {exc.reason or exc}", "error")
            return
        self._send_tls(parts)

    def _send_tls(self, parts: list[bytes]) -> None:
        """Send the records of one batch in one call (``sendmsg`` gathers without a copy)."""
        try:
            rest = send_gathered(self.tls.sock, parts)
        except OSError as exc:
            self.abort(f"tunnel: {exc.strerror or exc}")
            return
        if rest is not None:
            self._up_pending = rest
            if not self._up_eof:
                self._loop.remove_reader(self._plain_fd)  # backpressure: stop reading the app
            self._loop.add_writer(self._tls_fd, self._flush_tls)

    def _flush_tls(self) -> None:
        if self._up_pending is None:
            return
        try:
            self._up_pending = send_rest(self.tls.sock, self._up_pending)
        except OSError as exc:
            self.abort(f"tunnel: {exc.strerror or exc}")
            return
        self.last_active = self._loop.time()  # a slow reader is not an idle one
        if self._up_pending is not None:
            return
        self._loop.remove_writer(self._tls_fd)
        if self._up_shutdown:
            self._half_close_tunnel()
        elif not self._up_eof:
            self._loop.add_reader(self._plain_fd, self._read_plain)

    def _close_up(self) -> None:
        """The app is done sending: close_notify, then a TCP half-close toward the peer."""
        # Decrypt everything already received first: OpenSSL refuses to finish the
        # shutdown with unread application data queued, and the connection would break.
        if self.tls.incoming.pending and not self._drain_for_shutdown():
            return
        try:
            self.tls.obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # sent ours; the peer's close_notify comes later
        except ssl.SSLError as exc:
            self.abort(f"TLS shutdown: {exc.reason or exc}", "error")
            return
        self._up_shutdown = True
        data = self.tls.outgoing.read()
        if self._up_pending is not None:  # still flushing earlier data: append
            data = bytes(self._up_pending) + data
            self._up_pending = None
            self._loop.remove_writer(self._tls_fd)
        self._send_tls([data])
        if self._up_pending is None and self.record.result == "open":
            self._half_close_tunnel()

    def _half_close_tunnel(self) -> None:
        try:
            self.tls.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.abort(f"tunnel: {exc.strerror or exc}")
            return
        self.up_done = True
        self._maybe_done()

    def _drain_for_shutdown(self) -> bool:
        """Move all buffered TLS data to the app-side pending buffer (bounded by one batch)."""
        parts = [bytes(self._down_pending)] if self._down_pending is not None else []
        view = self.scratch.plain
        read = decrypt_into(self.tls.obj)
        while True:
            try:
                n = read(self.scratch.size, view)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                n = 0
            except ssl.SSLError as exc:
                self.abort(f"TLS: {exc.reason or exc}", "error")
                return False
            if n == 0:
                self._down_eof = True
                break
            self.record.bytes_to_app += n
            parts.append(bytes(view[:n]))
        if parts:
            self._loop.remove_reader(self._tls_fd)
            self._down_pending = memoryview(b"".join(parts))
            self._loop.add_writer(self._plain_fd, self._flush_plain)
        elif self._down_eof:
            self._close_down()
        return True

    # -- tunnel → app ------------------------------------------------------------------

    def _read_tls(self) -> None:
        view = self.scratch.recv
        try:
            n = self.tls.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.abort(f"tunnel: {exc.strerror or exc}")
            return
        self.last_active = self._loop.time()
        if n == 0:
            self._loop.remove_reader(self._tls_fd)
            if not self._down_eof:
                self.abort("the tunnel closed without close_notify")
            return
        self._decrypt(view[:n])

    def _decrypt(self, cipher: memoryview | None = None) -> None:
        """Decrypt as many records as fit in one batch, then send them in one call.

        *cipher* (just received) goes into the TLS object one slice at a time, as records
        are taken out: a memory BIO keeps the largest size it ever held until the
        connection ends, so feeding it a whole batch would pin a batch per connection.
        """
        obj = self.tls.obj
        total = 0 if cipher is None else len(cipher)
        try:
            filled, fed, eof = self.tls.open_into(self.scratch.plain, cipher, 0)
        except ssl.SSLError as exc:
            self.abort(f"TLS: {exc.reason or exc}", "error")
            return
        if fed < total:  # the batch is full of records that were already queued: keep the rest
            assert cipher is not None
            self.tls.incoming.write(cipher[fed:])
        if filled:
            self.record.bytes_to_app += filled
            self._send_plain(self.scratch.plain[:filled], copy=True)
            if self.record.result != "open":
                return
        if eof:
            self._down_eof = True
            self._loop.remove_reader(self._tls_fd)
            if self._down_pending is None:
                self._close_down()
        elif filled and self._down_pending is None and (self.tls.incoming.pending or obj.pending()):
            self._loop.call_soon(self._decrypt_again)  # a full batch: more may be buffered

    def _decrypt_again(self) -> None:
        if self.record.result == "open" and self._down_pending is None and not self._down_eof:
            self._decrypt()

    def _send_plain(self, data: memoryview, copy: bool) -> None:
        try:
            sent = self.plain.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.abort(f"app side: {exc.strerror or exc}")
            return
        if sent < len(data):
            rest = data[sent:]
            self._down_pending = memoryview(bytes(rest)) if copy else rest
            self._loop.remove_reader(self._tls_fd)  # backpressure: stop reading the tunnel
            self._loop.add_writer(self._plain_fd, self._flush_plain)

    def _flush_plain(self) -> None:
        if self._down_pending is None:
            return
        try:
            self._down_pending = send_rest(self.plain, self._down_pending)
        except OSError as exc:
            self.abort(f"app side: {exc.strerror or exc}")
            return
        self.last_active = self._loop.time()
        if self._down_pending is not None:
            return
        self._loop.remove_writer(self._plain_fd)
        if self._down_eof:
            self._close_down()
            return
        self._loop.add_reader(self._tls_fd, self._read_tls)
        self._decrypt()  # records may be waiting in the BIO already

    def _close_down(self) -> None:
        """The peer is done sending: pass the EOF on to the app."""
        try:
            self.plain.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.abort(f"app side: {exc.strerror or exc}")
            return
        self.down_done = True
        self._maybe_done()
