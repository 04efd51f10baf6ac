"""Signers turn a node's certificate request into a workload certificate, if it may have it.

A node may obtain only the identities of workloads scheduled on it: a compromised node
can impersonate its own pods but no one else's. Who runs where comes from an
:class:`Entitlements` source: in the lab the workload directory, on Kubernetes the API
server's pod list (a future ``KubernetesCsrSigner`` hands the request to the cluster's
CSR API and implements the same :class:`CertificateSource` toward the agent).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from smesh.identity import certs
from smesh.identity.bundle import TrustBundle
from smesh.identity.ca import CertificateAuthority
from smesh.identity.errors import CaError, InvalidSpiffeId, NotEntitled
from smesh.identity.spiffe import SpiffeId

log = logging.getLogger("smesh.signer")

DEFAULT_TTL = dt.timedelta(hours=24)
MAX_TTL = dt.timedelta(days=7)


@dataclass(frozen=True)
class IssuedCertificate:
    chain_pem: bytes
    bundle_pem: bytes


class CertificateSource(Protocol):
    """What an agent needs: sign my request; tell me whom to trust."""

    def sign(self, csr_pem: bytes) -> IssuedCertificate: ...

    def bundle(self) -> TrustBundle: ...


class Entitlements(Protocol):
    def allowed(self, node: str, identity: SpiffeId) -> bool: ...


class StaticEntitlements:
    """A fixed node → identities table."""

    def __init__(self, table: Mapping[str, Iterable[SpiffeId]]) -> None:
        self._table = {node: frozenset(ids) for node, ids in table.items()}

    def allowed(self, node: str, identity: SpiffeId) -> bool:
        return identity in self._table.get(node, frozenset())


class LiveEntitlements:
    """Asks a callable for the current (node, identity) pairs on every decision."""

    def __init__(self, pairs: Callable[[], Iterable[tuple[str, SpiffeId]]]) -> None:
        self._pairs = pairs

    def allowed(self, node: str, identity: SpiffeId) -> bool:
        return (node, identity) in set(self._pairs())


class LocalSigner:
    """Signs with a :class:`CertificateAuthority` in this process."""

    def __init__(
        self,
        ca: CertificateAuthority,
        entitlements: Entitlements,
        ttl: dt.timedelta = DEFAULT_TTL,
    ) -> None:
        if not dt.timedelta(minutes=1) <= ttl <= MAX_TTL:
            raise CaError(f"certificate lifetime must be between 1 minute and {MAX_TTL.days} days")
        self.ca = ca
        self.entitlements = entitlements
        self.ttl = ttl

    def sign(self, csr_pem: bytes, node: str) -> IssuedCertificate:
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise CaError("the request is not a PEM certificate signing request") from None
        uri = certs.requested_uri(csr)
        try:
            identity = SpiffeId.parse(uri)
        except InvalidSpiffeId as exc:
            raise CaError(f"the request names no workload identity: {exc}") from None
        if identity.trust_domain != self.ca.trust_domain:
            raise NotEntitled(
                f"{identity} is outside this CA's trust domain {self.ca.trust_domain}"
            )
        if not self.entitlements.allowed(node, identity):
            log.warning("refused %s to node %s: no such workload on that node", identity, node)
            raise NotEntitled(f"node {node} may not obtain {identity}: no such workload runs on it")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise CaError("smesh workload keys must be ECDSA P-256")
        cert = self.ca.issue(public, uri, self.ttl, node)
        log.info("issued %s to node %s, serial %x", identity, node, cert.serial_number)
        return IssuedCertificate(
            cert.public_bytes(serialization.Encoding.PEM), self.ca.bundle().pem().encode()
        )

    def for_node(self, node: str) -> NodeSigner:
        return NodeSigner(self, node)


class NodeSigner:
    """A :class:`LocalSigner` seen from one node: the in-process :class:`CertificateSource`."""

    def __init__(self, signer: LocalSigner, node: str) -> None:
        self._signer = signer
        self._node = node

    def sign(self, csr_pem: bytes) -> IssuedCertificate:
        return self._signer.sign(csr_pem, self._node)

    def bundle(self) -> TrustBundle:
        return self._signer.ca.bundle()
