"""The agent's decision for a connect to a ClusterIP: which endpoints, with which identity,
and the non-meshed rule for a Service without meshed endpoints."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from smesh.agent.config import AgentConfig
from smesh.agent.metrics import AgentMetrics
from smesh.agent.wiring import MeshWiring
from smesh.agent.workloads import Registry, Snapshot, Workload
from smesh.dataplane.context import PodConfig
from smesh.kubernetes.services import ServiceTable, service_info
from smesh.kubernetes.source import LEAN_SERVICES, LEAN_SLICES
from tests.unit.kubernetes.test_services import endpoint, endpoint_slice, service

ip = ipaddress.ip_address
CLUSTER_IP = ip("198.18.255.10")


def workload(name: str, address: str, *, meshed: bool = True) -> Workload:
    return Workload(
        name=name,
        namespace="shop",
        service_account="web",
        node="node-2",
        ips=(ip(address),),
        meshed=meshed,
    )


def client(address: str = "198.18.9.9") -> PodConfig:
    return PodConfig("client", None, (ip(address),), None)  # type: ignore[arg-type]


def wired(
    workloads: list[Workload], endpoints: list[dict[str, Any]], **config: Any
) -> tuple[MeshWiring, AgentMetrics]:
    table = ServiceTable()
    raw = service(**config.pop("service", {}))
    table.set_service(("shop", "web"), service_info(LEAN_SERVICES.decode(raw)))
    table.set_slice(("shop", "web-a"), LEAN_SLICES.decode(endpoint_slice("web-a", endpoints)).info)
    wiring = MeshWiring(
        AgentConfig.model_validate({"node": "node-1", "workloads": Path("/x"), **config})
    )
    metrics = AgentMetrics()
    registry = Registry(Snapshot({w.key: w for w in workloads}))
    wiring._agent = SimpleNamespace(metrics=metrics, registry=registry)  # type: ignore[assignment]
    wiring._services = table
    return wiring, metrics


def routed(metrics: AgentMetrics, result: str) -> float:
    return metrics.service_routes.labels(result)._value.get()  # type: ignore[no-any-return]


def test_meshed_endpoints_are_tunnelled_to_with_their_identity_in_turn() -> None:
    wiring, metrics = wired(
        [workload("web-1", "198.18.1.2"), workload("web-2", "198.18.2.2")],
        [endpoint("198.18.1.2", "web-1"), endpoint("198.18.2.2", "web-2")],
    )
    firsts = []
    for _ in range(4):
        route = wiring._service_route(CLUSTER_IP, 8080, client())
        assert route is not None
        assert route.kind == "tunnel"
        assert route.service == "shop/web:8080"
        assert str(route.identity) == "spiffe://cluster.local/ns/shop/sa/web"
        assert len(route.targets) == 2  # the other one for a retry
        firsts.append(route.targets[0].workload)
        assert route.targets[0].port == 80  # the target port
    assert sorted(firsts[:2]) == ["web-1", "web-2"]  # in turn, from a random start
    assert firsts[2:] == firsts[:2]
    assert routed(metrics, "tunnel") == 4
    assert wiring._service_route(CLUSTER_IP, 9999, client()) is None  # no such Service port
    assert wiring._service_route(ip("198.18.1.2"), 80, client()) is None  # a pod


def test_attempts_are_bounded() -> None:
    pods = [workload(f"web-{i}", f"198.18.1.{i}") for i in range(2, 12)]
    wiring, _ = wired(
        pods,
        [endpoint(str(w.ips[0]), w.name) for w in pods],
        limits={"serviceEndpointAttempts": 3},
    )
    route = wiring._service_route(CLUSTER_IP, 8080, client())
    assert route is not None
    assert len(route.targets) == 3


@pytest.mark.parametrize("rule", ["passthrough", "deny"])
def test_a_service_without_meshed_endpoints_follows_the_non_meshed_rule(rule: str) -> None:
    wiring, metrics = wired(
        [workload("web-1", "198.18.1.2", meshed=False)],
        [endpoint("198.18.1.2", "web-1")],
        nonMeshed=rule,
    )
    route = wiring._service_route(CLUSTER_IP, 8080, client())
    assert route is not None
    assert (route.kind, route.targets, route.service) == (rule, (), "shop/web:8080")
    assert routed(metrics, rule) == 1


def test_mixed_endpoints_non_meshed_ones_straight_or_skipped() -> None:
    pods = [workload("web-1", "198.18.1.2", meshed=False), workload("web-2", "198.18.2.2")]
    endpoints = [endpoint("198.18.1.2", "web-1"), endpoint("198.18.2.2", "web-2")]
    wiring, _ = wired(pods, endpoints)
    kinds = set()
    for _ in range(2):
        route = wiring._service_route(CLUSTER_IP, 8080, client())
        assert route is not None
        kinds.add((route.targets[0].workload, route.targets[0].identity is None))
    assert kinds == {("web-1", True), ("web-2", False)}
    wiring, _ = wired(pods, endpoints, nonMeshed="deny")
    for _ in range(2):
        route = wiring._service_route(CLUSTER_IP, 8080, client())
        assert route is not None
        assert [t.workload for t in route.targets] == ["web-2"]


def test_no_ready_endpoint_is_a_prompt_refusal() -> None:
    wiring, metrics = wired(
        [workload("web-1", "198.18.1.2")],
        [endpoint("198.18.1.2", "web-1", ready=False, serving=False)],
    )
    route = wiring._service_route(CLUSTER_IP, 8080, client())
    assert route is not None
    assert route.kind == "refuse"
    assert "no ready endpoint" in route.detail
    assert routed(metrics, "no_endpoints") == 1


def test_client_ip_affinity_keeps_a_client_on_one_endpoint() -> None:
    pods = [workload(f"web-{i}", f"198.18.1.{i}") for i in range(2, 6)]
    wiring, _ = wired(
        pods,
        [endpoint(str(w.ips[0]), w.name) for w in pods],
        service={"sessionAffinity": "ClientIP"},
    )
    for address in ("198.18.9.9", "198.18.9.10"):
        picks = set()
        for _ in range(8):
            route = wiring._service_route(CLUSTER_IP, 8080, client(address))
            assert route is not None
            picks.add(route.targets[0].workload)
        assert len(picks) == 1
