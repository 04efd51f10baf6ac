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

from smesh import httpclient
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
        status, body = httpclient.exchange(
            sock, "GET", path, [("host", host), ("connection", "close")]
        )
        return AdminReply(status, body)
    except (OSError, h11.ProtocolError) as exc:
        raise AdminUnreachable(f"agent admin endpoint {where} did not answer: {exc}") from None
    finally:
        sock.close()
