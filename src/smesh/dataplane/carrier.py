"""One long-lived mutual-TLS connection carrying many app connections (smesh-mux/1).

A TLS handshake per app connection is what bounded the connection rate, and one OpenSSL
object per idle connection what bounded memory (docs/benchmarks.md). A carrier pays both
once per pair of pods: each app connection rides it as a :class:`Stream` of a few hundred
bytes, opened by one frame.

The per-byte path keeps the relay's design (relay.py): shared scratch buffers, TLS memory
BIOs fed one record-sized slice at a time, ``sendmsg`` of many records at once. What is
new is sharing:

* all streams write into one SSL object, one frame at a time (callbacks never interleave);
  when the TLS socket is full, every stream stops reading its app until it drains;
* incoming frames are dispatched as they are decrypted; a stream whose app is slow keeps
  what its app has not taken, at most one window (:data:`INITIAL_WINDOW`), and the peer
  stops sending it more, so the other streams keep moving;
* what streams keep for apps that do not read counts against the agent's and the pod's
  budget (:class:`~smesh.tunnel.window.HeldBudget`): windows shrink as it fills, and a
  stream that would take a full budget past its share is reset;
* small frames produced while dispatching (credit, FIN, answers) leave together in one
  record after the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Literal

from smesh.dataplane.records import ConnectionRecord
from smesh.dataplane.relay import Scratch
from smesh.dataplane.sockets import abort, send_gathered, send_rest
from smesh.dataplane.tlsio import CARRIER_SLICE, MAX_RECORD, TlsSession
from smesh.tunnel import mux
from smesh.tunnel.errors import RemoteProtocolError
from smesh.tunnel.window import GrowthBudget, PodAccount, ReceiveWindow

log = logging.getLogger("smesh.dataplane")

Side = Literal["client", "server"]
REFUSAL_RESULTS = {403: "denied", 502: "refused", 503: "refused", 504: "timeout"}
#: A stream to one of a Service's endpoints keeps a copy of what its app sent before the
#: peer's answer, up to this many bytes, so that a REFUSE (the endpoint's app did not take
#: the connection, or its pod is leaving) hands the app to another endpoint with nothing
#: lost. Past it, a REFUSE resets the app as for any stream. A request's head fits.
REPLAY_LIMIT = 16 * 1024
#: The REFUSEs another endpoint is tried after: 502 (the endpoint's app could not be
#: connected) and 503 (its pod is at its cap or leaving). Not 403 (policy is the same for
#: every endpoint) nor 504 (the connect timeout has been spent already).
RETRIED_REFUSALS = frozenset({502, 503})
#: What a REFUSEd stream hands back: the app, the bytes it had sent, whether it had sent
#: its FIN, and the peer's answer.
Refused = Callable[[socket.socket, bytes, bool, str], None]
# What may wait behind a full socket. The streams stop reading their apps when it fills,
# so the data path adds at most a batch; more means the peer sends requests (OPENs, DATA
# that earns credit) but does not read the answers, and would grow the agent without end.
MAX_BACKLOG = 4 * 1024 * 1024


KEEPALIVE = ((socket.TCP_KEEPIDLE, 60), (socket.TCP_KEEPINTVL, 10), (socket.TCP_KEEPCNT, 3))


def _keepalive(sock: socket.socket) -> None:
    """A carrier outlives its streams: find out within ~90 s if its peer's node is gone."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in KEEPALIVE:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class Stream:
    """One app connection riding a carrier; the endpoint sees it like a relay."""

    __slots__ = (
        "_account",
        "_active_at",
        "_cancel_setup",
        "_held",
        "_kernel",
        "_loop",
        "_on_done",
        "_on_ready",
        "_on_refused",
        "_replay",
        "_timer",
        "app",
        "carrier",
        "id",
        "local_fin",
        "pending",
        "pending_size",
        "record",
        "remote_fin",
        "send_credit",
        "state",
        "window",
    )

    def __init__(
        self,
        carrier: Carrier,
        stream_id: int,
        record: ConnectionRecord,
        on_done: Callable[[Stream], None],
    ) -> None:
        self._loop = carrier.loop
        self.carrier = carrier
        self.id = stream_id
        self.record = record
        self._on_done = on_done
        self._on_ready: Callable[[], None] | None = None
        self._on_refused: Refused | None = None  # client side, to a Service's endpoint
        self._replay: bytearray | None = None  # what the app sent before the answer
        self._timer: asyncio.TimerHandle | None = None
        self._cancel_setup: Callable[[], None] | None = None  # the server side's connect
        self.app: socket.socket | None = None  # None while the server side connects
        self.state: Literal["opening", "open"] = "opening"
        self.send_credit = mux.INITIAL_WINDOW  # DATA we may still send
        self._account: PodAccount = carrier.windows.held.pod(record.pod)
        self._held = 0  # counted against the pod's budget: pending, and a stalled socket
        self._kernel = 0  # what the app's socket may queue in the kernel (its send buffer)
        self.window = ReceiveWindow(carrier.windows, self._loop.time, self._account)
        self.pending: list[bytes] = []  # DATA the app has not taken yet
        self.pending_size = 0
        self.local_fin = False  # our app sent EOF (FIN sent)
        self.remote_fin = False  # the peer sent FIN
        self._active_at = self._loop.time()

    # -- set-up ------------------------------------------------------------------------

    def cancel_on_end(self, cancel: Callable[[], None]) -> None:
        """Server side: what stops connecting to the app if the stream ends first."""
        self._cancel_setup = cancel

    def attach(self, app: socket.socket) -> None:
        """Start relaying with the app's socket (the server side has just connected it)."""
        self._cancel_setup = None
        if self.record.result != "open":  # sending its OK broke the carrier, and so ended it
            abort(app)
            return
        self.app = app
        scratch = self.carrier.scratch
        self._kernel = scratch.bound(app)
        scratch.bound_receive(app)
        self._loop.add_reader(app.fileno(), self._read_app)
        if self.pending:
            self._loop.add_writer(app.fileno(), self._flush_app)
        elif self.remote_fin:
            self._eof_to_app()

    def expect_answer(self, timeout: float, on_ready: Callable[[], None]) -> None:
        if self.record.result != "open":
            return  # ended while opening (its app reset at once): no timer to leave behind
        self._on_ready = on_ready
        self._timer = self._loop.call_later(
            timeout, self.abort, "the peer did not answer the stream's OPEN in time", "timeout"
        )

    def answered(self, status: int, reason: str) -> None:
        """The server's OK (status 200) or REFUSE."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if status == 200:
            self._on_refused = self._replay = None
            self.state = "open"
            if self._on_ready is not None:
                self._on_ready()
            self._maybe_done()
            return
        if (
            self._on_refused is not None
            and self._replay is not None
            and status in RETRIED_REFUSALS
            and self.app is not None
            and self.record.result == "open"
        ):
            self._give_back(f"{status} {reason}")
            return
        result = REFUSAL_RESULTS.get(status, "error")
        self._end(result, f"peer answered {status} {reason}", notify=False)

    def _give_back(self, answer: str) -> None:
        """A REFUSE before the app's first REPLAY_LIMIT bytes: the app's connection is not
        over, it goes to another endpoint (its record stays open; no reset)."""
        app, on_refused, replay = self.app, self._on_refused, self._replay
        assert app is not None
        assert on_refused is not None
        assert replay is not None
        self._on_refused = self._replay = None
        fd = app.fileno()
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        self.app = None
        self.window.release()
        self._account.change(self._held, 0)
        self._held = 0
        self.carrier.forget(self, False, answer)
        on_refused(app, bytes(replay), self.local_fin, answer)

    def refused(self, result: str, detail: str) -> None:
        """Server side: the stream ends with the REFUSE already sent."""
        self._end(result, detail, notify=False)

    def pending_bytes(self) -> int:
        return self.pending_size

    @property
    def last_active(self) -> float:
        """When bytes last moved, for the idle timeout.

        A stream that has used up its peer's window waits on the peer's app, which may be
        slow but reading: it is not idle here. The peer's agent holds that DATA and times
        the stream out if its app stalls.
        """
        if self.send_credit <= 0:
            return self._loop.time()
        return self._active_at

    # -- app → peer --------------------------------------------------------------------

    def _read_app(self) -> None:
        carrier = self.carrier
        app = self.app
        assert app is not None
        if carrier.congested:
            self._loop.remove_reader(app.fileno())
            carrier.blocked.add(self)
            return
        credit = self.send_credit
        if credit <= 0:
            self._loop.remove_reader(app.fileno())  # WINDOW resumes it
            return
        view = carrier.scratch.carrier_recv
        limit = min(credit, len(view) - mux.HEADER_SIZE)
        try:
            n = app.recv_into(view[mux.HEADER_SIZE : mux.HEADER_SIZE + limit])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.abort(f"app side: {exc.strerror or exc}")
            return
        self._active_at = self._loop.time()
        if n == 0:
            self._loop.remove_reader(app.fileno())
            self.local_fin = True
            carrier.send_control(mux.frame(mux.FIN, self.id))
            self._maybe_done()
            return
        self.send_credit = credit - n
        self.record.bytes_from_app += n
        replay = self._replay
        if replay is not None:
            if len(replay) + n <= REPLAY_LIMIT:
                replay += view[mux.HEADER_SIZE : mux.HEADER_SIZE + n]
            else:
                self._replay = None  # too much to keep: a REFUSE now resets the app
        mux.data_header(view, self.id, n)
        carrier.send_data(view[: mux.HEADER_SIZE + n])

    def credit(self, increment: int) -> None:
        """WINDOW from the peer: read the app again if it was waiting for credit."""
        was_out = self.send_credit <= 0
        credit = self.send_credit
        self.send_credit = credit + increment
        if credit <= mux.INITIAL_WINDOW < credit + increment and self.app is not None:
            self.carrier.scratch.unbound_receive(self.app)  # the peer grew our window
        self._active_at = self._loop.time()  # the peer's app took DATA: not idle, if slow
        if was_out and self.app is not None and not self.local_fin and self.record.result == "open":
            if self.carrier.congested:
                self.carrier.blocked.add(self)
            else:
                self._loop.add_reader(self.app.fileno(), self._read_app)

    def resume(self) -> None:
        """The carrier's socket drained: read the app again (if credit allows)."""
        if self.app is not None and not self.local_fin and self.record.result == "open":
            self._loop.add_reader(self.app.fileno(), self._read_app)

    # -- peer → app --------------------------------------------------------------------

    def deliver(self, data: memoryview) -> None:
        size = len(data)
        if not self.window.received(size):
            self.abort("the peer sent more than its window")
            return
        if self.remote_fin:
            self.abort("the peer sent DATA after FIN")
            return
        self._active_at = self._loop.time()
        app = self.app
        if self.pending or app is None:
            self.pending.append(bytes(data))
            self.pending_size += size
            self._hold(app)
            return
        try:
            sent = app.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.abort(f"app side: {exc.strerror or exc}")
            return
        self.record.bytes_to_app += sent
        if sent:
            self._taken(sent, sent == size)
        if sent < size:
            self.pending.append(bytes(data[sent:]))
            self.pending_size += size - sent
            self._loop.add_writer(app.fileno(), self._flush_app)
            self._hold(app)

    def _hold(self, app: socket.socket | None) -> None:
        """Count what the app has not taken against the budgets; past its share of a full
        one the stream is reset (its initial window was granted before any of this)."""
        held = self._unread(app)
        self._account.change(self._held, held)
        self._held = held
        if self._account.over_share(held):
            self._over_budget()

    def _unread(self, app: socket.socket | None) -> int:
        """What this stream holds for its app: pending DATA, and while there is any, the
        app socket's kernel send buffer (full, or the DATA would not be pending)."""
        held = self.pending_size
        return held + self._kernel if held and app is not None else held

    def _over_budget(self) -> None:
        account = self._account
        budget = account.budget
        if budget.reset(time.monotonic()):  # throttled: apps could trigger it at will
            log.warning(
                "pod %s: an app is not reading %d bytes sent to it while its apps hold %d "
                "(limits.unreadBudgetPerPodMiB: %d MiB) and the node's %d (limits."
                "unreadBudgetMiB: %d MiB); resetting the stream (%d so far)",
                self.record.pod,
                self._held,
                account.held,
                account.limit >> 20,
                budget.held,
                budget.limit >> 20,
                budget.resets,
                extra={"fields": self.record.as_dict()},
            )
        self.abort("the app did not read and its memory budget is full", "reset")

    def _taken(self, size: int, caught_up: bool) -> None:
        """The app took *size* bytes: hand the credit back once there is enough of it."""
        if self.remote_fin:
            return  # no more DATA comes: no credit to hand back
        window = self.window
        before = window.size
        increment = window.taken(size, caught_up)
        if increment:
            if window.size > before and before == mux.INITIAL_WINDOW and self.app is not None:
                # The app reads fast: its socket gets the buffer of a bulk stream back.
                self._kernel = self.carrier.scratch.unbound(self.app)
            self.carrier.send_control(mux.window_frame(self.id, increment))

    def _flush_app(self) -> None:
        app = self.app
        assert app is not None
        while self.pending:
            chunk = self.pending[0]
            try:
                sent = app.send(chunk)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.abort(f"app side: {exc.strerror or exc}")
                return
            self.record.bytes_to_app += sent
            self.pending_size -= sent
            self._active_at = self._loop.time()  # a slow reader is not an idle one
            if sent < len(chunk):
                self.pending[0] = chunk[sent:]
            else:
                self.pending.pop(0)
            self._taken(sent, not self.pending)
            if self.record.result != "open":
                return  # the credit's write found the carrier broken (and ended the stream)
            if sent < len(chunk):
                self._release_held()
                return  # the app is full
        self._release_held()
        self._loop.remove_writer(app.fileno())
        if self.remote_fin:
            self._eof_to_app()

    def _release_held(self) -> None:
        """The app took some: what is left counts (never a reset: the app is reading)."""
        held = self._unread(self.app)
        if held != self._held:
            self._account.change(self._held, held)
            self._held = held

    def peer_fin(self) -> None:
        self.remote_fin = True
        if self.app is not None and not self.pending:
            self._eof_to_app()

    def _eof_to_app(self) -> None:
        assert self.app is not None
        try:
            self.app.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.abort(f"app side: {exc.strerror or exc}")
            return
        self._maybe_done()

    # -- the end -----------------------------------------------------------------------

    def _maybe_done(self) -> None:
        if self.local_fin and self.remote_fin and not self.pending and self.state == "open":
            self._end("ok", "", notify=False)

    def abort(self, detail: str, result: str = "reset") -> None:
        """Reset the app's connection and the peer's stream (error, reset, timeout, stop)."""
        self._end(result, detail, notify=True)

    def peer_reset(self, reason: str) -> None:
        self._end("reset", f"peer reset the stream: {reason}" if reason else "peer reset", False)

    def _end(self, result: str, detail: str, notify: bool) -> None:
        if self.record.result != "open":
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._cancel_setup is not None:
            self._cancel_setup()
            self._cancel_setup = None
        self.record.finish(result, detail)
        self.window.release()
        self.pending.clear()
        self.pending_size = 0
        self._account.change(self._held, 0)
        self._held = 0
        self.carrier.forget(self, notify, detail)
        app = self.app
        if app is not None:
            fd = app.fileno()
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
            if result == "ok":
                app.close()
            else:
                abort(app)
        self._on_done(self)


