"""A meshed Kubernetes lab through restarts: of a node's agent, and of the API server.

One meshed 2-node cluster for the whole module; the tests run in file order and share the
pods of namespace ``shop`` (opted in): ``server`` on node-2, ``client`` and ``idle`` on node-1.

* With node-1's agent stopped, a new pod there does not start (its CNI ADD fails, naming the
  agent and its socket), and the running pods' connects fail closed: nothing of them leaves
  node-1 in plain text. The restarted agent re-enrols every running pod, and the kubelet's
  retry then starts the pending one, meshed.
* The agents' watches survive an API server restart, and a forced 410 Gone (pods changed
  while no node could reach the API, etcd compacted past what the agents had seen, the API
  server restarted so that its watch cache cannot serve the old versions either): they
  relist, and each agent's pods equal the API's, pod by pod, including a pod deleted while
  the agent could not watch (whose kubelet was down too, so only the agent's relist could
  release it).
"""

from __future__ import annotations

import collections.abc
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
from typing import Any

import pytest

from smesh.agent import client as admin_client
from smesh.lab import cluster as lab_cluster
from smesh.lab import kubepaths, state
from smesh.lab.agents import DEBUG_PORT
from smesh.lab.controlplane import DEFAULT_BIN_DIR
from smesh.linux import netns
from tests.conftest import in_ci
from tests.integration import labkit
from tests.integration.kubernetes.test_lab_cluster import kubectl, pods, wait_for
from tests.integration.labkit import Lab, Lines, smesh, unique_name

SHOP = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {smesh.io/mesh: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: shop}
spec:
  nodeName: node-2
  containers:
  - {name: http, image: none, command: ["python3", "-m", "http.server", "8080"]}
"""

SLEEPER = """
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop}}
spec:
  nodeName: {node}
  containers:
  - {{name: main, image: none, command: ["sleep", "infinity"]}}
"""

INFORMERS = ("node_pods", "cluster_pods", "namespaces")
LOOPBACK_API = f"--server=https://127.0.0.1:{kubepaths.API_PORT}"


@pytest.fixture(scope="module")
def cluster() -> collections.abc.Iterator[Lab]:
    if not (DEFAULT_BIN_DIR / "kube-scheduler").is_file():
        message = f"the control plane is not built in {DEFAULT_BIN_DIR}: run `make kubernetes`"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    lab = Lab(unique_name("kl"))
    try:
        # process agents: stop-agent/restart-agent and agent.log
        smesh(
            "lab", "up", "--name", lab.name, "--kubernetes", "--nodes", "2",
            "--install", "processes", timeout=240,
        )  # fmt: skip
        kubectl(lab, "apply", "-f", "-", stdin=SHOP)
        for name in ("client", "idle"):
            kubectl(lab, "apply", "-f", "-", stdin=SLEEPER.format(name=name, node="node-1"))
        running(lab, "-n", "shop", count=3)
        yield lab
    finally:
        lab.stop_background()
        smesh("lab", "down", "--name", lab.name, check=False)


# -- what the API says, and what the agents have ---------------------------------------------

PodKey = tuple[str, str, str, tuple[str, ...]]  # namespace, name, uid, IPs


def api_meshed(lab: Lab, node: str) -> set[PodKey]:
    """The pods of *node* that the API says are meshed (docs/kubernetes.md), with an IP."""
    namespaces = json.loads(kubectl(lab, "get", "namespaces", "-o", "json"))["items"]
    enabled = {
        ns["metadata"]["name"]
        for ns in namespaces
        if (ns["metadata"].get("labels") or {}).get("smesh.io/mesh") == "enabled"
    }
    found = set()
    for pod in pods(lab, "--all-namespaces").values():
        meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
        ips = tuple(sorted(entry["ip"] for entry in status.get("podIPs") or []))
        if (
            spec.get("nodeName") == node
            and meta["namespace"] in enabled
            and (meta.get("labels") or {}).get("smesh.io/mesh") != "disabled"
            and not spec.get("hostNetwork")
            and status.get("phase") not in {"Succeeded", "Failed"}
            and ips
        ):
            found.add((meta["namespace"], meta["name"], meta["uid"], ips))
    return found


def workloads(lab: Lab, node: str) -> list[dict[str, Any]]:
    """The agent's own account of the pods it meshes (its /debug/workloads), from the node."""
    reply = admin_client.get(
        "127.0.0.1", DEBUG_PORT, "/debug/workloads", netns=f"{lab.name}.{node}", timeout=10
    )
    return reply.json()["workloads"]  # type: ignore[no-any-return]


