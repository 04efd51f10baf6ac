"""AuthorizationPolicy objects in the meshed Kubernetes lab: kubectl applies one, the agents
enforce it within seconds and say so in its status, and deleting it restores the flow.

One 2-node lab: a ``web`` pod on node-2 and a ``client`` pod on node-1, both in the opted-in
namespace ``shop``. The lab does not install the CRD yet (the chart will): the test does,
after the agents started, which also shows an agent picking the CRD up late.
"""

from __future__ import annotations

import collections.abc
import json
import time
from pathlib import Path
from typing import Any

import pytest

from smesh.agent import client as admin_client
from smesh.jsonlines import whole_records
from smesh.lab import state
from tests.integration.kubernetes.clusterkit import kubectl, kubernetes_lab, running, wait_for
from tests.integration.labkit import Lab, smesh

CRD = Path(__file__).parents[3] / "deploy/helm/smesh/crds/authorizationpolicies.smesh.io.yaml"
SERVER = "import http.server; http.server.test(http.server.SimpleHTTPRequestHandler, port=8080, bind='0.0.0.0')"  # noqa: E501
POLICY = {
    "apiVersion": "smesh.io/v1alpha1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "no-client-to-web", "namespace": "shop"},
    "spec": {
        "action": "DENY",
        "selector": {"matchLabels": {"app": "web"}},
        "rules": [{"from": [{"identity": "spiffe://cluster.local/ns/shop/sa/client"}]}],
    },
}
RULE = "shop/no-client-to-web#0"


def pod(name: str, node: str, account: str, command: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "serviceAccountName": account,
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": "none", "command": command}],
        },
    }


def app() -> str:
    items: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"smesh.io/mesh": "enabled"}},
        },
        *(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": n, "namespace": "shop"},
            }
            for n in ("web", "client")
        ),
        pod("web", "node-2", "web", ["python3", "-c", SERVER]),
        pod("client", "node-1", "client", ["sleep", "infinity"]),
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


@pytest.fixture(scope="module")
def cluster() -> collections.abc.Iterator[Lab]:
    # process agents: the test reads each agent's agent.log in the lab's state
    with kubernetes_lab("kp", "--nodes", "2", "--install", "processes") as lab:
        kubectl(lab, "apply", "-f", str(CRD))
        kubectl(
            lab, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/authorizationpolicies.smesh.io",
        )  # fmt: skip
        kubectl(lab, "apply", "-f", "-", stdin=app())
        yield lab


def agent_log(lab: Lab, node: str) -> list[dict[str, Any]]:
    return whole_records(state.directory(lab.name) / node / "agent.log")


def metric(lab: Lab, node: str, line_prefix: str) -> float:
    reply = admin_client.get("127.0.0.1", 15020, "/metrics", netns=f"{lab.name}.{node}")
    for line in reply.body.decode().splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def fetch(lab: Lab, ip: str) -> int:
    return lab.exec(
        "shop/client", ["curl", "-sS", "-m", "8", "-o", "/dev/null", f"http://{ip}:8080/"]
    ).returncode


def test_a_policy_object_denies_within_seconds_reports_status_and_deletion_restores(
    cluster: Lab,
) -> None:
    web = running(cluster, "-n", "shop", "-l", "app=web", count=1)["web"]
    running(cluster, "-n", "shop", "-l", "app=client", count=1)
    ip = web["status"]["podIP"]
    cluster.wait_tcp("shop/client", ip, 8080, timeout=30)
    # The agents started before the CRD existed: each notices it (within ABSENT_RETRY, 30 s).
    for node in ("node-1", "node-2"):
        wait_for(
            f"{node}'s agent to watch AuthorizationPolicies",
            lambda node=node: any(  # type: ignore[misc]
                "AuthorizationPolicies are served now" in r.get("msg", "")
                for r in agent_log(cluster, node)
            ),
            60,
        )
    assert fetch(cluster, ip) == 0
    denied_before = metric(cluster, "node-2", f'smesh_policy_denials_total{{rule="{RULE}"}}')

    kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(POLICY))
    applied_at = time.monotonic()
    wait_for("the policy to deny the flow", lambda: fetch(cluster, ip) != 0, 30)
    assert time.monotonic() - applied_at < 20  # "within seconds", with a generous margin
    # node-2's agent refused it: an access-log record, a log line naming the rule, a metric.
    records = [r for r in agent_log(cluster, "node-2") if r.get("logger") == "smesh.access"]
    assert any(
        r.get("direction") == "inbound" and r.get("result") == "denied" and r.get("rule") == RULE
        for r in records
    ), records[-3:]
    assert any(
        r.get("msg", "").startswith("denied ") and RULE in r["msg"]
        for r in agent_log(cluster, "node-2")
    )
    assert metric(cluster, "node-2", f'smesh_policy_denials_total{{rule="{RULE}"}}') > denied_before
    # `policy explain` asks node-2's agent, whose policy holds the object's rule (its
    # selector resolved against node-2's pods); `status` names the object.
    explained = json.loads(
        smesh(
            "policy", "explain", "--lab", cluster.name, "--from", "shop/client",
            "--to", "shop/web:8080", "-o", "json",
        ).stdout
    )  # fmt: skip
    assert (explained["decision"], explained["decided_by"]) == ("deny", RULE)
    assert explained["destination"]["service_account"] == "web"
    shown = smesh("status", "--lab", cluster.name).stdout
    assert "AuthorizationPolicy shop/no-client-to-web" in shown

    # Both agents report the generation applied, and kubectl shows them.
    def entries() -> dict[str, dict[str, Any]]:
        obj = json.loads(
            kubectl(
                cluster, "get", "smeshpol", "-n", "shop", POLICY["metadata"]["name"], "-o", "json"
            )
        )
        return {e["node"]: e for e in obj.get("status", {}).get("agents", [])}

    got = wait_for("both agents' status entries", lambda: len(entries()) == 2 and entries(), 30)
    for node in ("node-1", "node-2"):
        assert got[node]["applied"] is True
        assert got[node]["observedGeneration"] == 1
    table = kubectl(cluster, "get", "smeshpol", "-n", "shop").splitlines()
    action, applied = table[1].split()[1:3]
    assert action == "DENY", table
    assert sorted(json.loads(applied)) == ["node-1", "node-2"], table  # in the order written

    kubectl(cluster, "delete", "smeshpol", "-n", "shop", POLICY["metadata"]["name"])
    wait_for("the flow to be restored", lambda: fetch(cluster, ip) == 0, 30)
