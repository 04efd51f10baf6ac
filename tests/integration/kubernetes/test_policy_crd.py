"""The AuthorizationPolicy CRD against a real API server: it installs, and the API server
refuses invalid objects with a message that names the field (no agent needed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lightkube.resources.core_v1 import Pod

from smesh.identity.spiffe import SpiffeId
from smesh.kubernetes.client import KubeApi
from smesh.kubernetes.policies import PolicyWatcher, agent_entry
from smesh.lab.controlplane import ControlPlane
from smesh.policy import DestinationWorkload, decide, parse
from smesh.policy.rules import PolicyStore
from tests.integration.kubernetes.kubekit import admin, make_namespace, pod, unique

KUBECTL = "kubectl"
CRD_PATH = Path(__file__).parents[3] / "deploy/helm/smesh/crds/authorizationpolicies.smesh.io.yaml"


def kubectl(
    plane: ControlPlane, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(plane.bin_dir / KUBECTL), f"--kubeconfig={plane.kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def policy(spec: dict[str, Any], name: str = "p", namespace: str = "default") -> str:
    return json.dumps(
        {
            "apiVersion": "smesh.io/v1alpha1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


GOOD = {
    "action": "DENY",
    "selector": {"matchLabels": {"app": "db"}},
    "rules": [
        {
            "from": [
                {"identity": "spiffe://cluster.local/ns/batch/sa/worker"},
                {"namespace": "batch", "trustDomain": "cluster.local"},
                {"trustDomain": "partner.example"},
            ],
            "to": {"ports": [{"port": 5432}, {"port": 8000, "endPort": 8100}]},
        }
    ],
}


@pytest.fixture(scope="module")
def crd(control_plane: ControlPlane) -> ControlPlane:
    kubectl(control_plane, "apply", "-f", str(CRD_PATH))
    kubectl(
        control_plane,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/authorizationpolicies.smesh.io",
    )
    # Established comes a moment before discovery serves the new kind to kubectl.
    deadline = time.monotonic() + 30
    while kubectl(control_plane, "get", "smeshpol", check=False).returncode != 0:
        assert time.monotonic() < deadline, "the kind never showed up in discovery"
        time.sleep(0.5)
    return control_plane


def test_the_crd_installs_and_a_valid_policy_is_accepted_and_printed(crd: ControlPlane) -> None:
    assert Path(CRD_PATH).is_file()
    kubectl(crd, "apply", "-f", "-", stdin=policy(GOOD, "good"))
    table = kubectl(crd, "get", "smeshpol", "good").stdout.split("\n")
    assert table[0].split() == ["NAME", "ACTION", "APPLIED", "AGE"]
    assert table[1].split()[:2] == ["good", "DENY"]
    # The status subresource: an agent's entry, written as the agent writes it.
    entry = {"node": "node-1", "observedGeneration": 1, "applied": True, "message": "in force"}
    patch = {
        "apiVersion": "smesh.io/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "good", "namespace": "default"},
        "status": {"agents": [entry], "appliedNodes": ["node-1"]},
    }
    kubectl(
        crd,
        "apply",
        "--server-side",
        "--subresource=status",
        "--field-manager=smesh-agent/node-1",
        "-f",
        "-",
        stdin=json.dumps(patch),
    )
    assert kubectl(crd, "get", "smeshpol", "good").stdout.split("\n")[1].split()[2] == '["node-1"]'


def mutate(change: dict[str, Any]) -> dict[str, Any]:
    spec = json.loads(json.dumps(GOOD))
    for path, value in change.items():
        target: Any = spec
        *parents, last = path.split(".")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is None:
            del target[last]
        else:
            target[last] = value
    return spec


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"rules.0.to.ports": [{"port": 70000}]}, "spec.rules[0].to.ports[0].port"),
        ({"rules.0.to.ports": [{"port": 0}]}, "spec.rules[0].to.ports[0].port"),
        (
            {"rules.0.to.ports": [{"port": 90, "endPort": 80}]},
            "spec.rules[0].to.ports[0].endPort",
        ),
        (
            {"rules.0.from": [{"identity": "https://cluster.local/ns/a/sa/b"}]},
            "spec.rules[0].from[0].identity",
        ),
        (
            {"rules.0.from": [{"identity": "spiffe://Cluster.local/ns/a/sa/b"}]},
            "spec.rules[0].from[0].identity",
        ),
        (
            {"rules.0.from": [{"identity": "spiffe://cluster.local/ns/../sa/b"}]},
            "spec.rules[0].from[0].identity",
        ),
        (
            {"rules.0.from": [{"identity": "spiffe://td/ns/a/sa/b", "namespace": "a"}]},
            "spec.rules[0].from[0]",
        ),
        ({"rules.0.from": [{}]}, "spec.rules[0].from[0]"),
        ({"rules": [{}]}, "spec.rules[0]"),
        ({"rules": []}, "spec.rules"),
        ({"action": "AUDIT"}, "spec.action"),
        ({"action": None}, "spec.action"),
        (
            {"selector": {"matchExpressions": [{"key": "app", "operator": "In"}]}},
            "spec.selector.matchExpressions[0]",
        ),
        ({"rules.0.to.ports": [{"port": p} for p in range(1, 40)]}, "spec.rules[0].to.ports"),
    ],
)
def test_an_invalid_policy_is_refused_naming_the_field(
    crd: ControlPlane, change: dict[str, Any], field: str
) -> None:
    result = kubectl(crd, "apply", "-f", "-", stdin=policy(mutate(change), "bad"), check=False)
    assert result.returncode != 0, f"accepted: {change}"
    assert "is invalid" in result.stderr, result.stderr
    assert f"{field}:" in result.stderr, result.stderr


# -- the agent's watcher against the same API server ----------------------------------------


async def eventually(what: str, check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
    return result


def entry(plane: ControlPlane, name: str, namespace: str, node: str) -> dict[str, Any] | None:
    got = kubectl(plane, "get", "smeshpol", name, "-n", namespace, "-o", "json", check=False)
    if got.returncode != 0:
        return None
    return agent_entry(json.loads(got.stdout), node)


def test_the_agent_applies_objects_as_they_change_and_reports_in_status(crd: ControlPlane) -> None:
    """Pods created bound to a node need no kubelet: their labels are all a selector reads."""
    node, ns = unique("node"), unique("pol")
    batch = SpiffeId.parse("spiffe://cluster.local/ns/batch/sa/worker")
    db = DestinationWorkload(ns, "db", "db-0")
    web = DestinationWorkload(ns, "web", "web-0")

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            client = admin(crd)
            stack.push_async_callback(client.close)
            await make_namespace(client, ns)
            await client.create(pod("db-0", ns, node, app="db"))
            await client.create(pod("web-0", ns, node, app="web"))
            store = PolicyStore(None, pending="not yet")
            watcher = PolicyWatcher(KubeApi.from_kubeconfig(crd.kubeconfig), node, store)
            task = asyncio.create_task(watcher.run())
            stack.push_async_callback(stop, task)
            await eventually("the first list", lambda: store.pending is None)
            assert decide(store.policy, batch, db, 5432).allowed

            deny = {
                "action": "DENY",
                "selector": {"matchLabels": {"app": "db"}},
                "rules": [{"from": [{"namespace": "batch"}]}],
            }
            kubectl(crd, "apply", "-f", "-", stdin=policy(deny, "no-batch", ns))
            await eventually(
                "the deny rule", lambda: not decide(store.policy, batch, db, 5432).allowed
            )
            assert decide(store.policy, batch, web, 5432).allowed
            # Its status says this agent applied this generation, written by this agent.
            got = await eventually("the status entry", lambda: entry(crd, "no-batch", ns, node))
            assert got["applied"] is True
            assert got["observedGeneration"] == 1
            assert got["message"] == "in force"
            managers = json.loads(
                kubectl(
                    crd,
                    "get",
                    "smeshpol",
                    "no-batch",
                    "-n",
                    ns,
                    "-o",
                    "json",
                    "--show-managed-fields",
                ).stdout
            )["metadata"]["managedFields"]
            assert {"manager": f"smesh-agent/{node}", "subresource": "status"}.items() <= next(
                m for m in managers if m["manager"] == f"smesh-agent/{node}"
            ).items()

            # A label change moves the pod into the selector's reach.
            await client.patch(Pod, "web-0", {"metadata": {"labels": {"app": "db"}}}, namespace=ns)
            await eventually(
                "the relabelled pod", lambda: not decide(store.policy, batch, web, 1).allowed
            )

            # Deleting the object restores the flow.
            kubectl(crd, "delete", "smeshpol", "no-batch", "-n", ns)
            await eventually("the deletion", lambda: decide(store.policy, batch, db, 5432).allowed)

    asyncio.run(scenario())


def test_an_object_the_agent_cannot_use_gets_applied_false_with_why(crd: ControlPlane) -> None:
    """An object the API server accepted but this agent cannot use (here: its rule's name
    is taken by the agent's policy file) is not applied, and its status says why."""
    node, ns = unique("node"), unique("pol")
    base = parse(f'rules: [{{name: "{ns}/clash#0", action: allow, from: [{{namespace: a}}]}}]')

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            client = admin(crd)
            stack.push_async_callback(client.close)
            await make_namespace(client, ns)
            store = PolicyStore(None, pending="not yet")
            store.file_policy = base
            watcher = PolicyWatcher(KubeApi.from_kubeconfig(crd.kubeconfig), node, store)
            task = asyncio.create_task(watcher.run())
            stack.push_async_callback(stop, task)
            spec = {"action": "DENY", "rules": [{"from": [{"namespace": "batch"}]}]}
            kubectl(crd, "apply", "-f", "-", stdin=policy(spec, "clash", ns))
            got = await eventually("the status entry", lambda: entry(crd, "clash", ns, node))
            assert got["applied"] is False
            assert f"{ns}/clash#0" in got["message"]
            assert [r.name for r in store.policy.rules] == [f"{ns}/clash#0"]  # the file's

    asyncio.run(scenario())


def test_without_the_crd_the_agent_enforces_its_file_and_picks_the_crd_up_later() -> None:
    """Its own API server: the CRD must be absent at first."""
    with ControlPlane() as plane:

        async def scenario() -> None:
            store = PolicyStore(None, pending="not yet")
            watcher = PolicyWatcher(
                KubeApi.from_kubeconfig(plane.kubeconfig), "node-1", store, absent_retry=0.5
            )
            task = asyncio.create_task(watcher.run())
            try:
                await eventually("the absent CRD noticed", lambda: store.pending is None)
                assert not task.done()
                kubectl(plane, "apply", "-f", str(CRD_PATH))
                kubectl(
                    plane,
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "crd/authorizationpolicies.smesh.io",
                )
                spec = {"action": "DENY", "rules": [{"from": [{"namespace": "batch"}]}]}
                await eventually(
                    "the policy applied",
                    lambda: (
                        kubectl(
                            plane, "apply", "-f", "-", stdin=policy(spec, "late"), check=False
                        ).returncode
                        == 0
                    ),
                )
                await eventually("the late policy", lambda: len(store.policy.rules) == 1)
            finally:
                await stop(task)

        asyncio.run(scenario())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
