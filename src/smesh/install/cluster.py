"""The install's reads of the cluster: a synchronous lightkube client over smesh's config.

Only reads; what they mean is decided by pure functions (:mod:`.check`,
:func:`daemonset_going`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2 as httpx
from lightkube import ApiError, Client
from lightkube.resources.apps_v1 import DaemonSet

from smesh.install.errors import InstallError
from smesh.kubernetes.client import REQUEST_TIMEOUT, load_config


def client(kubeconfig: Path | None = None) -> Client:
    """A client from *kubeconfig*, $KUBECONFIG, ~/.kube/config or the in-cluster config."""
    return Client(config=load_config(kubeconfig), timeout=httpx.Timeout(REQUEST_TIMEOUT))


def daemonset_going(obj: dict[str, Any] | None) -> bool:
    """Whether an agent pod that stops now is being removed for good: its DaemonSet is
    gone or being deleted (uninstall). A DaemonSet that is still there means an update, a
    restart or an eviction, after which an agent comes back: smesh-cni must stay chained, or
    pods starting meanwhile would start unmeshed."""
    if obj is None:
        return True
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def read_daemonset(api: Client, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found = api.get(DaemonSet, name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise InstallError(f"cannot read DaemonSet {namespace}/{name}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise InstallError(
            f"cannot reach the API server to read {namespace}/{name}: {exc!r}"
        ) from exc
    return dict(found.to_dict())
