"""The install's reads of the cluster: GETs of API paths as JSON, over smesh's configuration.

Only reads, and only as plain JSON objects; what they mean is decided by pure functions
(:mod:`.check`, :func:`daemonset_going`), which the unit tests feed with objects directly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx2 as httpx
from lightkube.config import client_adapter

from smesh.install.errors import AccessDenied, InstallError
from smesh.kubernetes.client import REQUEST_TIMEOUT, load_config
from smesh.kubernetes.errors import ApiUnreachable


class Cluster:
    """GET of API paths; a 404 is ``None``, any other failure a typed error."""

    def __init__(self, kubeconfig: Path | None = None) -> None:
        logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per request otherwise
        config = load_config(kubeconfig)
        params = client_adapter.ConnectionParams(
            timeout=httpx.Timeout(REQUEST_TIMEOUT), trust_env=False
        )
        self.server = config.cluster.server
        self._http = client_adapter.Client(config, params)

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, **params: str) -> dict[str, Any] | None:
        try:
            response = self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise ApiUnreachable(f"GET {path} at {self.server}: {exc!r}") from exc
        if response.status_code == 404:
            return None
        if response.status_code in (401, 403):
            raise AccessDenied(
                f"GET {path}: HTTP {response.status_code}: {response.text[:300].strip()}"
            )
        if response.status_code >= 400:
            raise InstallError(
                f"GET {path}: HTTP {response.status_code}: {response.text[:300].strip()}"
            )
        try:
            body = json.loads(response.content)
        except ValueError as exc:
            raise InstallError(f"GET {path}: not JSON: {response.text[:200]!r}") from exc
        if not isinstance(body, dict):
            raise InstallError(f"GET {path}: not a JSON object")
        return body

    def items(self, path: str, **params: str) -> list[dict[str, Any]]:
        """The items of a list (one page of up to 5000: a check, not an informer)."""
        found = self.get(path, limit="5000", **params)
        return list((found or {}).get("items") or [])


def daemonset_going(obj: dict[str, Any] | None) -> bool:
    """Whether an agent pod that stops now is being removed for good: its DaemonSet is
    gone or being deleted (uninstall). A DaemonSet that is still there means an update, a
    restart or an eviction, after which an agent comes back: smesh-cni must stay chained, or
    pods starting meanwhile would start unmeshed."""
    if obj is None:
        return True
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def read_daemonset(kubeconfig: Path | None, namespace: str, name: str) -> dict[str, Any] | None:
    """The DaemonSet, or ``None`` if it is gone -- or if our own access is: an uninstall
    deletes the agent's ServiceAccount and RBAC in the same pass as the DaemonSet, usually
    before its pods stop, so their token is refused (401) or the Role gone (403). Neither
    happens on an upgrade or a restart, which keep both."""
    cluster = Cluster(kubeconfig)
    try:
        return cluster.get(f"/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}")
    except AccessDenied:
        return None
    finally:
        cluster.close()
