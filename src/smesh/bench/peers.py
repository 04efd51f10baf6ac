"""How each proxy-pair variant is configured: the C tunnels and the Python model candidates.

Every pair does the same job as smesh between the same pods: a proxy on node-1 takes the
app's plain connection and opens TLS 1.3 with a client certificate (ECDSA P-256) to the
proxy on node-2, which verifies it and connects to the server app. Pure text and argv
builders, so the configurations can be read and unit-tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smesh.bench.material import NodeFiles

CLIENT_OFFSET = 20000  # node-1 listens on service port + this (plain, from the app)
TUNNEL_OFFSET = 30000  # node-2 listens on service port + this (TLS, from node-1)


@dataclass(frozen=True)
class Hop:
    """One service through a pair: where each proxy listens and where node-2 delivers."""

    name: str
    client_listen: tuple[str, int]
    tunnel: tuple[str, int]
    target: tuple[str, int]


def hops(services: Sequence[tuple[str, int]], gateway: str, node2: str, server: str) -> list[Hop]:
    return [
        Hop(name, (gateway, port + CLIENT_OFFSET), (node2, port + TUNNEL_OFFSET), (server, port))
        for name, port in services
    ]


def _addr(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def stunnel_config(role: str, routes: Sequence[Hop], files: NodeFiles, ca: Path) -> str:
    """stunnel in the foreground, one section per service."""
    lines = [
        "foreground = yes",
        "pid =",
        "syslog = no",
        "debug = 4",
        "socket = l:TCP_NODELAY=1",
        "socket = r:TCP_NODELAY=1",
    ]
    for hop in routes:
        lines += [
            "",
            f"[{hop.name}]",
            f"client = {'yes' if role == 'client' else 'no'}",
            f"accept = {_addr(hop.client_listen if role == 'client' else hop.tunnel)}",
            f"connect = {_addr(hop.tunnel if role == 'client' else hop.target)}",
            f"cert = {files.cert}",
            f"key = {files.key}",
            f"CAfile = {ca}",
            "verifyChain = yes",
            "sslVersionMin = TLSv1.3",
        ]
        if role == "server":
            lines.append("requireCert = yes")
    return "\n".join(lines) + "\n"


def haproxy_config(role: str, routes: Sequence[Hop], files: NodeFiles, ca: Path) -> str:
    """haproxy in TCP mode; TLS on the server line (client role) or the bind line (server)."""
    tls = f"crt {files.combined} ca-file {ca} verify required ssl-min-ver TLSv1.3"
    lines = [
        "global",
        "    maxconn 9000",  # 3 x 1000 idle connections, within a 20000 descriptor limit
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 1h",
        "    timeout server 1h",
    ]
    for hop in routes:
        if role == "client":
            bind = f"    bind {_addr(hop.client_listen)}"
            server = f"    server s {_addr(hop.tunnel)} ssl {tls}"
        else:
            bind = f"    bind {_addr(hop.tunnel)} ssl {tls}"
            server = f"    server s {_addr(hop.target)}"
        lines += ["", f"frontend f_{hop.name}", bind, f"    default_backend b_{hop.name}"]
        lines += [f"backend b_{hop.name}", server]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Model:
    """A candidate concurrency model for smesh's data plane (src/smesh/bench/candidates)."""

    name: str
    module: str
    loop: str = "default"
    workers: int = 1

    @property
    def variant(self) -> str:
        return f"model-{self.name}"

    def argv(self, python: str, role: str, hop: Hop, files: NodeFiles, ca: Path) -> list[str]:
        listen = hop.client_listen if role == "client" else hop.tunnel
        target = hop.tunnel if role == "client" else hop.target
        return [
            python, "-m", "smesh.bench.candidates", self.module,
            "--role", role, "--listen", _addr(listen), "--target", _addr(target),
            "--cert", str(files.cert), "--key", str(files.key), "--ca", str(ca),
            "--loop", self.loop, "--workers", str(self.workers),
        ]  # fmt: skip


MODELS = (
    Model("streams", "streams"),
    Model("streams-uvloop", "streams", loop="uvloop"),
    Model("protocols-uvloop", "protocols", loop="uvloop"),
    Model("memorybio", "memorybio"),
    Model("memorybio-uvloop", "memorybio", loop="uvloop"),
    Model("memorybio-2-workers", "memorybio", workers=2),
    Model("native", "native"),  # C per-byte loop, Python decisions (issue 23; `make native`)
)
