"""Stream capture events from the pinned ring buffers of one or more nodes.

A BPF ring buffer has a single consumer: two readers would each see part of the events.
A tracer therefore holds an abstract unix socket named after the ring buffer's map id
while it runs, and a second tracer is refused with a message saying so.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from smesh.capture import abi, libbpf, pins
from smesh.capture.errors import CaptureError, TraceBusy
from smesh.capture.events import CaptureEvent, decode
from smesh.closing import Closing


@dataclass(frozen=True)
class TracedEvent:
    node: str | None
    pod: str  # the pod's name, or "pod#SLOT" when it is gone already
    event: CaptureEvent


class _Source:
    def __init__(self, node: str | None, pin_dir: Path) -> None:
        layout = pins.Layout(pin_dir)
        if not layout.map(abi.MapName.EVENTS).exists():
            raise CaptureError(f"no eBPF capture is pinned at {pin_dir}")
        self.node = node
        self.events_fd = libbpf.obj_get(layout.map(abi.MapName.EVENTS))
        self.lock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        map_id = libbpf.map_info(self.events_fd).id
        try:
            self.lock.bind(f"\0smesh-trace-{map_id}")
        except OSError as exc:
            self.close()
            if exc.errno == errno.EADDRINUSE:
                raise TraceBusy(
                    f"another `smesh trace` is already reading the events of "
                    f"{node or pin_dir}; a ring buffer has one reader: stop the other one"
                ) from None
            raise
        spec = abi.POD_META_MAP
        self.meta = libbpf.Map.pinned(layout.map(spec.name), spec.key, spec.value)
        self.names: dict[int, str] = {}

    def name_of(self, slot: int) -> str:
        if slot not in self.names:
            meta = self.meta.lookup(ctypes.c_uint32(slot))
            if meta is None:
                return f"pod#{slot}" if slot else "unknown"
            self.names[slot] = pins.text(meta.name)
        return self.names[slot]

    def close(self) -> None:
        self.lock.close()
        if self.events_fd >= 0:
            os.close(self.events_fd)
            self.events_fd = -1
        meta = getattr(self, "meta", None)
        if meta is not None:
            meta.close()


class Tracer(Closing):
    """Events of every given node, oldest first, as they arrive."""

    def __init__(self, sources: list[tuple[str | None, Path]]) -> None:
        self._sources: list[_Source] = []
        self._pending: list[TracedEvent] = []
        self._ring = libbpf.RingBuffer()
        try:
            for node, pin_dir in sources:
                source = _Source(node, pin_dir)
                self._sources.append(source)
                self._ring.add(source.events_fd, self._collector(source))
        except BaseException:
            self.close()
            raise

    def _collector(self, source: _Source) -> Callable[[bytes], None]:
        def collect(data: bytes) -> None:
            event = decode(data)
            self._pending.append(TracedEvent(source.node, source.name_of(event.pod_id), event))

        return collect

    def events(self, poll_ms: int = 200, until: float | None = None) -> Iterator[TracedEvent]:
        """Yield events until *until* (a time.monotonic() deadline) or forever."""
        while until is None or time.monotonic() < until:
            self._ring.poll(poll_ms)
            pending, self._pending = self._pending, []
            yield from sorted(pending, key=lambda e: e.event.ts_ns)

    def close(self) -> None:
        self._ring.close()
        for source in self._sources:
            source.close()
        self._sources.clear()
