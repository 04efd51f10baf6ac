"""A denial that rests on an absence is confirmed by a fresh read: informers may trail the agent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from lightkube.core.exceptions import ApiError
from lightkube.models.certificates_v1 import CertificateSigningRequestSpec
from lightkube.models.meta_v1 import ObjectMeta, Status
from lightkube.resources.certificates_v1 import CertificateSigningRequest
from lightkube.resources.core_v1 import Namespace, Pod

from smesh.controller.decide import Approve, Deny, Settings
from smesh.controller.run import Controller, ControllerMetrics
from tests.unit.controller.test_decide import AGENT_POD, NAMESPACES, WEB_POD, spec


class FreshApi:
    """What a quorum read returns now; records what was asked."""

    def __init__(self, pods: list[Pod]) -> None:
        self.pods = pods
        self.asked: list[tuple[str, Any]] = []

    async def get(self, res: Any, name: str, *, namespace: str | None = None) -> Any:
        self.asked.append(("get", (res.__name__, namespace, name)))
        if res is Namespace:
            return NAMESPACES[name]
        for pod in self.pods:
            assert pod.metadata is not None
            if (pod.metadata.namespace, pod.metadata.name) == (namespace, name):
                return pod
        raise ApiError(status=Status(code=404, message="not found"))

    def list(self, res: Any, *, namespace: str, fields: dict[str, str]) -> AsyncIterator[Pod]:
        self.asked.append(("list", (res.__name__, namespace, fields)))

        async def items() -> AsyncIterator[Pod]:
            for pod in self.pods:
                assert pod.metadata is not None
                assert pod.spec is not None
                if (
                    pod.metadata.namespace == namespace
                    and pod.spec.nodeName == fields["spec.nodeName"]
                ):
                    yield pod

        return items()


def controller(api: FreshApi) -> Controller:
    return Controller(lambda: None, api, Settings("cluster.local"), ControllerMetrics())  # type: ignore[arg-type,return-value]


def csr(s: CertificateSigningRequestSpec) -> CertificateSigningRequest:
    return CertificateSigningRequest(metadata=ObjectMeta(name="smesh-node-1-x"), spec=s)


def test_pods_the_informers_have_not_seen_yet_are_found() -> None:
    api = FreshApi([AGENT_POD, WEB_POD])
    decision = asyncio.run(controller(api)._decide(csr(spec())))  # the mirror is empty
    assert isinstance(decision, Approve)
    # Narrow reads only: the agent pod, the namespace, its pods on that node.
    assert ("list", ("Pod", "shop", {"spec.nodeName": "node-1"})) in api.asked
    assert all(kind == "get" or args[1] == "shop" for kind, args in api.asked)


def test_a_real_absence_is_still_denied() -> None:
    api = FreshApi([AGENT_POD])
    decision = asyncio.run(controller(api)._decide(csr(spec())))
    assert isinstance(decision, Deny)
    assert decision.reason == "NotOnNode"
    gone = asyncio.run(controller(FreshApi([WEB_POD]))._decide(csr(spec())))
    assert isinstance(gone, Deny)
    assert gone.reason == "BoundPodGone"
