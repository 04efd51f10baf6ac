"""Reading and rewriting the CA Secret through the API (``smesh ca init|rotate --kubeconfig``).

Every rewrite is a read-modify-write carrying the resourceVersion read, so a concurrent change
(another admin, cert-manager renewing a brought-in CA) makes it fail with 409 instead of
being overwritten; it is then retried from a fresh read.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from smesh.controller.secretca import SECRET_NAME, SecretData
from smesh.identity.errors import CaError

ATTEMPTS = 5


def _decode(secret: Secret) -> SecretData:
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


def _encode(data: SecretData) -> dict[str, str]:
    return {k: base64.b64encode(v).decode() for k, v in data.items()}


async def create_secret(client: AsyncClient, namespace: str, data: SecretData) -> bool:
    """Create the Secret unless it exists (then leave it alone: it may be the user's own)."""
    secret = Secret(
        metadata=ObjectMeta(name=SECRET_NAME, namespace=namespace),
        type="kubernetes.io/tls",
        data=_encode(data),
    )
    try:
        await client.create(secret)
    except ApiError as exc:
        if exc.status.code == 409:
            return False
        raise
    return True


async def update_secret(
    client: AsyncClient, namespace: str, change: Callable[[SecretData], SecretData]
) -> SecretData:
    """Apply *change* to the Secret's data; retried from a fresh read on a conflict."""
    for _ in range(ATTEMPTS):
        try:
            secret = await client.get(Secret, SECRET_NAME, namespace=namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                raise CaError(
                    f"no Secret {namespace}/{SECRET_NAME}: create it with "
                    "`smesh ca init --kubeconfig ...`"
                ) from None
            raise
        fresh = change(_decode(secret))
        secret.data = _encode(fresh)
        try:
            await client.replace(secret)
        except ApiError as exc:
            if exc.status.code == 409:
                continue
            raise
        return fresh
    raise CaError(f"the Secret {namespace}/{SECRET_NAME} kept changing under us; try again")
