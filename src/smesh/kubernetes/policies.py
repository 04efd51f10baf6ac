"""The agent's AuthorizationPolicy watcher: objects in, policy in force, status out.

Two informers feed it: the AuthorizationPolicy objects of the cluster and the pods of this
node (their labels are what selectors pick; smesh.policy.crd resolves them). On every change
the translation is redone and installed through the :class:`~smesh.policy.rules.PolicyStore`
overlay, the path a SIGHUP reload of the policy file takes as well; then each object whose
status does not show this agent's outcome of its current generation gets this agent's entry
in ``status.agents``, written with server-side apply under the field manager
``smesh-agent/NODE`` (so agents never overwrite each other's entries).

An API server without the CRD is not an error: the agent enforces its policy file alone,
logs that once, and looks for the CRD again every :data:`ABSENT_RETRY` seconds. Until the
first complete list, connections are refused (the store is *pending*).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Iterable
from typing import Any, cast

from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod

from smesh.agent.config import AgentConfig
from smesh.agent.metrics import AgentMetrics
from smesh.kubernetes.backoff import Backoff
from smesh.kubernetes.client import Kind, KubeApi, Selection
from smesh.kubernetes.errors import ApiStatusError, KubernetesError
from smesh.kubernetes.informer import Informer
from smesh.kubernetes.source import LEAN_PODS
from smesh.kubernetes.store import Synced
from smesh.policy.crd import (
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    Outcome,
    PodLabels,
    Translation,
    translate,
)
from smesh.policy.rules import Policy, PolicyStore

log = logging.getLogger("smesh.agent")

#: Seconds between looks for the CRD while the API server does not serve it.
ABSENT_RETRY = 30.0
PENDING = "AuthorizationPolicy objects are not loaded from the API server yet"


class RawObject:
    """An object of a kind lightkube has no model for: its JSON, and its metadata."""

    def __init__(self, raw: dict[str, Any]) -> None:
        meta = raw.get("metadata")
        if isinstance(meta, dict) and "managedFields" in meta:  # most of the bytes, unused
            raw = {**raw, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
        self.raw = raw
        self.metadata: ObjectMeta | None = cast(
            ObjectMeta, ObjectMeta.from_dict(raw.get("metadata") or {})
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RawObject:
        return cls(raw)


POLICIES: Kind[RawObject] = Kind(RawObject, f"/apis/{GROUP}/{VERSION}", PLURAL, namespaced=True)


def pod_labels(pods: Iterable[Pod]) -> list[PodLabels]:
    return [
        PodLabels(p.metadata.namespace or "default", p.metadata.name, p.metadata.labels or {})
        for p in pods
        if p.metadata is not None and p.metadata.name
    ]


def agent_entry(obj: dict[str, Any], node: str) -> dict[str, Any] | None:
    """This node's entry in an object's ``status.agents``, if it has one."""
    status = obj.get("status")
    agents = status.get("agents") if isinstance(status, dict) else None
    for entry in agents if isinstance(agents, list) else ():
        if isinstance(entry, dict) and entry.get("node") == node:
            return entry
    return None


def applied_nodes(obj: dict[str, Any]) -> list[Any]:
    status = obj.get("status")
    nodes = status.get("appliedNodes") if isinstance(status, dict) else None
    return nodes if isinstance(nodes, list) else []


def shows(obj: dict[str, Any], node: str, outcome: Outcome) -> bool:
    """Whether *obj*'s status already says this node's *outcome* (its time aside)."""
    entry = agent_entry(obj, node)
    return (
        entry is not None
        and entry.get("observedGeneration") == outcome.generation
        and entry.get("applied") == outcome.applied
        and entry.get("message") == outcome.message
        and (node in applied_nodes(obj)) == outcome.applied
    )


def status_patch(outcome: Outcome, node: str, now: datetime.datetime) -> dict[str, Any]:
    """The server-side apply body of this agent's entry (and its name in ``appliedNodes``
    if applied: left out, server-side apply removes it); the uid makes it a precondition
    (an object deleted and recreated under the name gets no stale entry)."""
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": outcome.name, "namespace": outcome.namespace, "uid": outcome.uid},
        "status": {
            "agents": [
                {
                    "node": node,
                    "observedGeneration": outcome.generation,
                    "applied": outcome.applied,
                    "message": outcome.message,
                    "lastUpdate": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            ]
        },
    }
    if outcome.applied:
        body["status"]["appliedNodes"] = [node]
    return body


class PolicyWatcher:
    def __init__(
        self,
        api: KubeApi,
        node: str,
        store: PolicyStore,
        metrics: AgentMetrics | None = None,
        *,
        absent_retry: float = ABSENT_RETRY,
    ) -> None:
        self.api = api
        self.node = node
        self.store = store
        self.metrics = metrics
        self.absent_retry = absent_retry
        self.field_manager = f"smesh-agent/{node}"
        self.policies: Informer[RawObject] = Informer(api, POLICIES)
        self.pods: Informer[Pod] = Informer(
            api, LEAN_PODS, Selection(field_selector=f"spec.nodeName={node}")
        )
        self.translation: Translation | None = None
        self._changed = asyncio.Event()
        self._unwritten = asyncio.Event()
        self._synced: set[str] = set()
        self._write_errors: dict[tuple[str, str], str] = {}  # the last logged, per object
        if metrics is not None:
            metrics.authorization_policies()

    @classmethod
    def from_config(
        cls, config: AgentConfig, store: PolicyStore, metrics: AgentMetrics
    ) -> PolicyWatcher:
        assert config.kubernetes is not None
        return cls(
            KubeApi.from_kubeconfig(config.kubernetes.kubeconfig), config.node, store, metrics
        )

    async def run(self) -> None:
        try:
            await self._wait_for_crd()
            tasks = [
                asyncio.create_task(self._follow("policies", self.policies)),
                asyncio.create_task(self._follow("pods", self.pods)),
                asyncio.create_task(self._write_statuses()),
            ]
            try:
                while True:
                    await self._changed.wait()
                    self._changed.clear()
                    for task in tasks:
                        if task.done():  # they run forever: this is a bug; say so
                            task.result()
                            raise RuntimeError("an AuthorizationPolicy task ended")
                    if len(self._synced) == 2:
                        self.store.overlay(self.combine)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await self.api.aclose()

    def combine(self, base: Policy) -> Policy:
        """The store's overlay: the file's policy plus the objects' rules (and, as a side
        effect, the outcomes the status writer publishes)."""
        objects = [o.raw for o in self.policies.snapshot().values()]
        translation = translate(objects, pod_labels(self.pods.snapshot().values()), base)
        old = self.translation
        self.translation = translation
        self.store.objects = tuple(
            f"{o.namespace}/{o.name}" for o in translation.outcomes if o.applied
        )
        if old is None or old.policy != translation.policy:
            refused = [o for o in translation.outcomes if not o.applied]
            log.info(
                "authorization policy in force: %d rules (%d from the policy file), "
                "%d AuthorizationPolicy objects applied, %d refused",
                len(translation.policy.rules),
                len(base.rules),
                len(translation.outcomes) - len(refused),
                len(refused),
            )
        if self.metrics is not None:
            applied = sum(o.applied for o in translation.outcomes)
            self.metrics.policy_objects.labels("applied").set(applied)
            self.metrics.policy_objects.labels("refused").set(len(translation.outcomes) - applied)
        self._unwritten.set()
        return translation.policy

    async def _wait_for_crd(self) -> None:
        """Return once the API server serves AuthorizationPolicies; until then enforce the
        policy file alone if the CRD is absent, and nothing (pending) on other errors."""
        backoff = Backoff(initial=1.0, cap=ABSENT_RETRY)
        last = ""  # what the last attempt logged: each distinct failure once, not per attempt
        while True:
            try:
                await self.api.list(POLICIES, Selection(), 500)
            except ApiStatusError as exc:
                if exc.code != 404:
                    last = self._cannot_list(exc, last)
                    await asyncio.sleep(backoff.next_delay())
                    continue
                if last != "absent":
                    log.warning(
                        "the API server has no AuthorizationPolicy CRD (authorizationpolicies.%s):"
                        " enforcing the policy file alone; looking again every %g s",
                        GROUP,
                        self.absent_retry,
                    )
                    last = "absent"
                    self.store.overlay(lambda base: base)
                await asyncio.sleep(self.absent_retry)
                continue
            except KubernetesError as exc:
                last = self._cannot_list(exc, last)
                await asyncio.sleep(backoff.next_delay())
                continue
            if last:
                log.info("AuthorizationPolicies are served now: watching them")
            return

    def _cannot_list(self, exc: KubernetesError, last: str) -> str:
        if str(exc) != last:
            then = "refusing connections meanwhile" if self.store.pending else "keeping the policy"
            log.warning("cannot list AuthorizationPolicies (%s); %s; retrying", exc, then)
        return str(exc)

    async def _follow(self, name: str, informer: Informer[RawObject] | Informer[Pod]) -> None:
        async for item in informer.events():
            if isinstance(item, Synced):
                self._synced.add(name)
            self._changed.set()

    async def _write_statuses(self) -> None:
        """Publish this agent's outcome of each object whose status does not show it yet."""
        backoff = Backoff(initial=1.0, cap=30.0)
        while True:
            await self._unwritten.wait()
            self._unwritten.clear()
            translation = self.translation
            if translation is None:
                continue
            failed = False
            for outcome in translation.outcomes:
                try:
                    await self._write(outcome)
                except KubernetesError as exc:
                    failed = True
                    self._failed_write(outcome, exc)
            if failed:
                await asyncio.sleep(backoff.next_delay())
                self._unwritten.set()
            else:
                backoff.reset()

    async def _write(self, outcome: Outcome) -> None:
        key = (outcome.namespace, outcome.name)
        current = self.policies.snapshot().get(key)
        if current is None or current.metadata is None or current.metadata.uid != outcome.uid:
            return  # deleted (or replaced) since: its events bring a new translation
        if shows(current.raw, self.node, outcome):
            return
        path = f"{POLICIES.path(outcome.namespace)}/{outcome.name}/status"
        body = status_patch(outcome, self.node, datetime.datetime.now(datetime.UTC))
        try:
            await self.api.apply(path, body, self.field_manager)
        except ApiStatusError as exc:
            if exc.code in (404, 409):  # gone, or another object under the name now
                return
            raise
        self._write_errors.pop(key, None)
        if self.metrics is not None:
            self.metrics.policy_status_writes.labels("ok").inc()

    def _failed_write(self, outcome: Outcome, exc: Exception) -> None:
        key = (outcome.namespace, outcome.name)
        if self.metrics is not None:
            self.metrics.policy_status_writes.labels("failed").inc()
        if self._write_errors.get(key) != str(exc):  # once per object and error
            self._write_errors[key] = str(exc)
            log.warning(
                "cannot write the status of AuthorizationPolicy %s/%s (%s); retrying",
                outcome.namespace,
                outcome.name,
                exc,
            )
