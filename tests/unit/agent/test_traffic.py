"""Connections and bytes per edge: Istio's labels, one workload format, and the cap."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from lightkube.models.core_v1 import Container, PodIP, PodSpec, PodStatus
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.resources.core_v1 import Namespace, Pod
from prometheus_client.exposition import generate_latest

from smesh.agent.config import ConfigError, load
from smesh.agent.metrics import AgentMetrics
from smesh.agent.traffic import EDGE_LABELS, EdgeCounters, EdgeResolver, address_of
from smesh.agent.workloads import Registry, Snapshot, Workload
from smesh.dataplane.records import ConnectionRecord
from smesh.identity.spiffe import SpiffeId
from smesh.kubernetes.source import owner_workload, workload_of
from tests.unit.agent import records

TD = "cluster.local"
WEB_IP, DB_IP, PLAIN_IP = "198.18.1.10", "fd00:198:18:2::11", "198.18.2.12"


def workload(
    name: str, namespace: str, ip: str, *, owner: str | None = None, meshed: bool = True
) -> Workload:
    return Workload(
        name=name,
        namespace=namespace,
        serviceAccount=f"{name}-sa",
        node="node-1",
        ips=(ipaddress.ip_address(ip),),
        netns=f"lab.{name}",
        cgroup=f"/sys/fs/cgroup/{name}",
        meshed=meshed,
        owner=owner,
    )


WEB = workload("web-5d4f8c-x2x9k", "shop", WEB_IP, owner="web")  # this node's pod
DB = workload("db-0", "data", DB_IP, owner="db")
PLAIN = workload("legacy", "data", PLAIN_IP, meshed=False)


def identity_of(w: Workload) -> SpiffeId:
    return SpiffeId(TD, w.namespace, w.service_account)


def resolver() -> EdgeResolver:
    registry = Registry(Snapshot({w.key: w for w in (WEB, DB, PLAIN)}))
    local = {(WEB.name, str(identity_of(WEB))): WEB}
    return EdgeResolver(registry, lambda name, ident: local.get((name, ident)), identity_of)


def outbound(destination: str, route: str, **fields: str) -> ConnectionRecord:
    """WEB's record of a connection to *destination*, before a peer proved its identity."""
    return records.outbound(
        pod=WEB.name,
        identity=str(identity_of(WEB)),
        peer_identity="",
        destination=destination,
        destination_pod="",
        route=route,
        **fields,
    )


def labels(edge: tuple[str, ...]) -> dict[str, str]:
    return dict(zip(EDGE_LABELS, edge, strict=True))


def test_an_outbound_tunnel_is_labelled_with_both_workloads_as_istio_names_them() -> None:
    edge = resolver()(outbound(f"[{DB_IP}]:5432", "tunnel"))
    assert labels(edge) == {
        "reporter": "source",
        "source_workload": "web",  # the Deployment, not the pod
        "source_workload_namespace": "shop",
        "source_principal": "spiffe://cluster.local/ns/shop/sa/web-5d4f8c-x2x9k-sa",
        "destination_workload": "db",
        "destination_workload_namespace": "data",
        "destination_principal": "spiffe://cluster.local/ns/data/sa/db-0-sa",
        "connection_security_policy": "mutual_tls",
    }


def test_a_service_connect_is_labelled_by_the_endpoint_it_went_to() -> None:
    record = outbound("198.18.255.20:80", "tunnel", endpoint=f"[{DB_IP}]:5432")
    assert labels(resolver()(record))["destination_workload"] == "db"


def test_passthrough_to_an_unknown_address_is_unknown_and_not_mutual_tls() -> None:
    edge = labels(resolver()(outbound("203.0.113.7:443", "passthrough")))
    assert edge["source_workload"] == "web"
    assert edge["destination_workload"] == "unknown"
    assert edge["destination_workload_namespace"] == "unknown"
    assert edge["destination_principal"] == "unknown"
    assert edge["connection_security_policy"] == "none"


def test_passthrough_to_a_known_pod_outside_the_mesh_names_it_without_a_principal() -> None:
    edge = labels(resolver()(outbound(f"{PLAIN_IP}:8080", "passthrough")))
    assert (edge["destination_workload"], edge["destination_workload_namespace"]) == (
        "legacy",
        "data",
    )
    assert edge["destination_principal"] == "unknown"


def test_the_inbound_side_reports_as_destination_with_the_proven_peer_as_source() -> None:
    record = records.inbound(
        pod=WEB.name,
        source=f"[{DB_IP}]:51000",
        identity=str(identity_of(WEB)),
        peer_identity=str(identity_of(DB)),
        destination=f"{WEB_IP}:8080",
    )
    edge = labels(resolver()(record))
    assert edge["reporter"] == "destination"
    assert (edge["source_workload"], edge["source_workload_namespace"]) == ("db", "data")
    assert edge["source_principal"] == str(identity_of(DB))
    assert (edge["destination_workload"], edge["destination_principal"]) == (
        "web",
        str(identity_of(WEB)),
    )
    assert edge["connection_security_policy"] == "mutual_tls"


