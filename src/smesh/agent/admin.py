"""The agent's admin HTTP endpoint: health, readiness, metrics and debug views (GET only)."""

from __future__ import annotations

from smesh.httpserver import ConnectionCap, HttpServer, Response, Routes, WithRequest, router

__all__ = ["AdminServer", "ConnectionCap", "Response", "WithRequest"]


class AdminServer(HttpServer):
    """Capped (``admin.maxConnections``): any pod of the node can reach this port."""

    def __init__(
        self,
        routes: Routes,
        cap: ConnectionCap | None = None,
    ) -> None:
        super().__init__(router(routes), cap=cap)

    async def start(self, host: str, port: int) -> None:
        await self.start_tcp(host, port)

    # adopt, sockets, stop_listening (HttpServer): for an agent hand-over
