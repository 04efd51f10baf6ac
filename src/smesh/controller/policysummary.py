"""One condition per AuthorizationPolicy: ``Applied``, once every node's agent applied it.

Each agent writes its own entry in ``status.agents`` (smesh.kubernetes.policies); an
operator, or a deploy pipeline running ``kubectl wait --for=condition=Applied``, wants one
answer for the cluster instead: is this generation in force on every node? The leading
controller derives it from those entries and the agent pods it already watches, and writes
it with server-side apply under its own field manager, so it never touches an agent's entry.

The nodes that count are those with a Running smesh agent pod. A node without one enforces
nothing, so it cannot hold the condition back; an agent that runs but has not applied the
current generation does (``Pending``), and one that refused it makes the condition False
with the agent's reason (``Refused``). Entries of nodes that are gone are left alone: they
are the agents' own, and they no longer count.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from lightkube.resources.core_v1 import Pod

from smesh.kubernetes.backoff import Backoff
from smesh.kubernetes.client import KubeApi
from smesh.kubernetes.errors import ApiStatusError, KubernetesError
from smesh.kubernetes.policies import POLICIES, RawObject, agent_entry
from smesh.kubernetes.store import Event, EventType, Synced
from smesh.policy.crd import GROUP, KIND, VERSION

log = logging.getLogger("smesh.controller")

#: The label the chart's agent DaemonSet gives its pods.
AGENT_LABEL = ("app.kubernetes.io/name", "smesh-agent")
FIELD_MANAGER = "smesh-controller"
CONDITION = "Applied"
#: Nodes named in a condition's message, at most (the rest are counted).
NAMED = 5


def agent_nodes(pods: Iterable[Pod]) -> frozenset[str]:
    """The nodes of the Running smesh agent pods among *pods*."""
    key, value = AGENT_LABEL
    return frozenset(
        p.spec.nodeName
        for p in pods
        if p.metadata is not None
        and (p.metadata.labels or {}).get(key) == value
        and p.status is not None
        and p.status.phase == "Running"
        and p.spec is not None
        and p.spec.nodeName
    )


def _names(nodes: list[str]) -> str:
    shown = ", ".join(nodes[:NAMED])
    return shown + (f" and {len(nodes) - NAMED} more" if len(nodes) > NAMED else "")


def applied_condition(obj: Mapping[str, Any], nodes: frozenset[str]) -> dict[str, Any]:
    """The ``Applied`` condition of policy *obj* given the nodes whose agents count (its
    ``lastTransitionTime`` aside: :func:`condition_patch` carries it over or sets it)."""
    generation = (obj.get("metadata") or {}).get("generation")
    refused: list[tuple[str, str]] = []
    pending: list[str] = []
    for node in sorted(nodes):
        entry = agent_entry(dict(obj), node)
        if entry is None or entry.get("observedGeneration") != generation:
            pending.append(node)
        elif entry.get("applied") is not True:
            refused.append((node, str(entry.get("message") or "no reason given")))
    condition: dict[str, Any] = {"type": CONDITION, "observedGeneration": generation}
    if not nodes:
        status, reason = "Unknown", "NoAgents"
        message = "no node runs a smesh agent pod: nothing enforces this policy"
    elif refused:
        status, reason = "False", "Refused"
        node, why = refused[0]
        message = f"refused by the agent of {node}: {why}"
        if len(refused) > 1:
            message += f" (also refused on {_names([n for n, _ in refused[1:]])})"
    elif pending:
        status, reason = "False", "Pending"
        message = (
            f"generation {generation} is not applied yet on {_names(pending)} "
            f"({len(nodes) - len(pending)} of {len(nodes)} nodes applied it)"
        )
    else:
        status, reason = "True", "Applied"
        message = f"generation {generation} is applied on all {len(nodes)} nodes with an agent"
    return condition | {"status": status, "reason": reason, "message": message}


def current_condition(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    status = obj.get("status")
    conditions = status.get("conditions") if isinstance(status, dict) else None
    for c in conditions if isinstance(conditions, list) else ():
        if isinstance(c, dict) and c.get("type") == CONDITION:
            return c
    return None


def condition_patch(
    obj: Mapping[str, Any], wanted: Mapping[str, Any], now: dt.datetime
) -> dict[str, Any] | None:
    """The server-side apply body that makes *obj* show *wanted*; None if it already does.

    The transition time changes only with the status, as Kubernetes conditions go."""
    current = current_condition(obj)
    keys = ("status", "reason", "message", "observedGeneration")
    if current is not None and all(current.get(k) == wanted.get(k) for k in keys):
        return None
    since = (
        current.get("lastTransitionTime")
        if current is not None and current.get("status") == wanted["status"]
        else None
    ) or now.strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = obj.get("metadata") or {}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"),
                     "uid": meta.get("uid")},
        "status": {"conditions": [dict(wanted) | {"lastTransitionTime": since}]},
    }  # fmt: skip


class PolicySummary:
    """The leader's writer of ``Applied`` conditions: fed the policies and agent pods by
    the controller's informers, it writes each condition that changed."""

    def __init__(self, api: KubeApi, namespace: str) -> None:
        self.api = api
        self.namespace = namespace  # the agents' (and the controller's) namespace
        self.policies: dict[tuple[str, str], dict[str, Any]] = {}
        self.agents: dict[str, Pod] = {}
        self._synced: set[str] = set()
        self._changed = asyncio.Event()
        self._errors: dict[tuple[str, str], str] = {}

    def apply_policy(self, item: Event[RawObject] | Synced) -> None:
        if isinstance(item, Synced):
            self._synced.add("policies")
        elif item.type is EventType.DELETED:
            self.policies.pop(item.key, None)
        else:
            self.policies[item.key] = item.obj.raw
        self._changed.set()

    def apply_pod(self, item: Event[Pod] | Synced) -> None:
        """The controller's pod events: only the agents' count (and the first sync)."""
        if isinstance(item, Synced):
            self._synced.add("pods")
            self._changed.set()
            return
        namespace, name = item.key
        if namespace != self.namespace:
            return
        was = name in self.agents
        if item.type is EventType.DELETED:
            self.agents.pop(name, None)
        elif agent_nodes([item.obj]) or was:
            self.agents[name] = item.obj
        if was or name in self.agents:
            self._changed.set()

    async def run(self) -> None:
        backoff = Backoff(initial=1.0, cap=30.0)
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self._synced < {"policies", "pods"}:
                continue
            if await self.write_all():
                backoff.reset()
            else:
                await asyncio.sleep(backoff.next_delay())
                self._changed.set()

    async def write_all(self) -> bool:
        """Write every condition that changed; whether all writes succeeded."""
        nodes = agent_nodes(self.agents.values())
        ok = True
        for key, obj in list(self.policies.items()):
            body = condition_patch(obj, applied_condition(obj, nodes), dt.datetime.now(dt.UTC))
            if body is None:
                continue
            path = f"{POLICIES.path(key[0])}/{key[1]}/status"
            try:
                await self.api.apply(path, body, FIELD_MANAGER)
                self._errors.pop(key, None)
            except ApiStatusError as exc:
                if exc.code in (404, 409):  # deleted or replaced: its events follow
                    continue
                ok = self._failed(key, exc)
            except KubernetesError as exc:
                ok = self._failed(key, exc)
        return ok

    def _failed(self, key: tuple[str, str], exc: Exception) -> bool:
        if self._errors.get(key) != str(exc):  # once per object and error
            self._errors[key] = str(exc)
            log.warning(
                "cannot write the Applied condition of AuthorizationPolicy %s/%s (%s); retrying",
                *key,
                exc,
            )
        return False