def test_nothing_of_one_connection_is_a_label() -> None:
    """Two connections of one edge from other ports, ids and times: one label set."""
    a = outbound(f"[{DB_IP}]:5432", "tunnel", request_id="a1", source="127.0.0.1:1")
    b = outbound(f"[{DB_IP}]:5432", "tunnel", request_id="b2", source="127.0.0.1:2")
    assert resolver()(a) == resolver()(b)
    assert not any(":" in value and "spiffe" not in value for value in resolver()(a))


@pytest.mark.parametrize(
    ("text", "address"),
    [("1.2.3.4:80", "1.2.3.4"), ("[fd00::1]:80", "fd00::1"), ("?", None), ("", None)],
)
def test_addresses_of_records(text: str, address: str | None) -> None:
    expected = ipaddress.ip_address(address) if address else None
    assert address_of(text) == expected


def series(metrics: AgentMetrics, name: str) -> dict[str, float]:
    """{labels text: value} of one metric in the exposition."""
    text = metrics.render().decode()
    return {m[1]: float(m[2]) for m in re.finditer(rf"^{name}(\{{.*\}})? (\S+)$", text, re.M)}


def test_bytes_are_counted_while_a_connection_lasts_and_never_twice() -> None:
    metrics = AgentMetrics()
    metrics.tcp.resolve = resolver()
    record = outbound(f"[{DB_IP}]:5432", "tunnel")
    metrics.tcp.opened(record)
    record.bytes_from_app, record.bytes_to_app = 1000, 70  # what the relay counted so far
    [(key, received)] = series(metrics, "smesh_tcp_received_bytes_total").items()
    assert received == 1000  # request bytes, source → destination (Istio's "received")
    assert series(metrics, "smesh_tcp_sent_bytes_total")[key] == 70  # the response
    assert series(metrics, "smesh_tcp_connections_opened_total")[key] == 1
    assert series(metrics, "smesh_tcp_connections_closed_total")[key] == 0
    record.bytes_from_app = 1500
    metrics.tcp.closed(record)
    assert series(metrics, "smesh_tcp_received_bytes_total")[key] == 1500
    assert series(metrics, "smesh_tcp_sent_bytes_total")[key] == 70
    assert series(metrics, "smesh_tcp_connections_opened_total")[key] == 1  # still one
    assert series(metrics, "smesh_tcp_connections_closed_total")[key] == 1
    assert 'reporter="source"' in key
    assert 'source_workload="web"' in key
    assert "_created" not in metrics.render().decode()


def test_label_sets_past_the_cap_fold_into_an_overflow_set_and_are_counted() -> None:
    counters = EdgeCounters(max_label_sets=2)
    edges = [("source", f"w{i}", "ns", "p", "d", "ns", "p", "mutual_tls") for i in range(3)] + [
        ("destination", "w9", "ns", "p", "d", "ns", "p", "none")
    ]
    for i, edge in enumerate(edges * 2):  # each edge twice: known sets are not folded again
        record = outbound("1.2.3.4:1", "tunnel", request_id=str(i))
        counters.resolve = lambda _record, edge=edge: edge  # type: ignore[misc]
        counters.opened(record)
        counters.closed(record)
    families = {family.name: family for family in counters.collect()}
    opened = {
        s.labels["source_workload"]: s for s in families["smesh_tcp_connections_opened"].samples
    }
    assert set(opened) == {"w0", "w1", "overflow"}
    assert opened["w0"].value == 2
    folded = [
        s
        for s in families["smesh_tcp_connections_opened"].samples
        if s.labels["source_workload"] == "overflow"
    ]
    # the reporter and the security policy stay: both are bounded
    assert sorted(
        (s.labels["reporter"], s.labels["connection_security_policy"], s.value) for s in folded
    ) == [
        ("destination", "none", 2.0),
        ("source", "mutual_tls", 2.0),
    ]
    assert all(
        s.labels[name] == "overflow"
        for s in folded
        for name in ("source_principal", "destination_workload", "destination_workload_namespace")
    )
    assert families["smesh_tcp_connections_folded"].samples[0].value == 4
    assert families["smesh_tcp_label_sets"].samples[0].value == 4  # 2 + 2 overflow sets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _edge(name: str) -> tuple[str, str, str, str, str, str, str, str]:
    return ("source", name, "ns", "p", "d", "ns", "p", "mutual_tls")


