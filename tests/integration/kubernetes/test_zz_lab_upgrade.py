"""A rolling update of the agent DaemonSet drops nothing (issues 19 and 20), chart lab.

One 2-node lab, smesh installed from the Helm chart with its defaults (``maxSurge: 1``,
``maxUnavailable: 0``). A client pod on node-1 holds 3 long-lived connections, through the
mesh, to an echo server pod on node-2, each exchanging a numbered message every 50 ms, and
opens 10 new connections a second (one process in the pod: smesh.bench.steady).
Then ``kubectl rollout restart daemonset/smesh-agent``: on each node in turn the new agent
pod starts beside the old one and takes the node over from it (its listening sockets over
the hand-over socket in the shared ``/run/smesh``), turns Ready, and the old pod is deleted.

Every connect succeeds and every long-lived connection answers every message in order
throughout; nothing of the test's marker is seen in plain text on node-1's link. The old
agents linger by design: their pods are Terminating but their processes serve the
long-lived connections (the kubelet's SIGTERM does not cut them; the pod's
terminationGracePeriodSeconds would). Once the client closes its connections they exit,
their pods go, ``kubectl rollout status`` completes (the DaemonSet's status counts each
node's oldest pod, so it waits for them), and each node has exactly one agent pod, Ready.

With ``maxSurge: 0`` (the chart's default before the hand-over) the same run fails: the old
agent stops first and connects are refused while no agent serves, and the long-lived
connections are cut after its ``timeouts.drain`` (seen: 70 connects refused, every
long-lived connection reset). So it does with ``maxSurge: 1`` and a readiness probe on the
admin port, which the old agent answers for the new pod before the hand-over (59 refused).
"""

from __future__ import annotations

import collections.abc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from smesh.bench import steady
from smesh.lab import state
from tests.integration.kubernetes.clusterkit import (
    agent_pod,
    container,
    container_log,
    deployed,
    kubectl,
    kubernetes_lab,
    listing,
    mesh_namespace,
    running,
    sandbox_of,
    smesh_pods,
    sniffing,
    wait_for,
)
from tests.integration.labkit import Lab, Lines, on_port, smesh

STEADY = [sys.executable, "-m", "smesh.bench.steady", "client"]
MARKER = steady.MARKER  # in every message the load sends
PORT = 7070
LONG, RATE, INTERVAL = 3, 10, 0.05
DAEMONSET = "daemonset/smesh-agent"
ECHO = f"""
import socket, threading
def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
server = socket.create_server(("0.0.0.0", {PORT}))
while True:
    conn, _ = server.accept()
    threading.Thread(target=echo, args=(conn,), daemon=True).start()
"""


@pytest.fixture(scope="module")
def cluster() -> collections.abc.Iterator[Lab]:
    with kubernetes_lab("ku", "--nodes", "2") as lab:  # the chart, with its defaults
        items = [
            mesh_namespace("shop"),
            *deployed("shop", "echo", [container(["python3", "-c", ECHO])], node="node-2"),
            mesh_namespace("front"),
            *deployed("front", "client", [container(["sleep", "infinity"])], node="node-1"),
        ]
        kubectl(lab, "apply", "-f", "-", stdin=listing(items))
        yield lab


def agents(lab: Lab) -> dict[str, list[dict[str, Any]]]:
    """The agent pods of each node, oldest first."""
    by_node: dict[str, list[dict[str, Any]]] = {"node-1": [], "node-2": []}
    for name, pod in sorted(
        smesh_pods(lab).items(), key=lambda item: item[1]["metadata"]["creationTimestamp"]
    ):
        if name.startswith("smesh-agent-") and pod["spec"].get("nodeName"):  # scheduled
            by_node[pod["spec"]["nodeName"]].append(pod)
    return by_node


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod["status"].get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def agent_pid(lab: Lab, pod: dict[str, Any]) -> tuple[int, int | None]:
    """The agent process of *pod* (pid, start time), as its kubelet recorded it."""
    pid = int(sandbox_of(lab, pod)["containers"]["agent"]["pid"])
    return pid, state.start_time_of(pid)


def alive(process: tuple[int, int | None]) -> bool:
    pid, started = process
    return started is not None and state.start_time_of(pid) == started