class Carrier:
    """The TLS connection under the streams, on either side."""

    def __init__(
        self,
        tls: TlsSession,
        side: Side,
        scratch: Scratch,
        peer_identity: str,
        *,
        windows: GrowthBudget,
        on_open: Callable[[Carrier, int, bytes], None] | None = None,
        on_closed: Callable[[Carrier], None] | None = None,
        version: int = 2,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.tls = tls
        tls.slice = CARRIER_SLICE
        self.side = side
        self.scratch = scratch
        self.windows = windows
        self.peer_identity = peer_identity
        self.resumed = tls.obj.session_reused
        self._on_open = on_open  # server: an OPEN frame arrived
        self.on_closed = on_closed
        self._fd = tls.sock.fileno()
        _keepalive(tls.sock)
        self.version = version  # smesh-mux/1 or /2, as ALPN chose
        self._reader = mux.FrameReader(version)
        # Client side: the server sent GOAWAY (its agent handed the node over): no new
        # streams here; closed once the last one ended. Server side: GOAWAY was sent.
        self.gone_away = False
        self.streams: dict[int, Stream] = {}
        self._next_id = 1
        self._last_opened = 0  # server: highest stream id seen
        self.congested = False  # ciphertext waits for the socket; streams stop reading
        self.blocked: set[Stream] = set()
        self._pending: memoryview | None = None  # what the socket is taking now
        self._backlog: list[bytes] = []  # sealed after the socket filled up, in order
        self._backlog_size = 0
        self._control: list[bytes] = []
        self._dispatching = False
        self.closed = False
        self.key: Any = None  # the pool's, on the client side
        # Client side: called once, at the first answer, by when the server's session
        # ticket (sent after the handshake, before any answer) has been read.
        self.on_first_answer: Callable[[], None] | None = None
        self.created = self.loop.time()
        # Server side: when the certificate the client proved itself with expires. The
        # streams open then go on; new ones need a connection with a valid certificate.
        self.peer_expires = float("inf")
        self.opened_streams = 0
        self.last_active = self.loop.time()

    def start(self) -> None:
        self.loop.add_reader(self._fd, self._read_tls)
        self._decrypt()  # frames that came along with the handshake

    def __len__(self) -> int:
        return len(self.streams)

    # -- streams -------------------------------------------------------------------------

    def open_stream(
        self,
        app: socket.socket,
        record: ConnectionRecord,
        on_done: Callable[[Stream], None],
        frame: Callable[[int], bytes],
        *,
        on_refused: Refused | None = None,
        sent: bytes = b"",
        fin: bool = False,
    ) -> Stream:
        """Client side: a new stream for *app*; *frame* makes its OPEN for the id.

        *on_refused* (a connect to a Service's endpoint): a REFUSE that may be retried
        elsewhere hands the app back to it instead of a reset (see REPLAY_LIMIT). *sent*
        and *fin*: what the app sent on the stream another endpoint refused, sent first.
        """
        stream_id = self._next_id
        self._next_id += 2
        stream = Stream(self, stream_id, record, on_done)
        self.streams[stream_id] = stream
        self.opened_streams += 1
        self._control.append(frame(stream_id))
        if on_refused is not None:
            stream._on_refused = on_refused
            stream._replay = bytearray(sent)
        stream.attach(app)  # DATA may follow OPEN at once: the server buffers it
        if sent:
            data = bytearray(mux.HEADER_SIZE + len(sent))
            data[mux.HEADER_SIZE :] = sent
            mux.data_header(memoryview(data), stream_id, len(sent))
            stream.send_credit -= len(sent)
            self.send_data(memoryview(data))
        if fin:
            self.loop.remove_reader(app.fileno())  # it said all it had to say
            stream.local_fin = True
            self._control.append(mux.frame(mux.FIN, stream_id))
        else:
            stream._read_app()  # most apps have written already: OPEN and DATA leave together
        if not self._dispatching:
            self._flush_control()  # OPEN alone when the app had nothing to say yet
        return stream

    def accept_stream(
        self, stream_id: int, record: ConnectionRecord, on_done: Callable[[Stream], None]
    ) -> Stream:
        """Server side: the stream of an OPEN that was let through (app attached later)."""
        stream = Stream(self, stream_id, record, on_done)
        self.streams[stream_id] = stream
        self.opened_streams += 1
        return stream

    def answer(self, stream: Stream, status: int, reason: str = "") -> None:
        """Server side: OK once the app is connected, or REFUSE (the stream ends here)."""
        if status == 200:
            stream.state = "open"
            self.send_control(mux.frame(mux.OK, stream.id))
        else:
            self.send_control(mux.refuse_frame(stream.id, status, reason))

    def refuse(self, stream_id: int, status: int, reason: str) -> None:
        """Server side: REFUSE an OPEN that never became a stream."""
        self.send_control(mux.refuse_frame(stream_id, status, reason))

    def forget(self, stream: Stream, notify: bool, reason: str) -> None:
        if self.streams.pop(stream.id, None) is None:
            return
        self.blocked.discard(stream)
        if notify and not self.closed:
            self.send_control(mux.rst_frame(stream.id, reason))
        self.last_active = self.loop.time()
        if self.gone_away and self.side == "client" and not self.streams:
            self.loop.call_soon(self._close_if_idle)

    def go_away(self, reason: str) -> bool:
        """Server side: ask the client to open no new streams here (smesh-mux/2); the
        streams open, and OPENs already on their way, are served as before. Whether the
        client was told (a smesh-mux/1 client cannot be)."""
        if self.closed or self.version < 2 or self.side != "server":
            return False
        self.gone_away = True
        self.send_control(mux.goaway_frame(reason))
        return True

    def went_away(self, reason: str) -> None:
        """Client side: the server's GOAWAY (or this agent handed over). The pool opens
        nothing more here; the carrier closes once its last stream ended."""
        if self.side != "client" or self.gone_away:
            return  # a server ignores it: it opens no streams anyway
        self.gone_away = True
        log.debug("tunnel peer %s sent GOAWAY: %s", self.peer_identity, reason)
        if not self.streams:
            self.loop.call_soon(self._close_if_idle)

    def _close_if_idle(self) -> None:
        if not self.streams:
            self.close()

    # -- writing -------------------------------------------------------------------------

    def send_control(self, frame: bytes) -> None:
        """Queue a small frame; it leaves now, or with the others after the batch."""
        self._control.append(frame)
        if not self._dispatching:
            self._flush_control()

    def _flush_control(self) -> None:
        if not self._control or self.closed:
            return
        data = b"".join(self._control)
        self._control.clear()
        self._write(memoryview(data))

    def send_data(self, frame: memoryview) -> None:
        """One DATA frame (header and payload, in the shared scratch buffer)."""
        if self._control:
            data = b"".join(self._control)
            self._control.clear()
            self._write(memoryview(data), more=frame)
        else:
            self._write(frame)

    def _write(self, first: memoryview, more: memoryview | None = None) -> None:
        if self.closed:
            return
        parts: list[bytes] = []
        try:
            self.tls.seal(first, parts)
            if more is not None:
                self.tls.seal(more, parts)
        except ssl.SSLError as exc:
            self.abort(f"TLS: {exc.reason or exc}", "error")
            return
        if self.congested:
            self._backlog += parts
            self._backlog_size += sum(map(len, parts))
            if self._backlog_size > MAX_BACKLOG:
                log.warning(
                    "tunnel peer %s stopped reading: %d bytes of answers and credit waiting; "
                    "closing the connection",
                    self.peer_identity,
                    self._backlog_size,
                )
                self.abort("the peer stopped reading the tunnel connection", "error")
            return
        try:
            self._pending = send_gathered(self.tls.sock, parts)
        except OSError as exc:
            self.abort(f"tunnel: {exc.strerror or exc}")
            return
        if self._pending is not None:
            self.congested = True
            self.loop.add_writer(self._fd, self._flush)

    def _flush(self) -> None:
        if self._pending is None:
            return
        try:
            self._pending = send_rest(self.tls.sock, self._pending)
            if self._pending is None and self._backlog:
                waiting = memoryview(b"".join(self._backlog))
                self._backlog.clear()
                self._backlog_size = 0
                self._pending = send_rest(self.tls.sock, waiting)
        except OSError as exc:
            self.abort(f"tunnel: {exc.strerror or exc}")
            return
        if self._pending is not None:
            return
        self.congested = False
        self.loop.remove_writer(self._fd)
        blocked, self.blocked = self.blocked, set()
        for stream in blocked:
            stream.resume()

    # -- reading -------------------------------------------------------------------------

    def _read_tls(self) -> None:
        view = self.scratch.carrier_recv
        try:
            n = self.tls.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.abort(f"tunnel: {exc.strerror or exc}")
            return
        if n == 0:
            self.abort("the tunnel connection closed without close_notify")
            return
        self.last_active = self.loop.time()
        self._decrypt(view[:n])

    def _decrypt(self, cipher: memoryview | None = None) -> None:
        """Decrypt and dispatch batch after batch until the ciphertext is used up."""
        view = self.scratch.carrier_plain
        fed = 0
        while not self.closed:
            try:
                filled, fed, eof = self.tls.open_into(view, cipher, fed)
            except ssl.SSLError as exc:
                self.abort(f"TLS: {exc.reason or exc}", "error")
                return
            if filled:
                self._dispatch(view[:filled])
            if eof:
                self.abort("the peer closed the tunnel connection", "reset", graceful=True)
                return
            if len(view) - filled >= MAX_RECORD:
                return  # open_into stopped for want of ciphertext, not of room

    def _dispatch(self, data: memoryview) -> None:
        try:
            events = self._reader.feed(data)
        except RemoteProtocolError as exc:
            log.warning("tunnel peer %s broke smesh-mux/1: %s", self.peer_identity, exc)
            self.abort(f"protocol error: {exc}", "error")
            return
        self._dispatching = True
        streams = self.streams
        try:
            for kind, stream_id, payload in events:
                stream = streams.get(stream_id)
                if kind == mux.DATA:
                    if stream is not None:
                        stream.deliver(payload)  # type: ignore[arg-type]
                    else:
                        self._check_known(stream_id)
                elif kind == mux.WINDOW:
                    if stream is not None:
                        stream.credit(mux.parse_window(bytes(payload)))
                elif kind == mux.FIN:
                    if stream is not None:
                        stream.peer_fin()
                elif kind == mux.RST:
                    if stream is not None:
                        stream.peer_reset(bytes(payload).decode("utf-8", "replace"))
                elif kind == mux.OPEN:
                    self._opened(stream_id, bytes(payload))
                elif kind == mux.GOAWAY:
                    self.went_away(bytes(payload).decode("utf-8", "replace"))
                elif self.side == "client":  # OK or REFUSE
                    if self.on_first_answer is not None:
                        self.on_first_answer()
                        self.on_first_answer = None
                    if stream is None:
                        continue
                    if kind == mux.OK:
                        stream.answered(200, "")
                    else:
                        stream.answered(*mux.parse_refuse(bytes(payload)))
                if self.closed:
                    return
        except RemoteProtocolError as exc:
            log.warning("tunnel peer %s broke smesh-mux/1: %s", self.peer_identity, exc)
            self.abort(f"protocol error: {exc}", "error")
            return
        finally:
            self._dispatching = False
        self._flush_control()

    def _check_known(self, stream_id: int) -> None:
        """DATA for a stream that ended here is late, not wrong; one never opened is."""
        highest = self._last_opened if self.side == "server" else self._next_id - 2
        if stream_id > highest:
            raise RemoteProtocolError(f"DATA for stream {stream_id}, never opened")

    def _open_streams(self) -> int:
        """Streams the client still counts: it forgets one once both FINs are through, while
        here it lives on until a slow app has read what it was sent (the pod's connection
        cap bounds those)."""
        return sum(1 for s in self.streams.values() if not (s.local_fin and s.remote_fin))

    def _opened(self, stream_id: int, payload: bytes) -> None:
        if self.side != "server" or self._on_open is None:
            raise RemoteProtocolError("OPEN sent to the client side")
        if stream_id % 2 == 0 or stream_id <= self._last_opened:
            raise RemoteProtocolError(f"OPEN for stream {stream_id}, not a new odd id")
        self._last_opened = stream_id
        if time.time() >= self.peer_expires:
            self.refuse(stream_id, 403, "the certificate of this connection has expired")
            return
        if self._open_streams() >= mux.MAX_STREAMS:
            self.refuse(stream_id, 503, f"more than {mux.MAX_STREAMS} streams on one connection")
            return
        self._on_open(self, stream_id, payload)

    # -- the end -------------------------------------------------------------------------

    def pending_bytes(self) -> int:
        return (len(self._pending) if self._pending is not None else 0) + self._backlog_size

    def close(self) -> None:
        """Close with close_notify (no streams left: either side's idle close)."""
        if self.closed:
            return
        if self.congested:  # behind unsent ciphertext a close_notify would land mid-record
            self.abort("the tunnel connection closed with data its peer did not read")
            return
        with contextlib.suppress(ssl.SSLError, OSError):
            with contextlib.suppress(ssl.SSLWantReadError):
                self.tls.obj.unwrap()
            self.tls.sock.send(self.tls.outgoing.read())
        self.abort("the tunnel connection closed", "reset", graceful=True)

    def abort(self, detail: str, result: str = "reset", graceful: bool = False) -> None:
        """End the connection and every stream on it (their apps see a reset)."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self._fd)
        self.loop.remove_writer(self._fd)
        for stream in list(self.streams.values()):
            stream._end(result, detail, notify=False)
        self.streams.clear()
        self.blocked.clear()
        self._pending = None
        self._backlog.clear()
        self._backlog_size = 0
        self._control.clear()
        if graceful:
            self.tls.sock.close()
        else:
            abort(self.tls.sock)
        if self.on_closed is not None:
            self.on_closed(self)
