"""The install against a real API server: the rendered manifest is accepted object by object
(server-side dry run: admission and validation run, nothing is stored)."""

from __future__ import annotations

import subprocess

import pytest

from smesh.lab.controlplane import DEFAULT_BIN_DIR, ControlPlane
from tests.chartkit import MANIFEST, objects

KUBECTL = DEFAULT_BIN_DIR / "kubectl"


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
