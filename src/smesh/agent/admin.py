"""The agent's admin HTTP endpoints (GET only), on two listeners.

The scrape listener (``admin.scrape``, the node's addresses, 15020) serves what the
kubelet's probes and Prometheus read: ``/healthz``, ``/ready``, ``/metrics``. The debug
listener (``admin.debug``, the node's loopback, 15000) serves every ``/debug/*`` route:
they list the node's workloads, identities and connections, which only someone on the
node should read. A route goes by its prefix, so a new ``/debug/`` view lands on the
loopback without anyone deciding it again.
"""

from __future__ import annotations

from typing import Any

from smesh.agent.config import AgentConfig
from smesh.httpserver import ConnectionCap, HttpServer, Response, Routes, WithRequest, router

__all__ = [
    "DEBUG_PREFIX",
    "AdminServer",
    "ConnectionCap",
    "Response",
    "WithRequest",
    "config_view",
    "split_routes",
]

DEBUG_PREFIX = "/debug/"


def split_routes(routes: Routes) -> tuple[Routes, Routes]:
    """(the scrape listener's routes, the debug listener's): ``/debug/*`` to the second."""
    debug = {path: route for path, route in routes.items() if path.startswith(DEBUG_PREFIX)}
    scrape = {path: route for path, route in routes.items() if path not in debug}
    return scrape, debug


def config_view(config: AgentConfig) -> dict[str, Any]:
    """The effective agent configuration, as ``/debug/config`` shows it (aliases, JSON).

    It names files (a CA directory, a kubeconfig, the credential cache), never their
    contents: key material is read from those paths and is not part of the configuration.
    """
    doc: dict[str, Any] = config.model_dump(mode="json", by_alias=True)
    return doc


class AdminServer(HttpServer):
    """One admin listener, capped (``admin.maxConnections`` each, ``admin.readTimeout``):
    any pod of the node can reach the scrape port."""

    def __init__(self, routes: Routes, cap: ConnectionCap | None = None) -> None:
        super().__init__(router(routes), cap=cap)

    async def start(self, host: str, port: int) -> None:
        await self.start_tcp(host, port)

    # adopt, sockets, stop_listening (HttpServer): for an agent hand-over
