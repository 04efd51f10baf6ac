"""The Kubernetes API for the informer: list and watch of typed lightkube objects.

lightkube supplies the configuration (kubeconfig or in-cluster service account, client
certificates, tokens, exec plugins, the cluster's CA), the HTTP client it builds from it, and
the typed models of the 1.37 API. The list and watch requests themselves are made here
because lightkube's own ``watch`` cannot ask for ``allowWatchBookmarks`` and, on a 410, silently
restarts from "now" -- skipping every change in between, which is exactly what an informer
must never do.
"""

from __future__ import annotations

import collections.abc
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import httpx2 as httpx
import msgspec
from lightkube.config import client_adapter
from lightkube.config.kubeconfig import KubeConfig, SingleConfig
from lightkube.core.exceptions import ConfigError
from lightkube.resources.core_v1 import Namespace, Pod

from smesh.kubernetes.errors import ApiUnreachable, KubeConfigError, WatchProtocolError
from smesh.kubernetes.protocol import WatchItem, parse_status, parse_watch_line

T = TypeVar("T")

#: Connect/write/pool timeout of every request, and read timeout of a list page.
REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class Kind(Generic[T]):
    """A resource the informer can list and watch: its model and where it lives."""

    model: type[T]
    group_path: str  # "/api/v1" or "/apis/GROUP/VERSION"
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None) -> str:
        if namespace is not None:
            if not self.namespaced:
                raise ValueError(f"{self.plural} are not namespaced")
            return f"{self.group_path}/namespaces/{namespace}/{self.plural}"
        return f"{self.group_path}/{self.plural}"

    def decode(self, raw: Any) -> T:
        if not isinstance(raw, dict):
            raise WatchProtocolError(f"{self.plural}: expected an object, got {raw!r:.200}")
        from_dict = getattr(self.model, "from_dict", None)
        if from_dict is None:
            raise TypeError(f"{self.model!r} is not a lightkube model")
        try:
            return cast(T, from_dict(raw))
        except (msgspec.MsgspecError, TypeError, ValueError) as exc:
            raise WatchProtocolError(f"{self.plural}: not a valid object ({exc})") from exc


PODS: Kind[Pod] = Kind(Pod, "/api/v1", "pods", namespaced=True)
NAMESPACES: Kind[Namespace] = Kind(Namespace, "/api/v1", "namespaces", namespaced=False)


@dataclass(frozen=True)
class Selection:
    """Which objects: a namespace (None for all) and selectors passed through verbatim."""

    namespace: str | None = None
    field_selector: str | None = None  # e.g. "spec.nodeName=node-1"
    label_selector: str | None = None  # e.g. "app=web,tier!=cache"

    def params(self) -> dict[str, str]:
        params = {}
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        return params


def load_config(kubeconfig: Path | None = None) -> SingleConfig:
    """The given kubeconfig, else $KUBECONFIG or ~/.kube/config, else the in-cluster config."""
    where = kubeconfig or os.environ.get("KUBECONFIG") or "in-cluster or ~/.kube/config"
    try:
        if kubeconfig is not None:
            config = KubeConfig.from_file(kubeconfig).get()
        else:
            config = KubeConfig.from_env().get()
    except (ConfigError, OSError, ValueError) as exc:
        raise KubeConfigError(f"no usable Kubernetes configuration ({where}): {exc}") from exc
    if config is None:
        raise KubeConfigError(f"no current context in the Kubernetes configuration ({where})")
    return config


def _raise_for_status(response: httpx.Response, body: bytes) -> None:
    if response.status_code < 400:
        return
    try:
        status = json.loads(body)
    except ValueError:
        status = {"code": response.status_code, "message": body[:200].decode(errors="replace")}
    if isinstance(status, dict):
        status.setdefault("code", response.status_code)
    raise parse_status(status)


class KubeApi:
    """List and watch over one HTTP client built from a lightkube configuration."""

    def __init__(self, config: SingleConfig) -> None:
        params = client_adapter.ConnectionParams(
            timeout=httpx.Timeout(REQUEST_TIMEOUT), trust_env=False
        )
        self.server = config.cluster.server
        self._http = client_adapter.AsyncClient(config, params)

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path | None = None) -> KubeApi:
        return cls(load_config(kubeconfig))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def list(
        self, kind: Kind[T], selection: Selection, page_size: int = 500
    ) -> tuple[str, list[T]]:
        """Every object selected, as one consistent read (paged), and its resourceVersion.

        No resourceVersion is sent, so the list is served from etcd with a quorum read: what
        the store is reset to is never older than what the API server has acknowledged.
        """
        params = {**selection.params(), "limit": str(page_size)}
        items: list[T] = []
        resource_version = ""
        while True:
            body = await self._get(kind.path(selection.namespace), params)
            try:
                page = json.loads(body)
                metadata = page.get("metadata") or {}
                raw_items = page.get("items") or []
            except (ValueError, AttributeError) as exc:
                raise WatchProtocolError(f"{kind.plural}: not a list: {body[:200]!r}") from exc
            items.extend(kind.decode(raw) for raw in raw_items)
            # Every page of a paged list is at the resourceVersion of the first.
            resource_version = resource_version or str(metadata.get("resourceVersion", ""))
            token = metadata.get("continue")
            if not token:
                break
            params["continue"] = str(token)
        if not resource_version:
            raise WatchProtocolError(f"{kind.plural}: a list without a resourceVersion")
        return resource_version, items

    async def watch(
        self,
        kind: Kind[T],
        selection: Selection,
        resource_version: str,
        timeout_seconds: int,
    ) -> collections.abc.AsyncGenerator[WatchItem[T], None]:
        """The changes after *resource_version*, until the server ends the watch after
        *timeout_seconds*; ERROR events are raised as typed errors (410 as ResourceVersionGone).
        """
        params = {
            **selection.params(),
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        # A healthy watch is silent between events; bookmarks come about once a minute.
        timeout = httpx.Timeout(REQUEST_TIMEOUT, read=timeout_seconds + 60.0)
        request = self._http.build_request(
            "GET", kind.path(selection.namespace), params=params, timeout=timeout
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise ApiUnreachable(f"watch {kind.plural} at {self.server}: {exc!r}") from exc
        try:
            if response.status_code >= 400:
                _raise_for_status(response, await response.aread())
            async for line in response.aiter_lines():
                if line.strip():
                    yield parse_watch_line(line, kind.decode)
        except httpx.TransportError as exc:
            raise ApiUnreachable(f"watch {kind.plural} at {self.server}: {exc!r}") from exc
        finally:
            await response.aclose()

    async def apply(self, path: str, body: dict[str, Any], field_manager: str) -> None:
        """Server-side apply of *body* at *path* (an object or a subresource such as status),
        taking over the fields it sets from any other manager (``force``): each writer owns
        a part no other writes, e.g. its own entry of a list keyed by node."""
        params = {"fieldManager": field_manager, "force": "true"}
        headers = {"Content-Type": "application/apply-patch+yaml"}  # JSON is YAML
        try:
            response = await self._http.patch(
                path, params=params, headers=headers, content=json.dumps(body)
            )
        except httpx.TransportError as exc:
            raise ApiUnreachable(f"PATCH {path} at {self.server}: {exc!r}") from exc
        _raise_for_status(response, response.content)

    async def _get(self, path: str, params: dict[str, str]) -> bytes:
        try:
            response = await self._http.get(path, params=params)
        except httpx.TransportError as exc:
            raise ApiUnreachable(f"GET {path} at {self.server}: {exc!r}") from exc
        body = response.content
        _raise_for_status(response, body)
        return body
