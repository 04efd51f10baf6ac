"""Which node may obtain which workload identity, from the API server's pods.

The signer's rule (:class:`smesh.identity.signer.Entitlements`): node N may obtain
``spiffe://TD/ns/NS/sa/SA`` only while a pod of namespace NS running as service account SA
is bound to N (``spec.nodeName``) and has not finished (phase Succeeded or Failed). A
compromised node can then obtain the identities of its own pods and of no other node's.

The pods come from a cluster-wide pod informer, so the table follows the API server within
a watch event's latency: a pod bound to a node entitles it, and its deletion (or its
finishing) revokes the entitlement for the next request. Certificates already issued stay
valid until they expire (the signer's ``--ttl``); revocation here stops renewals.

A pod that is terminating (``deletionTimestamp`` set) still entitles its node: its
containers run until the grace period ends and may still need to renew.

:meth:`PodEntitlements.apply` is the whole logic (sans-IO); :meth:`PodEntitlements.follow`
feeds it from an informer.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from lightkube.resources.core_v1 import Pod

from smesh.identity.errors import InvalidSpiffeId
from smesh.identity.spiffe import SpiffeId
from smesh.kubernetes.informer import Informer
from smesh.kubernetes.store import Event, EventType, Key, Synced

log = logging.getLogger(__name__)

#: Phases after which no container of the pod runs again.
FINISHED = frozenset({"Succeeded", "Failed"})

Entitlement = tuple[str, SpiffeId]  # (node, identity)


def entitlement(pod: Pod, trust_domain: str) -> Entitlement | None:
    """The (node, identity) *pod* entitles, or None if it is unbound or finished."""
    meta, spec, status = pod.metadata, pod.spec, pod.status
    if meta is None or spec is None or not spec.nodeName or not meta.namespace:
        return None
    if status is not None and status.phase in FINISHED:
        return None
    account = spec.serviceAccountName or "default"
    try:
        return spec.nodeName, SpiffeId(trust_domain, meta.namespace, account)
    except InvalidSpiffeId as exc:  # the API validates both names; this is only a guard
        log.warning("pod %s/%s entitles nothing: %s", meta.namespace, meta.name, exc)
        return None


class PodEntitlements:
    """The signer's :class:`~smesh.identity.signer.Entitlements` from the pods of the cluster.

    Several pods may give a node the same identity (replicas of one Deployment), so each
    (node, identity) is counted and allowed while its count is above zero. Until the first
    complete list has been applied nothing is allowed: an empty table refuses, it never
    guesses.
    """

    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        self._by_pod: dict[Key, Entitlement] = {}
        self._count: collections.Counter[Entitlement] = collections.Counter()
        self._synced = asyncio.Event()

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def allowed(self, node: str, identity: SpiffeId) -> bool:
        return self._synced.is_set() and self._count[(node, identity)] > 0

    def pairs(self) -> set[Entitlement]:
        """Every (node, identity) allowed now."""
        return set(self._count) if self._synced.is_set() else set()

    def apply(self, item: Event[Pod] | Synced) -> None:
        """One informer item: a pod's change, or the news that the list is complete."""
        if isinstance(item, Synced):
            self._synced.set()
            return
        old = self._by_pod.pop(item.key, None)
        if old is not None:
            self._count[old] -= 1
            if self._count[old] <= 0:
                del self._count[old]
        new = None if item.type is EventType.DELETED else entitlement(item.obj, self.trust_domain)
        if new is not None:
            self._by_pod[item.key] = new
            self._count[new] += 1
        if old != new:
            namespace, name = item.key
            log.debug("pod %s/%s: entitlement %s -> %s", namespace, name, old, new)

    async def wait_synced(self) -> None:
        await self._synced.wait()

    async def follow(self, informer: Informer[Pod]) -> None:
        """Apply the informer's stream, forever (the informer retries API errors itself)."""
        async for item in informer.events():
            self.apply(item)
