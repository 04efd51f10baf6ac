"""The acceptance of Services through the mesh (issue 21), against the lab's real control
plane, kube-proxy and CoreDNS.

One 2-node lab with process agents (the tests read their access logs) and strict inbound
(``capture.inboundPlaintext=refuse``, passed explicitly). ``shop`` is opted in: ``web`` (a
Deployment, one replica per node) answers on 8080 (port ``http``) and 9090 (``admin``) with
its pod name, the port and the path, and is Ready while a file of its own emptyDir exists
(an exec readiness probe), so the test can turn one replica unready; it ignores SIGTERM, so
a deleted replica keeps serving through its grace period and a connection that still goes
there would be answered, and seen. Its Services: ``web`` (8080), ``named`` (80 → ``http``),
``multi`` (80 → 8080 and 81 → ``admin``), and ``idle``, whose only pod never turns ready.
``plain`` is not opted in and runs the same ``web`` behind its own Service. Each namespace
has a client pod on node-1. Tests run in file order and build on each other's state.
"""

from __future__ import annotations

import collections.abc
import json
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from smesh.lab import kubepaths, state
from tests.integration.kubernetes.clusterkit import (
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
    pods,
    running,
    sniffing,
    wait_for,
)
from tests.integration.labkit import Lab, Lines, on_port, started

MARKER = f"ssm{secrets.token_hex(6)}"
REQUESTS = 50  # as the acceptance says: each replica seen over 50 requests
#: How soon a change of the endpoints must steer new connections ("within seconds"), from
#: when the test sees the change in the API (after it happened): generous, the host is shared.
SETTLE = 5.0
GRACE = 15  # a deleted web pod serves on this long, well past SETTLE
FLAG_DIR = "/var/smesh-lab-test/ready"  # the emptyDir the readiness probe looks into
WEB_IDENTITY = f"{TRUST}/ns/shop/sa/web"

SERVER = f"""
import http.server, os, signal, threading
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # serve on through the grace period
class Name(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        port = self.server.server_address[1]
        reply = f"{{os.environ['HOSTNAME']}} {{port}} {{self.path}}\\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
    def log_message(self, *args): pass
servers = [http.server.ThreadingHTTPServer(("0.0.0.0", p), Name) for p in (8080, 9090)]
threading.Thread(target=servers[1].serve_forever, daemon=True).start()
open("{FLAG_DIR}/ok", "w").close()
servers[0].serve_forever()
"""


