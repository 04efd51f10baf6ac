"""The smesh-mux codec (/1 and /2): generated frames read back whole, however TCP cuts them."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smesh.tunnel import mux
from smesh.tunnel.errors import RemoteProtocolError

V4 = ipaddress.ip_address("10.1.2.3")
V6 = ipaddress.ip_address("fd00:198:18:2::2")


def data_frame(stream: int, payload: bytes) -> bytes:
    buffer = memoryview(bytearray(mux.HEADER_SIZE + len(payload)))
    buffer[mux.HEADER_SIZE :] = payload
    mux.data_header(buffer, stream, len(payload))
    return bytes(buffer)


def merged(events: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """Drop empty DATA and join DATA pieces that follow each other on one stream."""
    out: list[tuple[int, int, bytes]] = []
    for kind, stream, payload in events:
        if kind == mux.DATA and out and out[-1][:2] == (mux.DATA, stream):
            out[-1] = (kind, stream, out[-1][2] + payload)
        elif kind != mux.DATA or payload:
            out.append((kind, stream, payload))
    return out


def read(pieces: list[bytes]) -> list[tuple[int, int, bytes]]:
    """Feed *pieces* through one reused buffer, as a carrier does, copying each event."""
    reader, buffer = mux.FrameReader(), bytearray(max(map(len, pieces), default=0))
    events = []
    for piece in pieces:
        buffer[: len(piece)] = piece
        for kind, stream, payload in reader.feed(memoryview(buffer)[: len(piece)]):
            events.append((kind, stream, bytes(payload)))
    return events


CONVERSATION = [
    mux.open_frame(1, V4, 8080, "req-1"),
    data_frame(1, b"GET / HTTP/1.1\r\n\r\n"),
    mux.frame(mux.OK, 1),
    mux.open_frame(3, V6, 443),
    data_frame(3, bytes(range(256)) * 40),
    mux.window_frame(1, 128 * 1024),
    mux.refuse_frame(5, 403, "denied by rule ✗"),
    mux.frame(mux.FIN, 1),
    mux.rst_frame(3, "app reset"),
]


def test_a_conversation_in_one_piece_reads_back() -> None:
    events = read([b"".join(CONVERSATION)])
    assert [(kind, stream) for kind, stream, _ in events] == [
        (mux.OPEN, 1), (mux.DATA, 1), (mux.OK, 1), (mux.OPEN, 3), (mux.DATA, 3),
        (mux.WINDOW, 1), (mux.REFUSE, 5), (mux.FIN, 1), (mux.RST, 3),
    ]  # fmt: skip
    assert mux.parse_open(events[0][2]) == (V4, 8080, "req-1")
    assert events[1][2] == b"GET / HTTP/1.1\r\n\r\n"
    assert events[2][2] == events[7][2] == b""
    assert mux.parse_open(events[3][2]) == (V6, 443, "")
    assert events[4][2] == bytes(range(256)) * 40
    assert mux.parse_window(events[5][2]) == 128 * 1024
    assert mux.parse_refuse(events[6][2]) == (403, "denied by rule ✗")
    assert events[8][2] == b"app reset"


def test_one_byte_at_a_time_cuts_every_header_everywhere() -> None:
    whole = b"".join(CONVERSATION)
    assert merged(read([bytes([b]) for b in whole])) == merged(read([whole]))


CONTROL = st.one_of(
    st.builds(mux.open_frame, st.just(1), st.ip_addresses(), st.integers(1, 65535),
              st.text(st.characters(max_codepoint=127), max_size=mux.MAX_REQUEST_ID)),
    st.builds(mux.refuse_frame, st.integers(1, 9), st.integers(0, 65535), st.text(max_size=40)),
    st.builds(mux.rst_frame, st.integers(1, 2**32 - 1), st.text(max_size=40)),
    st.builds(mux.window_frame, st.integers(1, 9), st.integers(1, 2**32 - 1)),
    st.builds(mux.frame, st.sampled_from([mux.OK, mux.FIN]), st.integers(1, 9)),
    st.builds(mux.goaway_frame, st.text(max_size=40)),
)  # fmt: skip
DATA = st.builds(data_frame, st.sampled_from([1, 3, 2**32 - 1]), st.binary(max_size=200))


@given(st.lists(st.one_of(CONTROL, DATA), max_size=12), st.data())
def test_any_cutting_gives_the_same_frames(frames: list[bytes], data: st.DataObject) -> None:
    whole = b"".join(frames)
    cuts = data.draw(st.sets(st.integers(1, max(1, len(whole) - 1))))
    points = [0, *sorted(c for c in cuts if c < len(whole)), len(whole)]
    events = read([whole[a:b] for a, b in itertools.pairwise(points)])
    expected = [(*mux.HEADER.unpack_from(f)[:2], f[mux.HEADER_SIZE :]) for f in frames]
    assert merged(events) == merged(expected)
    for stream in (1, 3, 2**32 - 1):  # what each stream's app receives
        sent = b"".join(p for k, s, p in expected if (k, s) == (mux.DATA, stream))
        assert b"".join(p for k, s, p in events if (k, s) == (mux.DATA, stream)) == sent


def test_an_empty_data_frame_says_nothing_but_empty_control_frames_do() -> None:
    raw = data_frame(1, b"") + mux.frame(mux.OK, 1) + data_frame(1, b"") + mux.frame(mux.FIN, 1)
    assert read([raw]) == [(mux.OK, 1, b""), (mux.FIN, 1, b"")]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (mux.HEADER.pack(0, 1, 0), "unknown frame type 0"),
        (mux.HEADER.pack(9, 1, 0), "unknown frame type 9"),
        (mux.HEADER.pack(mux.GOAWAY, 1, 0), "GOAWAY frame for stream 1, not 0"),
        (mux.HEADER.pack(mux.GOAWAY, 0, mux.MAX_CONTROL + 1), "GOAWAY frame of 1025 bytes"),
        (mux.frame(mux.OK, 0), "OK frame for stream 0"),
        (data_frame(0, b"x"), "DATA frame for stream 0"),
        (mux.HEADER.pack(mux.REFUSE, 1, mux.MAX_CONTROL + 1), "REFUSE frame of 1025 bytes"),
    ],
)
def test_a_broken_header_is_the_peers_fault(raw: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        mux.FrameReader().feed(memoryview(raw))


def test_a_control_frame_of_exactly_max_control_is_accepted() -> None:
    raw = mux.frame(mux.RST, 1, b"r" * mux.MAX_CONTROL)
    assert read([raw]) == [(mux.RST, 1, b"r" * mux.MAX_CONTROL)]


@pytest.mark.parametrize(
    ("parse", "payload", "message"),
    [
        (mux.parse_open, b"\x00\x50", "OPEN frame too short"),
        (mux.parse_open, b"\x00\x50\x05" + bytes(5), "5-byte address"),
        (mux.parse_open, b"\x00\x50\x10" + bytes(15), "16-byte address but carries 15 bytes"),
        (mux.parse_open, b"\x00\x00\x04" + bytes(4), "port 0"),
        (mux.parse_open, b"\x00\x50\x04" + bytes(4) + "é".encode(), "malformed request id"),
        (mux.parse_open, b"\x00\x50\x04" + bytes(4) + b"a" * 65, "malformed request id"),
        (mux.parse_open, b"\x00\x50\x04" + bytes(4) + b"id\nforged line", "malformed request id"),
        (mux.parse_refuse, b"\x01", "REFUSE frame too short"),
        (mux.parse_window, bytes(3), "wrong size"),
        (mux.parse_window, bytes(5), "wrong size"),
        (mux.parse_window, bytes(4), "no credit"),
    ],
)
def test_a_malformed_control_payload_says_why(
    parse: Callable[[bytes], object], payload: bytes, message: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        parse(payload)


def test_open_frame_cuts_a_long_request_id_to_the_limit() -> None:
    [(_, _, payload)] = read([mux.open_frame(1, V4, 80, "r" * (mux.MAX_REQUEST_ID + 30))])
    assert mux.parse_open(payload) == (V4, 80, "r" * mux.MAX_REQUEST_ID)


def test_open_frame_replaces_what_a_request_id_may_not_hold() -> None:
    [(_, _, payload)] = read([mux.open_frame(1, V4, 80, "réq 1\nx")])
    assert mux.parse_open(payload) == (V4, 80, "r-q-1-x")


# -- smesh-mux/2: GOAWAY ---------------------------------------------------------------


def test_goaway_reads_back_on_stream_0_with_its_reason() -> None:
    raw = mux.frame(mux.OK, 1) + mux.goaway_frame("agent handing over ✓") + mux.frame(mux.FIN, 1)
    assert read([raw]) == [
        (mux.OK, 1, b""),
        (mux.GOAWAY, 0, "agent handing over ✓".encode()),
        (mux.FIN, 1, b""),
    ]


def test_a_goaway_reason_is_cut_to_max_control() -> None:
    [(kind, stream, payload)] = read([mux.goaway_frame("r" * (mux.MAX_CONTROL + 50))])
    assert (kind, stream, len(payload)) == (mux.GOAWAY, 0, mux.MAX_CONTROL)


def test_to_a_smesh_mux_1_reader_goaway_is_an_unknown_frame() -> None:
    """Why it is sent only where ALPN chose smesh-mux/2: /1 ends the connection on it."""
    with pytest.raises(RemoteProtocolError, match="unknown frame type 8"):
        mux.FrameReader(version=1).feed(memoryview(mux.goaway_frame("bye")))
    frames = b"".join(f for f in CONVERSATION)
    assert merged(read([frames])) == merged(
        [(k, s, bytes(p)) for k, s, p in mux.FrameReader(version=1).feed(memoryview(frames))]
    )


def test_alpn_names_the_versions_newest_first() -> None:
    assert mux.ALPNS == ("smesh-mux/2", "smesh-mux/1")
    assert [mux.version_of(a) for a in (*mux.ALPNS, "h2", None)] == [2, 1, None, None]


@given(st.binary(max_size=64), st.sampled_from([1, 2]))
def test_any_bytes_give_frames_or_a_protocol_error_never_another_exception(
    raw: bytes, version: int
) -> None:
    """Fuzz the parser: garbage after a valid GOAWAY is the peer's fault, nothing else."""
    reader = mux.FrameReader(version)
    try:
        events = reader.feed(memoryview(mux.goaway_frame("x") + raw)) if version == 2 else []
        events += reader.feed(memoryview(raw))
    except RemoteProtocolError:
        return
    for kind, stream, _payload in events:
        assert kind in mux.NAMES
        assert (stream == 0) == (kind == mux.GOAWAY)
        assert version == 2 or kind != mux.GOAWAY
