"""The agent's admin listeners as a pod and the node see them (issue 22): the scrape port
answers on the node's addresses; the debug endpoints, which list the node's workloads,
identities and connections, only on the node's loopback."""

from __future__ import annotations

import json
from typing import Any

from smesh.agent import client
from tests.integration.labkit import Lab, LabFactory, smesh

CURL_REFUSED = 7  # curl: "Failed to connect to host"


def node(lab: Lab, name: str) -> dict[str, Any]:
    return next(n for n in lab.status()["nodes"] if n["name"] == name)


def curl(lab: Lab, member: str, url: str) -> tuple[int, str]:
    """curl's exit status and the HTTP status it got (``000`` if none)."""
    argv = ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", url]
    proc = lab.exec(member, argv, timeout=30)
    return proc.returncode, proc.stdout.strip()


def test_a_pod_reaches_the_scrape_port_but_not_the_debug_endpoints(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory("--nodes", "1", "--pods-per-node", "1")
    node1 = node(lab, "node-1")
    # the node as its pods see it: their gateway (in the mesh CIDR) and its fabric address
    for host in ("198.18.1.1", node1["ip"]):
        for path in ("/metrics", "/healthz", "/ready"):
            assert curl(lab, "pod-1", f"http://{host}:15020{path}") == (0, "200"), (host, path)
        # the scrape port serves no debug view...
        assert curl(lab, "pod-1", f"http://{host}:15020/debug/workloads") == (0, "404")
        # ...and nothing listens on the node's addresses at the debug port
        for path in ("/debug/workloads", "/debug/connections", "/debug/config"):
            assert curl(lab, "pod-1", f"http://{host}:15000{path}") == (CURL_REFUSED, "000")
    # nor in the pod's own namespace
    assert curl(lab, "pod-1", "http://127.0.0.1:15000/debug/workloads") == (CURL_REFUSED, "000")

    # On the node, the loopback has them all (the agent's own view of its configuration).
    reply = client.get("127.0.0.1", 15000, "/debug/config", netns=node1["netns"])
    assert reply.status == 200
    doc = reply.json()
    assert doc["pid"] == node1["agent_pid"]
    assert doc["config"]["admin"]["debug"] == {"address": "127.0.0.1", "port": 15000}
    assert doc["config"]["admin"]["scrape"] == {"address": "0.0.0.0", "port": 15020}
    assert "BEGIN" not in reply.body.decode()  # paths to credentials, never key material
    metrics = client.get("127.0.0.1", 15020, "/metrics", netns=node1["netns"]).body.decode()
    assert 'smesh_admin_connections_refused_total{listener="debug",reason="at_cap"} 0.0' in (
        metrics
    )

    # smesh status asks each agent's debug listener inside its node's namespace
    status = json.loads(smesh("status", "--lab", lab.name, "--json").stdout)
    assert [w["name"] for doc in status for w in doc["workloads"]] == ["pod-1"], status