def web(namespace: str) -> list[dict[str, Any]]:
    http = container(
        ["python3", "-c", SERVER],
        name="http",
        ports=[
            {"name": "http", "containerPort": 8080},
            {"name": "admin", "containerPort": 9090},
        ],
        readinessProbe={
            "exec": {"command": ["test", "-f", f"{FLAG_DIR}/ok"]},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
        volumeMounts=[{"name": "ready", "mountPath": FLAG_DIR}],
    )
    return [
        *deployed(
            namespace,
            "web",
            [http],
            terminationGracePeriodSeconds=GRACE,
            volumes=[{"name": "ready", "emptyDir": {}}],
        ),
        service(
            namespace, "web", {"app": "web"}, {"name": "http", "port": 8080, "targetPort": 8080}
        ),
    ]


def service(
    namespace: str, name: str, selector: dict[str, str], *ports: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": selector, "ports": list(ports)},
    }


def app() -> str:
    idle = pod("idle", "shop", "node-2", labels={"app": "idle"})
    idle["spec"]["containers"] = [
        container(
            ["sleep", "infinity"],
            readinessProbe={"exec": {"command": ["false"]}, "periodSeconds": 1},
        )
    ]
    items = [
        mesh_namespace("shop"),
        mesh_namespace("plain", meshed=False),
        *web("shop"),
        *web("plain"),
        service("shop", "named", {"app": "web"}, {"port": 80, "targetPort": "http"}),
        service(
            "shop",
            "multi",
            {"app": "web"},
            {"name": "web", "port": 80, "targetPort": 8080},
            {"name": "admin", "port": 81, "targetPort": "admin"},
        ),
        service("shop", "idle", {"app": "idle"}, {"port": 80, "targetPort": 8080}),
        idle,
        pod("client", "shop", "node-1"),
        pod("client", "plain", "node-1"),
    ]
    return listing(items)


@pytest.fixture(scope="module")
def cluster() -> collections.abc.Iterator[Lab]:
    with kubernetes_lab(
        "ssm",
        "--nodes",
        "2",
        "--install",
        "processes",
        "--agent-set",
        "capture.inboundPlaintext=refuse",
    ) as lab:
        kubectl(lab, "apply", "-f", "-", stdin=app())
        yield lab


# -- helpers ---------------------------------------------------------------------------------


def is_ready(p: dict[str, Any]) -> bool:
    conditions = p["status"].get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def ready_replicas(lab: Lab, namespace: str, count: int) -> dict[str, dict[str, Any]]:
    def check() -> dict[str, dict[str, Any]] | None:
        found = pods(lab, "-n", namespace, "-l", "app=web")
        ok = len(found) == count and all(is_ready(p) for p in found.values())
        return found if ok else None

    return wait_for(f"{count} ready web pods in {namespace}", check)  # type: ignore[no-any-return]


def cluster_ip(lab: Lab, name: str) -> str:
    return kubectl(lab, "get", "service", name, "-n", "shop", "-o", "jsonpath={.spec.clusterIP}")


def loop(lab: Lab, client: str, url: str, count: int = REQUESTS) -> list[tuple[str, str, str]]:
    """*count* requests in one exec in *client* (one curl each, so one connection each):
    the (pod, port, path) of each answer, asserting that every request was answered."""
    script = f"for i in $(seq {count}); do curl -sS --max-time 20 {url} || echo FAILED $?; done"
    proc = lab.exec(client, ["sh", "-c", script], timeout=60 + count * 2)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert len(lines) == count, (proc.stdout, proc.stderr)
    assert not [line for line in lines if line.startswith("FAILED")], (lines, proc.stderr)
    return [tuple(line.split(" ", 2)) for line in lines]  # type: ignore[misc]


def outbound(
    lab: Lab, mark: int, service: str, count: int, since: float = 0.0
) -> list[dict[str, Any]]:
    """node-1's outbound records since *mark* of connects to *service* that started at
    *since* or later, once there are *count* (an agent writes a record when the connection
    has closed, so a connection of before *since* may still be written after *mark*)."""

    def check() -> list[dict[str, Any]]:
        found = [
            r
            for r in access(lab, "node-1")[mark:]
            if r["direction"] == "outbound" and r["service"] == service and started(r) >= since
        ]
        return found if len(found) >= count else []

    found: list[dict[str, Any]] = wait_for(f"{count} records of {service}", check, 20)
    return found


def flag(lab: Lab, p: dict[str, Any]) -> Path:
    """The readiness file of web pod *p*, in its emptyDir as the kubelet keeps it."""
    uid = p["metadata"]["uid"]
    return kubepaths.pods_dir(lab.name, p["spec"]["nodeName"]) / uid / "volumes" / "ready" / "ok"


class Traffic:
    """A client pod requesting a URL in a loop, each answer stamped with the time its
    request started; bounded (3 minutes), stopped by a file in the lab's state."""

    def __init__(self, lab: Lab, client: str, url: str) -> None:
        self._stop = state.directory(lab.name) / f"stop-{secrets.token_hex(4)}"
        script = (
            f"end=$(($(date +%s) + 180)); while [ ! -e {self._stop} ] && "
            f"[ $(date +%s) -lt $end ]; do t=$(date +%s.%N); "
            f'a=$(curl -sS --max-time 20 {url} 2>&1) || a="FAILED $a"; echo "$t $a"; '
            "sleep 0.1; done"
        )
        self._proc = lab.spawn(
            client, ["sh", "-c", script], stdout=subprocess.PIPE, text=True, errors="replace"
        )
        self._lines = Lines(self._proc.stdout)

    def answers(self, since: float = 0.0) -> list[tuple[float, str]]:
        """(start time, pod or the failure) of each request started after *since*."""
        found = []
        for line in list(self._lines.lines):
            stamp, _, answer = line.strip().partition(" ")
            if not stamp.replace(".", "").isdigit():
                raise AssertionError(f"the request loop said {line!r}")
            if float(stamp) >= since:
                who = answer if answer.startswith("FAILED") else answer.split(" ")[0]
                found.append((float(stamp), who))
        return found

    def stop(self) -> None:
        self._stop.touch()
        self._proc.wait(timeout=60)
        self._lines.join()


# -- tests -----------------------------------------------------------------------------------


def test_the_service_name_and_cluster_ip_reach_both_replicas_over_mtls(cluster: Lab) -> None:
    shop = ready_replicas(cluster, "shop", 2)
    assert sorted(p["spec"]["nodeName"] for p in shop.values()) == ["node-1", "node-2"]
    running(cluster, "-n", "shop", "-l", "app!=web", count=2)  # client, idle
    ip = cluster_ip(cluster, "web")

    def through_the_agent() -> bool:  # its informers may still be listing
        mark = len(access(cluster, "node-1"))
        proc = cluster.exec(
            "shop/client", ["curl", "-sS", "--max-time", "5", f"http://{ip}:8080/warm"]
        )
        records = [r for r in access(cluster, "node-1")[mark:] if r["service"] == "shop/web:8080"]
        return proc.returncode == 0 and bool(records)

    wait_for("the Service to be routed by node-1's agent", through_the_agent, timeout=90)
    mark, since = len(access(cluster, "node-1")), time.time()  # a failed warm-up's record
    targets = (f"http://web.shop.svc.cluster.local:8080/{MARKER}", f"http://{ip}:8080/{MARKER}")
    with sniffing(cluster, "node-1", "any") as packets:
        for url in targets:
            answers = loop(cluster, "shop/client", url)
            assert {who for who, _, _ in answers} == set(shop), url
            assert {(port, path) for _, port, path in answers} == {("8080", f"/{MARKER}")}
    assert MARKER not in packets.text(), "plaintext of a meshed request on node-1's links"
    assert any(on_port(line, 18001) for line in packets.lines), "the capture saw no tunnel"

    records = outbound(cluster, mark, "shop/web:8080", 2 * REQUESTS, since)
    assert len(records) == 2 * REQUESTS
    assert {r["destination"] for r in records} == {f"{ip}:8080"}
    assert {(r["route"], r["result"]) for r in records} == {("tunnel", "ok")}
    assert {r["peer_identity"] for r in records} == {WEB_IDENTITY}
    assert {r["destination_pod"] for r in records} == set(shop)
    assert {r["endpoint"] for r in records} == {
        f"{p['status']['podIP']}:8080" for p in shop.values()
    }


def test_a_namespace_not_opted_in_goes_through_kube_proxy_in_plaintext(cluster: Lab) -> None:
    plain = ready_replicas(cluster, "plain", 2)
    running(cluster, "-n", "plain", "--field-selector", "metadata.name=client", count=1)
    before = {node: len(access(cluster, node)) for node in ("node-1", "node-2")}
    url = f"http://web.plain.svc.cluster.local:8080/{MARKER}-plain"
    with sniffing(cluster, "node-1", "any") as packets:
        answers = loop(cluster, "plain/client", url)
    assert {who for who, _, _ in answers} == set(plain)
    assert f"GET /{MARKER}-plain" in packets.text()
    assert not [line for line in packets.lines if on_port(line, 18001)]
    for node in ("node-1", "node-2"):
        assert access(cluster, node)[before[node] :] == []  # no agent in the way

    # ... and strict inbound is on: the meshed web takes no plaintext through kube-proxy
    ip = cluster_ip(cluster, "web")
    proc = cluster.exec(
        "plain/client", ["curl", "-sS", "--connect-timeout", "3", f"http://{ip}:8080/"]
    )
    assert proc.returncode == 28, (proc.stdout, proc.stderr)  # connect timed out: SYN dropped


def test_scaling_and_readiness_steer_new_connections_within_seconds(cluster: Lab) -> None:
    first = ready_replicas(cluster, "shop", 2)
    traffic = Traffic(cluster, "shop/client", f"http://web.shop.svc.cluster.local:8080/{MARKER}")
    try:
        wait_for(
            "the loop to reach both replicas",
            lambda: {w for _, w in traffic.answers()} >= set(first),
            30,
        )

        # Up: the new replica gets new connections once it is ready.
        kubectl(cluster, "scale", "deployment/web", "-n", "shop", "--replicas=3")
        three = ready_replicas(cluster, "shop", 3)
        [new] = set(three) - set(first)
        wait_for(
            f"new connections to reach {new}",
            lambda: new in {w for _, w in traffic.answers()},
            SETTLE,
        )

        # Down: the pod deleted gets no new connection once it is terminating, though it
        # serves on through its grace period (and none at all once it is gone).
        kubectl(cluster, "scale", "deployment/web", "-n", "shop", "--replicas=2")

        def terminating() -> dict[str, Any] | None:
            found = pods(cluster, "-n", "shop", "-l", "app=web")
            going = [p for p in found.values() if p["metadata"].get("deletionTimestamp")]
            return going[0] if going else None

        gone = wait_for("a replica to be terminating", terminating, 30)
        seen_deleted = time.time()
        gone_name, gone_ip = gone["metadata"]["name"], gone["status"]["podIP"]
        assert gone_name in {w for _, w in traffic.answers()}, "it never took a connection"
        time.sleep(SETTLE + 2)
        # ... it still serves (so a connection sent there would be answered, and seen) ...
        direct = cluster.exec(
            "shop/client", ["curl", "-sS", "--max-time", "10", f"http://{gone_ip}:8080/"]
        )
        assert direct.stdout.startswith(f"{gone_name} "), (direct.stdout, direct.stderr)
        wait_for(
            f"{gone_name} to be deleted",
            lambda: gone_name not in pods(cluster, "-n", "shop", "-l", "app=web"),
            GRACE + 45,
        )
        time.sleep(2)  # requests after it went, too
        late = [(t, w) for t, w in traffic.answers(seen_deleted + SETTLE) if w == gone_name]
        assert late == [], f"new connections to {gone_name}, deleted at {seen_deleted}: {late}"

        # Unready: its endpoint is skipped while it is, and used again once it is ready.
        two = ready_replicas(cluster, "shop", 2)
        unready = two[min(two)]
        name = unready["metadata"]["name"]
        flag(cluster, unready).unlink()
        wait_for(f"{name} to be unready", lambda: not is_ready(pods(cluster, "-n", "shop")[name]))
        seen_unready = time.time()
        wait_for(
            f"new connections to avoid {name}",
            lambda: len(traffic.answers(seen_unready + SETTLE)) >= 10,
            SETTLE + 30,
        )
        flag(cluster, unready).touch()
        touched = time.time()
        ready_replicas(cluster, "shop", 2)
        wait_for(
            f"new connections to reach {name} again",
            lambda: name in {w for _, w in traffic.answers(touched)},
            SETTLE,
        )
    finally:
        traffic.stop()
    failed = [(t, w) for t, w in traffic.answers() if w.startswith("FAILED")]
    assert failed == [], f"requests failed while the endpoints changed: {failed}"
    while_unready = [
        w for t, w in traffic.answers(seen_unready + SETTLE) if t < touched and w == name
    ]
    assert while_unready == [], f"{len(while_unready)} new connections to {name} while unready"


def test_a_named_target_port_and_a_service_of_two_ports_work_through_the_mesh(
    cluster: Lab,
) -> None:
    shop = ready_replicas(cluster, "shop", 2)
    ips = {p["status"]["podIP"] for p in shop.values()}
    cases = [  # (URL, the Service port in the records, the port the pod answered on)
        (f"http://named.shop.svc.cluster.local/{MARKER}", "shop/named:80", "8080"),
        (f"http://multi.shop.svc.cluster.local/{MARKER}", "shop/multi:80", "8080"),
        (f"http://multi.shop.svc.cluster.local:81/{MARKER}", "shop/multi:81", "9090"),
    ]
    for url, label, port in cases:
        mark = len(access(cluster, "node-1"))
        answers = loop(cluster, "shop/client", url, 4)
        assert {who for who, _, _ in answers} == set(shop), url
        assert {(p, path) for _, p, path in answers} == {(port, f"/{MARKER}")}, url
        records = outbound(cluster, mark, label, 4)
        assert {(r["route"], r["result"], r["peer_identity"]) for r in records} == {
            ("tunnel", "ok", WEB_IDENTITY)
        }, label
        assert {r["endpoint"] for r in records} == {f"{ip}:{port}" for ip in ips}, label


def test_a_service_with_no_ready_endpoint_is_refused_at_once(cluster: Lab) -> None:
    idle = pods(cluster, "-n", "shop")["idle"]
    assert idle["status"]["phase"] == "Running"
    assert not is_ready(idle)
    slices = json.loads(
        kubectl(
            cluster,
            "get",
            "endpointslices",
            "-n",
            "shop",
            "-l",
            "kubernetes.io/service-name=idle",
            "-o",
            "json",
        )
    )["items"]
    conditions = [e["conditions"] for s in slices for e in s.get("endpoints") or []]
    assert conditions, slices
    assert not [c for c in conditions if c.get("ready") or c.get("serving")]
    before = metric(cluster, "node-1", "smesh_service_routes_total", 'result="no_endpoints"')
    started = time.monotonic()
    proc = cluster.exec(
        "shop/client", ["curl", "-sS", "--max-time", "30", "http://idle.shop.svc.cluster.local/"]
    )
    took = time.monotonic() - started
    assert proc.returncode not in (0, 28), (proc.returncode, proc.stdout, proc.stderr)
    assert took < 10, f"curl took {took:.1f} s of its 30: a hang, not a refusal"
    after = metric(cluster, "node-1", "smesh_service_routes_total", 'result="no_endpoints"')
    assert after >= before + 1
