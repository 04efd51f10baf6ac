"""With AuthorizationPolicies to read, the agent refuses inbound tunnels until it has read
them (a restarted agent must not admit what a deny policy forbids), then decides by them."""

from __future__ import annotations

from types import SimpleNamespace

from smesh.agent.config import AgentConfig, KubernetesSettings
from smesh.agent.metrics import AgentMetrics
from smesh.agent.wiring import MeshWiring
from smesh.identity.spiffe import SpiffeId
from smesh.policy.crd import PodLabels, translate

PEER = SpiffeId.parse("spiffe://cluster.local/ns/batch/sa/worker")
POD = SimpleNamespace(name="db-0", identity=SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/db"))
DENY = {
    "metadata": {"name": "no-batch", "namespace": "shop", "uid": "u", "generation": 1},
    "spec": {"action": "DENY", "rules": [{"from": [{"namespace": "batch"}]}]},
}


def denials(metrics: AgentMetrics, rule: str) -> float:
    return metrics.policy_denials.labels(rule)._value.get()  # type: ignore[no-any-return]


def test_refused_until_the_objects_are_read_then_decided_by_them() -> None:
    wiring = MeshWiring(AgentConfig(node="node-1", kubernetes=KubernetesSettings()))
    metrics = AgentMetrics()
    wiring._agent = SimpleNamespace(metrics=metrics)  # type: ignore[assignment]
    decision = wiring._authorize(PEER, POD, 5432)  # type: ignore[arg-type]
    assert not decision.allowed
    assert "not loaded" in decision.reason
    assert denials(metrics, "(pending)") == 1
    pods = [PodLabels("shop", "db-0", {})]
    wiring.policy.overlay(lambda base: translate([DENY], pods, base).policy)
    assert wiring._authorize(PEER, POD, 5432).decided_by == "shop/no-batch#0"  # type: ignore[arg-type]
    wiring.policy.overlay(lambda base: translate([], pods, base).policy)
    assert wiring._authorize(PEER, POD, 5432).allowed  # type: ignore[arg-type]


def test_without_kubernetes_or_with_the_switch_off_nothing_waits() -> None:
    off = KubernetesSettings.model_validate({"authorizationPolicies": False})
    for config in (
        AgentConfig(node="node-1", workloads="/nonexistent"),
        AgentConfig(node="node-1", kubernetes=off),
    ):
        wiring = MeshWiring(config)
        assert wiring.policy.pending is None
        assert wiring._authorize(PEER, POD, 5432).allowed  # type: ignore[arg-type]
