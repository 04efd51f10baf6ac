"""The AuthorizationPolicy CRD against a real API server: it installs, and the API server
refuses invalid objects with a message that names the field (no agent needed)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from smesh.lab.controlplane import ControlPlane

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


def policy(spec: dict[str, Any], name: str = "p") -> str:
    return json.dumps(
        {
            "apiVersion": "smesh.io/v1alpha1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "default"},
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
        "status": {"agents": [entry]},
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
    assert kubectl(crd, "get", "smeshpol", "good").stdout.split("\n")[1].split()[2] == "node-1"


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
