"""The Applied condition of an AuthorizationPolicy, from its agents' entries."""

from __future__ import annotations

import datetime as dt
from typing import Any

from lightkube.models.core_v1 import Container, PodSpec, PodStatus
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod

from smesh.controller.policysummary import (
    agent_nodes,
    applied_condition,
    condition_patch,
)

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


def policy(generation: int, *entries: tuple[str, int, bool, str], **status: Any) -> dict[str, Any]:
    agents = [
        {"node": n, "observedGeneration": g, "applied": a, "message": m} for n, g, a, m in entries
    ]
    return {
        "metadata": {"name": "p", "namespace": "shop", "uid": "u1", "generation": generation},
        "status": {"agents": agents, **status},
    }


def agent_pod(node: str, phase: str = "Running", name: str = "smesh-agent") -> Pod:
    return Pod(
        metadata=ObjectMeta(name=f"a-{node}", labels={"app.kubernetes.io/name": name}),
        spec=PodSpec(nodeName=node, containers=[Container(name="agent")]),
        status=PodStatus(phase=phase),
    )


def test_the_nodes_that_count_run_an_agent_pod() -> None:
    pods = [agent_pod("n1"), agent_pod("n2", "Pending"), agent_pod("n3", name="web")]
    assert agent_nodes(pods) == {"n1"}


def test_applied_once_every_agent_node_applied_the_current_generation() -> None:
    obj = policy(2, ("n1", 2, True, "in force"), ("n2", 2, True, "in force"), ("gone", 1, True, ""))
    c = applied_condition(obj, frozenset({"n1", "n2"}))
    assert (c["status"], c["reason"], c["observedGeneration"]) == ("True", "Applied", 2)


def test_an_agent_behind_holds_it_pending_and_is_named() -> None:
    obj = policy(3, ("n1", 3, True, "in force"), ("n2", 2, True, "in force"))
    c = applied_condition(obj, frozenset({"n1", "n2", "n3"}))
    assert (c["status"], c["reason"]) == ("False", "Pending")
    assert "on n2, n3 (1 of 3 nodes applied it)" in c["message"]


def test_a_refusal_wins_and_quotes_the_agent() -> None:
    obj = policy(1, ("n1", 1, False, "not applied: spec.rules[0]: bad"), ("n2", 0, True, ""))
    c = applied_condition(obj, frozenset({"n1", "n2"}))
    assert (c["status"], c["reason"]) == ("False", "Refused")
    assert c["message"] == "refused by the agent of n1: not applied: spec.rules[0]: bad"


def test_without_agents_nothing_enforces_it() -> None:
    c = applied_condition(policy(1), frozenset())
    assert (c["status"], c["reason"]) == ("Unknown", "NoAgents")


def test_a_patch_only_when_the_condition_changes_and_the_transition_time_kept() -> None:
    obj = policy(1, ("n1", 1, True, "in force"))
    wanted = applied_condition(obj, frozenset({"n1"}))
    body = condition_patch(obj, wanted, NOW)
    assert body is not None
    written = body["status"]["conditions"][0]
    assert written["lastTransitionTime"] == "2026-12-03T12:00:00Z"
    assert body["metadata"] == {"name": "p", "namespace": "shop", "uid": "u1"}
    shown = policy(1, ("n1", 1, True, "in force"), conditions=[written])
    assert condition_patch(shown, wanted, NOW + dt.timedelta(hours=1)) is None
    # A new node joins: still True, another message, the same transition time.
    later = applied_condition(
        policy(1, ("n1", 1, True, ""), ("n2", 1, True, "")), frozenset({"n1", "n2"})
    )
    again = condition_patch(shown, later, NOW + dt.timedelta(hours=1))
    assert again is not None
    assert again["status"]["conditions"][0]["lastTransitionTime"] == "2026-12-03T12:00:00Z"
    # Pending now: a transition, so a new time.
    behind = applied_condition(policy(2, ("n1", 1, True, "")), frozenset({"n1"}))
    moved = condition_patch(shown, behind, NOW + dt.timedelta(hours=2))
    assert moved is not None
    assert moved["status"]["conditions"][0]["lastTransitionTime"] == "2026-12-03T14:00:00Z"