def _opened(counters: EdgeCounters) -> dict[str, float]:
    """The opened counter per source workload, as a scrape reads it."""
    families = {family.name: family for family in counters.collect()}
    return {
        s.labels["source_workload"]: s.value
        for s in families["smesh_tcp_connections_opened"].samples
    }


def _connect(counters: EdgeCounters, name: str, close: bool = True) -> ConnectionRecord:
    record = outbound("1.2.3.4:1", "tunnel", request_id=name)
    counters.resolve = lambda _record: _edge(name)
    counters.opened(record)
    if close:
        counters.closed(record)
    return record


def test_a_set_whose_connections_closed_long_ago_is_dropped_and_comes_back_from_zero() -> None:
    clock = Clock()
    counters = EdgeCounters(expiry=600, clock=clock)
    _connect(counters, "job-1")
    _connect(counters, "job-1")
    clock.now += 599
    assert _opened(counters) == {"job-1": 2}  # not yet
    clock.now += 1
    assert _opened(counters) == {}  # gone at the scrape after the expiry
    families = {family.name: family for family in counters.collect()}
    assert families["smesh_tcp_label_sets_expired"].samples[0].value == 1
    assert families["smesh_tcp_label_sets"].samples[0].value == 0
    _connect(counters, "job-1")
    assert _opened(counters) == {"job-1": 1}  # a counter reset, to Prometheus


def test_a_set_with_an_open_connection_stays_however_quiet() -> None:
    clock = Clock()
    counters = EdgeCounters(expiry=600, clock=clock)
    record = _connect(counters, "db", close=False)
    assert _opened(counters) == {"db": 1}
    clock.now += 3600
    assert _opened(counters) == {"db": 1}
    record.bytes_from_app = 10
    counters.closed(record)  # the close counts: the set's clock starts again
    clock.now += 599
    assert _opened(counters) == {"db": 1}
    clock.now += 1
    assert _opened(counters) == {}


def test_bytes_of_an_open_connection_keep_its_set() -> None:
    """Counted at a scrape: a long-lived connection that moves bytes is never idle."""
    clock = Clock()
    counters = EdgeCounters(expiry=600, clock=clock)
    record = _connect(counters, "db", close=False)
    for i in range(1, 5):
        clock.now += 500
        record.bytes_from_app = i
        assert _opened(counters) == {"db": 1}


def test_at_the_cap_an_expired_set_makes_room_instead_of_folding() -> None:
    clock = Clock()
    counters = EdgeCounters(max_label_sets=2, expiry=600, clock=clock)
    _connect(counters, "run-1")
    _connect(counters, "run-2")
    clock.now += 300
    _connect(counters, "run-3")  # both sets younger than the expiry: folded
    assert counters.folded == 1
    clock.now += 300
    _connect(counters, "run-4")  # run-1 and run-2 expired, run-4 takes a place
    assert counters.folded == 1
    assert set(_opened(counters)) == {"run-4", "overflow"}


def test_expiry_zero_keeps_every_set_for_the_agents_life() -> None:
    clock = Clock()
    counters = EdgeCounters(expiry=0, clock=clock)
    _connect(counters, "job-1")
    clock.now += 10**7
    assert _opened(counters) == {"job-1": 1}


