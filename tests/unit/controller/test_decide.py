"""Every rule of the controller's decision, one case each (and the approvals around them)."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lightkube.models.certificates_v1 import CertificateSigningRequestSpec
from lightkube.models.core_v1 import Container, PodSpec, PodStatus
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod

from smesh.controller.decide import (
    EXTRA_NODE_NAME,
    EXTRA_POD_NAME,
    EXTRA_POD_UID,
    REASONS,
    Approve,
    Deny,
    Settings,
    decide,
    requested_identity,
)
from smesh.identity import certs

TD = "cluster.local"
SETTINGS = Settings(trust_domain=TD)
AGENT = "system:serviceaccount:smesh-system:smesh-agent"
WEB = f"spiffe://{TD}/ns/shop/sa/web"
USAGES = ["digital signature", "server auth", "client auth"]


def request(*names: x509.GeneralName, ca: bool | None = None, key: Any = None) -> str:
    key = key or certs.new_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=True)
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=None), critical=True
        )
    pem = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    return base64.b64encode(pem).decode()


def spec(
    req: str | None = None,
    *,
    username: str = AGENT,
    extra: dict[str, list[str]] | None = None,
    usages: list[str] | None = None,
    seconds: int | None = None,
) -> CertificateSigningRequestSpec:
    return CertificateSigningRequestSpec(
        request=req or request(x509.UniformResourceIdentifier(WEB)),
        signerName="smesh.io/workload-identity",
        username=username,
        extra={EXTRA_POD_NAME: ["agent-1"], EXTRA_POD_UID: ["uid-1"]} if extra is None else extra,
        usages=USAGES if usages is None else usages,
        expirationSeconds=seconds,
    )


def pod(
    name: str,
    namespace: str,
    node: str | None,
    *,
    sa: str = "default",
    uid: str = "u",
    phase: str = "Running",
    labels: dict[str, str] | None = None,
    host_network: bool = False,
) -> Pod:
    return Pod(
        metadata=ObjectMeta(name=name, namespace=namespace, uid=uid, labels=labels),
        spec=PodSpec(
            nodeName=node,
            serviceAccountName=sa,
            hostNetwork=host_network,
            containers=[Container(name="c")],
        ),
        status=PodStatus(phase=phase),
    )


AGENT_POD = pod("agent-1", "smesh-system", "node-1", sa="smesh-agent", uid="uid-1")
WEB_POD = pod("web-1", "shop", "node-1", sa="web")
NAMESPACES = {
    "shop": Namespace(metadata=ObjectMeta(name="shop", labels={"smesh.io/mesh": "enabled"}))
}


def run(
    s: CertificateSigningRequestSpec, bound: Pod | None = AGENT_POD, pods: list[Pod] | None = None
) -> Any:
    return decide(s, bound, [WEB_POD] if pods is None else pods, NAMESPACES, SETTINGS)


def denied(decision: Any, reason: str) -> str:
    assert isinstance(decision, Deny), decision
    assert decision.reason == reason, decision
    assert decision.reason in REASONS
    return decision.message


def test_approves_an_identity_of_the_agents_node_for_24h_at_most() -> None:
    decision = run(spec())
    assert isinstance(decision, Approve)
    assert str(decision.identity) == WEB
    assert decision.node == "node-1"
    assert decision.lifetime == dt.timedelta(hours=24)


@pytest.mark.parametrize(("asked", "granted"), [(3600, 3600), (86400, 86400), (7 * 86400, 86400)])
def test_lifetime_is_the_asked_one_capped_at_24h(asked: int, granted: int) -> None:
    decision = run(spec(seconds=asked))
    assert isinstance(decision, Approve)
    assert decision.lifetime == dt.timedelta(seconds=granted)


def test_pending_pod_is_enough_since_agents_ask_during_cni_add() -> None:
    assert isinstance(
        run(spec(), pods=[pod("web-1", "shop", "node-1", sa="web", phase="Pending")]), Approve
    )


def test_node_name_extra_that_agrees_is_fine() -> None:
    extra = {EXTRA_POD_NAME: ["agent-1"], EXTRA_POD_UID: ["uid-1"], EXTRA_NODE_NAME: ["node-1"]}
    assert isinstance(run(spec(extra=extra)), Approve)


@pytest.mark.parametrize(
    "username",
    ["system:serviceaccount:shop:web", "system:serviceaccount:smesh-system:default", "admin", ""],
)
def test_wrong_requester(username: str) -> None:
    assert "only system:serviceaccount:smesh-system:smesh-agent" in denied(
        run(spec(username=username)), "WrongRequester"
    )


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {EXTRA_POD_NAME: ["agent-1"]},
        {EXTRA_POD_UID: ["uid-1"]},
        {EXTRA_POD_NAME: [], EXTRA_POD_UID: ["uid-1"]},
    ],
)
def test_token_not_bound_to_a_pod(extra: dict[str, list[str]]) -> None:
    assert "projected" in denied(run(spec(extra=extra)), "NoBoundPod")


def test_bound_pod_gone() -> None:
    assert "no longer exists" in denied(run(spec(), bound=None), "BoundPodGone")


def test_bound_pod_recreated_with_another_uid() -> None:
    other = pod("agent-1", "smesh-system", "node-1", sa="smesh-agent", uid="uid-2")
    denied(run(spec(), bound=other), "BoundPodGone")


def test_bound_pod_unscheduled() -> None:
    unbound = pod("agent-1", "smesh-system", None, sa="smesh-agent", uid="uid-1")
    denied(run(spec(), bound=unbound), "BoundPodUnscheduled")


def test_node_name_extra_disagreeing() -> None:
    extra = {EXTRA_POD_NAME: ["agent-1"], EXTRA_POD_UID: ["uid-1"], EXTRA_NODE_NAME: ["node-2"]}
    assert "node-2" in denied(run(spec(extra=extra)), "NodeMismatch")


@pytest.mark.parametrize(
    "extra_name",
    [
        x509.DNSName("web.shop.svc"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        x509.RFC822Name("a@example.com"),
        x509.UniformResourceIdentifier(f"spiffe://{TD}/ns/shop/sa/db"),
    ],
)
def test_any_extra_san(extra_name: x509.GeneralName) -> None:
    req = request(x509.UniformResourceIdentifier(WEB), extra_name)
    denied(run(spec(req)), "ExtraSAN")


def test_only_a_dns_san() -> None:
    denied(run(spec(request(x509.DNSName("web")))), "ExtraSAN")


def test_no_san() -> None:
    denied(run(spec(request())), "InvalidIdentity")


def test_ca_basic_constraint() -> None:
    denied(run(spec(request(x509.UniformResourceIdentifier(WEB), ca=True))), "CARequested")


def test_ca_false_basic_constraint_is_fine() -> None:
    assert isinstance(run(spec(request(x509.UniformResourceIdentifier(WEB), ca=False))), Approve)


@pytest.mark.parametrize(
    "usages",
    [["digital signature", "server auth", "client auth", "cert sign"], ["code signing"], []],
)
def test_wrong_usages(usages: list[str]) -> None:
    denied(run(spec(usages=usages)), "WrongUsages")


def test_fewer_usages_are_fine() -> None:
    assert isinstance(run(spec(usages=["client auth"])), Approve)


def test_foreign_trust_domain() -> None:
    req = request(x509.UniformResourceIdentifier("spiffe://evil.example/ns/shop/sa/web"))
    assert "cluster.local" in denied(run(spec(req)), "ForeignTrustDomain")


def test_not_a_workload_id() -> None:
    req = request(x509.UniformResourceIdentifier(f"spiffe://{TD}/smesh/node/node-1"))
    denied(run(spec(req)), "InvalidIdentity")


def test_garbage_request() -> None:
    denied(run(spec(base64.b64encode(b"not a csr").decode())), "BadRequest")
    denied(run(spec("%%%")), "BadRequest")


def test_rsa_key_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    denied(run(spec(request(x509.UniformResourceIdentifier(WEB), key=key))), "BadRequest")


def test_other_curve_refused() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    denied(run(spec(request(x509.UniformResourceIdentifier(WEB), key=key))), "BadRequest")


@pytest.mark.parametrize(
    ("pods", "words"),
    [
        ([pod("web-1", "shop", "node-2", sa="web")], "bound to node node-1"),  # runs elsewhere
        ([pod("web-1", "shop", "node-1", sa="db")], "service account web"),  # other account
        ([pod("web-1", "other", "node-1", sa="web")], "namespace shop"),  # other namespace
        ([pod("web-1", "shop", "node-1", sa="web", phase="Succeeded")], "ended"),
        (
            [pod("web-1", "shop", "node-1", sa="web", labels={"smesh.io/mesh": "disabled"})],
            "labelled",
        ),
        ([pod("web-1", "shop", "node-1", sa="web", host_network=True)], "host network"),
        ([], "no meshed pod"),
    ],
)
def test_no_meshed_pod_with_that_identity_on_the_node(pods: list[Pod], words: str) -> None:
    assert words in denied(run(spec(), pods=pods), "NotOnNode")


def test_namespace_not_opted_in() -> None:
    namespaces = {"shop": Namespace(metadata=ObjectMeta(name="shop"))}
    decision = decide(spec(), AGENT_POD, [WEB_POD], namespaces, SETTINGS)
    assert "not labelled" in denied(decision, "NotOnNode")


def test_default_service_account_when_unset() -> None:
    p = pod("web-1", "shop", "node-1", sa="web")
    assert p.spec is not None
    p.spec.serviceAccountName = None
    req = request(x509.UniformResourceIdentifier(f"spiffe://{TD}/ns/shop/sa/default"))
    assert isinstance(run(spec(req), pods=[p]), Approve)


def test_requested_identity_for_the_fresh_read() -> None:
    assert str(requested_identity(spec())) == WEB
    assert requested_identity(spec(request(x509.DNSName("web")))) is None
    assert requested_identity(spec("%%%")) is None
