"""A small HTTP client for an agent's admin endpoint, reachable from any network namespace.

The CLI runs in the host namespace while a lab's agents listen inside node namespaces; the
client opens its socket in the agent's namespace (a socket keeps the namespace it was made
in), so no route from the host to the lab is ever needed.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

import h11

from smesh.errors import SmeshError
from smesh.linux import netns as netns_mod


class AdminUnreachable(SmeshError):
    """The agent's admin endpoint did not answer."""


@dataclass(frozen=True)
class AdminReply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def get(
    host: str, port: int, path: str, netns: str | None = None, timeout: float = 3.0
) -> AdminReply:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = netns_mod.socket_in(netns, family) if netns else socket.socket(family)
    where = f"{host}:{port}" + (f" in {netns}" if netns else "")
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET", target=path, headers=[("host", host), ("connection", "close")]
        )
        sock.sendall(conn.send(request) + conn.send(h11.EndOfMessage()))
        status, body = 0, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return AdminReply(status, bytes(body))
    except (OSError, h11.ProtocolError) as exc:
        raise AdminUnreachable(f"agent admin endpoint {where} did not answer: {exc}") from None
    finally:
        sock.close()
