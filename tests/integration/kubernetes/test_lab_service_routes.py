"""Services in the meshed Kubernetes lab, through the ClusterIP (no DNS needed).

A meshed client's connect to a ClusterIP is captured before kube-proxy's NAT, so it reaches
a pod through the agent, which is what is tested here (the access records say so). One
2-node cluster for the module: ``shop`` (opted in) runs ``web`` (2 replicas, one per node,
port named ``http``) behind the Service ``web`` (port 80 → targetPort ``http``), and a
client pod on node-1. The acceptance of Services is test_lab_service_mesh.py.
"""

from __future__ import annotations

import collections.abc
import secrets
import time
from typing import Any

import pytest

from tests.integration.kubernetes.clusterkit import (
    ECHO_SERVER,
    TRUST,
    access,
    container,
    deployed,
    kubectl,
    kubernetes_lab,
    listing,
    mesh_namespace,
    metric,
    pod,
    running,
    wait_for,
)
from tests.integration.labkit import Lab

MARKER = f"sks{secrets.token_hex(6)}"


def app() -> str:
    http = container(
        ["python3", "-c", ECHO_SERVER],
        name="http",
        ports=[{"name": "http", "containerPort": 8080}],
    )
    items: list[dict[str, Any]] = [
        mesh_namespace("shop"),
        *deployed("shop", "web", [http]),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "selector": {"app": "web"},
                "ports": [{"name": "web", "port": 80, "targetPort": "http"}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "nobody", "namespace": "shop"},
            "spec": {"selector": {"app": "nobody"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        pod("client", "shop", "node-1"),
    ]
    return listing(items)


@pytest.fixture(scope="module")
def cluster() -> collections.abc.Iterator[Lab]:
    # process agents (the tests read their agent.log): "lab" is that mode's name here and
    # its old name where the chart became the default ("processes")
    with kubernetes_lab("ksv", "--nodes", "2", "--install", "processes") as lab:
        kubectl(lab, "apply", "-f", "-", stdin=app())
        yield lab


def cluster_ip(lab: Lab, name: str) -> str:
    return kubectl(lab, "get", "service", name, "-n", "shop", "-o", "jsonpath={.spec.clusterIP}")


def curl(lab: Lab, url: str, max_time: int = 20) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = lab.exec("shop/client", ["curl", "-sS", "--max-time", str(max_time), url])
    return proc.returncode, proc.stdout or proc.stderr, time.monotonic() - started


def test_the_cluster_ip_reaches_both_replicas_over_mtls(cluster: Lab) -> None:
    web = running(cluster, "-n", "shop", "-l", "app=web", count=2)
    running(cluster, "-n", "shop", "--field-selector", "metadata.name=client", count=1)
    ip = cluster_ip(cluster, "web")
    url = f"http://{ip}:80/{MARKER}"

    def answers() -> bool:  # the agents' informers may be waiting out a 403's backoff
        code, out, _ = curl(cluster, url, 5)
        return code == 0 and out == f"echo /{MARKER}"

    wait_for("the Service to answer through the agent", answers, timeout=90)
    mark = len(access(cluster, "node-1"))
    for _ in range(20):
        code, out, _ = curl(cluster, url)
        assert (code, out) == (0, f"echo /{MARKER}")

    def records() -> list[dict[str, Any]]:
        found = [
            r
            for r in access(cluster, "node-1")[mark:]
            if r["direction"] == "outbound" and r["destination"] == f"{ip}:80"
        ]
        return found if len(found) >= 20 else []

    ours = wait_for("20 outbound records", records, timeout=10)
    assert {r["service"] for r in ours} == {"shop/web:80"}
    assert {(r["route"], r["result"]) for r in ours} == {("tunnel", "ok")}
    assert {r["peer_identity"] for r in ours} == {f"{TRUST}/ns/shop/sa/web"}
    assert {r["destination_pod"] for r in ours} == set(web)  # both replicas
    assert {r["endpoint"] for r in ours} == {f"{p['status']['podIP']}:8080" for p in web.values()}
    assert metric(cluster, "node-1", "smesh_service_routes_total", 'result="tunnel"') >= 20


def test_a_service_without_endpoints_is_refused_at_once(cluster: Lab) -> None:
    ip = cluster_ip(cluster, "nobody")
    code, out, took = curl(cluster, f"http://{ip}:80/")
    assert code != 0, out
    assert took < 10, f"curl took {took:.1f} s: a hang, not a refusal"
    assert metric(cluster, "node-1", "smesh_service_routes_total", 'result="no_endpoints"') >= 1


def test_scaling_down_moves_new_connections_within_seconds(cluster: Lab) -> None:
    kubectl(cluster, "scale", "deployment/web", "-n", "shop", "--replicas=1")
    [left] = running(cluster, "-n", "shop", "-l", "app=web", count=1).values()
    ip = cluster_ip(cluster, "web")

    seen: list[object] = []

    def only_the_one_left() -> bool:
        mark = len(access(cluster, "node-1"))
        url = f"http://{ip}:80/{MARKER}"
        script = f"for i in 1 2 3 4; do curl -sS --max-time 20 {url} || exit 1; done"
        proc = cluster.exec("shop/client", ["sh", "-c", script])  # one exec: cheap under load
        if proc.returncode != 0:
            seen[:] = [f"curl: {proc.returncode} {proc.stderr}"]
            return False
        time.sleep(0.5)
        records = [
            r
            for r in access(cluster, "node-1")[mark:]
            if r["direction"] == "outbound" and r["destination"] == f"{ip}:80"
        ]
        seen[:] = records
        return {r["destination_pod"] for r in records} == {left["metadata"]["name"]}

    try:
        # generous: the EndpointSlice controller and the lab's exec are slow on a loaded host
        wait_for("connections only to the pod left", only_the_one_left, timeout=90)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {left['metadata']['name']} is left; last: {seen}") from None
