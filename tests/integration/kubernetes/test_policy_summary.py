"""The Applied condition of AuthorizationPolicies, written by `smesh controller` under the
chart's RBAC against a real kube-apiserver.

The agents are Pod objects bound to two nodes and marked Running (no kubelet needed); their
status entries are written as an agent writes them (smesh.kubernetes.policies.status_patch,
server-side apply as `smesh-agent/NODE`), so the controller sees what it would in a cluster.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Pod

from smesh.kubernetes.client import KubeApi
from smesh.kubernetes.policies import POLICIES, status_patch
from smesh.lab.controlplane import ControlPlane
from smesh.policy.crd import Outcome
from tests.integration.kubernetes import csrkit
from tests.integration.kubernetes.csrkit import NS, api, controllers, wait_until
from tests.integration.kubernetes.kubekit import make_namespace, unique

CRD = Path(__file__).parents[3] / "deploy/helm/smesh/crds/authorizationpolicies.smesh.io.yaml"
SPEC = {"action": "DENY", "selector": {"matchLabels": {"app": "db"}},
        "rules": [{"from": [{"namespace": "batch"}]}]}  # fmt: skip


def agent_pod(node: str) -> Pod:
    obj = csrkit.system_pod(f"smesh-agent-{node}", NS, node, "smesh-agent")
    assert obj.metadata is not None
    obj.metadata.labels = {"app.kubernetes.io/name": "smesh-agent"}
    return obj


@dataclass
class Summary:
    plane: ControlPlane
    controller: csrkit.ControllerProcess

    def condition(self, name: str, namespace: str) -> dict[str, Any] | None:
        proc = csrkit.kubectl(self.plane, "get", "smeshpol", name, "-n", namespace, "-o", "json")
        assert proc.returncode == 0, proc.stderr
        conditions = json.loads(proc.stdout).get("status", {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == "Applied"), None)

    def becomes(self, name: str, namespace: str, reason: str) -> dict[str, Any]:
        deadline = time.monotonic() + csrkit.WAIT
        while True:
            condition = self.condition(name, namespace)
            if condition is not None and condition["reason"] == reason:
                return condition
            assert time.monotonic() < deadline, (condition, self.controller.text()[-3000:])
            time.sleep(0.3)


@pytest.fixture(scope="module")
def summary(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Summary]:
    plane = control_plane
    directory = tmp_path_factory.mktemp("summary")
    for stdin in (csrkit.access_objects(), CRD.read_text()):
        applied = csrkit.kubectl(plane, "apply", "-f", "-", stdin=stdin)
        assert applied.returncode == 0, applied.stderr
    csrkit.kubectl(
        plane, "wait", "--for=condition=Established", "crd/authorizationpolicies.smesh.io"
    )

    async def setup(client: AsyncClient) -> str:
        for node in ("node-1", "node-2"):
            await csrkit.running_pod(client, agent_pod(node))
        return await csrkit.token(client, NS, "smesh-controller")

    kubeconfig = csrkit.token_kubeconfig(
        plane, directory / "controller.kubeconfig", api(plane, setup)
    )
    with controllers(kubeconfig, directory, "summary") as running:
        yield Summary(plane, running[0])


def agent_writes(plane: ControlPlane, namespace: str, name: str, node: str, **outcome: Any) -> None:
    """The status entry the agent of *node* writes, as it writes it."""
    proc = csrkit.kubectl(plane, "get", "smeshpol", name, "-n", namespace, "-o", "json")
    meta = json.loads(proc.stdout)["metadata"]
    result = Outcome(namespace, name, meta["uid"], meta["generation"], **outcome)

    async def write() -> None:
        kube = KubeApi.from_kubeconfig(plane.kubeconfig)
        try:
            body = status_patch(result, node, dt.datetime.now(dt.UTC))
            await kube.apply(
                f"{POLICIES.path(namespace)}/{name}/status", body, f"smesh-agent/{node}"
            )
        finally:
            await kube.aclose()

    asyncio.run(write())


def test_applied_follows_every_agent_node_and_kubectl_wait_waits_for_the_generation(
    summary: Summary,
) -> None:
    plane = summary.plane
    ns = unique("sum")
    api(plane, lambda c: make_namespace(c, ns))
    policy = {"apiVersion": "smesh.io/v1alpha1", "kind": "AuthorizationPolicy",
              "metadata": {"name": "no-batch", "namespace": ns}, "spec": SPEC}  # fmt: skip
    created = csrkit.kubectl(plane, "apply", "-f", "-", stdin=json.dumps(policy))
    assert created.returncode == 0, created.stderr

    pending = summary.becomes("no-batch", ns, "Pending")
    assert pending["status"] == "False"
    assert "not applied yet on node-1, node-2 (0 of 2" in pending["message"]
    agent_writes(plane, ns, "no-batch", "node-1", applied=True, message="in force")
    wait_until(
        "node-1 to drop out of the pending list",
        lambda: "yet on node-2 (1 of 2" in (summary.condition("no-batch", ns) or {})["message"],
    )
    agent_writes(plane, ns, "no-batch", "node-2", applied=True, message="in force")
    done = summary.becomes("no-batch", ns, "Applied")
    assert (done["status"], done["observedGeneration"]) == ("True", 1)

    # A new generation: kubectl wait (as the docs show it) returns once both agents applied it.
    policy["spec"] = {**SPEC, "rules": [{"from": [{"namespace": "jobs"}]}]}
    changed = csrkit.kubectl(plane, "apply", "-f", "-", stdin=json.dumps(policy))
    assert changed.returncode == 0, changed.stderr
    assert summary.becomes("no-batch", ns, "Pending")["observedGeneration"] == 2
    waiting = subprocess.Popen(
        [str(plane.bin_dir / "kubectl"), "--kubeconfig", str(plane.kubeconfig), "wait", "-n", ns,
         "smeshpol/no-batch", "--for=condition=Applied", "--timeout=60s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        assert waiting.poll() is None  # still pending: nothing to wait out yet
        for node in ("node-1", "node-2"):
            agent_writes(plane, ns, "no-batch", node, applied=True, message="in force")
        _out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert (summary.condition("no-batch", ns) or {})["observedGeneration"] == 2

    # One agent refuses it: False, with that agent's reason.
    agent_writes(
        plane, ns, "no-batch", "node-2", applied=False, message="not applied: spec.rules[0]: x"
    )
    refused = summary.becomes("no-batch", ns, "Refused")
    assert refused["message"] == "refused by the agent of node-2: not applied: spec.rules[0]: x"
    managers = json.loads(
        csrkit.kubectl(
            plane, "get", "smeshpol", "no-batch", "-n", ns, "-o", "json", "--show-managed-fields"
        ).stdout
    )["metadata"]["managedFields"]
    assert any(m["manager"] == "smesh-controller" for m in managers)
    assert "Traceback" not in summary.controller.text()


def controller_may_write_status(plane: ControlPlane, namespace: str) -> bool:
    """What the API server's authorizer answers the controller's identity now."""
    proc = csrkit.kubectl(
        plane, "auth", "can-i", "patch", "authorizationpolicies.smesh.io",
        "--subresource=status", "-n", namespace,
        f"--as=system:serviceaccount:{NS}:smesh-controller",
    )  # fmt: skip
    return proc.stdout.strip() == "yes"


def test_a_refused_condition_write_is_logged_once_and_retried_until_it_is_allowed(
    summary: Summary,
) -> None:
    """The API server refuses the status patch (the controller's RBAC lost it); once it is
    granted again the condition is written with no new event to prompt it: the retry."""
    plane = summary.plane
    ns = unique("sum")
    api(plane, lambda c: make_namespace(c, ns))
    proc = csrkit.kubectl(plane, "get", "clusterrole", "smesh-controller", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    role = json.loads(proc.stdout)
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        role["metadata"].pop(key, None)
    denied = {
        **role,
        "rules": [r for r in role["rules"] if "authorizationpolicies/status" not in r["resources"]],
    }
    assert len(denied["rules"]) == len(role["rules"]) - 1
    try:
        replaced = csrkit.kubectl(plane, "replace", "-f", "-", stdin=json.dumps(denied))
        assert replaced.returncode == 0, replaced.stderr
        wait_until(
            "the API server to deny the status patch",
            lambda: not controller_may_write_status(plane, ns),
        )
        policy = {"apiVersion": "smesh.io/v1alpha1", "kind": "AuthorizationPolicy",
                  "metadata": {"name": "retried", "namespace": ns}, "spec": SPEC}  # fmt: skip
        created = csrkit.kubectl(plane, "apply", "-f", "-", stdin=json.dumps(policy))
        assert created.returncode == 0, created.stderr
        warning = f"cannot write the Applied condition of AuthorizationPolicy {ns}/retried"
        wait_until("the refused write's warning", lambda: warning in summary.controller.text())
        time.sleep(3.5)  # the retries (backoff: after about 1 s, then 2 s more) are refused too
        assert summary.condition("retried", ns) is None
        assert summary.controller.text().count(warning) == 1  # once per object and error
    finally:
        restored = csrkit.kubectl(plane, "replace", "-f", "-", stdin=json.dumps(role))
        assert restored.returncode == 0, restored.stderr
    pending = summary.becomes("retried", ns, "Pending")  # no event since: the retry wrote it
    assert "not applied yet on node-1, node-2" in pending["message"]
    assert "Traceback" not in summary.controller.text()