def test_a_rolling_update_of_the_agents_drops_no_connect_and_cuts_no_connection(
    cluster: Lab, tmp_path: Path
) -> None:
    server = running(cluster, "-n", "shop", "-l", "app=echo", count=1)
    client_pod = running(cluster, "-n", "front", "-l", "app=client", count=1)
    server_ip = next(iter(server.values()))["status"]["podIP"]
    client = f"front/{next(iter(client_pod))}"
    cluster.wait_tcp(client, server_ip, PORT, timeout=60)
    before = {node: pods[0] for node, pods in agents(cluster).items()}
    assert all(len(pods) == 1 for pods in agents(cluster).values())
    old = {node: agent_pid(cluster, pod) for node, pod in before.items()}

    stop = tmp_path / "stop"
    argv = [*STEADY, server_ip, str(PORT), str(stop), "--long", str(LONG), "--rate", str(RATE)]
    argv += ["--interval", str(INTERVAL), "--max-seconds", "600"]
    with sniffing(cluster, "node-1") as packets:
        load = cluster.spawn(client, argv, stdout=subprocess.PIPE, text=True)
        out = Lines(load.stdout)
        wait_for("the long-lived connections", lambda: out.lines[:1] == ["READY\n"], timeout=60)
        time.sleep(2)  # load before the update

        kubectl(cluster, "-n", "smesh-system", "rollout", "restart", DAEMONSET)

        def replaced() -> bool:
            """Each node: a new agent pod Ready, the old one deleted (Terminating)."""
            found = agents(cluster)
            for node, old_pod in before.items():
                new = [p for p in found[node] if p["metadata"]["uid"] != old_pod["metadata"]["uid"]]
                gone_or_deleting = all(
                    p["metadata"].get("deletionTimestamp")
                    for p in found[node]
                    if p["metadata"]["uid"] == old_pod["metadata"]["uid"]
                )
                if len(new) != 1 or not ready(new[0]) or not gone_or_deleting:
                    return False
            return True

        wait_for("a new agent pod on each node, the old ones deleted", replaced, timeout=240)
        time.sleep(2)  # load after the update
        # The old agents linger by design: deleted pods whose processes still serve the
        # long-lived connections they hold (the kubelet's SIGTERM does not cut them).
        found = agents(cluster)
        lingering = {
            node: (
                found[node][0]["metadata"]["uid"] == old_pod["metadata"]["uid"],
                alive(old[node]),
            )
            for node, old_pod in before.items()
        }
        stop.touch()
        load.wait(timeout=90)
        out.join()

    report = json.loads(out.lines[-1])
    assert report["connect_failures"] == [], report
    assert report["long_failures"] == [], report
    assert report["connected"] == report["connects"] > 100, report
    # every long-lived connection kept answering (a message each 50 ms, give or take)
    assert report["messages"] > LONG * report["seconds"] * 4, report
    assert any(on_port(line, 18001) for line in packets.lines), "the capture saw no tunnel"
    plain = [line for line in packets.lines if MARKER in line]
    assert plain == [], f"the marker in plain text on node-1's link: {plain[:3]}"
    # (pod still there, process alive) for each node's old agent, while the load ran
    assert lingering == {"node-1": (True, True), "node-2": (True, True)}, lingering

    # The connections closed: the old agents exit, their pods go, the rollout completes.
    for node in before:
        wait_for(f"{node}'s old agent to exit", lambda n=node: not alive(old[n]), timeout=60)  # type: ignore[misc]
    smesh(
        "lab",
        "kubectl",
        "--name",
        cluster.name,
        "--",
        "-n",
        "smesh-system",
        "rollout",
        "status",
        DAEMONSET,
        "--timeout=120s",
        timeout=150,
    )
    for node, old_pod in before.items():
        now = agent_pod(cluster, node)  # exactly one
        assert now["metadata"]["uid"] != old_pod["metadata"]["uid"]
        assert ready(now)
        assert "deletionTimestamp" not in now["metadata"]
        # it took the node over from the running agent: no stop, no start from nothing
        log = container_log(cluster, now, "agent").read_text()
        assert "listening sockets from the running agent" in log, log[-3000:]
