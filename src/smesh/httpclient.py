"""One HTTP/1.1 exchange on a socket the caller opened, framed by h11.

The CLI reaches an agent's admin endpoint through a socket made in the agent's network
namespace, and an agent reaches the signer over mutual TLS on a Unix socket: neither is
a connection an HTTP library would open, so both hand their socket here.
"""

from __future__ import annotations

import socket
import ssl

import h11

RECV_SIZE = 65536


def exchange(
    sock: socket.socket | ssl.SSLSocket,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
) -> tuple[int, bytes]:
    """Send one request and read the whole response: (status, body).

    Raises OSError (including ssl.SSLError) or h11.ProtocolError.
    """
    conn = h11.Connection(h11.CLIENT)
    if body:
        headers = [*headers, ("content-length", str(len(body)))]
    out = conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
    if body:
        out += conn.send(h11.Data(data=body)) or b""
    sock.sendall(out + (conn.send(h11.EndOfMessage()) or b""))
    status, reply = 0, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(RECV_SIZE))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            reply += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, bytes(reply)
