"""Certificates through the CSR API against a real kube-apiserver: `smesh controller` decides.

The RBAC is the chart's (from deploy/smesh.yaml) applied with kubectl; the agent pod is a Pod
object bound to node-1 and marked Running (no kubelet needed), and its token is a real
pod-bound token from the TokenRequest API, so the API server itself writes who asked into each CSR.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
import subprocess
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from lightkube import AsyncClient
from lightkube.models.certificates_v1 import CertificateSigningRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import RoleRef, Subject
from lightkube.resources.certificates_v1 import CertificateSigningRequest
from lightkube.resources.core_v1 import ConfigMap, Namespace, Secret, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import ClusterRoleBinding

from smesh.controller.secretca import SecretCA
from smesh.identity import certs
from smesh.identity.errors import NotEntitled
from smesh.identity.kubecsr import CsrTimeout, KubeCsrSource
from smesh.lab.controlplane import ControlPlane
from tests.integration.kubernetes import csrkit
from tests.integration.kubernetes.csrkit import NS, api, controllers, wait_until
from tests.integration.kubernetes.kubekit import delete_now
from tests.integration.labkit import SMESH

TD = "cluster.local"
SHOP = "shop"
DAY = dt.timedelta(hours=24)


@dataclass
class Cluster:
    plane: ControlPlane
    directory: Path
    agent: Path  # kubeconfig: node-1's agent, pod-bound token
    controller: Path  # kubeconfig: the controller's ServiceAccount
    rogue: Path  # kubeconfig: a pod-bound token of another ServiceAccount, allowed to file CSRs

    def source(self, kubeconfig: Path | None = None, timeout: float = csrkit.WAIT) -> KubeCsrSource:
        return KubeCsrSource("node-1", DAY, kubeconfig=kubeconfig or self.agent, timeout=timeout)

    def ca(self) -> SecretCA:
        secret = api(self.plane, lambda c: c.get(Secret, "smesh-ca", namespace=NS))
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        return SecretCA.from_data(data)

    def csr(self, name: str) -> CertificateSigningRequest:
        return api(self.plane, lambda c: c.get(CertificateSigningRequest, name))


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    plane = control_plane
    directory = tmp_path_factory.mktemp("csr")
    applied = csrkit.kubectl(plane, "apply", "-f", "-", stdin=csrkit.access_objects())
    assert applied.returncode == 0, applied.stderr
    init = subprocess.run(
        [*SMESH, "ca", "init", "--kubeconfig", str(plane.kubeconfig), "--trust-domain", TD],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert init.returncode == 0, init.stderr

    async def setup(client: AsyncClient) -> tuple[str, str, str]:
        await client.create(
            Namespace(metadata=ObjectMeta(name=SHOP, labels={"smesh.io/mesh": "enabled"}))
        )
        for account in ("web", "db", "rogue"):
            await client.create(ServiceAccount(metadata=ObjectMeta(name=account, namespace=SHOP)))
        await csrkit.running_pod(client, csrkit.system_pod("web-1", SHOP, "node-1", "web"))
        await csrkit.running_pod(client, csrkit.system_pod("db-1", SHOP, "node-2", "db"))
        agent = await csrkit.running_pod(
            client, csrkit.system_pod("agent-node-1", NS, "node-1", "smesh-agent")
        )
        rogue = await csrkit.running_pod(
            client, csrkit.system_pod("rogue-1", SHOP, "node-1", "rogue")
        )
        # The rogue may file CSRs (as if someone granted it): the controller must still refuse.
        await client.create(
            ClusterRoleBinding(
                metadata=ObjectMeta(name="test-rogue-csr"),
                roleRef=RoleRef(
                    apiGroup="rbac.authorization.k8s.io", kind="ClusterRole", name="smesh-agent"
                ),
                subjects=[Subject(kind="ServiceAccount", name="rogue", namespace=SHOP)],
            )
        )
        return (
            await csrkit.token(client, NS, "smesh-agent", agent),
            await csrkit.token(client, NS, "smesh-controller"),
            await csrkit.token(client, SHOP, "rogue", rogue),
        )

    agent, controller, rogue = api(plane, setup)
    return Cluster(
        plane,
        directory,
        csrkit.token_kubeconfig(plane, directory / "agent.kubeconfig", agent),
        csrkit.token_kubeconfig(plane, directory / "controller.kubeconfig", controller),
        csrkit.token_kubeconfig(plane, directory / "rogue.kubeconfig", rogue),
    )


@pytest.fixture
def controller(cluster: Cluster) -> Iterator[csrkit.ControllerProcess]:
    with controllers(cluster.controller, cluster.directory, "solo") as running:
        yield running[0]


def web_request() -> bytes:
    return csrkit.csr_pem(x509.UniformResourceIdentifier(f"spiffe://{TD}/ns/{SHOP}/sa/web"))


def denied(cluster: Cluster, exc: pytest.ExceptionInfo[NotEntitled], reason: str) -> str:
    """The CSR's Denied condition (reason and message), checked against the agent's error."""
    found = re.search(r"CSR (\S+) denied", str(exc.value))
    assert found, exc.value
    csr = cluster.csr(found.group(1))
    assert csr.status is not None
    conditions = [(c.type, c.reason, c.message) for c in csr.status.conditions or []]
    assert len(conditions) == 1, conditions
    kind, got, message = conditions[0]
    assert (kind, got) == ("Denied", reason)
    assert message
    assert message in str(exc.value)
    return message


def test_a_node_1_identity_is_approved_and_signed(
    cluster: Cluster, controller: csrkit.ControllerProcess
) -> None:
    issued = cluster.source().sign(web_request())
    chain = x509.load_pem_x509_certificates(issued.chain_pem)
    assert len(chain) == 1  # signed by the root itself: no intermediates
    leaf = chain[0]
    ca = cluster.ca()
    leaf.verify_directly_issued_by(ca.chain[0])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in san] == [f"spiffe://{TD}/ns/{SHOP}/sa/web"]
    assert certs.uri_of(leaf) == f"spiffe://{TD}/ns/{SHOP}/sa/web"
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= DAY + 2 * certs.CLOCK_SKEW
    assert issued.bundle_pem.decode() == ca.bundle_pem()  # the published ConfigMap
    bundle = api(cluster.plane, lambda c: c.get(ConfigMap, "smesh-trust-bundle", namespace=NS))
    assert (bundle.data or {})["roots.pem"] == ca.bundle_pem()
    # Who asked, as the API server recorded it, and the approval condition.
    csrs = api(cluster.plane, _list_csrs)
    mine = [c for c in csrs if c.status and c.status.certificate and _leaf_of(c) == leaf]
    assert len(mine) == 1
    spec = mine[0].spec
    assert spec.username == "system:serviceaccount:smesh-system:smesh-agent"
    extra = spec.extra or {}
    assert extra["authentication.kubernetes.io/pod-name"] == ["agent-node-1"]
    # ServiceAccountTokenPodNodeInfo: this API server names the pod's node in the token.
    assert extra.get("authentication.kubernetes.io/node-name") == ["node-1"], extra
    status = mine[0].status
    assert status is not None
    assert [(c.type, c.reason) for c in status.conditions or []] == [
        ("Approved", "SmeshAutoApproved")
    ]
    # counted once the controller's status write has returned, which the agent may beat
    approved = 'smesh_controller_csrs_total{reason="SmeshAutoApproved",result="approved"} 1.0'
    wait_until("the approval counted", lambda: approved in controller.metrics())


async def _list_csrs(client: AsyncClient) -> list[CertificateSigningRequest]:
    return [c async for c in client.list(CertificateSigningRequest)]


def _leaf_of(csr: CertificateSigningRequest) -> x509.Certificate:
    assert csr.status is not None
    assert csr.status.certificate is not None
    return x509.load_pem_x509_certificates(base64.b64decode(csr.status.certificate))[0]


def test_an_identity_that_runs_only_on_node_2_is_denied(
    cluster: Cluster, controller: csrkit.ControllerProcess
) -> None:
    request = csrkit.csr_pem(x509.UniformResourceIdentifier(f"spiffe://{TD}/ns/{SHOP}/sa/db"))
    with pytest.raises(NotEntitled) as exc:
        cluster.source().sign(request)
    message = denied(cluster, exc, "NotOnNode")
    assert "bound to node node-1" in message
    counted = 'smesh_controller_csrs_total{reason="NotOnNode",result="denied"} 1.0'
    wait_until("the denial counted", lambda: counted in controller.metrics())


def test_an_extra_san_is_denied(cluster: Cluster, controller: csrkit.ControllerProcess) -> None:
    request = csrkit.csr_pem(
        x509.UniformResourceIdentifier(f"spiffe://{TD}/ns/{SHOP}/sa/web"),
        x509.DNSName("web.shop.svc.cluster.local"),
    )
    with pytest.raises(NotEntitled) as exc:
        cluster.source().sign(request)
    assert "DNSName=web.shop.svc.cluster.local" in denied(cluster, exc, "ExtraSAN")


def test_another_service_account_is_denied(
    cluster: Cluster, controller: csrkit.ControllerProcess
) -> None:
    with pytest.raises(NotEntitled) as exc:
        cluster.source(cluster.rogue).sign(web_request())
    assert "system:serviceaccount:shop:rogue" in denied(cluster, exc, "WrongRequester")


async def _file(kubeconfig: Path, request: bytes) -> str:
    """File a CSR as the kubeconfig's user without waiting for an answer; its name."""
    from lightkube import KubeConfig  # noqa: PLC0415

    client = AsyncClient(config=KubeConfig.from_file(kubeconfig))
    try:
        created = await client.create(
            CertificateSigningRequest(
                metadata=ObjectMeta(generateName="smesh-node-1-"),
                spec=CertificateSigningRequestSpec(
                    request=base64.b64encode(request).decode(),
                    signerName="smesh.io/workload-identity",
                    usages=["digital signature", "server auth", "client auth"],
                    expirationSeconds=3600,
                ),
            )
        )
    finally:
        await client.close()
    assert created.metadata is not None
    assert created.metadata.name is not None
    return created.metadata.name


