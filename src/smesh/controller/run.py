"""The controller process: lead, watch CSRs of smesh's signer, decide, approve and sign or deny.

Level-based, as controller-runtime reconcilers are: each pass takes a CSR as the API has it now
and finishes what is left (decide → approve → sign), so a leader that dies between approving
and signing leaves work its successor completes. Only the leader writes; informers start when
it starts leading and stop when it stops.

Reads come from informers, so the API server is not asked per CSR; a denial that depends on
an absence (the agent's pod, a workload pod) is confirmed with a fresh read first, because an
informer may lag behind a pod the agent already saw.

The leader also summarizes each AuthorizationPolicy's agent entries into its ``Applied``
condition (smesh.controller.policysummary), from the same pod informer.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.certificates_v1 import CertificateSigningRequestCondition
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.certificates_v1 import (
    CertificateSigningRequest,
    CertificateSigningRequestApproval,
    CertificateSigningRequestStatus,
)
from lightkube.resources.core_v1 import ConfigMap, Namespace, Pod, Secret
from prometheus_client import CollectorRegistry, Counter, disable_created_metrics

from smesh.controller.decide import (
    REASONS,
    SIGNER_NAME,
    Approve,
    Decision,
    Deny,
    Settings,
    decide,
    requested_identity,
)
from smesh.controller.lease import LeaderElector
from smesh.controller.policysummary import PolicySummary
from smesh.controller.secretca import BUNDLE_CONFIGMAP, SECRET_NAME, SecretCA
from smesh.identity.errors import CaError
from smesh.kubernetes.client import NAMESPACES, Kind, KubeApi, Selection
from smesh.kubernetes.informer import HasMetadata, Informer
from smesh.kubernetes.policies import POLICIES
from smesh.kubernetes.source import LEAN_PODS
from smesh.kubernetes.store import Event, EventType, Synced

log = logging.getLogger("smesh.controller")
disable_created_metrics()  # type: ignore[no-untyped-call]  # as the agent: no `_created`

CSRS: Kind[CertificateSigningRequest] = Kind(
    CertificateSigningRequest, "/apis/certificates.k8s.io/v1", "certificatesigningrequests", False
)
SECRETS: Kind[Secret] = Kind(Secret, "/api/v1", "secrets", namespaced=True)
#: A write that failed (conflict, API away) is retried after this long, while leading.
RETRY_DELAY = 2.0
FINAL = frozenset({"Denied", "Failed"})
R = TypeVar("R", bound=HasMetadata)


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.csrs = Counter(
            "smesh_controller_csrs",
            "CertificateSigningRequests of smesh's signer answered, by result and reason",
            ["result", "reason"],
            registry=self.registry,
        )
        for reason in REASONS:  # every series exists from the start, at 0
            self.csrs.labels("denied", reason)
            self.csrs.labels("failed", reason)
        self.csrs.labels("approved", "SmeshAutoApproved")


def conditions(csr: CertificateSigningRequest) -> set[str]:
    status = csr.status
    return {c.type for c in (status.conditions or []) if c.status == "True"} if status else set()


def _condition(kind: str, reason: str, message: str) -> CertificateSigningRequestCondition:
    now = dt.datetime.now(dt.UTC)
    return CertificateSigningRequestCondition(
        type=kind,
        status="True",
        reason=reason,
        message=message[:1024],
        lastUpdateTime=now,
        lastTransitionTime=now,
    )


@dataclass
class _Mirror:
    """The leader's view of pods and namespaces, indexed as the decision needs them."""

    pods: dict[str, dict[str, Pod]] = field(default_factory=lambda: collections.defaultdict(dict))
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    synced: set[str] = field(default_factory=set)

    def apply_pod(self, item: Event[Pod] | Synced) -> None:
        if isinstance(item, Synced):
            self.synced.add("pods")
            return
        namespace, name = item.key
        if item.type is EventType.DELETED:
            self.pods[namespace].pop(name, None)
        else:
            self.pods[namespace][name] = item.obj

    def apply_namespace(self, item: Event[Namespace] | Synced) -> None:
        if isinstance(item, Synced):
            self.synced.add("namespaces")
            return
        if item.type is EventType.DELETED:
            self.namespaces.pop(item.key[1], None)
        else:
            self.namespaces[item.key[1]] = item.obj


