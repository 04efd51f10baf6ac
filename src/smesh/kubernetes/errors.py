"""Errors of the Kubernetes API client and informer."""

from __future__ import annotations

from smesh.errors import SmeshError


class KubernetesError(SmeshError):
    """The Kubernetes API cannot be configured, reached or understood."""


class KubeConfigError(KubernetesError):
    """No usable kubeconfig or in-cluster configuration."""


class ApiUnreachable(KubernetesError):
    """The API server did not answer (connection refused or reset, timeout)."""


class ApiStatusError(KubernetesError):
    """The API server answered with a failure Status (HTTP error or a watch ERROR event)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"Kubernetes API error {code} {reason}: {message}")
        self.code = code
        self.reason = reason


class ResourceVersionGone(ApiStatusError):
    """410 Gone: the resourceVersion asked for is compacted away; the caller must relist."""


class WatchProtocolError(KubernetesError):
    """A watch stream line that is not a watch event of the Kubernetes API."""


def status_error(code: int, reason: str, message: str) -> ApiStatusError:
    """The typed error for a failure Status: 410 gets its own type because it means relist."""
    if code == 410:
        return ResourceVersionGone(code, reason or "Gone", message)
    return ApiStatusError(code, reason, message)
