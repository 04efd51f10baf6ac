"""The tunnel protocol, sans I/O: HTTP/1.1 CONNECT inside mutual TLS.

The outbound side asks ``CONNECT <ip>:<port>``; the inbound side answers ``200`` and from
then on the stream carries raw bytes (Istio's HBONE does the same over HTTP/2). Both
cores take bytes and return events or bytes to send, so they are tested joined to each
other with no sockets, and fuzzed.
"""

from smesh.tunnel.connect import (
    ClientHandshake,
    Established,
    Refused,
    ServerHandshake,
    TunnelRequest,
)
from smesh.tunnel.errors import LocalProtocolError, RemoteProtocolError, TunnelError

__all__ = [
    "ClientHandshake",
    "Established",
    "LocalProtocolError",
    "Refused",
    "RemoteProtocolError",
    "ServerHandshake",
    "TunnelError",
    "TunnelRequest",
]
