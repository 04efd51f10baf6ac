"""smesh-mux/1 frames: what one side writes, the other reads back, however TCP cuts it."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smesh.tunnel import mux
from smesh.tunnel.errors import RemoteProtocolError


def data_frame(stream: int, payload: bytes) -> bytes:
    buffer = memoryview(bytearray(mux.HEADER_SIZE + len(payload)))
    buffer[mux.HEADER_SIZE :] = payload
    mux.data_header(buffer, stream, len(payload))
    return bytes(buffer)


def read(pieces: list[bytes]) -> list[tuple[int, int, bytes]]:
    """Feed *pieces* one by one; DATA pieces of one frame are joined back."""
    reader = mux.FrameReader()
    events: list[tuple[int, int, bytes]] = []
    for piece in pieces:
        for kind, stream, payload in reader.feed(memoryview(piece)):
            if kind == mux.DATA and events and events[-1][:2] == (kind, stream):
                events[-1] = (kind, stream, events[-1][2] + bytes(payload))
            else:
                events.append((kind, stream, bytes(payload)))
    return events


CONVERSATION = [
    mux.open_frame(1, ipaddress.ip_address("198.18.2.3"), 8080, "abc123"),
    data_frame(1, b"GET / HTTP/1.1\r\n\r\n"),
    mux.frame(mux.OK, 1),
    data_frame(1, bytes(range(256)) * 300),
    mux.window_frame(1, 131072),
    mux.frame(mux.FIN, 1),
    mux.open_frame(3, ipaddress.ip_address("fd00::3"), 443),
    mux.refuse_frame(3, 403, "denied by rule no-pod1"),
    mux.rst_frame(5, "app side: Connection reset by peer"),
]


def test_a_conversation_reads_back_frame_by_frame() -> None:
    events = read([b"".join(CONVERSATION)])
    assert [(k, s) for k, s, _ in events] == [
        (mux.OPEN, 1),
        (mux.DATA, 1),
        (mux.OK, 1),
        (mux.DATA, 1),
        (mux.WINDOW, 1),
        (mux.FIN, 1),
        (mux.OPEN, 3),
        (mux.REFUSE, 3),
        (mux.RST, 5),
    ]
    assert mux.parse_open(events[0][2]) == (ipaddress.ip_address("198.18.2.3"), 8080, "abc123")
    assert events[3][2] == bytes(range(256)) * 300
    assert mux.parse_window(events[4][2]) == 131072
    assert mux.parse_open(events[6][2]) == (ipaddress.ip_address("fd00::3"), 443, "")
    assert mux.parse_refuse(events[7][2]) == (403, "denied by rule no-pod1")
    assert events[8][2] == b"app side: Connection reset by peer"


@given(st.lists(st.integers(min_value=1, max_value=len(b"".join(CONVERSATION)) - 1)))
def test_any_cutting_of_the_stream_reads_back_the_same(cuts: list[int]) -> None:
    whole = b"".join(CONVERSATION)
    points = [0, *sorted(set(cuts)), len(whole)]
    pieces = [whole[a:b] for a, b in itertools.pairwise(points)]
    assert read(pieces) == read([whole])


def test_an_empty_data_frame_says_nothing() -> None:
    assert read([data_frame(1, b""), mux.frame(mux.FIN, 1)]) == [(mux.FIN, 1, b"")]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (mux.HEADER.pack(99, 1, 0), "unknown frame type 99"),
        (mux.HEADER.pack(mux.DATA, 0, 1) + b"x", "frame for stream 0"),
        (mux.HEADER.pack(mux.RST, 1, mux.MAX_CONTROL + 1), "RST frame of 1025 bytes"),
    ],
)
def test_a_broken_frame_is_the_peers_fault(raw: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        mux.FrameReader().feed(memoryview(raw))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00", "too short"),
        (b"\x00\x50\x05" + b"\x01" * 5, "5-byte address"),
        (b"\x00\x00\x04" + bytes(4), "port 0"),
        (b"\x00\x50\x04" + bytes(4) + "é".encode(), "request id"),
        (b"\x00\x50\x04" + bytes(4) + b"a" * 65, "request id"),
    ],
)
def test_a_malformed_open_is_refused_with_a_reason(payload: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        mux.parse_open(payload)


def test_other_malformed_control_payloads() -> None:
    with pytest.raises(RemoteProtocolError, match="too short"):
        mux.parse_refuse(b"\x01")
    with pytest.raises(RemoteProtocolError, match="wrong size"):
        mux.parse_window(b"\x00\x01")
    with pytest.raises(RemoteProtocolError, match="no credit"):
        mux.parse_window(bytes(4))


def test_a_long_request_id_is_cut_to_the_limit() -> None:
    frame = mux.open_frame(1, ipaddress.ip_address("10.0.0.1"), 80, "r" * 100)
    [(_, _, payload)] = read([frame])
    assert mux.parse_open(payload)[2] == "r" * mux.MAX_REQUEST_ID
