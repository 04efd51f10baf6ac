"""Socket chores shared by both directions."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LINGER_RESET = struct.pack("ii", 1, 0)


def prepare(sock: socket.socket) -> socket.socket:
    """Non-blocking, no Nagle delay: the relay batches writes itself."""
    sock.setblocking(False)
    with contextlib.suppress(OSError):  # AF_UNIX in tests
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def abort(sock: socket.socket) -> None:
    """Close with a TCP reset, so the other side sees ECONNRESET, not a clean end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


def family_of(ip: IPAddress) -> int:
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def endpoint(address: tuple[str, int] | tuple[str, int, int, int] | str | None) -> str:
    if not isinstance(address, tuple):
        return str(address)
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
