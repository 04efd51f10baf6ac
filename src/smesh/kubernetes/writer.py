"""Writes to the Kubernetes API (create, patch, delete) as plain JSON, for the lab's kubelet.

The kubelet's writes are few and shaped exactly like client-go's: a Node created once, its
status and Lease patched, pod status merge-patched, Events posted, a pod deleted with a UID
precondition. Plain JSON against the REST paths says precisely what goes over the wire, which
typed models would hide (a merge patch must not carry fields the kubelet does not own). The
HTTP client and credentials come from lightkube's configuration, like :mod:`client`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2 as httpx
from lightkube.config import client_adapter

from smesh.kubernetes.client import REQUEST_TIMEOUT, load_config
from smesh.kubernetes.errors import ApiStatusError, ApiUnreachable
from smesh.kubernetes.protocol import parse_status

MERGE_PATCH = "application/merge-patch+json"


class KubeWriter:
    """JSON requests to one API server; HTTP errors raise the typed :class:`ApiStatusError`."""

    def __init__(self, kubeconfig: Path) -> None:
        config = load_config(kubeconfig)
        params = client_adapter.ConnectionParams(
            timeout=httpx.Timeout(REQUEST_TIMEOUT), trust_env=False
        )
        self.server = config.cluster.server
        self._http = client_adapter.AsyncClient(config, params)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        content = None
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        try:
            response = await self._http.request(method, path, content=content, headers=headers)
        except httpx.TransportError as exc:
            raise ApiUnreachable(f"{method} {path} at {self.server}: {exc!r}") from exc
        raw = response.content
        try:
            reply = json.loads(raw) if raw else {}
        except ValueError:
            reply = {"message": raw[:200].decode(errors="replace")}
        if response.status_code >= 400:
            if isinstance(reply, dict):
                reply.setdefault("code", response.status_code)
            raise parse_status(reply)
        return reply if isinstance(reply, dict) else {}

    async def get(self, path: str) -> dict[str, Any]:
        return await self.request("GET", path)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body)

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, body, MERGE_PATCH)

    async def update(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PUT", path, body)

    async def delete(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.request("DELETE", path, body)


def is_status(exc: BaseException, *codes: int) -> bool:
    """Whether *exc* is an API answer with one of *codes* (e.g. 404, 409)."""
    return isinstance(exc, ApiStatusError) and exc.code in codes
