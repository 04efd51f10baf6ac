"""The service table: ClusterIP:port → Service port → endpoints, as kube-proxy resolves them."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest
from lightkube.resources.discovery_v1 import EndpointSlice

from smesh.kubernetes.services import (
    DEFAULT_AFFINITY_TIMEOUT,
    Backend,
    Picker,
    ServiceTable,
    lean_slice,
    service_info,
    slice_info,
    usable,
)
from smesh.kubernetes.source import (
    LEAN_SERVICES,
    LEAN_SLICES,
    apply_service_event,
    apply_slice_event,
)
from smesh.kubernetes.store import Event, EventType

ip = ipaddress.ip_address


def service(
    name: str = "web",
    *,
    namespace: str = "shop",
    cluster_ip: str | None = "198.18.255.10",
    ports: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ports": ports if ports is not None else [{"port": 8080, "targetPort": 80}],
        **spec,
    }
    if cluster_ip is not None:
        body["clusterIP"] = cluster_ip
        body["clusterIPs"] = [cluster_ip]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "resourceVersion": "1",
            "managedFields": [{"manager": "kubectl"}],
            "annotations": {"a": "b" * 1000},
        },
        "spec": body,
        "status": {"loadBalancer": {}},
    }


def endpoint(
    address: str,
    pod: str,
    *,
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
) -> dict[str, Any]:
    conditions = {
        k: v
        for k, v in (("ready", ready), ("serving", serving), ("terminating", terminating))
        if v is not None
    }
    return {
        "addresses": [address],
        "conditions": conditions,
        "targetRef": {"kind": "Pod", "name": pod, "namespace": "shop", "uid": f"uid-{pod}"},
        "nodeName": "node-1",
        "zone": "a",
    }


def endpoint_slice(
    name: str,
    endpoints: list[dict[str, Any]],
    *,
    service_name: str = "web",
    ports: list[dict[str, Any]] | None = None,
    address_type: str = "IPv4",
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": f"uid-{name}",
            "resourceVersion": "1",
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": ports if ports is not None else [{"name": "", "port": 80, "protocol": "TCP"}],
    }


def table_with(svc: dict[str, Any], *slices: dict[str, Any]) -> ServiceTable:
    table = ServiceTable()
    put_service(table, svc)
    for raw in slices:
        put_slice(table, raw)
    return table


def put_service(table: ServiceTable, raw: dict[str, Any]) -> None:
    table.set_service(
        (raw["metadata"]["namespace"], raw["metadata"]["name"]),
        service_info(LEAN_SERVICES.decode(raw)),
    )


def put_slice(table: ServiceTable, raw: dict[str, Any]) -> None:
    table.set_slice(
        (raw["metadata"]["namespace"], raw["metadata"]["name"]), LEAN_SLICES.decode(raw).info
    )


def addresses(table: ServiceTable, cluster_ip: str, port: int) -> list[tuple[str, int]]:
    found = table.lookup(ip(cluster_ip), port)
    assert found is not None
    return [(str(b.ip), b.port) for b in usable(table.backends(found), ip(cluster_ip).version)]


def test_a_cluster_ip_port_resolves_to_its_endpoints_and_target_port() -> None:
    table = table_with(
        service(),
        endpoint_slice("web-a", [endpoint("198.18.1.2", "web-1"), endpoint("198.18.2.2", "web-2")]),
    )
    assert addresses(table, "198.18.255.10", 8080) == [("198.18.1.2", 80), ("198.18.2.2", 80)]
    found = table.lookup(ip("198.18.255.10"), 8080)
    assert found is not None
    assert found.label == "shop/web:8080"
    assert table.backends(found)[0].pod == "shop/web-1"
    assert table.lookup(ip("198.18.255.10"), 80) is None  # the target port is no service port
    assert table.lookup(ip("198.18.255.11"), 8080) is None
    assert table.counts() == (1, 2)


def test_named_target_ports_resolve_per_slice() -> None:
    """Two pods name the port 'http' with different numbers: two slices, each its own."""
    svc = service(ports=[{"name": "web", "port": 8080, "targetPort": "http"}])
    table = table_with(
        svc,
        endpoint_slice(
            "web-a", [endpoint("198.18.1.2", "web-1")], ports=[{"name": "web", "port": 80}]
        ),
        endpoint_slice(
            "web-b", [endpoint("198.18.2.2", "web-2")], ports=[{"name": "web", "port": 8000}]
        ),
    )
    assert addresses(table, "198.18.255.10", 8080) == [("198.18.1.2", 80), ("198.18.2.2", 8000)]


def test_a_service_with_two_ports() -> None:
    svc = service(
        ports=[
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "admin", "port": 9000, "targetPort": "admin"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ]
    )
    table = table_with(
        svc,
        endpoint_slice(
            "web-a",
            [endpoint("198.18.1.2", "web-1")],
            ports=[
                {"name": "http", "port": 8080},
                {"name": "admin", "port": 9900},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ],
        ),
    )
    assert addresses(table, "198.18.255.10", 80) == [("198.18.1.2", 8080)]
    assert addresses(table, "198.18.255.10", 9000) == [("198.18.1.2", 9900)]
    assert table.lookup(ip("198.18.255.10"), 53) is None  # UDP is never captured


def test_not_ready_and_terminating_endpoints_are_skipped() -> None:
    table = table_with(
        service(),
        endpoint_slice(
            "web-a",
            [
                endpoint("198.18.1.2", "ready"),
                endpoint("198.18.1.3", "unready", ready=False, serving=False),
                endpoint("198.18.1.4", "leaving", ready=False, serving=True, terminating=True),
                endpoint("198.18.1.5", "gone", ready=False, serving=False, terminating=True),
            ],
        ),
    )
    assert addresses(table, "198.18.255.10", 8080) == [("198.18.1.2", 80)]


def test_serving_terminating_endpoints_only_when_none_is_ready() -> None:
    """kube-proxy's fallback: while every endpoint terminates, the serving ones still serve."""
    table = table_with(
        service(),
        endpoint_slice(
            "web-a",
            [
                endpoint("198.18.1.3", "unready", ready=False, serving=False),
                endpoint("198.18.1.4", "leaving", ready=False, serving=True, terminating=True),
            ],
        ),
    )
    assert addresses(table, "198.18.255.10", 8080) == [("198.18.1.4", 80)]


