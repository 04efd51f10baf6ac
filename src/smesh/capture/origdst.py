"""The proxy's one question, answered the same way in both capture modes.

``SO_ORIGINAL_DST`` (and ``IP6T_SO_ORIGINAL_DST`` on ``SOL_IPV6``) is what iptables and
nftables REDIRECT answer from conntrack; in eBPF mode smesh's ``cgroup/getsockopt``
program answers the same option from its maps. The proxy never knows which mode is on.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

from smesh.capture.errors import NoOriginalDestination

SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv4.h>
IP6T_SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv6/ip6_tables.h>
SOL_IP = socket.SOL_IP
SOL_IPV6 = socket.IPPROTO_IPV6
SOCKADDR_IN_LEN = 16
SOCKADDR_IN6_LEN = 28

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_sockaddr_in(raw: bytes) -> tuple[ipaddress.IPv4Address, int]:
    if len(raw) < 8:
        raise ValueError(f"sockaddr_in too short ({len(raw)} bytes)")
    family, port = _family_port(raw)
    if family != socket.AF_INET:
        raise ValueError(f"sockaddr_in has family {family}, expected AF_INET")
    return ipaddress.IPv4Address(raw[4:8]), port


def parse_sockaddr_in6(raw: bytes) -> tuple[ipaddress.IPv6Address, int]:
    if len(raw) < 24:
        raise ValueError(f"sockaddr_in6 too short ({len(raw)} bytes)")
    family, port = _family_port(raw)
    if family != socket.AF_INET6:
        raise ValueError(f"sockaddr_in6 has family {family}, expected AF_INET6")
    return ipaddress.IPv6Address(raw[8:24]), port


def _family_port(raw: bytes) -> tuple[int, int]:
    (family,) = struct.unpack_from("=H", raw, 0)
    (port,) = struct.unpack_from("!H", raw, 2)
    return family, port


def _peer(sock: socket.socket) -> str:
    try:
        host, port, *_ = sock.getpeername()
    except OSError:
        return "an unconnected socket"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ask(sock: socket.socket, level: int, buflen: int) -> bytes:
    try:
        return sock.getsockopt(level, SO_ORIGINAL_DST, buflen)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOPROTOOPT, errno.EINVAL, errno.ENOTCONN):
            raise NoOriginalDestination(
                f"connection from {_peer(sock)} has no original destination "
                f"({exc.strerror}): it was not captured, or capture had no room to record "
                "it; refusing it rather than guessing"
            ) from None
        raise


def original_destination(sock: socket.socket) -> tuple[Address, int]:
    """Where the app behind this accepted socket meant to connect: (address, port).

    Raises :class:`NoOriginalDestination` when there is none — the caller must then close
    the connection (fail closed), never forward it somewhere else.
    """
    if sock.family == socket.AF_INET:
        return parse_sockaddr_in(_ask(sock, SOL_IP, SOCKADDR_IN_LEN))
    if sock.family == socket.AF_INET6:
        try:
            mapped = ipaddress.IPv6Address(sock.getpeername()[0]).ipv4_mapped is not None
        except (OSError, ValueError):
            mapped = False
        if mapped:  # an IPv4 client on a dual-stack listener: IPv4's option answers
            return parse_sockaddr_in(_ask(sock, SOL_IP, SOCKADDR_IN_LEN))
        return parse_sockaddr_in6(_ask(sock, SOL_IPV6, SOCKADDR_IN6_LEN))
    raise NoOriginalDestination(f"socket family {sock.family!r} has no original destination")
