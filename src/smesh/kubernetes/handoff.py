"""The CNI hand-off: what smesh's CNI plugin tells the node agent about a pod sandbox.

The container runtime calls the plugin (after the network plugins) with the sandbox's
network namespace and the pod's name, namespace and UID; the plugin passes them to the
agent over a Unix socket as one HTTP/1.1 request and waits. The agent answers ADD only
once the pod's capture and listeners are in place (or it has decided the pod is not
meshed), so no app of the pod can connect before capture: no start race. An agent that
does not answer fails the ADD, and the pod does not start: fail closed.

The messages are JSON, defined here once for both ends:

* ``POST /v1/sandboxes/add`` | ``/del`` | ``/check`` with a :class:`SandboxRequest`;
* 200 with a :class:`SandboxReply`, or 4xx/5xx with a :class:`SandboxReply` whose
  ``message`` says why (the plugin turns it into the CNI error it prints).
"""

from __future__ import annotations

import enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smesh.kubernetes.errors import KubernetesError
from smesh.validation import IP, describe

#: Where the agent listens unless ``kubernetes.cniSocket`` says otherwise.
DEFAULT_SOCKET = "/run/smesh/cni.sock"
PATH_PREFIX = "/v1/sandboxes/"


class HandoffError(KubernetesError):
    """A hand-off message that is not valid; the message names the field."""


class Command(enum.StrEnum):
    ADD = "add"
    DEL = "del"
    CHECK = "check"

    @property
    def path(self) -> str:
        return PATH_PREFIX + self.value


class SandboxRequest(BaseModel):
    """One CNI call, as the agent needs it (CNI_CONTAINERID, CNI_NETNS, K8S_POD_* args)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    container_id: Annotated[str, Field(alias="containerId", min_length=1, max_length=256)]
    netns: Annotated[str, Field(max_length=4096)] = ""  # may be empty on DEL
    if_name: Annotated[str, Field(alias="ifName", max_length=15)] = "eth0"
    pod_namespace: Annotated[str, Field(alias="podNamespace", max_length=253)] = ""
    pod_name: Annotated[str, Field(alias="podName", max_length=253)] = ""
    pod_uid: Annotated[str, Field(alias="podUid", max_length=64)] = ""
    ips: tuple[IP, ...] = ()  # from the previous plugins' result

    @property
    def pod(self) -> str:
        return f"{self.pod_namespace}/{self.pod_name}"


class SandboxReply(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pod: str = ""
    meshed: bool = False
    message: str = ""


def encode(message: SandboxRequest | SandboxReply) -> bytes:
    return message.model_dump_json(by_alias=True).encode()


def decode_request(body: bytes) -> SandboxRequest:
    try:
        return SandboxRequest.model_validate_json(body)
    except ValidationError as exc:
        raise HandoffError(f"invalid sandbox request: {describe(exc)}") from None


def decode_reply(body: bytes) -> SandboxReply:
    try:
        return SandboxReply.model_validate_json(body)
    except ValidationError as exc:
        raise HandoffError(f"invalid reply from the smesh agent: {describe(exc)}") from None