def test_absent_conditions_mean_ready() -> None:
    raw = endpoint("198.18.1.2", "web-1", ready=None)
    del raw["conditions"]
    table = table_with(service(), endpoint_slice("web-a", [raw]))
    assert addresses(table, "198.18.255.10", 8080) == [("198.18.1.2", 80)]


def test_no_endpoints() -> None:
    table = table_with(service())
    assert addresses(table, "198.18.255.10", 8080) == []
    put_slice(table, endpoint_slice("web-a", []))
    assert addresses(table, "198.18.255.10", 8080) == []


@pytest.mark.parametrize(
    "raw",
    [
        service(cluster_ip="None"),
        service(cluster_ip=None, type="ExternalName", externalName="db.example.com"),
        service(ports=[{"port": 53, "protocol": "UDP"}]),
    ],
    ids=["headless", "external-name", "udp-only"],
)
def test_services_without_a_captured_address_are_not_held(raw: dict[str, Any]) -> None:
    assert service_info(LEAN_SERVICES.decode(raw)) is None
    table = table_with(raw, endpoint_slice("web-a", [endpoint("198.18.1.2", "web-1")]))
    assert table.counts()[0] == 0
    assert table.lookup(ip("198.18.255.10"), 8080) is None
    assert table.lookup(ip("198.18.255.10"), 53) is None


def test_slices_of_one_service_merge_and_a_deleted_slice_leaves() -> None:
    table = table_with(
        service(),
        endpoint_slice("web-a", [endpoint("198.18.1.2", "web-1")]),
        endpoint_slice("web-b", [endpoint("198.18.2.2", "web-2")]),
        endpoint_slice("other", [endpoint("198.18.3.2", "db-1")], service_name="db"),
    )
    assert addresses(table, "198.18.255.10", 8080) == [("198.18.1.2", 80), ("198.18.2.2", 80)]
    table.delete_slice(("shop", "web-a"))
    assert addresses(table, "198.18.255.10", 8080) == [("198.18.2.2", 80)]
    assert table.counts() == (1, 2)  # the db slice's endpoint is held (its Service may come)