class Controller:
    def __init__(
        self,
        api_factory: Callable[[], KubeApi],
        client: AsyncClient,
        settings: Settings,
        metrics: ControllerMetrics,
    ) -> None:
        self.api_factory = api_factory
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.ca: SecretCA | None = None
        self._mirror = _Mirror()
        self._csrs: dict[str, CertificateSigningRequest] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._ready = asyncio.Event()

    # -- leading ------------------------------------------------------------------------

    async def lead(self) -> None:
        """The leader's work, until cancelled (the Lease lost or the process stopping)."""
        self._mirror = _Mirror()
        self._csrs.clear()
        self._queue = asyncio.Queue()
        self._queued.clear()
        self._ready.clear()
        self.ca = None
        api = self.api_factory()
        ns = self.settings.namespace
        summary = PolicySummary(api, ns)

        def apply_pod(item: Event[Pod] | Synced) -> None:
            self._mirror.apply_pod(item)
            summary.apply_pod(item)

        informers: list[tuple[Informer[Any], Callable[[Any], Any]]] = [
            # Lean: the controller holds every pod of the cluster and reads only what the
            # agent's informer keeps (node, account, hostNetwork, labels, phase).
            (Informer(api, LEAN_PODS), apply_pod),
            (Informer(api, POLICIES), summary.apply_policy),
            (Informer(api, NAMESPACES), self._mirror.apply_namespace),
            (
                Informer(
                    api,
                    SECRETS,
                    Selection(namespace=ns, field_selector=f"metadata.name={SECRET_NAME}"),
                ),
                self._apply_secret,
            ),
            (
                Informer(api, CSRS, Selection(field_selector=f"spec.signerName={SIGNER_NAME}")),
                self._apply_csr,
            ),
        ]
        try:
            async with asyncio.TaskGroup() as group:
                for informer, apply in informers:
                    group.create_task(self._follow(informer, apply))
                group.create_task(self._work())
                group.create_task(summary.run())
        finally:
            await api.aclose()

    async def _follow(self, informer: Informer[R], apply: Callable[[Any], Any]) -> None:
        stream: AsyncIterator[Event[R] | Synced] = informer.events()
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for item in stream:
                done = apply(item)
                if done is not None:
                    await done
                synced = self._mirror.synced >= {"pods", "namespaces"}
                if synced and self.ca is not None and not self._ready.is_set():
                    self._ready.set()

    async def _apply_secret(self, item: Event[Secret] | Synced) -> None:
        """A new CA is published before it signs: no agent gets a chain it cannot verify."""
        if isinstance(item, Synced):
            if self.ca is None:
                log.error(
                    "no CA: the Secret %s/%s is missing or unreadable; create it with "
                    "`smesh ca init --kubeconfig ...` (CSRs wait until then)",
                    self.settings.namespace,
                    SECRET_NAME,
                )
            return
        if item.type is EventType.DELETED:
            log.error("the CA Secret was deleted: signing stops until it is back")
            self.ca = None
            self._ready.clear()
            return
        data = {k: base64.b64decode(v) for k, v in (item.obj.data or {}).items()}
        try:
            ca = SecretCA.from_data(data, f"Secret {self.settings.namespace}/{SECRET_NAME}")
        except CaError as exc:
            log.error("kept the previous CA: %s", exc)
            return
        while not await self._publish_bundle(ca.bundle_data()):
            await asyncio.sleep(RETRY_DELAY)
        self.ca = ca
        log.info(
            "signing with %s; %d trusted root(s)",
            ca.chain[0].subject.rfc4514_string(),
            len(ca.roots.roots),
        )
        if self._mirror.synced >= {"pods", "namespaces"}:
            self._ready.set()

    def _apply_csr(self, item: Event[CertificateSigningRequest] | Synced) -> None:
        if isinstance(item, Synced):
            return
        name = item.key[1]
        if item.type is EventType.DELETED:
            self._csrs.pop(name, None)
            return
        self._csrs[name] = item.obj
        if self._needs_work(item.obj):
            self._enqueue(name)

    def _enqueue(self, name: str) -> None:
        if name not in self._queued:
            self._queued.add(name)
            self._queue.put_nowait(name)

    @staticmethod
    def _needs_work(csr: CertificateSigningRequest) -> bool:
        if conditions(csr) & FINAL:
            return False
        return not (csr.status and csr.status.certificate)

    async def _publish_bundle(self, data: dict[str, str]) -> bool:
        ns = self.settings.namespace
        try:
            try:
                current = await self.client.get(ConfigMap, BUNDLE_CONFIGMAP, namespace=ns)
            except ApiError as exc:
                if exc.status.code != 404:
                    raise
                await self.client.create(
                    ConfigMap(
                        metadata=ObjectMeta(name=BUNDLE_CONFIGMAP, namespace=ns),
                        data=data,
                    )
                )
                log.info("published the trust bundle %s/%s", ns, BUNDLE_CONFIGMAP)
                return True
            if any((current.data or {}).get(k) != v for k, v in data.items()):
                current.data = {**(current.data or {}), **data}
                await self.client.replace(current)
                log.info("updated the trust bundle %s/%s", ns, BUNDLE_CONFIGMAP)
        except ApiError as exc:
            log.error("cannot publish the trust bundle (retrying): %s", exc.status.message)
            return False
        return True

    # -- answering CSRs -----------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            name = await self._queue.get()
            await self._ready.wait()
            self._queued.discard(name)
            csr = self._csrs.get(name)
            if csr is None or not self._needs_work(csr):
                continue
            try:
                await self.reconcile(csr)
            except (ApiError, CaError) as exc:
                why = exc.status.message if isinstance(exc, ApiError) else str(exc)
                log.warning("CSR %s: %s; retrying in %.0f s", name, why, RETRY_DELAY)
                asyncio.get_running_loop().call_later(RETRY_DELAY, self._enqueue, name)

    async def _decide(self, csr: CertificateSigningRequest) -> Decision:
        spec = csr.spec
        mirror = self._mirror
        bound_name = ((spec.extra or {}).get("authentication.kubernetes.io/pod-name") or [""])[0]
        bound = mirror.pods[self.settings.namespace].get(bound_name)
        pods = [p for ns in mirror.pods.values() for p in ns.values()]
        decision = decide(spec, bound, pods, mirror.namespaces, self.settings)
        if isinstance(decision, Deny) and decision.reason in {"BoundPodGone", "NotOnNode"}:
            decision = await self._decide_fresh(csr, bound_name)
        return decision

    async def _decide_fresh(self, csr: CertificateSigningRequest, bound_name: str) -> Decision:
        """The decision from a quorum read of what the informers may not have seen yet.

        Narrow on purpose (one pod, one namespace, that namespace's pods on that node): a
        compromised node can file CSRs for foreign identities at will, and each must stay cheap.
        """
        ns = self.settings.namespace
        bound: Pod | None = None
        if bound_name:
            try:
                bound = await self.client.get(Pod, bound_name, namespace=ns)
            except ApiError as exc:
                if exc.status.code != 404:
                    raise
        node = bound.spec.nodeName if bound is not None and bound.spec is not None else None
        identity = requested_identity(csr.spec)
        pods: list[Pod] = []
        namespaces: dict[str, Namespace] = {}
        if node and identity is not None:
            fields: dict[str, Any] = {"spec.nodeName": node}
            pods = [
                p async for p in self.client.list(Pod, namespace=identity.namespace, fields=fields)
            ]
            try:
                namespaces[identity.namespace] = await self.client.get(
                    Namespace, identity.namespace
                )
            except ApiError as exc:
                if exc.status.code != 404:
                    raise
        return decide(csr.spec, bound, pods, namespaces, self.settings)

    async def _put(
        self,
        resource: type[CertificateSigningRequestApproval] | type[CertificateSigningRequestStatus],
        body: dict[str, Any],
        name: str,
    ) -> CertificateSigningRequest:
        """PUT *body* to the /approval or /status subresource (with its resourceVersion)."""
        sub = cast(CertificateSigningRequestStatus, resource.from_dict(body))
        result = await self.client.replace(sub, name)
        return cast(
            CertificateSigningRequest, CertificateSigningRequest.from_dict(result.to_dict())
        )

    async def reconcile(self, csr: CertificateSigningRequest) -> None:
        assert csr.metadata is not None
        name = csr.metadata.name or ""
        approved = "Approved" in conditions(csr)
        decision = await self._decide(csr)
        if isinstance(decision, Deny):
            # Approved by someone else (an admin's `kubectl certificate approve`): the signer
            # still refuses, with a Failed condition, since an approved CSR cannot be denied.
            kind, resource = (
                ("Failed", CertificateSigningRequestStatus)
                if approved
                else (
                    "Denied",
                    CertificateSigningRequestApproval,
                )
            )
            log.info("CSR %s %s: %s (%s)", name, kind.lower(), decision.reason, decision.message)
            body = csr.to_dict()
            body.setdefault("status", {}).setdefault("conditions", []).append(
                _condition(kind, decision.reason, decision.message).to_dict()
            )
            await self._put(resource, body, name)
            self.metrics.csrs.labels(kind.lower(), decision.reason).inc()
            return
        assert isinstance(decision, Approve)
        if not approved:
            body = csr.to_dict()
            body.setdefault("status", {}).setdefault("conditions", []).append(
                _condition("Approved", decision.reason, decision.message).to_dict()
            )
            csr = await self._put(CertificateSigningRequestApproval, body, name)
        ca = self.ca
        if ca is None:  # the Secret went away meanwhile
            raise CaError("no CA to sign with: the Secret smesh-ca is gone")
        chain = ca.issue(decision.public_key, str(decision.identity), decision.lifetime)
        body = csr.to_dict()
        body.setdefault("status", {})["certificate"] = base64.b64encode(chain).decode()
        await self._put(CertificateSigningRequestStatus, body, name)
        self.metrics.csrs.labels("approved", decision.reason).inc()
        log.info(
            "CSR %s: signed %s for node %s, %s",
            name,
            decision.identity,
            decision.node,
            decision.lifetime,
        )


async def run(elector: LeaderElector, controller: Controller, stop: asyncio.Event) -> None:
    """Campaign and lead until *stop* is set; then release the Lease."""
    campaign = asyncio.ensure_future(elector.run(controller.lead))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({campaign, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (campaign, stopping):
            task.cancel()
        await asyncio.wait({campaign, stopping})
        await elector.release()
    if campaign.done() and not campaign.cancelled() and campaign.exception() is not None:
        raise campaign.exception()  # type: ignore[misc]
