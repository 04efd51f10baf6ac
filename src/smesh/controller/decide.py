"""Whether a CertificateSigningRequest may have its certificate (sans-IO).

An agent files CSRs as the ServiceAccount ``smesh-system/smesh-agent`` with a token bound to
its own pod, so the API server writes into ``spec.username``/``spec.extra`` who asked and from
which pod; nothing in those fields can be chosen by the requester. The node is the agent
pod's ``spec.nodeName``, read from the API, never from the request. A stolen node's agent
token can therefore obtain the identities of the pods bound to that node and no others.

Every refusal carries a reason (a CamelCase word for the CSR's Denied condition and the
``reason`` label of ``smesh_controller_csrs_total``) and a message a user can act on.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from lightkube.models.certificates_v1 import CertificateSigningRequestSpec
from lightkube.resources.core_v1 import Namespace, Pod

from smesh.identity.errors import InvalidSpiffeId
from smesh.identity.spiffe import SpiffeId
from smesh.kubernetes.source import not_meshed_because

SIGNER_NAME = "smesh.io/workload-identity"
INSTALL_NAMESPACE = "smesh-system"
AGENT_SERVICE_ACCOUNT = "smesh-agent"
MAX_LIFETIME = dt.timedelta(hours=24)
#: The usages smesh certificates carry; a CSR may ask for these and no others.
ALLOWED_USAGES = frozenset({"digital signature", "server auth", "client auth"})

EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"

#: Every reason a CSR is denied (bounded: the metric's label values).
REASONS = (
    "WrongRequester",
    "NoBoundPod",
    "BoundPodGone",
    "BoundPodUnscheduled",
    "NodeMismatch",
    "BadRequest",
    "ExtraSAN",
    "CARequested",
    "InvalidIdentity",
    "ForeignTrustDomain",
    "WrongUsages",
    "NotOnNode",
)


@dataclass(frozen=True)
class Settings:
    trust_domain: str
    namespace: str = INSTALL_NAMESPACE
    agent_service_account: str = AGENT_SERVICE_ACCOUNT
    max_lifetime: dt.timedelta = MAX_LIFETIME

    @property
    def agent_username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.agent_service_account}"


@dataclass(frozen=True)
class Approve:
    identity: SpiffeId
    node: str
    lifetime: dt.timedelta
    public_key: ec.EllipticCurvePublicKey
    reason: str = "SmeshAutoApproved"

    @property
    def message(self) -> str:
        return f"node {self.node} runs a pod of {self.identity}"


@dataclass(frozen=True)
class Deny:
    reason: str
    message: str


Decision = Approve | Deny


def _one(extra: Mapping[str, list[str]] | None, key: str) -> str | None:
    values = (extra or {}).get(key) or []
    return values[0] if len(values) == 1 and values[0] else None


def _identity(
    request: bytes, settings: Settings
) -> tuple[SpiffeId, ec.EllipticCurvePublicKey] | Deny:
    """The one identity the PKCS#10 request asks for, or why it may not have it."""
    try:
        csr = x509.load_pem_x509_csr(request)
    except ValueError:
        return Deny("BadRequest", "spec.request is not a PEM PKCS#10 certificate request")
    if not csr.is_signature_valid:
        return Deny("BadRequest", "the request's signature does not match its public key")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        return Deny("BadRequest", "smesh workload keys must be ECDSA P-256")
    try:
        constraints = csr.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        pass
    else:
        if constraints.ca:
            return Deny(
                "CARequested", "the request asks for a CA certificate (basicConstraints CA:TRUE)"
            )
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return Deny("InvalidIdentity", "the request names no SPIFFE ID (no URI SAN)")
    names = list(san)
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or len(names) != 1:
        extra = ", ".join(
            f"{type(n).__name__}={n.value}"
            for n in names
            if not isinstance(n, x509.UniformResourceIdentifier)
        )
        return Deny(
            "ExtraSAN",
            f"the request must name exactly one URI SAN and nothing else; it names {len(uris)} "
            f"URI(s){' and ' + extra if extra else ''}",
        )
    try:
        identity = SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        return Deny("InvalidIdentity", f"the URI SAN is not a workload identity: {exc}")
    if identity.trust_domain != settings.trust_domain:
        return Deny(
            "ForeignTrustDomain",
            f"{identity} is outside this cluster's trust domain {settings.trust_domain}",
        )
    return identity, public