def test_updates_are_incremental_and_follow_ready_flips() -> None:
    table = table_with(service(), endpoint_slice("web-a", [endpoint("198.18.1.2", "web-1")]))
    port = table.lookup(ip("198.18.255.10"), 8080)
    assert port is not None
    first = table.backends(port)
    assert table.backends(port) is first  # cached until the service's objects change
    put_slice(table, endpoint_slice("web-a", [endpoint("198.18.1.2", "web-1", ready=False)]))
    assert addresses(table, "198.18.255.10", 8080) == []
    put_slice(
        table,
        endpoint_slice("web-a", [endpoint("198.18.1.2", "web-1"), endpoint("198.18.1.3", "w3")]),
    )
    assert addresses(table, "198.18.255.10", 8080) == [("198.18.1.2", 80), ("198.18.1.3", 80)]
    assert table.counts() == (1, 2)


def test_a_slice_before_its_service_and_a_deleted_service() -> None:
    table = ServiceTable()
    put_slice(table, endpoint_slice("web-a", [endpoint("198.18.1.2", "web-1")]))
    assert table.lookup(ip("198.18.255.10"), 8080) is None
    put_service(table, service())
    assert addresses(table, "198.18.255.10", 8080) == [("198.18.1.2", 80)]
    table.delete_service(("shop", "web"))
    assert table.lookup(ip("198.18.255.10"), 8080) is None
    table.delete_slice(("shop", "web-a"))
    assert table.counts() == (0, 0)


def test_a_changed_cluster_ip_or_port_moves_the_index() -> None:
    table = table_with(service(), endpoint_slice("web-a", [endpoint("198.18.1.2", "web-1")]))
    put_service(table, service(cluster_ip="198.18.255.20", ports=[{"port": 81, "targetPort": 80}]))
    assert table.lookup(ip("198.18.255.10"), 8080) is None
    assert addresses(table, "198.18.255.20", 81) == [("198.18.1.2", 80)]


def test_dual_stack_endpoints_by_the_family_of_the_cluster_ip() -> None:
    svc = service(ipFamilies=["IPv4", "IPv6"])
    svc["spec"]["clusterIPs"] = ["198.18.255.10", "fd00:198:18:ff::10"]
    table = table_with(
        svc,
        endpoint_slice("web-4", [endpoint("198.18.1.2", "web-1")]),
        endpoint_slice("web-6", [endpoint("fd00:198:18:1::2", "web-1")], address_type="IPv6"),
    )
    assert addresses(table, "198.18.255.10", 8080) == [("198.18.1.2", 80)]
    assert addresses(table, "fd00:198:18:ff::10", 8080) == [("fd00:198:18:1::2", 80)]


def test_the_lean_decoding_keeps_only_what_the_table_reads() -> None:
    svc = LEAN_SERVICES.decode(service())
    assert svc.metadata is not None
    assert svc.metadata.managedFields is None
    assert svc.metadata.annotations is None
    raw = endpoint_slice("web-a", [endpoint("198.18.1.2", "web-1")])
    lean = lean_slice(raw)["endpoints"][0]
    assert lean == {
        "addresses": ["198.18.1.2"],
        "conditions": {"ready": True},
        "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop"},  # no uid
    }
    held = LEAN_SLICES.decode(raw)
    assert held.info == slice_info(EndpointSlice.from_dict(raw))
    assert held.metadata is not None
    assert (held.metadata.name, held.metadata.uid, held.metadata.resourceVersion) == (
        "web-a",
        "uid-web-a",
        "1",
    )
    assert held.metadata.labels is None  # the store reads name, namespace, uid, version


def test_an_endpoint_is_its_first_valid_address_kept_as_the_text_of_the_slice() -> None:
    """As kube-proxy: an endpoint's addresses are fungible, the first valid one of the
    slice's address type is used; the table keeps the decoded slice's own string (no copy,
    no address object)."""
    two = endpoint("198.18.1.2", "web-1")
    two["addresses"] = ["not-an-ip", "fd00:198:18:1::2", "198.18.1.2", "198.18.1.3"]
    es = EndpointSlice.from_dict(endpoint_slice("web-a", [two]))
    info = slice_info(es)
    assert info is not None
    assert [e.address for e in info.endpoints] == ["198.18.1.2"]
    assert es.endpoints[0].addresses is not None
    assert info.endpoints[0].address is es.endpoints[0].addresses[2]  # IPv4 slice: not the v6
    table = table_with(service(), endpoint_slice("web-a", [two]))
    assert addresses(table, "198.18.255.10", 8080) == [("198.18.1.2", 80)]


