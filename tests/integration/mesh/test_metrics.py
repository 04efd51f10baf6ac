"""Metrics a Grafana user can graph, after known traffic: per edge, with Istio's labels.

One lab, three flows: an allowed tunnel with a known body, one denied by policy, and one
passed through in plain text to an address no pod of the mesh has; plus a long-lived
connection whose bytes show before it closes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.labkit import Lab, LabFactory
from tests.integration.mesh.conftest import APP, Apps
from tests.integration.mesh.test_agent import admin, set_meshed, total

POD3, POD4 = "198.18.2.2", "198.18.2.3"
BODY = 50_000
RULE = "no-pod2-to-pod3"
POLICY = f"""
rules:
  - name: {RULE}
    action: deny
    from: [{{identity: "spiffe://cluster.local/ns/default/sa/pod-2"}}]
    to: [{{pod: pod-3}}]
"""


def principal(pod: str) -> str:
    return f"spiffe://cluster.local/ns/default/sa/{pod}"


def scrape(lab: Lab, node: str) -> bytes:
    reply = admin(lab, node, "/metrics")
    assert reply.status == 200
    return reply.body


def edge(
    source: str, destination: str, reporter: str, policy: str = "mutual_tls"
) -> dict[str, str]:
    """The labels of one edge between two lab pods (their workload is the pod: no owner)."""
    return {
        "reporter": reporter,
        "source_workload": source,
        "source_workload_namespace": "default",
        "source_principal": principal(source),
        "destination_workload": destination,
        "destination_workload_namespace": "default",
        "destination_principal": principal(destination),
        "connection_security_policy": policy,
    }


def wait_for(what: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.1)


@pytest.fixture
def meshed(lab_factory: LabFactory, tmp_path: Path) -> Lab:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return lab_factory("--policy", str(policy))


def test_flows_show_per_edge_with_identities_security_policy_and_bytes(meshed: Lab) -> None:
    apps = Apps(meshed)
    apps.serve("pod-3", "echo", 9201)
    apps.serve("pod-3", "halfclose", 9200)

    # A long-lived connection: its bytes are counted while it lasts, not only at close.
    long_lived = meshed.spawn(
        "pod-1", [sys.executable, APP, "read-to-end", POD3, "9201"], stdout=subprocess.PIPE
    )
    forward = edge("pod-1", "pod-3", "source")

    def echoed() -> bool:
        samples = scrape(meshed, "node-1")
        return total(samples, "smesh_tcp_sent_bytes_total", **forward) >= 5

    wait_for(echoed)
    samples = scrape(meshed, "node-1")
    assert total(samples, "smesh_tcp_received_bytes_total", **forward) == 5  # "hello"
    assert total(samples, "smesh_tcp_connections_opened_total", **forward) == 1
    assert total(samples, "smesh_tcp_connections_closed_total", **forward) == 0
    long_lived.kill()
    long_lived.wait()

    # Allowed, tunnelled: both agents count it, each as its reporter, with the body's bytes.
    assert apps.run("pod-1", "halfclose", POD3, 9200, BODY)["ok"]
    # Denied by policy at pod-3's agent: counted there, by rule, as mutual TLS (it was).
    assert apps.run("pod-2", "expect-reset", POD3, 9200)["outcome"] == "reset"
    # Passthrough in plain text: pod-4 leaves the mesh and the registry.
    set_meshed(meshed, "pod-4", None)
    wait_for(lambda: "pod-4" not in str(admin(meshed, "node-2", "/debug/workloads").json()))
    apps.serve("pod-4", "halfclose", 9202)
    assert apps.run("pod-1", "halfclose", POD4, 9202, BODY)["ok"]

    inbound = edge("pod-1", "pod-3", "destination")
    denied = edge("pod-2", "pod-3", "destination")
    passthrough = {
        **edge("pod-1", "unknown", "source", policy="none"),
        "destination_workload_namespace": "unknown",
        "destination_principal": "unknown",
    }

    def settled() -> bool:
        out, into = scrape(meshed, "node-1"), scrape(meshed, "node-2")
        return (
            total(out, "smesh_tcp_connections_closed_total", **forward) == 2
            and total(out, "smesh_tcp_connections_closed_total", **passthrough) == 1
            and total(into, "smesh_tcp_connections_closed_total", **inbound) == 2
            and total(into, "smesh_tcp_connections_closed_total", **denied) == 1
        )

    wait_for(settled)
    out, into = scrape(meshed, "node-1"), scrape(meshed, "node-2")
    for samples, labels in ((out, forward), (into, inbound)):
        assert total(samples, "smesh_tcp_connections_opened_total", **labels) == 2
        assert total(samples, "smesh_tcp_received_bytes_total", **labels) == 5 + BODY
        assert total(samples, "smesh_tcp_sent_bytes_total", **labels) > 5  # the answers
    assert total(out, "smesh_tcp_received_bytes_total", **passthrough) == BODY
    assert total(out, "smesh_tcp_sent_bytes_total", **passthrough) > 0
    assert total(out, "smesh_tcp_connections_opened_total", **passthrough) == 1
    assert total(into, "smesh_tcp_connections_opened_total", **denied) == 1
    assert total(into, "smesh_tcp_received_bytes_total", **denied) == 0
    assert total(into, "smesh_policy_denials_total", rule=RULE) == 1
    assert total(into, "smesh_connections_closed_total", direction="inbound", result="denied") == 1
    # Nothing per connection in any label; nothing folded at the default cap.
    for body in (out, into):
        assert total(body, "smesh_tcp_connections_folded_total") == 0
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name.startswith("smesh_tcp_"):
                    values = sample.labels.values()
                    assert not any(":" in v and not v.startswith("spiffe:") for v in values)
    # One workload format: the certificate's identity as principal, capture by workload.
    assert (
        total(out, "smesh_certificate_expiry_timestamp_seconds", principal=principal("pod-1"))
        > time.time()
    )
    wait_for(  # (capture's counters are exported every two seconds)
        lambda: (
            total(
                scrape(meshed, "node-1"),
                "smesh_capture_events_total",
                workload="pod-1",
                namespace="default",
            )
            >= 3
        )
    )
    assert total(out, "smesh_agent_ready") == 1
