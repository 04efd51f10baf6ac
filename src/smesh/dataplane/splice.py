"""Plain to plain: for captured connects to destinations outside the mesh (passthrough).

Same semantics as the TLS relay (half-close each way, resets passed on, backpressure with
one batch pending at most per direction), without encryption.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from smesh.dataplane.records import ConnectionRecord
from smesh.dataplane.relay import Scratch
from smesh.dataplane.sockets import abort


class _Direction:
    __slots__ = ("dst", "dst_fd", "eof", "pending", "src", "src_fd", "upstream")

    def __init__(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.pending: memoryview | None = None
        self.eof = False
        self.upstream = upstream


class Splice:
    __slots__ = ("_done", "_loop", "_on_done", "_ways", "last_active", "record", "scratch")

    def __init__(
        self,
        app: socket.socket,
        upstream: socket.socket,
        record: ConnectionRecord,
        scratch: Scratch,
        on_done: Callable[[Splice], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.record = record
        self.scratch = scratch
        self._on_done = on_done
        scratch.bound(app)  # the upstream is not an app of this pod: the kernel sizes it
        self._ways = (_Direction(app, upstream, True), _Direction(upstream, app, False))
        self._done = 0
        self.last_active = self._loop.time()

    def start(self) -> None:
        for way in self._ways:
            self._loop.add_reader(way.src_fd, self._read, way)

    def pending_bytes(self) -> int:
        return sum(len(w.pending) for w in self._ways if w.pending is not None)

    def _finish(self, result: str, detail: str = "") -> None:
        for way in self._ways:
            self._loop.remove_reader(way.src_fd)
            self._loop.remove_writer(way.src_fd)
        self.record.finish(result, detail)
        self._on_done(self)

    def abort(self, detail: str, result: str = "reset") -> None:
        if self.record.result != "open":
            return
        self._finish(result, detail)
        for way in self._ways:
            abort(way.src)

    def _read(self, way: _Direction) -> None:
        view = self.scratch.recv
        try:
            n = way.src.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.abort(str(exc.strerror or exc))
            return
        self.last_active = self._loop.time()
        if n == 0:
            self._loop.remove_reader(way.src_fd)
            way.eof = True
            self._end(way)
            return
        if way.upstream:
            self.record.bytes_from_app += n
        else:
            self.record.bytes_to_app += n
        try:
            sent = way.dst.send(view[:n])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.abort(str(exc.strerror or exc))
            return
        if sent < n:
            way.pending = memoryview(bytes(view[sent:n]))
            self._loop.remove_reader(way.src_fd)
            self._loop.add_writer(way.dst_fd, self._flush, way)

    def _flush(self, way: _Direction) -> None:
        assert way.pending is not None
        try:
            sent = way.dst.send(way.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.abort(str(exc.strerror or exc))
            return
        self.last_active = self._loop.time()  # a slow reader is not an idle one
        way.pending = way.pending[sent:] if sent < len(way.pending) else None
        if way.pending is not None:
            return
        self._loop.remove_writer(way.dst_fd)
        if way.eof:
            self._end(way)
        else:
            self._loop.add_reader(way.src_fd, self._read, way)

    def _end(self, way: _Direction) -> None:
        if way.pending is not None:
            return  # _flush ends it
        try:
            way.dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.abort(str(exc.strerror or exc))
            return
        self._done += 1
        if self._done == 2 and self.record.result == "open":
            self._finish("ok")
            for w in self._ways:
                w.src.close()
