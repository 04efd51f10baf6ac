"""`smesh flows` after known traffic in a 2-node lab with a policy: an allowed tunnel, a
denied one and a passthrough, each with its identities, verdict, rule, mTLS and bytes; and
`--follow` seeing a connection made after it started, and one after an agent handed over."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from smesh.lab import state
from tests.integration.labkit import SMESH, Lab, LabFactory, Lines, smesh
from tests.integration.mesh.conftest import Apps
from tests.integration.mesh.test_agent import admin, meshed_here, metric, node, set_meshed, wait

POD3, POD4 = "198.18.2.2", "198.18.2.3"
ID = "spiffe://cluster.local/ns/default/sa/{}"
RULE = "no-pod2-to-pod3"
POLICY = f"""
rules:
  - name: {RULE}
    action: deny
    from: [{{identity: "{ID.format("pod-2")}"}}]
    to: [{{pod: pod-3}}]
"""
SIZE = 300_000  # each way (app.py xfer)


def flows(lab: Lab, *args: str) -> list[dict[str, Any]]:
    proc = smesh("flows", "--lab", lab.name, "-o", "json", *args)
    doc = json.loads(proc.stdout)
    assert doc["errors"] == []
    return list(doc["flows"])


def closed(lab: Lab, port: int, node: str, *args: str) -> list[dict[str, Any]]:
    return [
        f
        for f in flows(lab, "--node", node, *args)
        if f["event"] == "close" and f["destination"]["port"] == port
    ]


def streams(lab: Lab, node_name: str) -> float:
    """The /debug/flows responses the node's agent is sending now (its followers)."""
    return metric(admin(lab, node_name, "/metrics").body, "smesh_flow_streams", "")


def until(what: str, find: Any, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not seen in {timeout} s: {what}")


def test_flows_show_allowed_denied_and_passthrough_connections_and_follow_new_ones(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    lab = lab_factory("--policy", str(policy))
    apps = Apps(lab)
    set_meshed(lab, "pod-4", meshed=False)  # a destination outside the mesh
    wait(lambda: "pod-4" not in meshed_here(lab, "node-2"), timeout=30)
    apps.serve("pod-3", "xfer", 9100, SIZE, 7)
    apps.serve("pod-4", "xfer", 9101, SIZE, 8)

    # allowed: pod-1 → pod-3 over mutual TLS, SIZE bytes each way
    assert apps.run("pod-1", "xfer", POD3, 9100, SIZE, 7)["received"] == SIZE
    # denied at pod-3's agent by the rule
    denied = lab.exec("pod-2", [sys.executable, "-c", DENIED_CLIENT, POD3, "9100"])
    assert denied.stdout.strip() != "ok", denied
    # passthrough: pod-4 is not meshed, its app answers in plain text
    assert apps.run("pod-1", "xfer", POD4, 9101, SIZE, 8)["received"] == SIZE

    pod1, pod2, pod3 = (ID.format(p) for p in ("pod-1", "pod-2", "pod-3"))
    inbound = until("the allowed connection at pod-3's agent", lambda: closed(lab, 9100, "node-2"))
    allowed = [f for f in inbound if f["source"]["identity"] == pod1]
    assert len(allowed) == 1, inbound
    (seen,) = allowed
    assert (seen["verdict"], seen["rule"], seen["mtls"], seen["result"]) == (
        "allowed",
        "(default)",
        True,
        "ok",
    )
    assert (seen["source"]["pod"], seen["destination"]["pod"]) == ("pod-1", "pod-3")
    assert seen["destination"]["identity"] == pod3
    assert (seen["bytes_sent"], seen["bytes_received"]) == (SIZE, SIZE)
    # the source's agent saw the same connection: one row each, joined by request_id
    (source_side,) = [
        f
        for f in closed(lab, 9100, "node-1")
        if f["request_id"] == seen["request_id"] and f["source"]["pod"] == "pod-1"
    ]
    assert (source_side["verdict"], source_side["mtls"]) == ("allowed", True)
    assert source_side["destination"]["identity"] == pod3
    assert (source_side["bytes_sent"], source_side["bytes_received"]) == (SIZE, SIZE)

    refused = [f for f in inbound if f["source"]["identity"] == pod2]
    assert refused, inbound
    assert {(f["verdict"], f["rule"], f["mtls"]) for f in refused} == {("denied", RULE, True)}
    assert all(f["bytes_sent"] == f["bytes_received"] == 0 for f in refused)
    assert all(f["source"]["pod"] == "pod-2" for f in refused)
    assert all(f["destination"]["identity"] == pod3 for f in refused)
    by_verdict = closed(lab, 9100, "node-2", "--verdict", "denied")
    assert {f["source"]["pod"] for f in by_verdict} == {"pod-2"}

    (passed,) = until(
        "the passthrough connection", lambda: closed(lab, 9101, "node-1", "--pod", "pod-4")
    )
    assert (passed["verdict"], passed["mtls"], passed["result"]) == ("passthrough", False, "ok")
    assert (passed["source"]["identity"], passed["destination"]["identity"]) == (pod1, "")
    assert (passed["source"]["pod"], passed["destination"]["pod"]) == ("pod-1", "pod-4")
    assert (passed["bytes_sent"], passed["bytes_received"]) == (SIZE, SIZE)

    text = smesh("flows", "--lab", lab.name, "--pod", "pod-2").stdout
    assert f"denied by {RULE}" in text

    # --follow: a connection made after it started, from both nodes' streams
    follow = subprocess.Popen(
        [*SMESH, "flows", "--lab", lab.name, "--follow", "-o", "json", "--pod", "pod-1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follow.stderr is not None
        said = follow.stderr.readline()
        assert said.startswith("following the flows of node-1, node-2"), said
        lines = Lines(follow.stdout)
        assert apps.run("pod-1", "xfer", POD3, 9100, 1000, 7)["received"] == SIZE

        def both_ends(sent: int) -> set[str]:
            docs = [json.loads(line) for line in list(lines.lines)]
            return {
                d["node"]
                for d in docs
                if d["event"] == "close" and d["bytes_sent"] == sent and d["verdict"] == "allowed"
            }

        until("the new connection at both ends", lambda: both_ends(1000) == {"node-1", "node-2"})

        # node-2's agent hands over: the old one ends its stream as it exits, and follow asks
        # the new one (on the listening socket passed to it) and goes on
        old = node(lab, "node-2")["agent_pid"]
        smesh("lab", "upgrade-agent", "--lab", lab.name, "node-2")
        until("node-2's old agent to exit", lambda: state.start_time_of(old) is None, 30)
        until("follow to stream from node-2's new agent", lambda: streams(lab, "node-2") == 1)
        assert apps.run("pod-1", "xfer", POD3, 9100, 2000, 7)["received"] == SIZE
        until(
            "a connection after the hand-over at both ends",
            lambda: both_ends(2000) == {"node-1", "node-2"},
        )
        follow.send_signal(signal.SIGINT)  # Ctrl-C
        assert follow.wait(timeout=20) == 0
        assert follow.stderr.read() == "", "follow reported an agent that did not answer"
    finally:
        follow.kill()
        follow.wait()


# A connect and one request; "ok" only if the server's bytes came back (a denial resets it).
DENIED_CLIENT = """
import socket, sys
try:
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    sock.sendall(b"x" * 100)
    print("ok" if sock.recv(1) else "eof")
except OSError as exc:
    print(type(exc).__name__)
"""
