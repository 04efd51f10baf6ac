"""Ring-buffer records decode into events, printed as lines a person reads or JSON."""

from __future__ import annotations

import ctypes
import datetime
import ipaddress
import json

import pytest

from smesh.capture import abi
from smesh.capture.config import addr16
from smesh.capture.events import EVENT_SIZE, as_json, as_line, decode, wall_time


def record(address: str, port: int, decision: int, pid: int = 4242, comm: bytes = b"curl") -> bytes:
    ip = ipaddress.ip_address(address)
    raw = abi.Event()
    raw.ts_ns = 5_000_000_000
    raw.socket_cookie = 77
    raw.addr = abi.Addr16(*addr16(ip))
    raw.pod_id = 3
    raw.pid = pid
    raw.port = port
    raw.family = abi.AF_INET if ip.version == 4 else abi.AF_INET6
    raw.decision = decision
    raw.comm = comm
    return bytes(raw)


WHEN = datetime.datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.UTC)


def test_a_captured_ipv4_connect_reads_as_a_line() -> None:
    event = decode(record("198.18.2.2", 80, abi.Decision.CAPTURED))
    assert event.address == ipaddress.IPv4Address("198.18.2.2")
    assert (event.port, event.pid, event.comm, event.pod_id) == (80, 4242, "curl", 3)
    assert as_line(event, "pod-1", "node-1", WHEN) == (
        "2025-01-02T03:04:05.678Z node-1/pod-1 curl[4242] -> 198.18.2.2:80 captured"
    )


def test_an_ipv6_pass_through_reads_as_json() -> None:
    event = decode(record("fd00:198:18:2::3", 18001, abi.Decision.PASS_PORT))
    doc = json.loads(as_json(event, "pod-1", "node-1", WHEN))
    assert doc == {
        "time": "2025-01-02T03:04:05.678Z",
        "node": "node-1",
        "pod": "pod-1",
        "pod_id": 3,
        "pid": 4242,
        "comm": "curl",
        "family": "ipv6",
        "destination": "fd00:198:18:2::3",
        "port": 18001,
        "decision": "pass-port",
        "socket_cookie": 77,
    }
    assert event.destination == "[fd00:198:18:2::3]:18001"


def test_events_from_softirq_have_no_process() -> None:
    event = decode(record("198.18.2.2", 80, abi.Decision.MAP_FULL, pid=0, comm=b""))
    assert "kernel -> 198.18.2.2:80 map-full" in as_line(event, "pod-1", None, WHEN)


def test_an_unknown_decision_is_shown_not_dropped() -> None:
    event = decode(record("198.18.2.2", 80, 99))
    assert event.decision_label == "decision-99"


def test_a_short_record_is_an_error() -> None:
    with pytest.raises(ValueError, match=f"expected {EVENT_SIZE}"):
        decode(b"\0" * (EVENT_SIZE - 1))
    assert ctypes.sizeof(abi.Event) == 64


def test_monotonic_timestamps_become_wall_time() -> None:
    when = wall_time(ts_ns=9_500_000_000, now_monotonic_ns=10_000_000_000, now_wall=1000.0)
    assert when.timestamp() == pytest.approx(999.5)
