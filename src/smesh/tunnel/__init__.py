"""The tunnel protocols, sans I/O, both inside mutual TLS.

:mod:`smesh.tunnel.mux` (smesh-mux/1, chosen by ALPN) is what agents speak: many app
connections as streams of one pooled TLS connection. :mod:`smesh.tunnel.connect` is
HTTP/1.1 ``CONNECT <ip>:<port>``, one per TLS connection, answered ``200`` and then raw
bytes, for peers without smesh-mux/1 (openssl s_client, curl). Both take bytes and
return events or bytes to send, so they are tested with no sockets, and fuzzed.
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