def registry(lab: Lab, node: str) -> set[str]:
    """The pods (namespace/name) the agent knows at a destination address, all nodes'."""
    reply = admin_client.get(
        "127.0.0.1", DEBUG_PORT, "/debug/workloads", netns=f"{lab.name}.{node}", timeout=10
    )
    return {entry["pod"] for entry in reply.json()["registry"]}


def agent_meshed(lab: Lab, node: str) -> set[PodKey]:
    """The agent's pods, counted only once each is meshed (capture, listeners, certificate)."""
    found = set()
    for w in workloads(lab, node):
        namespace, _, name = w["pod"].partition("/")
        stage = "" if w["stage"] == "ready" else f" (stage {w['stage']}: {w['error']})"
        found.add((namespace, name + stage, w["uid"], tuple(sorted(w["ips"]))))
    return found


def agents_equal_the_api(lab: Lab, timeout: float = 180) -> None:
    """Wait until every agent's pods equal the API's, pod by pod; fail with the difference."""
    last: dict[str, tuple[set[PodKey], set[PodKey]]] = {}

    def equal() -> bool:
        for node in ("node-1", "node-2"):
            last[node] = (api_meshed(lab, node), agent_meshed(lab, node))
        return all(api == agent for api, agent in last.values())

    try:
        wait_for("each agent's pods to equal the API's", equal, timeout)
    except AssertionError:
        diff = {
            node: {"only in the API": api - agent, "only in the agent": agent - api}
            for node, (api, agent) in last.items()
        }
        raise AssertionError(f"the agents' pods differ from the API's: {diff}") from None


def running(lab: Lab, *selector: str, count: int) -> dict[str, dict[str, Any]]:
    """Until exactly *count* pods are Running with an IP. Generous: after an API outage the
    kubelets and agents come back on their own backoff (each capped at 30 s)."""

    def check() -> dict[str, dict[str, Any]] | None:
        found = pods(lab, *selector)
        ok = len(found) == count and all(
            p["status"].get("phase") == "Running" and p["status"].get("podIP")
            for p in found.values()
        )
        return found if ok else None

    return wait_for(f"{count} running pods {selector}", check, timeout=180)  # type: ignore[no-any-return]


def metric(lab: Lab, node: str, name: str, informer: str) -> float:
    body = admin_client.get(
        "127.0.0.1", 15020, "/metrics", netns=f"{lab.name}.{node}", timeout=10
    ).body.decode()
    match = re.search(rf'^{name}{{informer="{informer}"}} (\S+)$', body, re.M)
    assert match, f"{name}{{informer={informer!r}}} is not in node {node}'s agent metrics"
    return float(match.group(1))


def curl(lab: Lab, pod: str, url: str) -> subprocess.CompletedProcess[str]:
    return lab.exec(
        f"shop/{pod}",
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", url],
    )


@contextlib.contextmanager
def sniffing(lab: Lab, node: str) -> collections.abc.Iterator[Lines]:
    """tcpdump on *node*'s link to the fabric, every packet with its payload (-A)."""
    with labkit.sniffing(lab, node, payloads=True, expression=()) as packets:
        yield packets


