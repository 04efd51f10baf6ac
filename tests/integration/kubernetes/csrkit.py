"""Helpers for the CSR API tests: the chart's RBAC, pod-bound tokens, controller processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lightkube import AsyncClient
from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Pod, ServiceAccount

from smesh.identity import certs
from smesh.lab.controlplane import ControlPlane, free_port
from tests.integration.kubernetes.kubekit import admin
from tests.integration.labkit import SMESH

REPO = Path(__file__).resolve().parents[3]
MANIFEST = REPO / "deploy" / "smesh.yaml"
ACCESS_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
}
NS = "smesh-system"
WAIT = 30.0  # every answer takes milliseconds; this bounds only a broken run
T = TypeVar("T")


def api(plane: ControlPlane, step: Callable[[AsyncClient], Awaitable[T]]) -> T:
    """Run one admin step against the API server (the tests themselves are synchronous)."""

    async def run() -> T:
        client = admin(plane)
        try:
            return await step(client)
        finally:
            await client.close()

    return asyncio.run(run())


def kubectl(
    plane: ControlPlane, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(plane.bin_dir / "kubectl"), "--kubeconfig", str(plane.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def access_objects() -> str:
    """The install's namespace, ServiceAccounts and RBAC from the rendered chart (nothing else:
    these tests run the controller as a process and the agent pod as a bare object)."""
    documents = yaml.safe_load_all(MANIFEST.read_text())
    chosen = [d for d in documents if d and d.get("kind") in ACCESS_KINDS]
    return yaml.safe_dump_all(chosen)


def system_pod(name: str, namespace: str, node: str, account: str) -> Pod:
    return Pod(
        metadata=ObjectMeta(name=name, namespace=namespace),
        spec=PodSpec(
            nodeName=node,
            serviceAccountName=account,
            automountServiceAccountToken=False,
            containers=[Container(name="main", image="none")],
        ),
    )


async def running_pod(client: AsyncClient, obj: Pod) -> Pod:
    """Create *obj* and mark it Running (the status subresource, as a kubelet would)."""
    created = await client.create(obj)
    assert created.metadata is not None
    assert created.metadata.name is not None
    return await client.patch(
        Pod.Status,
        created.metadata.name,
        {"status": {"phase": "Running"}},
        namespace=created.metadata.namespace,
    )


async def token(client: AsyncClient, namespace: str, account: str, pod: Pod | None = None) -> str:
    """A TokenRequest token for *account*, bound to *pod* if given (as the kubelet projects)."""
    bound = None
    if pod is not None:
        assert pod.metadata is not None
        bound = BoundObjectReference(
            kind="Pod", apiVersion="v1", name=pod.metadata.name, uid=pod.metadata.uid
        )
    request = ServiceAccount.Token(
        metadata=ObjectMeta(namespace=namespace),
        spec=TokenRequestSpec(audiences=[], boundObjectRef=bound, expirationSeconds=3600),
    )
    answer = await client.create(request, account, namespace=namespace)
    assert answer.status is not None
    return answer.status.token


def token_kubeconfig(plane: ControlPlane, path: Path, bearer: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "smesh",
                "cluster": {
                    "server": plane.server,
                    "certificate-authority": str(plane.pki.ca_cert),
                },
            }
        ],
        "users": [{"name": "sa", "user": {"token": bearer}}],
        "contexts": [{"name": "sa", "context": {"cluster": "smesh", "user": "sa"}}],
        "current-context": "sa",
    }
    path.write_text(json.dumps(config))
    return path


def csr_pem(*names: x509.GeneralName) -> bytes:
    key = certs.new_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=True)
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415

    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@dataclass
class ControllerProcess:
    """`smesh controller` as an operator runs it, with its log and metrics port."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10
        ) as r:
            return str(r.read().decode())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_controller(kubeconfig: Path, directory: Path, name: str) -> ControllerProcess:
    port = free_port()
    log = directory / f"{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                *SMESH,
                "controller",
                "--kubeconfig",
                str(kubeconfig),
                "--identity",
                name,
                "--metrics-address",
                f"127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=out,
        )
    return ControllerProcess(name, proc, log, port)


@contextlib.contextmanager
def controllers(
    kubeconfig: Path, directory: Path, *names: str
) -> Iterator[list[ControllerProcess]]:
    """Started in order; stopped (by pid) when the block ends, even if a test fails."""
    running: list[ControllerProcess] = []
    try:
        for name in names:
            running.append(start_controller(kubeconfig, directory, name))
        yield running
    finally:
        for proc in running:
            proc.stop()


def lease_holder(plane: ControlPlane) -> str | None:
    async def get(client: AsyncClient) -> str | None:
        try:
            lease = await client.get(Lease, "smesh-controller", namespace=NS)
        except Exception:
            return None
        return lease.spec.holderIdentity if lease.spec else None

    return api(plane, get)


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def may(plane: ControlPlane, account: str, verb: str, signer: str) -> bool:
    """Whether smesh-system's *account* may *verb* (approve, sign) for *signer*."""
    from lightkube.models.authorization_v1 import (  # noqa: PLC0415
        ResourceAttributes,
        SubjectAccessReviewSpec,
    )
    from lightkube.resources.authorization_v1 import SubjectAccessReview  # noqa: PLC0415

    review = SubjectAccessReview(
        spec=SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{NS}:{account}",
            groups=[
                "system:serviceaccounts",
                f"system:serviceaccounts:{NS}",
                "system:authenticated",
            ],
            resourceAttributes=ResourceAttributes(
                group="certificates.k8s.io", resource="signers", name=signer, verb=verb
            ),
        )
    )
    answer = api(plane, lambda c: c.create(review))
    assert answer.status is not None
    return bool(answer.status.allowed)
