"""Socket chores shared by both directions."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LINGER_RESET = struct.pack("ii", 1, 0)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux; past net.core.wmem_max
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; past net.core.rmem_max


def prepare(sock: socket.socket) -> socket.socket:
    """Non-blocking, no Nagle delay: the relay batches writes itself."""
    sock.setblocking(False)
    with contextlib.suppress(OSError):  # AF_UNIX in tests
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def bound_send_buffer(sock: socket.socket, size: int) -> None:
    """Cap the kernel's send buffer of an app-facing socket at *size* bytes of data.

    Left alone, Linux sizes a loopback socket's send buffer for its 64 KiB segments (well
    over a megabyte at once, up to ``tcp_wmem``'s maximum), and an app that does not read
    leaves all of it queued: node TCP memory that grows with every stalled connection.
    The kernel doubles the value for its bookkeeping (``socket(7)``); ``SO_SNDBUFFORCE``
    (the agent has CAP_NET_ADMIN) lets a size past ``net.core.wmem_max`` through.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, size)
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def bound_receive_buffer(sock: socket.socket, size: int) -> None:
    """Cap the kernel's receive buffer of an app-facing socket at *size* bytes of data.

    The agent stops reading an app whose peer has no credit left, and the kernel then
    keeps what the app goes on writing, up to a receive buffer that autotuning grew while
    the agent still read fast: a stalled stream's sender side grows node TCP memory too.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def send_buffer(sock: socket.socket) -> int:
    """The kernel's send buffer of *sock* as it counts it (bookkeeping included); 0 if unknown."""
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    except OSError:
        return 0


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


def send_gathered(sock: socket.socket, parts: list[bytes]) -> memoryview | None:
    """Send *parts* in one call (``sendmsg`` gathers without a copy); the unsent rest.

    None means everything went; raises OSError for anything but a full buffer.
    """
    try:
        sent = sock.send(parts[0]) if len(parts) == 1 else sock.sendmsg(parts)
    except (BlockingIOError, InterruptedError):
        sent = 0
    size = len(parts[0]) if len(parts) == 1 else sum(map(len, parts))
    if sent >= size:
        return None
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    return memoryview(data)[sent:]


def send_rest(sock: socket.socket, pending: memoryview) -> memoryview | None:
    """Send more of *pending*; what is still unsent (None: all of it). Raises OSError."""
    try:
        sent = sock.send(pending)
    except (BlockingIOError, InterruptedError):
        return pending
    return pending[sent:] if sent < len(pending) else None
