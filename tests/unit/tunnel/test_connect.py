"""The CONNECT protocol, joined core to core with no sockets, and fuzzed."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smesh.tunnel import (
    ClientHandshake,
    Established,
    Refused,
    RemoteProtocolError,
    ServerHandshake,
    TunnelError,
    TunnelRequest,
)
from smesh.tunnel.connect import MAX_HEAD_BYTES, parse_authority, response

POD3 = ipaddress.ip_address("198.18.2.2")
POD3_V6 = ipaddress.ip_address("fd00:198:18:2::2")


def test_request_and_200_with_tunnel_bytes_on_both_sides() -> None:
    client = ClientHandshake(POD3, 80, headers=(("x-request-id", "abc"),))
    server = ServerHandshake()
    request = server.receive(client.request() + b"early app bytes")
    assert isinstance(request, TunnelRequest)
    assert (request.ip, request.port) == (POD3, 80)
    assert ("x-request-id", "abc") in request.headers
    assert request.trailing == b"early app bytes"
    answer = client.receive(response(200) + b"server speaks first")
    assert answer == Established(b"server speaks first")


def test_ipv6_targets_use_brackets() -> None:
    client = ClientHandshake(POD3_V6, 443)
    assert b"CONNECT [fd00:198:18:2::2]:443 HTTP/1.1" in client.request()
    request = ServerHandshake().receive(client.request())
    assert isinstance(request, TunnelRequest)
    assert (request.ip, request.port) == (POD3_V6, 443)


@pytest.mark.parametrize("status", [400, 403, 502, 504])
def test_refusals_reach_the_client_with_status_and_reason(status: int) -> None:
    client = ClientHandshake(POD3, 80)
    answer = client.receive(response(status, "because"))
    assert isinstance(answer, Refused)
    assert answer.status == status


def test_byte_at_a_time_is_the_same_as_all_at_once() -> None:
    client = ClientHandshake(POD3, 8080)
    server = ServerHandshake()
    result = None
    for byte in client.request():
        result = server.receive(bytes([byte]))
    assert isinstance(result, TunnelRequest)
    assert result.port == 8080


@pytest.mark.parametrize(
    ("raw", "status", "why"),
    [
        (b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", 400, "only CONNECT"),
        (b"CONNECT example.com:80 HTTP/1.1\r\nhost: x\r\n\r\n", 400, "not an IP address"),
        (b"CONNECT 1.2.3.4 HTTP/1.1\r\nhost: x\r\n\r\n", 400, "has no port"),
        (b"CONNECT 1.2.3.4:0 HTTP/1.1\r\nhost: x\r\n\r\n", 400, "no valid port"),
        (b"CONNECT 1.2.3.4:99999 HTTP/1.1\r\nhost: x\r\n\r\n", 400, "no valid port"),
        (b"CONNECT fd00::1:80 HTTP/1.1\r\nhost: x\r\n\r\n", 400, "brackets"),
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400, "malformed request"),
        (
            b"CONNECT 1.2.3.4:80 HTTP/1.1\r\nhost: x\r\n"
            + b"".join(b"x-%d: y\r\n" % i for i in range(40))
            + b"\r\n",
            431,
            "more than 32 headers",
        ),
    ],
)
def test_malformed_requests_are_refused_with_a_status(raw: bytes, status: int, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why) as info:
        ServerHandshake().receive(raw)
    assert info.value.status == status


def test_an_oversized_head_is_refused_before_it_is_buffered_whole() -> None:
    server = ServerHandshake()
    head = b"CONNECT 1.2.3.4:80 HTTP/1.1\r\nhost: x\r\nx-big: "
    with pytest.raises(RemoteProtocolError) as info:
        server.receive(head + b"a" * (MAX_HEAD_BYTES + 1))
    assert info.value.status in {400, 431}


def test_peer_closing_early_is_an_error_not_a_hang() -> None:
    server = ServerHandshake()
    assert server.receive(b"CONNECT 1.2.3.4:80 HT") is None
    with pytest.raises(RemoteProtocolError, match="closed before"):
        server.receive(b"")
    client = ClientHandshake(POD3, 80)
    with pytest.raises(RemoteProtocolError, match="closed before"):
        client.receive(b"")


def test_parse_authority() -> None:
    assert parse_authority("10.0.0.1:80") == (ipaddress.ip_address("10.0.0.1"), 80)
    assert parse_authority("[::1]:18001") == (ipaddress.ip_address("::1"), 18001)
    with pytest.raises(RemoteProtocolError):
        parse_authority("[::1]18001")


@settings(max_examples=400)
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes_only_raise_the_protocols_own_error(data: bytes) -> None:
    server = ServerHandshake()
    status = 0
    try:
        if server.receive(data) is None:
            server.receive(b"")
    except TunnelError as exc:
        status = exc.status
    assert status in {0, 400, 431}


@given(
    st.sampled_from([POD3, POD3_V6]),
    st.integers(1, 65535),
    st.lists(st.integers(1, 64), max_size=30),
    st.binary(max_size=64),
)
def test_fuzz_chunking_never_changes_the_result(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, cuts: list[int], tail: bytes
) -> None:
    raw = ClientHandshake(ip, port).request() + tail
    server = ServerHandshake()
    result = None
    pos = 0
    for size in [*cuts, len(raw)]:
        result = server.receive(raw[pos : pos + size])
        pos += size
        if result is not None:
            break
    assert isinstance(result, TunnelRequest)
    assert (result.ip, result.port) == (ip, port)
    # whatever arrived after the head is tunnel data: in order, nothing lost or repeated
    assert result.trailing + raw[pos:] == tail


def _head(size: int, tail: bytes = b"") -> bytes:
    """A valid CONNECT request head of exactly *size* bytes (then *tail*)."""
    start = b"CONNECT 1.2.3.4:80 HTTP/1.1\r\nhost: 1.2.3.4:80\r\nx-pad: "
    end = b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end + tail


def _feed(server: ServerHandshake, raw: bytes, cuts: list[int]) -> TunnelRequest | int:
    """Feed *raw* cut at *cuts*; the request, or the status it was refused with.

    The request's ``trailing`` is completed with what was not fed yet, so it is always
    everything after the head.
    """
    pos = 0
    try:
        for cut in [*sorted(cuts), len(raw)]:
            if cut == pos:
                continue  # b"" would mean: the peer closed
            result = server.receive(raw[pos:cut])
            pos = cut
            if result is not None:
                return dataclasses.replace(result, trailing=result.trailing + raw[pos:])
    except RemoteProtocolError as exc:
        return exc.status
    raise AssertionError("the whole request was fed and nothing was decided")


@pytest.mark.parametrize("size", [MAX_HEAD_BYTES, MAX_HEAD_BYTES + 1, 9 * 1024])
def test_the_head_limit_holds_at_every_single_cut(size: int) -> None:
    # A head over the limit that arrives in one read (one TLS record) used to pass.
    raw = _head(size, b"tunnel bytes")
    for cut in range(len(raw) + 1):
        outcome = _feed(ServerHandshake(), raw, [cut])
        if size <= MAX_HEAD_BYTES:
            assert isinstance(outcome, TunnelRequest), cut
            assert outcome.trailing == b"tunnel bytes"
        else:
            assert outcome == 431, cut


@settings(max_examples=300)
@given(
    st.integers(MAX_HEAD_BYTES - 200, 10 * 1024),
    st.lists(st.integers(0, 10 * 1024 + 64), max_size=12),
    st.binary(max_size=64),
)
def test_fuzz_the_head_limit_depends_on_the_bytes_not_on_the_reads(
    size: int, cuts: list[int], tail: bytes
) -> None:
    raw = _head(size, tail)
    outcome = _feed(ServerHandshake(), raw, [c for c in cuts if c <= len(raw)])
    if size <= MAX_HEAD_BYTES:
        assert isinstance(outcome, TunnelRequest)
        assert outcome.trailing == tail
    else:
        assert outcome == 431


def test_a_large_head_in_one_read_is_refused_with_431_naming_the_limit() -> None:
    with pytest.raises(RemoteProtocolError, match=f"larger than the {MAX_HEAD_BYTES}") as info:
        ServerHandshake().receive(_head(9 * 1024))
    assert info.value.status == 431


def test_a_response_head_over_the_limit_is_refused_in_one_read_too() -> None:
    client = ClientHandshake(POD3, 80)
    big = response(200).replace(b"\r\n\r\n", b"\r\nx-pad: " + b"a" * 9000 + b"\r\n\r\n")
    with pytest.raises(RemoteProtocolError, match="larger than"):
        client.receive(big)