def _answered(cluster: Cluster, name: str) -> Callable[[], bool]:
    def check() -> bool:
        status = cluster.csr(name).status
        return bool(
            status
            and (
                status.certificate
                or {"Denied", "Failed"} & {c.type for c in status.conditions or []}
            )
        )

    return check


def test_a_csr_an_admin_approved_is_still_checked(cluster: Cluster) -> None:
    """Approval by someone else does not bypass the node rule: the signer fails it."""
    request = csrkit.csr_pem(x509.UniformResourceIdentifier(f"spiffe://{TD}/ns/{SHOP}/sa/db"))
    name = asyncio.run(_file(cluster.agent, request))
    approved = csrkit.kubectl(cluster.plane, "certificate", "approve", name)
    assert approved.returncode == 0, approved.stderr
    with controllers(cluster.controller, cluster.directory, "after-admin"):
        wait_until(f"an answer to {name}", _answered(cluster, name))
    status = cluster.csr(name).status
    assert status is not None
    assert not status.certificate
    assert [(c.type, c.reason) for c in status.conditions or []][-1] == ("Failed", "NotOnNode")


def test_a_csr_whose_bound_pod_was_deleted_is_denied(cluster: Cluster) -> None:
    """Filed while no controller runs; the agent pod is deleted; then the controller starts."""

    async def file(client: AsyncClient) -> str:
        agent = await csrkit.running_pod(
            client, csrkit.system_pod("agent-node-1b", NS, "node-1", "smesh-agent")
        )
        bearer = await csrkit.token(client, NS, "smesh-agent", agent)
        path = csrkit.token_kubeconfig(cluster.plane, cluster.directory / "gone.kubeconfig", bearer)
        from lightkube import KubeConfig  # noqa: PLC0415

        as_agent = AsyncClient(config=KubeConfig.from_file(path))
        try:
            created = await as_agent.create(
                CertificateSigningRequest(
                    metadata=ObjectMeta(generateName="smesh-node-1-"),
                    spec=CertificateSigningRequestSpec(
                        request=base64.b64encode(web_request()).decode(),
                        signerName="smesh.io/workload-identity",
                        usages=["digital signature", "server auth", "client auth"],
                        expirationSeconds=3600,
                    ),
                )
            )
        finally:
            await as_agent.close()
        await delete_now(client, "agent-node-1b", NS)
        assert created.metadata is not None
        assert created.metadata.name is not None
        return created.metadata.name

    name = api(cluster.plane, file)
    with controllers(cluster.controller, cluster.directory, "late"):

        def answered() -> bool:
            status = cluster.csr(name).status
            return bool(status and status.conditions)

        wait_until(f"an answer to {name}", answered)
    status = cluster.csr(name).status
    assert status is not None
    assert [(c.type, c.reason) for c in status.conditions or []] == [("Denied", "BoundPodGone")]
    assert not status.certificate