def test_events_apply_to_the_table() -> None:
    table = ServiceTable()
    svc = LEAN_SERVICES.decode(service())
    es = LEAN_SLICES.decode(endpoint_slice("web-a", [endpoint("198.18.1.2", "web-1")]))
    apply_service_event(table, Event(EventType.ADDED, ("shop", "web"), svc))
    apply_slice_event(table, Event(EventType.ADDED, ("shop", "web-a"), es))
    assert addresses(table, "198.18.255.10", 8080) == [("198.18.1.2", 80)]
    apply_slice_event(table, Event(EventType.DELETED, ("shop", "web-a"), es))
    assert addresses(table, "198.18.255.10", 8080) == []
    apply_service_event(table, Event(EventType.DELETED, ("shop", "web"), svc))
    assert table.counts() == (0, 0)


# -- the picker ---------------------------------------------------------------------------


def backends(*addrs: str) -> list[Backend]:
    return [Backend(ip(a), 80, f"shop/{a}", True, True, False) for a in addrs]


def port_of(table: ServiceTable) -> Any:
    return table.lookup(ip("198.18.255.10"), 8080)


def test_round_robin_spreads_new_connections() -> None:
    table = table_with(service())
    picker = Picker(start=lambda n: 0)
    pool = backends("198.18.1.2", "198.18.1.3", "198.18.1.4")
    firsts = [str(picker.order(port_of(table), pool)[0].ip) for _ in range(6)]
    assert firsts == ["198.18.1.2", "198.18.1.3", "198.18.1.4"] * 2
    assert len(picker.order(port_of(table), pool)) == 3  # the others are for retries


def test_client_ip_affinity_holds_until_its_timeout() -> None:
    now = [0.0]
    table = table_with(service())
    picker = Picker(clock=lambda: now[0], start=lambda n: 0)
    pool = backends("198.18.1.2", "198.18.1.3")
    a, b = ip("198.18.5.5"), ip("198.18.6.6")
    first = picker.order(port_of(table), pool, a, 10.0)[0]
    assert all(picker.order(port_of(table), pool, a, 10.0)[0] == first for _ in range(5))
    assert picker.order(port_of(table), pool, b, 10.0)[0] != first  # another client: its turn
    now[0] += 9.0  # each use renews it
    assert picker.order(port_of(table), pool, a, 10.0)[0] == first
    now[0] += 10.5 + Picker.SWEEP_INTERVAL
    picker.order(port_of(table), pool, b, 10.0)  # sweeps the expired
    assert len(picker) == 1
    # its endpoint gone: another one, which becomes the affinity
    other = [x for x in pool if x != first]
    assert picker.order(port_of(table), other, b, 10.0)[0] == other[0]


def test_affinity_from_the_service() -> None:
    svc = service(sessionAffinity="ClientIP")
    info = service_info(LEAN_SERVICES.decode(svc))
    assert info is not None
    assert info.affinity_timeout == DEFAULT_AFFINITY_TIMEOUT
    svc = service(
        sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 30}}
    )
    info = service_info(LEAN_SERVICES.decode(svc))
    assert info is not None
    assert info.affinity_timeout == 30.0
    info = service_info(LEAN_SERVICES.decode(service()))
    assert info is not None
    assert info.affinity_timeout is None


def test_the_picker_forgets_ports_not_used_and_starts_anywhere() -> None:
    now = [0.0]
    starts: list[int] = []

    def start(n: int) -> int:
        starts.append(n)
        return 1

    picker = Picker(clock=lambda: now[0], start=start)
    table = table_with(service())
    pool = backends("198.18.1.2", "198.18.1.3", "198.18.1.4")
    assert str(picker.order(port_of(table), pool)[0].ip) == "198.18.1.3"
    assert str(picker.order(port_of(table), pool)[0].ip) == "198.18.1.4"
    assert starts == [3]  # once: then in turn
    now[0] += Picker.SWEEP_INTERVAL
    picker.order(port_of(table), pool)  # used since the last sweep: kept
    now[0] += Picker.SWEEP_INTERVAL + 1
    picker.order(port_of(table), pool)
    assert starts == [3]
    other = dataclasses.replace(port_of(table), port=9090)
    for _ in range(2):  # another port's connects sweep; this one's is unused for an interval
        now[0] += Picker.SWEEP_INTERVAL
        picker.order(other, pool)
    assert starts == [3, 3]
    picker.order(port_of(table), pool)
    assert starts == [3, 3, 3]
