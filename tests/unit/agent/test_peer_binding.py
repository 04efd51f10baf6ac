"""Which identity may speak from which address: the registry's answer to the data plane."""

from __future__ import annotations

import ipaddress

import pytest

from smesh.agent.metrics import AgentMetrics
from smesh.agent.wiring import binding_refusal
from smesh.agent.workloads import Workload
from smesh.identity.spiffe import SpiffeId

TD = "cluster.local"
POD2_IP = ipaddress.ip_address("198.18.1.3")


def pod(name: str, *, meshed: bool = True, namespace: str = "default") -> Workload:
    return Workload(
        name=name,
        namespace=namespace,
        serviceAccount=name,
        node="node-1",
        ips=(POD2_IP, ipaddress.ip_address("fd00:198:18:1::3")),
        netns=f"lab.{name}",
        cgroup=f"/sys/fs/cgroup/{name}",
        meshed=meshed,
    )


def test_the_pods_own_identity_from_its_address_is_accepted() -> None:
    assert binding_refusal(SpiffeId(TD, "default", "pod-2"), POD2_IP, pod("pod-2"), TD) is None


@pytest.mark.parametrize(
    ("peer", "workload", "reason", "says"),
    [
        (SpiffeId(TD, "default", "pod-1"), pod("pod-2"), "identity_mismatch", "spiffe://"),
        (SpiffeId(TD, "other", "pod-2"), pod("pod-2"), "identity_mismatch", "default/pod-2"),
        (SpiffeId(TD, "default", "pod-2"), None, "unknown_address", "no known pod"),
        (
            SpiffeId(TD, "default", "pod-2"),
            pod("pod-2", meshed=False),
            "unknown_address",
            "not meshed",
        ),
        # a federated peer is no pod of this cluster: it may not use a pod's address
        (
            SpiffeId("partner.example", "default", "pod-2"),
            pod("pod-2"),
            "identity_mismatch",
            "partner",
        ),
    ],
)
def test_anything_else_is_refused_with_a_reason(
    peer: SpiffeId, workload: Workload | None, reason: str, says: str
) -> None:
    refusal = binding_refusal(peer, POD2_IP, workload, TD)
    assert refusal is not None
    assert refusal.reason == reason
    assert says in refusal.detail
    assert str(POD2_IP) in refusal.detail


def test_a_federated_peer_from_outside_the_clusters_pods_is_accepted() -> None:
    peer = SpiffeId("partner.example", "default", "api")
    assert binding_refusal(peer, ipaddress.ip_address("203.0.113.9"), None, TD) is None


def test_every_reason_is_exported_at_zero_from_the_start() -> None:
    text = AgentMetrics().render().decode()
    for reason in ("foreign_trust_domain", "unknown_address", "identity_mismatch"):
        assert f'smesh_peers_refused_total{{reason="{reason}"}} 0.0\n' in text