def test_two_replicas_only_the_leader_signs_and_the_other_takes_over(cluster: Cluster) -> None:
    with controllers(cluster.controller, cluster.directory, "replica-a", "replica-b") as (a, b):
        wait_until(
            "a leader", lambda: csrkit.lease_holder(cluster.plane) in {"replica-a", "replica-b"}
        )
        leader, follower = (a, b) if csrkit.lease_holder(cluster.plane) == "replica-a" else (b, a)
        wait_until("the follower to wait", lambda: "waiting to lead" in follower.text())
        cluster.source().sign(web_request())
        # logged once its status write has returned, which the agent's watch may beat
        wait_until("the leader to log its signature", lambda: "signed spiffe://" in leader.text())
        assert "signed spiffe://" not in follower.text()
        assert leader.stop() == 0  # SIGTERM: releases the Lease on the way out
        assert "released the lease" in leader.text()
        wait_until(
            "the follower to lead", lambda: csrkit.lease_holder(cluster.plane) == follower.name
        )
        cluster.source().sign(web_request())
        wait_until("the new leader to log", lambda: "signed spiffe://" in follower.text())


def test_rbac_of_the_agent_and_the_controller(cluster: Cluster) -> None:
    def can(account: str, *args: str) -> bool:
        result = csrkit.kubectl(
            cluster.plane, "auth", "can-i", "--as", f"system:serviceaccount:{NS}:{account}", *args
        )
        return result.stdout.strip() == "yes"

    assert can("smesh-agent", "create", "certificatesigningrequests")
    assert can("smesh-agent", "watch", "certificatesigningrequests")
    assert can("smesh-agent", "get", "configmaps", "-n", NS)
    for verb in ("get", "list", "watch"):  # ClusterIP connects go to a Service's endpoints
        assert can("smesh-agent", verb, "services", "--all-namespaces")
        assert can("smesh-agent", verb, "endpointslices.discovery.k8s.io", "--all-namespaces")
    assert not can("smesh-agent", "update", "services", "-n", "default")
    assert not can("smesh-agent", "create", "endpointslices.discovery.k8s.io", "-n", "default")
    assert not can("smesh-agent", "get", "secrets", "-n", NS)
    assert not can("smesh-agent", "get", "secrets/smesh-ca", "-n", NS)
    assert not can("smesh-agent", "update", "certificatesigningrequests", "--subresource=approval")
    assert can("smesh-controller", "get", "secrets/smesh-ca", "-n", NS)
    assert not can("smesh-controller", "get", "secrets/other", "-n", NS)
    assert not can("smesh-controller", "list", "secrets", "-n", "default")
    assert can("smesh-controller", "update", "certificatesigningrequests", "--subresource=approval")
    # kubectl cannot name a signer (its name holds a '/'): ask the API's SubjectAccessReview.
    assert csrkit.may(cluster.plane, "smesh-controller", "sign", "smesh.io/workload-identity")
    assert csrkit.may(cluster.plane, "smesh-controller", "approve", "smesh.io/workload-identity")
    assert not csrkit.may(
        cluster.plane, "smesh-controller", "sign", "kubernetes.io/kube-apiserver-client"
    )
    assert not csrkit.may(cluster.plane, "smesh-agent", "approve", "smesh.io/workload-identity")
    assert not csrkit.may(cluster.plane, "smesh-agent", "sign", "smesh.io/workload-identity")
    assert can("smesh-controller", "update", "certificatesigningrequests", "--subresource=status")
    assert not can("smesh-controller", "update", "certificatesigningrequests")
    assert can("smesh-controller", "update", "leases/smesh-controller", "-n", NS)
    assert not can("smesh-controller", "update", "leases/other", "-n", NS)


