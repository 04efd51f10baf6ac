"""original_destination(): the sockaddr it parses, and failing closed on a plain socket."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from smesh.capture import NoOriginalDestination, original_destination
from smesh.capture.origdst import parse_sockaddr_in, parse_sockaddr_in6


def test_sockaddr_in_is_family_port_address() -> None:
    raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 8080) + bytes([198, 18, 2, 2])
    assert parse_sockaddr_in(raw + b"\0" * 8) == (ipaddress.IPv4Address("198.18.2.2"), 8080)


def test_sockaddr_in6_skips_the_flow_info() -> None:
    address = ipaddress.IPv6Address("fd00:198:18:2::2")
    raw = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 443, 0) + address.packed
    assert parse_sockaddr_in6(raw + b"\0" * 4) == (address, 443)


@pytest.mark.parametrize(
    "raw",
    [b"\0" * 4, struct.pack("=H", socket.AF_INET6) + b"\0" * 14],
)
def test_a_malformed_sockaddr_in_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match="sockaddr_in"):
        parse_sockaddr_in(raw)


def test_an_uncaptured_loopback_connection_has_none() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()):
            conn, _ = server.accept()
            with conn, pytest.raises(NoOriginalDestination, match="no original destination"):
                original_destination(conn)
