"""Capture events: ring-buffer records decoded into values, and printed as lines or JSON.

Pure code over bytes: the reading loop lives in :mod:`smesh.capture.trace`.
"""

from __future__ import annotations

import ctypes
import datetime
import json
from dataclasses import dataclass

from smesh.capture import abi
from smesh.capture.config import from_addr16
from smesh.capture.origdst import Address

EVENT_SIZE = ctypes.sizeof(abi.Event)


@dataclass(frozen=True)
class CaptureEvent:
    ts_ns: int  # CLOCK_MONOTONIC nanoseconds
    socket_cookie: int
    pod_id: int
    pid: int
    comm: str
    family: int
    address: Address
    port: int
    decision: abi.Decision | int

    @property
    def decision_label(self) -> str:
        if isinstance(self.decision, abi.Decision):
            return self.decision.label
        return f"decision-{self.decision}"

    @property
    def destination(self) -> str:
        host = str(self.address)
        return f"[{host}]:{self.port}" if self.family == abi.AF_INET6 else f"{host}:{self.port}"


def decode(data: bytes) -> CaptureEvent:
    """One ring-buffer record; a short record is a bug on one side, reported as such."""
    if len(data) < EVENT_SIZE:
        raise ValueError(f"capture event is {len(data)} bytes, expected {EVENT_SIZE}")
    raw = abi.Event.from_buffer_copy(data[:EVENT_SIZE])
    try:
        decision: abi.Decision | int = abi.Decision(raw.decision)
    except ValueError:
        decision = raw.decision
    return CaptureEvent(
        ts_ns=raw.ts_ns,
        socket_cookie=raw.socket_cookie,
        pod_id=raw.pod_id,
        pid=raw.pid,
        comm=raw.comm.decode(errors="replace"),
        family=raw.family,
        address=from_addr16(bytes(raw.addr), raw.family),
        port=raw.port,
        decision=decision,
    )


def wall_time(ts_ns: int, now_monotonic_ns: int, now_wall: float) -> datetime.datetime:
    """The wall-clock time of a monotonic timestamp, given one reading of both clocks."""
    seconds = now_wall - (now_monotonic_ns - ts_ns) / 1e9
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


def _timestamp(when: datetime.datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def as_line(event: CaptureEvent, pod: str, node: str | None, when: datetime.datetime) -> str:
    """``2025-01-01T00:00:00.000Z node-1/pod-1 curl[42] -> 198.18.2.2:80 captured``."""
    who = f"{event.comm}[{event.pid}]" if event.pid else "kernel"
    where = f"{node}/{pod}" if node else pod
    return f"{_timestamp(when)} {where} {who} -> {event.destination} {event.decision_label}"


def as_json(event: CaptureEvent, pod: str, node: str | None, when: datetime.datetime) -> str:
    return json.dumps(
        {
            "time": _timestamp(when),
            "node": node,
            "pod": pod,
            "pod_id": event.pod_id,
            "pid": event.pid,
            "comm": event.comm,
            "family": "ipv4" if event.family == abi.AF_INET else "ipv6",
            "destination": str(event.address),
            "port": event.port,
            "decision": event.decision_label,
            "socket_cookie": event.socket_cookie,
        },
        separators=(",", ":"),
    )
