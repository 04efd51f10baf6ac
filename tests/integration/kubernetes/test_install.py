"""The install against a real API server: the rendered manifest is accepted object by object
(server-side dry run: admission and validation run, nothing is stored), and `smesh install
check` fails with a fix for each missing part, then passes once every part is there."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smesh.lab.controlplane import DEFAULT_BIN_DIR, ControlPlane
from tests.chartkit import MANIFEST, objects
from tests.unit.install.test_check import root_pem

KUBECTL = DEFAULT_BIN_DIR / "kubectl"
SMESH = Path(sys.executable).parent / "smesh"


def kubectl(plane: ControlPlane, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(plane.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def install_namespace(control_plane: ControlPlane) -> str:
    """smesh-system, really created: a dry run does not create the manifest's namespace, and
    the namespaced objects after it need one that exists."""
    namespace = "smesh-system"
    existing = kubectl(control_plane, "get", "namespaces", "-o", "name")
    if f"namespace/{namespace}" not in existing.split():
        kubectl(control_plane, "create", "namespace", namespace)
    return namespace


def test_every_object_of_the_manifest_is_accepted(
    control_plane: ControlPlane, install_namespace: str
) -> None:
    out = kubectl(control_plane, "apply", "--dry-run=server", "-o", "name", "-f", str(MANIFEST))
    applied = set(out.split())
    expected = {
        f"{doc['kind'].lower()}.{group}/{doc['metadata']['name']}".replace("./", "/")
        for doc in objects(MANIFEST.read_text())
        for group in [doc["apiVersion"].rpartition("/")[0]]
    }
    assert applied == expected


def install_check(plane: ControlPlane) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [str(SMESH), "install", "check", "--kubeconfig", str(plane.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert not proc.stderr.strip(), proc.stderr
    return proc.returncode, proc.stdout.splitlines()


def status_patch(plane: ControlPlane, kind: str, name: str, status: dict[str, Any]) -> None:
    """What a controller or kubelet would report; the bare API server runs neither."""
    kubectl(
        plane,
        "patch",
        kind,
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
        *(["-n", "smesh-system"] if kind not in ("node", "crd") else []),
    )


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "authorizationpolicies.smesh.io"},
    "spec": {
        "group": "smesh.io",
        "scope": "Namespaced",
        "names": {
            "plural": "authorizationpolicies",
            "singular": "authorizationpolicy",
            "kind": "AuthorizationPolicy",
        },
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def test_install_check_fails_with_fixes_then_passes_for_what_exists(
    control_plane: ControlPlane, install_namespace: str
) -> None:
    code, lines = install_check(control_plane)
    assert code == 1
    assert lines[0].startswith(f"ok    API server: {control_plane.server} answers, Kubernetes v1.")
    failed = {
        line.split(":")[0].removeprefix("FAIL  ") for line in lines if line.startswith("FAIL")
    }
    assert failed == {
        "CRD authorizationpolicies.smesh.io",
        "controller Deployment smesh-system/smesh-controller",
        "controller Lease smesh-system/smesh-controller",
        "trust bundle ConfigMap smesh-system/smesh-trust-bundle",
        "agent DaemonSet smesh-system/smesh-agent",
    }
    assert all("; fix: " in line for line in lines if line.startswith("FAIL"))

    # What an installed, working smesh leaves in the API: the manifest's objects, the CRD,
    # and what the controller, the kubelets and the control plane report.
    kubectl(control_plane, "apply", "-f", str(MANIFEST))
    kubectl(control_plane, "apply", "-f", "-", stdin=json.dumps(CRD))
    kubectl(
        control_plane,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/authorizationpolicies.smesh.io",
    )
    now = dt.datetime.now(dt.UTC)
    kubectl(
        control_plane,
        "-n",
        "smesh-system",
        "create",
        "configmap",
        "smesh-trust-bundle",
        f"--from-literal=roots.pem={root_pem(now)}",
    )
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "smesh-controller", "namespace": "smesh-system"},
        "spec": {
            "holderIdentity": "smesh-controller-abc",
            "leaseDurationSeconds": 3600,
            "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    }
    kubectl(control_plane, "apply", "-f", "-", stdin=json.dumps(lease))
    status_patch(
        control_plane,
        "deployment",
        "smesh-controller",
        {
            "replicas": 2,
            "readyReplicas": 2,
            "availableReplicas": 2,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}
            ],
        },
    )
    node = f"install-node-{secrets.token_hex(3)}"
    kubectl(
        control_plane,
        "apply",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}),
    )
    status_patch(
        control_plane,
        "node",
        node,
        {
            "nodeInfo": {
                "kernelVersion": "6.1.0-28-amd64",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "osImage": "",
                "containerRuntimeVersion": "",
                "kubeletVersion": "",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            }
        },
    )
    agent = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"smesh-agent-{node}",
            "namespace": "smesh-system",
            "labels": {"app.kubernetes.io/name": "smesh-agent"},
        },
        "spec": {
            "nodeName": node,
            "serviceAccountName": "smesh-agent",
            "automountServiceAccountToken": False,
            "containers": [{"name": "agent", "image": "smesh:0.1.0"}],
        },
    }
    kubectl(control_plane, "apply", "-f", "-", stdin=json.dumps(agent))
    status_patch(
        control_plane,
        "pod",
        agent["metadata"]["name"],
        {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    )
    status_patch(
        control_plane,
        "daemonset",
        "smesh-agent",
        {
            "currentNumberScheduled": 1,
            "desiredNumberScheduled": 1,
            "numberMisscheduled": 0,
            "numberReady": 1,
            "updatedNumberScheduled": 1,
        },
    )

    code, lines = install_check(control_plane)
    assert [line for line in lines if line.startswith("FAIL")] == []
    assert code == 0, lines
    assert f"ok    kernel of {node}: Linux 6.1.0-28-amd64" in lines
    assert f"ok    agent on {node}: smesh-agent-{node} Ready (capture attached)" in lines
    assert (
        "ok    controller Lease smesh-system/smesh-controller: held by smesh-controller-abc"
        in lines
    )


def chained_dir(tmp_path: Path) -> tuple[Path, Path]:
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    conf_dir.mkdir(parents=True)
    bin_dir.mkdir(parents=True)
    plugins = [{"type": "bridge"}, {"type": "smesh-cni", "agentSocket": "/run/smesh/cni.sock"}]
    (conf_dir / "10-pods.conflist").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "pods", "plugins": plugins})
    )
    (bin_dir / "smesh-cni").write_text("#!/bin/sh\n")
    return conf_dir, bin_dir


def pre_stop(kubeconfig: Path, conf_dir: Path, bin_dir: Path) -> str:
    """What the agent's preStop hook runs."""
    proc = subprocess.run(
        [
            str(SMESH),
            "cni",
            "uninstall",
            f"--conf-dir={conf_dir}",
            f"--bin-dir={bin_dir}",
            "--only-if-daemonset-deleted",
            "smesh-system/smesh-agent",
            "--kubeconfig",
            str(kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def chained(conf_dir: Path) -> bool:
    plugins = json.loads((conf_dir / "10-pods.conflist").read_text())["plugins"]
    return "smesh-cni" in [p["type"] for p in plugins]


def test_the_pre_stop_removes_smesh_cni_only_when_the_daemonset_is_deleted(
    control_plane: ControlPlane, install_namespace: str, tmp_path: Path
) -> None:
    kubectl(control_plane, "apply", "-f", str(MANIFEST))
    conf_dir, bin_dir = chained_dir(tmp_path)
    # An upgrade or a restart: the DaemonSet is there, smesh-cni stays.
    said = pre_stop(control_plane.kubeconfig, conf_dir, bin_dir)
    assert "is still there" in said
    assert chained(conf_dir)
    assert (bin_dir / "smesh-cni").exists()

    # An uninstall that removed the agent's ServiceAccount first: its token is refused.
    config = json.loads(control_plane.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": "the-deleted-service-accounts-token"}
    revoked = tmp_path / "revoked.kubeconfig"
    revoked.write_text(json.dumps(config))
    said = pre_stop(revoked, conf_dir, bin_dir)
    assert "10-pods.conflist updated" in said
    assert not chained(conf_dir)
    assert not (bin_dir / "smesh-cni").exists()

    # An uninstall: the DaemonSet is gone.
    conf_dir, bin_dir = chained_dir(tmp_path / "again")
    kubectl(control_plane, "-n", "smesh-system", "delete", "daemonset", "smesh-agent")
    pre_stop(control_plane.kubeconfig, conf_dir, bin_dir)
    assert not chained(conf_dir)
    assert not (bin_dir / "smesh-cni").exists()
