"""The agent's admin HTTP endpoint: health, readiness, metrics and debug views (GET only)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from smesh.httpserver import HttpServer, Response, router

__all__ = ["AdminServer", "Response"]


class AdminServer(HttpServer):
    def __init__(self, routes: dict[str, Callable[[], Response | Awaitable[Response]]]) -> None:
        super().__init__(router(routes))

    async def start(self, host: str, port: int) -> None:
        await self.start_tcp(host, port)