def test_the_expiry_is_a_validated_config_key(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("node: n\nworkloads: /w\n")
    assert load(path, environ={}).limits.metric_label_set_expiry == 600
    path.write_text("node: n\nworkloads: /w\nlimits: {metricLabelSetExpiry: 0}\n")
    assert load(path, environ={}).limits.metric_label_set_expiry == 0
    path.write_text("node: n\nworkloads: /w\nlimits: {metricLabelSetExpiry: 15s}\n")
    with pytest.raises(ConfigError, match=r"limits\.metricLabelSetExpiry: .*at least 60s"):
        load(path, environ={})


def test_a_scrape_writes_what_generate_latest_writes_byte_for_byte() -> None:
    """The edges' own writer against the library's, with values that need escaping, a
    count past the fast path, an overflow set and an expired one."""
    clock = Clock()
    counters = EdgeCounters(max_label_sets=3, expiry=600, clock=clock)
    odd = ("source", 'we"ird\\name', "ns\nx", "p", "d", "ns", "p", "mutual_tls")
    _connect(counters, "gone")
    clock.now += 600
    counters.exposition()  # "gone" expires at this scrape
    for name in ("a", "b"):
        _connect(counters, name)
    record = outbound("1.2.3.4:1", "tunnel", request_id="odd")
    counters.resolve = lambda _record: odd
    counters.opened(record)
    record.bytes_from_app, record.bytes_to_app = 12_345_678_901, 7  # bytes so far: open
    counters.exposition()  # counted while open: the third set
    _connect(counters, "folded")  # the cap: into the overflow set
    expected = generate_latest(counters).decode()  # what the library writes of the same
    assert counters.exposition() == expected
    assert 'source_workload="we\\"ird\\\\name"' in expected
    assert "1.2345678901e+10" in expected  # floatToGoString's form past a million
    assert "smesh_tcp_label_sets_expired_total 1.0" in expected
    assert 'source_workload="overflow"' in expected


def test_the_agents_scrape_has_the_edges_once_after_the_registry() -> None:
    metrics = AgentMetrics()
    metrics.tcp.resolve = resolver()
    metrics.tcp.opened(outbound(f"[{DB_IP}]:5432", "tunnel"))
    text = metrics.render().decode()
    assert text.count("# TYPE smesh_tcp_connections_opened_total counter") == 1
    assert text.index("smesh_connections_closed_total") < text.index("smesh_tcp_")
    names = {family.name for family in metrics.collect()}
    assert {"smesh_tcp_connections_opened", "smesh_connections_closed"} <= names


def test_one_workload_label_format_in_every_metric_that_has_one() -> None:
    """``workload`` is a name and ``namespace`` its own label, never ``namespace/name``."""
    metrics = AgentMetrics()
    metrics.capture_events.labels(WEB.workload_label, WEB.namespace, "captured").inc()
    metrics.certificate_expiry.labels(str(identity_of(WEB))).set(1)
    metrics.tcp.resolve = resolver()
    record = outbound(f"[{DB_IP}]:5432", "tunnel")
    metrics.tcp.opened(record)
    text = metrics.render().decode()
    values = re.findall(r'(?:^|[,{])(\w*workload)="([^"]*)"', text, re.M)
    assert {name for name, _ in values} >= {"workload", "source_workload", "destination_workload"}
    assert all("/" not in value for _, value in values), values
    assert 'smesh_capture_events_total{decision="captured",namespace="shop",workload="web"}' in text


def deployment_pod(
    owners: list[OwnerReference] | None = None, template_hash: str | None = None
) -> Pod:
    labels = {"pod-template-hash": template_hash} if template_hash else None
    return Pod(
        metadata=ObjectMeta(
            name="web-5d4f8c-x2x9k",
            namespace="shop",
            uid="u1",
            labels=labels,
            ownerReferences=owners,
        ),
        spec=PodSpec(containers=[Container(name="main")], nodeName="node-1"),
        status=PodStatus(phase="Running", podIPs=[PodIP(ip=WEB_IP)]),
    )


def owned(kind: str, name: str, controller: bool = True) -> list[OwnerReference]:
    return [
        OwnerReference(apiVersion="apps/v1", kind=kind, name=name, uid="u", controller=controller)
    ]


@pytest.mark.parametrize(
    ("pod", "owner"),
    [
        (deployment_pod(owned("ReplicaSet", "web-5d4f8c"), "5d4f8c"), "web"),
        (deployment_pod(owned("ReplicaSet", "web-rs")), "web-rs"),  # a ReplicaSet of its own
        (deployment_pod(owned("StatefulSet", "db")), "db"),
        (deployment_pod(owned("Job", "backup-29411520")), "backup"),  # a CronJob's run
        (deployment_pod(owned("Job", "migrate-v2")), "migrate-v2"),  # a Job of its own
        (deployment_pod(owned("Job", "build-1234")), "build-1234"),  # too short for a minute
        (deployment_pod(owned("StatefulSet", "db", controller=False)), None),
        (deployment_pod(), None),
    ],
)
def test_a_pods_workload_is_its_controlling_owner(pod: Pod, owner: str | None) -> None:
    assert owner_workload(pod) == owner


def test_the_kubernetes_source_labels_a_deployments_pods_by_the_deployment() -> None:
    shop = Namespace(metadata=ObjectMeta(name="shop", labels={"smesh.io/mesh": "enabled"}))
    w = workload_of(deployment_pod(owned("ReplicaSet", "web-5d4f8c"), "5d4f8c"), shop)
    assert w is not None
    assert (w.owner, w.workload_label, w.name) == ("web", "web", "web-5d4f8c-x2x9k")
    alone = workload_of(deployment_pod(), shop)
    assert alone is not None
    assert alone.workload_label == "web-5d4f8c-x2x9k"  # a pod without an owner: its name


def test_the_cap_is_a_validated_config_key(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("node: n\nworkloads: /w\n")
    assert load(path, environ={}).limits.max_metric_label_sets == 1000
    path.write_text("node: n\nworkloads: /w\nlimits: {maxMetricLabelSets: 0}\n")
    with pytest.raises(ConfigError, match=r"limits\.maxMetricLabelSets: "):
        load(path, environ={})