def _verifies(leaf: x509.Certificate, bundle_pem: str) -> bool:
    store = x509.verification.Store(x509.load_pem_x509_certificates(bundle_pem.encode()))
    verifier = x509.verification.PolicyBuilder().store(store).build_client_verifier()
    try:
        verifier.verify(leaf, [])
    except x509.verification.VerificationError:
        return False
    return True


def _published(cluster: Cluster) -> str:
    bundle = api(cluster.plane, lambda c: c.get(ConfigMap, "smesh-trust-bundle", namespace=NS))
    return (bundle.data or {})["roots.pem"]


def _rotate(cluster: Cluster, *flags: str) -> str:
    done = subprocess.run(
        [*SMESH, "ca", "rotate", "--kubeconfig", str(cluster.plane.kubeconfig), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_ca_rotation_through_the_secret(
    cluster: Cluster, controller: csrkit.ControllerProcess
) -> None:
    """Old and new roots are published before the new one signs; old leaves keep verifying."""
    old_root = cluster.ca().chain[0]

    def leaf() -> x509.Certificate:
        return x509.load_pem_x509_certificates(cluster.source().sign(web_request()).chain_pem)[0]

    before = leaf()
    assert before.issuer == old_root.subject
    assert "--activate" in _rotate(cluster)
    wait_until("the bundle with both roots", lambda: _published(cluster).count("BEGIN") == 2)
    staged = leaf()
    assert staged.issuer == old_root.subject  # staging does not switch signing
    _rotate(cluster, "--activate")
    new_root = cluster.ca().chain[0]
    assert new_root.subject != old_root.subject

    def signs_with_new_root() -> bool:
        return leaf().issuer == new_root.subject

    wait_until("the controller to sign with the new root", signs_with_new_root)
    after = leaf()
    bundle = _published(cluster)
    assert bundle.count("BEGIN") == 2
    assert _verifies(before, bundle)
    assert _verifies(staged, bundle)
    assert _verifies(after, bundle)
    after.verify_directly_issued_by(new_root)
    # Retiring the old root before its last leaf expired is refused.
    refused = subprocess.run(
        [*SMESH, "ca", "rotate", "--retire-old", "--kubeconfig", str(cluster.plane.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0
    assert "may be valid until" in refused.stderr


def test_the_agents_certificate_manager_issues_through_csrs(
    cluster: Cluster, controller: csrkit.ControllerProcess, tmp_path: Path
) -> None:
    """What the agent wires for identity.source: kubernetes, up to a real mutual TLS handshake."""
    import asyncio  # noqa: PLC0415
    import socket  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from smesh.agent.config import load  # noqa: PLC0415
    from smesh.agent.metrics import AgentMetrics  # noqa: PLC0415
    from smesh.agent.wiring import certificate_source  # noqa: PLC0415
    from smesh.identity.manager import CertificateManager  # noqa: PLC0415
    from smesh.identity.spiffe import SpiffeId  # noqa: PLC0415

    config_file = tmp_path / "agent.yaml"
    config_file.write_text(
        f"node: node-1\nkubernetes: {{kubeconfig: {cluster.agent}}}\n"
        "identity: {source: kubernetes, certTtl: 1h}\n"
    )
    config = load(config_file, environ={})
    agent = types.SimpleNamespace(metrics=AgentMetrics())
    source = certificate_source(config, agent)  # type: ignore[arg-type]
    assert isinstance(source, KubeCsrSource)
    web = SpiffeId(TD, SHOP, "web")

    async def handshake() -> str:
        manager = CertificateManager(source)
        await manager.acquire(web)
        server_ctx, client_ctx = manager.server_context(web), manager.client_context(web)
        a, b = socket.socketpair()
        peer: list[str] = []

        def serve() -> None:
            with server_ctx.wrap_socket(a, server_side=True) as tls:
                peer.append(str(tls.getpeercert()))

        thread = threading.Thread(target=serve)
        thread.start()
        with client_ctx.wrap_socket(b, server_hostname=None) as tls:
            assert tls.version() == "TLSv1.3"
        thread.join(10)
        return peer[0]

    assert f"spiffe://{TD}/ns/{SHOP}/sa/web" in asyncio.run(handshake())
    assert agent.metrics.csr_requests.labels("issued")._value.get() == 1


def test_no_controller_is_a_timeout_that_names_the_csr(cluster: Cluster, tmp_path: Path) -> None:
    answers: list[str] = []
    source = KubeCsrSource(
        "node-1", DAY, kubeconfig=cluster.agent, timeout=2, on_answer=answers.append
    )
    with pytest.raises(CsrTimeout, match=r"CSR smesh-node-1-\S+ got no answer within 2 s"):
        source.sign(web_request())
    assert answers == ["timeout"]


def test_an_agent_follows_the_bundle_configmap(
    cluster: Cluster, controller: csrkit.ControllerProcess
) -> None:
    """A staged root reaches the agent's certificate manager by the watch, not the 5-min poll."""
    from smesh.identity.manager import CertificateManager  # noqa: PLC0415
    from smesh.identity.spiffe import SpiffeId  # noqa: PLC0415

    source = cluster.source()

    async def run() -> None:
        manager = CertificateManager(source)
        await manager.acquire(SpiffeId(TD, SHOP, "web"))
        before = len(manager.bundle.roots)
        follow = asyncio.create_task(source.follow_bundle(manager.refresh_bundle))
        try:
            await asyncio.to_thread(_rotate, cluster)
            async with asyncio.timeout(csrkit.WAIT):
                while len(manager.bundle.roots) != before + 1:
                    assert not follow.done()
                    await asyncio.sleep(0.05)
        finally:
            follow.cancel()
            await asyncio.wait({follow})
        await asyncio.to_thread(_rotate, cluster, "--activate")

    asyncio.run(run())
