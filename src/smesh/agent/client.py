"""A small HTTP client for an agent's admin endpoint, reachable from any network namespace.

The CLI runs in the host namespace while a lab's agents listen inside node namespaces; the
client opens its socket in the agent's namespace (a socket keeps the namespace it was made
in), so no route from the host to the lab is ever needed.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import h11

from smesh import httpclient
from smesh.errors import SmeshError
from smesh.linux import netns as netns_mod


class AdminUnreachable(SmeshError):
    """The agent's admin endpoint did not answer."""


class AdminRefused(SmeshError):
    """The agent's admin endpoint answered with an error status."""


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


def stream(
    host: str,
    port: int,
    path: str,
    *,
    netns: str | None = None,
    timeout: float = 3.0,
    read_timeout: float | None = 10.0,
    on_answer: Callable[[], None] = lambda: None,
) -> Iterator[bytes]:
    """GET *path* and yield each line of the answer as it comes (a streamed body).

    Connecting and the answer's head take at most *timeout*; each read after that at most
    *read_timeout* (None: a follower waits as long as the agent has nothing to say). Ends
    when the agent ends the body; a body cut short, or no answer, raises AdminUnreachable;
    an error status, AdminRefused with the agent's one-line reason. *on_answer* is called
    once the agent answered 200 (a follower is registered: what happens next, it sees).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = netns_mod.socket_in(netns, family) if netns else socket.socket(family)
    where = f"{host}:{port}" + (f" in {netns}" if netns else "")
    conn = h11.Connection(h11.CLIENT)
    status, pending, error = 0, b"", bytearray()
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
        request = h11.Request(
            method="GET", target=path, headers=[("host", host), ("connection", "close")]
        )
        sock.sendall(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(httpclient.RECV_SIZE))
            elif isinstance(event, h11.Response):
                status = event.status_code
                sock.settimeout(read_timeout)
                if status == 200:
                    on_answer()
            elif isinstance(event, h11.Data) and status != 200:
                error += event.data[: 4096 - len(error)]
            elif isinstance(event, h11.Data):
                *lines, pending = (pending + bytes(event.data)).split(b"\n")
                for line in lines:
                    if line:
                        yield line
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    except (OSError, h11.ProtocolError) as exc:
        what = "cut its answer short" if status else "did not answer"
        raise AdminUnreachable(f"agent admin endpoint {where} {what}: {exc}") from None
    finally:
        sock.close()
    if status != 200:
        reason = error.decode(errors="replace").strip()
        raise AdminRefused(f"agent admin endpoint {where} answered {status}: {reason}")
    if pending:
        yield pending
