"""`smesh ca serve --kubeconfig` against a real kube-apiserver: pods say who may sign what.

The signer runs as a user runs it (a process of the CLI) and nodes ask it over mutual TLS
with their node credentials, exactly as agents do.
"""

from __future__ import annotations

import asyncio
import collections.abc
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from lightkube import AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod, ServiceAccount

from smesh.identity import certs
from smesh.identity.ca import CertificateAuthority
from smesh.identity.errors import NotEntitled
from smesh.identity.service import SignerClient
from smesh.identity.spiffe import SpiffeId
from smesh.lab.controlplane import ControlPlane
from tests.integration.kubernetes.kubekit import admin, delete_now, make_namespace, pod, unique
from tests.integration.labkit import SMESH

WAIT = 30.0  # the watch delivers in milliseconds; this only bounds a broken run


@pytest.fixture
def signer(
    control_plane: ControlPlane, tmp_path: Path
) -> collections.abc.Iterator[tuple[CertificateAuthority, Path]]:
    ca = CertificateAuthority.init(tmp_path / "ca", "cluster.local")
    sock = tmp_path / "signer.sock"
    log = (tmp_path / "signer.log").open("w")
    argv = [*SMESH, "ca", "serve", "--dir", str(tmp_path / "ca"), "--socket", str(sock)]
    proc = subprocess.Popen(
        [*argv, "--kubeconfig", str(control_plane.kubeconfig)], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + WAIT
        while not sock.exists():  # it serves only once the first pod list is in
            assert proc.poll() is None, (tmp_path / "signer.log").read_text()
            assert time.monotonic() < deadline, "the signer did not start"
            time.sleep(0.05)
        yield ca, sock
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def ask(ca: CertificateAuthority, sock: Path, node: str, identity: SpiffeId) -> bool:
    """Whether the signer issues *identity* to *node* (a real CSR over mutual TLS)."""
    client = SignerClient(sock, ca.node_credential(node), ca.bundle())
    csr = certs.csr_for(certs.new_key(), str(identity)).public_bytes(serialization.Encoding.PEM)
    try:
        client.sign(csr)
    except NotEntitled:
        return False
    return True


def until(ca: CertificateAuthority, sock: Path, node: str, identity: SpiffeId, want: bool) -> None:
    deadline = time.monotonic() + WAIT
    while ask(ca, sock, node, identity) != want:
        assert time.monotonic() < deadline, f"{node} {identity}: never {want}"
        time.sleep(0.05)


def test_a_pod_entitles_its_node_until_it_is_finished_or_deleted(
    control_plane: ControlPlane, signer: tuple[CertificateAuthority, Path]
) -> None:
    ca, sock = signer
    ns = unique("shop")
    web, db = SpiffeId("cluster.local", ns, "web"), SpiffeId("cluster.local", ns, "db")

    def api(step: Callable[[AsyncClient], Awaitable[object]]) -> None:
        async def run() -> None:
            client = admin(control_plane)
            try:
                await step(client)
            finally:
                await client.close()

        asyncio.run(run())

    async def setup(client: AsyncClient) -> None:
        await make_namespace(client, ns)
        for account in ("web", "db"):
            await client.create(ServiceAccount(metadata=ObjectMeta(name=account, namespace=ns)))
        for name in ("web-1", "web-2"):
            await client.create(pod_as(name, ns, "node-1", "web"))

    assert not ask(ca, sock, "node-1", web)
    api(setup)
    until(ca, sock, "node-1", web, True)
    assert not ask(ca, sock, "node-2", web)
    assert not ask(ca, sock, "node-1", SpiffeId("cluster.local", ns, "default"))

    # web-2 finishes; web-1 still runs on node-1, so the node keeps the identity. A later
    # pod's entitlement shows the signer has seen the finish (watch events are in order).
    api(
        lambda client: client.patch(
            Pod.Status, "web-2", {"status": {"phase": "Succeeded"}}, namespace=ns
        )
    )
    api(lambda client: client.create(pod_as("db-1", ns, "node-2", "db")))
    until(ca, sock, "node-2", db, True)
    assert ask(ca, sock, "node-1", web)

    # Deleting the last running pod revokes.
    api(lambda client: delete_now(client, "web-1", ns))
    until(ca, sock, "node-1", web, False)


def pod_as(name: str, namespace: str, node: str, account: str) -> Pod:
    obj = pod(name, namespace, node)
    assert obj.spec is not None
    obj.spec.serviceAccountName = account
    return obj