def requested_identity(spec: CertificateSigningRequestSpec) -> SpiffeId | None:
    """The workload identity *spec* asks for, if it names one; the decision checks the rest."""
    try:
        csr = x509.load_pem_x509_csr(base64.b64decode(spec.request, validate=True))
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        return SpiffeId.parse(uris[0]) if len(uris) == 1 else None
    except (ValueError, x509.ExtensionNotFound, InvalidSpiffeId):
        return None


def decide(
    spec: CertificateSigningRequestSpec,
    bound_pod: Pod | None,
    pods: Iterable[Pod],
    namespaces: Mapping[str, Namespace],
    settings: Settings,
) -> Decision:
    """Approve (with the lifetime to sign for) or deny (with the reason) one CSR.

    *bound_pod* is the pod named by ``spec.extra``'s pod-name in the install namespace, as the
    API has it now (None if there is none); *pods* are candidates for the identity (the
    controller passes the pods of the requested namespace, or every pod); *namespaces* by name.
    """
    if spec.username != settings.agent_username:
        return Deny(
            "WrongRequester",
            f"requested by {spec.username or 'nobody'}; only {settings.agent_username} "
            "(the smesh agent) may request workload certificates",
        )
    pod_name, pod_uid = _one(spec.extra, EXTRA_POD_NAME), _one(spec.extra, EXTRA_POD_UID)
    if pod_name is None or pod_uid is None:
        return Deny(
            "NoBoundPod",
            "the requester's token is not bound to a pod (no pod-name/pod-uid in spec.extra): "
            "the agent must use its pod's projected ServiceAccount token",
        )
    meta = bound_pod.metadata if bound_pod is not None else None
    if bound_pod is None or meta is None or meta.uid != pod_uid:
        return Deny(
            "BoundPodGone",
            f"the requester's pod {settings.namespace}/{pod_name} (uid {pod_uid}) no longer "
            "exists; a new agent pod files a new request",
        )
    node = bound_pod.spec.nodeName if bound_pod.spec is not None else None
    if not node:
        return Deny("BoundPodUnscheduled", f"the requester's pod {pod_name} is bound to no node")
    token_node = _one(spec.extra, EXTRA_NODE_NAME)
    if token_node is not None and token_node != node:
        return Deny(
            "NodeMismatch",
            f"the requester's token was issued on node {token_node}, but its pod {pod_name} "
            f"is bound to node {node}",
        )
    usages = set(spec.usages or [])
    if not usages or not usages <= ALLOWED_USAGES:
        return Deny(
            "WrongUsages",
            f"usages {sorted(usages)} are not a non-empty subset of {sorted(ALLOWED_USAGES)}",
        )
    try:
        request = base64.b64decode(spec.request, validate=True)
    except ValueError:
        return Deny("BadRequest", "spec.request is not base64")
    parsed = _identity(request, settings)
    if isinstance(parsed, Deny):
        return parsed
    identity, public = parsed
    why_not: list[str] = []
    for pod in pods:
        pmeta, pspec = pod.metadata, pod.spec
        if pmeta is None or pspec is None or pspec.nodeName != node:
            continue
        if pmeta.namespace != identity.namespace:
            continue
        if (pspec.serviceAccountName or "default") != identity.service_account:
            continue
        because = not_meshed_because(pod, namespaces.get(identity.namespace))
        if because is None:
            asked = spec.expirationSeconds
            lifetime = settings.max_lifetime
            if asked is not None:
                lifetime = min(lifetime, dt.timedelta(seconds=asked))
            return Approve(identity, node, lifetime, public)
        why_not.append(f"{pmeta.name}: {because}")
    detail = f" (on {node}: {'; '.join(why_not)})" if why_not else ""
    return Deny(
        "NotOnNode",
        f"no meshed pod of namespace {identity.namespace} with service account "
        f"{identity.service_account} is bound to node {node}{detail}",
    )