def sandbox_events(lab: Lab, pod: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.name={pod},reason=FailedCreatePodSandBox"
    reply = kubectl(lab, "get", "events", "-n", "shop", "--field-selector", selector, "-o", "json")
    return json.loads(reply)["items"]  # type: ignore[no-any-return]


# -- the tests ------------------------------------------------------------------------------


def test_a_stopped_agent_fails_closed_and_its_restart_re_enrols_every_pod(cluster: Lab) -> None:
    server = running(cluster, "-n", "shop", "--field-selector", "metadata.name=server", count=1)
    url = f"http://{server['server']['status']['podIP']}:8080"
    agents_equal_the_api(cluster)
    before = {key[1] for key in agent_meshed(cluster, "node-1")}
    assert before == {"client", "idle"}
    # --install processes: the agents are lab processes, which status shows by pid
    doc = json.loads(smesh("lab", "status", "--name", cluster.name, "--json").stdout)
    assert doc["install"] == "processes"
    assert all(n["agent_pid"] and n["agent_pod"] is None for n in doc["nodes"])

    smesh("lab", "stop-agent", "--name", cluster.name, "node-1")

    # A new pod on the node does not start: its sandbox's CNI ADD fails, naming the agent.
    kubectl(cluster, "apply", "-f", "-", stdin=SLEEPER.format(name="late", node="node-1"))
    events = wait_for("a FailedCreatePodSandBox event", lambda: sandbox_events(cluster, "late"))
    socket = kubepaths.cni_socket(cluster.name, "node-1")
    assert "smesh agent on this node is not answering" in events[0]["message"]
    assert str(socket) in events[0]["message"]
    late = pods(cluster, "-n", "shop")["late"]
    assert late["status"]["phase"] == "Pending"
    waiting = late["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ContainerCreating"
    assert not late["status"].get("podIPs")

    # The running pods stay captured: their connects fail closed, nothing leaves in plain text.
    marker = f"smesh-plain-{secrets.token_hex(6)}"
    control = f"smesh-seen-{secrets.token_hex(6)}"
    with sniffing(cluster, "node-1") as packets:
        refused = curl(cluster, "client", f"{url}/{marker}")
        # The sniffer does see payloads: a datagram from the node itself, in plain text.
        cluster.exec(
            "node-1",
            [
                "python3",
                "-c",
                "import socket,sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                ".sendto(sys.argv[1].encode(), ('198.19.0.2', 9))",
                control,
            ],
        )
        # sent last: once tcpdump has printed it, it has printed what came before
        wait_for("the sniffer to see a payload", lambda: control in "".join(packets.lines), 15)
    assert refused.returncode != 0, refused.stdout  # fail closed, no answer
    assert refused.stdout == "000"
    seen = "".join(packets.lines)
    assert marker not in seen, "a captured pod's request left node-1 in plain text"
    server_ip = server["server"]["status"]["podIP"]
    assert not [p for p in packets.lines if f"> {server_ip}.8080:" in p]

    # Restarted, the agent re-enrols every running pod; the kubelet's retry starts `late`.
    logged = len(labkit.access(cluster, "node-1"))
    smesh("lab", "restart-agent", "--name", cluster.name, "node-1")
    running(cluster, "-n", "shop", count=4)
    agents_equal_the_api(cluster)
    assert {key[1] for key in agent_meshed(cluster, "node-1")} == {"client", "idle", "late"}
    for pod in ("client", "late"):
        reply = curl(cluster, pod, f"{url}/")
        assert reply.stdout == "200", reply.stderr

    def tunnelled() -> set[str]:  # an access line is written once its connection is closed
        return {
            line["pod"]
            for line in labkit.access(cluster, "node-1")[logged:]
            if line["destination"] == f"{server_ip}:8080"
            and line["route"] == "tunnel"
            and line["result"] == "ok"
            and line["peer_identity"] == "spiffe://cluster.local/ns/shop/sa/default"
        }

    wait_for("both requests in node-1's access log", lambda: tunnelled() == {"client", "late"})


def test_the_watch_survives_an_api_server_restart_and_a_forced_410(cluster: Lab) -> None:
    agents_equal_the_api(cluster)

    # A plain restart of the API server; pods change right after it.
    smesh("lab", "restart-control-plane", "--name", cluster.name, "kube-apiserver")
    kubectl(cluster, "apply", "-f", "-", stdin=SLEEPER.format(name="fresh", node="node-2"))
    kubectl(cluster, "delete", "pod", "-n", "shop", "idle", "--timeout=60s")
    running(cluster, "-n", "shop", count=4)  # server, client, late, fresh
    agents_equal_the_api(cluster)

    # The forced 410. node-1's kubelet is stopped: only its agent's relist can release a pod
    # deleted there (its sandbox stays, no CNI DEL comes).
    gone = {
        node: {i: metric(cluster, node, "smesh_kubernetes_watch_gone_total", i) for i in INFORMERS}
        for node in ("node-1", "node-2")
    }
    lists = {
        node: metric(cluster, node, "smesh_kubernetes_lists_total", "node_pods") for node in gone
    }
    kubectl(cluster, "apply", "-f", "-", stdin=SLEEPER.format(name="churn", node="node-2"))
    kubectl(cluster, "delete", "pod", "-n", "shop", "churn", "--wait=false")
    lab = state.load(cluster.name)
    assert lab is not None
    kubelet = lab.kubelets["node-1"]
    doomed = pods(cluster, "-n", "shop")["late"]
    doomed_netns = json.loads(
        (
            kubepaths.pods_dir(cluster.name, "node-1") / doomed["metadata"]["uid"] / "sandbox.json"
        ).read_text()
    )["netns"]
    os.kill(kubelet.pid, signal.SIGTERM)
    wait_for("node-1's kubelet to stop", lambda: not kubelet.alive(), timeout=30)
    try:
        # The API server answers on loopback only: no node can reach it, the admin can.
        smesh(
            "lab",
            "restart-control-plane",
            "--name",
            cluster.name,
            "kube-apiserver",
            "--loopback-only",
        )
        kubectl(
            cluster,
            LOOPBACK_API,
            "delete",
            "pod",
            "-n",
            "shop",
            "late",
            "--force",
            "--grace-period=0",
        )
        kubectl(cluster, LOOPBACK_API, "delete", "pod", "-n", "shop", "fresh", "--wait=false")
        kubectl(
            cluster,
            LOOPBACK_API,
            "apply",
            "-f",
            "-",
            stdin=SLEEPER.format(name="newer", node="node-2"),
        )
        revision = lab_cluster.compact_etcd(cluster.name)  # past all the agents have seen
        assert revision > 0
        smesh("lab", "restart-control-plane", "--name", cluster.name, "kube-apiserver")

        # Both agents were told 410 Gone and relisted.
        for node, before in gone.items():
            for informer, count in before.items():
                wait_for(
                    f"{node}'s {informer} watch to get 410 Gone",
                    lambda n=node, i=informer, c=count: (
                        metric(cluster, n, "smesh_kubernetes_watch_gone_total", i) > c
                    ),
                    timeout=180,
                )
            # counted once the relist's LIST has answered, which may follow the 410 by a while
            wait_for(
                f"{node}'s pods informer to relist",
                lambda n=node: (
                    metric(cluster, n, "smesh_kubernetes_lists_total", "node_pods") > lists[n]
                ),
                timeout=60,
            )
        # No event of `late`'s deletion reached any agent: node-2's agent, which holds no
        # sandbox of it, drops it from its registry on its relist alone...
        wait_for(
            "node-2's registry to forget shop/late",
            lambda: "shop/late" not in registry(cluster, "node-2"),
            timeout=60,
        )
        # ... and learns `newer` once node-2's kubelet (which the API server's restarts kept
        # from it) has started it and published its address: the relist may come first.
        wait_for(
            "node-2's registry to know shop/newer",
            lambda: "shop/newer" in registry(cluster, "node-2"),
            timeout=60,
        )
        # ...while node-1's agent keeps it captured: force-deleted, its sandbox is still
        # there and its apps may still run (no CNI DEL came), so it must not go plain.
        assert netns.exists(doomed_netns)
        assert "late" in {key[1] for key in agent_meshed(cluster, "node-1")}
    finally:
        smesh("lab", "restart-kubelet", "--name", cluster.name, "node-1")
    wait_for("the kubelet to remove late's sandbox", lambda: not netns.exists(doomed_netns))
    # the CNI DEL released it: every agent equals the API again, pod by pod
    listed = running(cluster, "-n", "shop", count=3)
    assert set(listed) == {"server", "client", "newer"}
    agents_equal_the_api(cluster)
    assert {key[1] for key in agent_meshed(cluster, "node-2")} == {"server", "newer"}
