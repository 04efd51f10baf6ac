"""CONNECT request and response, framed by h11.

Limits: the request or response head is at most :data:`MAX_HEAD_BYTES` and carries at
most :data:`MAX_HEADERS` headers. Bytes that arrive after the head already belong to the
tunnel and are handed over in the event (``trailing``), never lost.

The head limit is counted here, not left to h11: h11's ``max_incomplete_event_size`` only
bounds a head that is still incomplete, so a 9 KB head that arrived in one TLS record (one
read) used to pass while the same bytes split over two reads got 431. :class:`_HeadMeter`
counts every byte fed before the head was complete, so the answer depends on the bytes
alone, never on where the reads cut them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import h11

from smesh.tunnel.errors import LocalProtocolError, RemoteProtocolError

MAX_HEAD_BYTES = 8 * 1024
MAX_HEADERS = 32
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REASONS = {
    200: b"Connection established",
    400: b"Bad Request",
    403: b"Forbidden",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def authority(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def parse_authority(text: str) -> tuple[IPAddress, int]:
    """``1.2.3.4:80`` or ``[::1]:80`` → (address, port); names are refused: a mesh dials IPs."""
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise RemoteProtocolError(f"CONNECT target {text!r} is not [IPv6]:port")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise RemoteProtocolError(f"CONNECT target {text!r} has no port")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise RemoteProtocolError(f"CONNECT target {text!r} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and not text.startswith("["):
        raise RemoteProtocolError(f"CONNECT target {text!r}: IPv6 addresses go in brackets")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RemoteProtocolError(f"CONNECT target {text!r} has no valid port")
    return ip, int(port_text)


class _HeadMeter:
    """Counts the bytes of a head as they are fed, and says when it is over the limit."""

    __slots__ = ("_fed", "_what")

    def __init__(self, what: str) -> None:
        self._fed = 0
        self._what = what

    def fed(self, data: bytes) -> None:
        """Count *data*, fed to h11 while the head is not complete yet."""
        self._fed += len(data)

    def need_more(self) -> None:
        """The head is still incomplete after everything fed so far."""
        if self._fed > MAX_HEAD_BYTES:
            raise self.too_large(self._fed)

    def complete(self, trailing: bytes) -> None:
        """The head is complete; *trailing* (what came after it) is not part of it."""
        size = self._fed - len(trailing)
        if size > MAX_HEAD_BYTES:
            raise self.too_large(size)

    def too_large(self, size: int) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"{self._what} head of {size}+ bytes is larger than the {MAX_HEAD_BYTES} allowed",
            431,
        )


@dataclass(frozen=True)
class TunnelRequest:
    """A valid CONNECT, as the inbound side received it."""

    ip: IPAddress
    port: int
    headers: tuple[tuple[str, str], ...]
    trailing: bytes  # tunnel bytes that came with the request


@dataclass(frozen=True)
class Established:
    trailing: bytes  # tunnel bytes that came with the 200


@dataclass(frozen=True)
class Refused:
    status: int
    reason: str


class ClientHandshake:
    """The outbound side: send CONNECT, then wait for the answer."""

    def __init__(self, ip: IPAddress, port: int, headers: tuple[tuple[str, str], ...] = ()) -> None:
        if len(headers) > MAX_HEADERS - 1:
            raise LocalProtocolError(f"at most {MAX_HEADERS - 1} extra headers")
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        target = authority(ip, port)
        self._request = self._conn.send(
            h11.Request(method="CONNECT", target=target, headers=[("host", target), *headers])
        )
        self._done = False
        self._meter = _HeadMeter("response")

    def request(self) -> bytes:
        return self._request

    def receive(self, data: bytes) -> Established | Refused | None:
        """Feed bytes from the peer; ``None`` means: need more."""
        if self._done:
            raise LocalProtocolError("the answer is complete: later bytes belong to the tunnel")
        self._meter.fed(data)
        try:
            self._conn.receive_data(data)
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            if not data:
                raise RemoteProtocolError("the peer closed before answering CONNECT") from None
            if exc.error_status_hint == 431:
                self._meter.need_more()
            raise RemoteProtocolError(f"malformed CONNECT response: {exc}") from None
        if event is h11.NEED_DATA:
            if not data:
                raise RemoteProtocolError("the peer closed before answering CONNECT")
            self._meter.need_more()
            return None
        if isinstance(event, h11.Response):
            self._done = True
            trailing, _closed = self._conn.trailing_data
            self._meter.complete(bytes(trailing))
            if 200 <= event.status_code < 300:
                return Established(bytes(trailing))
            reason = event.reason.decode("ascii", "replace")
            return Refused(event.status_code, reason)
        if isinstance(event, h11.ConnectionClosed):
            raise RemoteProtocolError("the peer closed before answering CONNECT")
        raise RemoteProtocolError(f"unexpected answer to CONNECT: {type(event).__name__}")


class ServerHandshake:
    """The inbound side: read one CONNECT; validation of the target is the caller's."""

    def __init__(self) -> None:
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._done = False
        self._meter = _HeadMeter("request")

    def receive(self, data: bytes) -> TunnelRequest | None:
        """Feed bytes; ``None`` means: need more. Raises with the status to answer."""
        if self._done:
            raise LocalProtocolError("the request is complete: later bytes belong to the tunnel")
        self._meter.fed(data)
        try:
            self._conn.receive_data(data)
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            if not data:
                raise RemoteProtocolError("the peer closed before sending a request") from None
            if exc.error_status_hint == 431:  # h11's own bound on an incomplete head
                self._meter.need_more()
            raise RemoteProtocolError(f"malformed request: {exc}", exc.error_status_hint) from None
        if event is h11.NEED_DATA:
            if not data:
                raise RemoteProtocolError("the peer closed before sending a request")
            self._meter.need_more()
            return None
        if isinstance(event, h11.ConnectionClosed):
            raise RemoteProtocolError("the peer closed before sending a request")
        if not isinstance(event, h11.Request):
            raise RemoteProtocolError(f"expected a request, got {type(event).__name__}")
        trailing, _closed = self._conn.trailing_data
        self._meter.complete(bytes(trailing))
        if event.method != b"CONNECT":
            raise RemoteProtocolError(f"only CONNECT is served here, not {event.method.decode()}")
        if len(event.headers) > MAX_HEADERS:
            raise RemoteProtocolError(f"more than {MAX_HEADERS} headers", 431)
        ip, port = parse_authority(event.target.decode("ascii", "replace"))
        headers = tuple((k.decode(), v.decode("latin-1")) for k, v in event.headers)
        self._done = True
        return TunnelRequest(ip, port, headers, bytes(trailing))


def response(status: int, message: str = "") -> bytes:
    """The inbound side's answer (a fresh h11 connection: it works whatever state we are in)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"CONNECT 0.0.0.0:1 HTTP/1.1\r\nhost: 0.0.0.0:1\r\n\r\n")
    conn.next_event()
    reason = REASONS.get(status, b"Error")
    headers = [("content-length", "0")] if status >= 300 else []
    if message and status >= 300:
        headers.append(("x-smesh-error", message.encode("ascii", "replace")[:200].decode()))
    return conn.send(h11.Response(status_code=status, reason=reason, headers=headers))
