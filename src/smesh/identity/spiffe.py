"""SPIFFE IDs: parsed and printed in exactly one place.

smesh accepts workload IDs of the form ``spiffe://TD/ns/NAMESPACE/sa/SERVICEACCOUNT``
and node IDs ``spiffe://TD/smesh/node/NODE``, following the SPIFFE ID rules: lowercase
trust domain of letters, digits, '.', '-' and '_'; path segments of letters, digits,
'.', '-' and '_' that are not '.' or '..'; no port, user info, query or fragment; at most
2048 bytes in all and 255 for the trust domain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smesh.identity.errors import InvalidSpiffeId

SCHEME = "spiffe://"
MAX_LENGTH = 2048
MAX_TRUST_DOMAIN = 255
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
DEFAULT_TRUST_DOMAIN = "cluster.local"


def _split(text: str) -> tuple[str, list[str]]:
    if not isinstance(text, str):
        raise InvalidSpiffeId("a SPIFFE ID must be a string")
    if len(text.encode()) > MAX_LENGTH:
        raise InvalidSpiffeId(f"SPIFFE ID longer than {MAX_LENGTH} bytes")
    if not text.startswith(SCHEME):
        raise InvalidSpiffeId(f"{text!r} is not a SPIFFE ID: it must start with {SCHEME}")
    rest = text[len(SCHEME) :]
    trust_domain, _, path = rest.partition("/")
    validate_trust_domain(trust_domain, text)
    segments = path.split("/") if path else []
    for segment in segments:
        if not segment:
            raise InvalidSpiffeId(f"{text!r}: empty path segment")
        if segment in {".", ".."}:
            raise InvalidSpiffeId(f"{text!r}: path segments '.' and '..' are not allowed")
        if not _SEGMENT.match(segment):
            raise InvalidSpiffeId(
                f"{text!r}: path segment {segment!r} may only hold letters, digits, '.', '-', '_'"
            )
    return trust_domain, segments


def validate_trust_domain(trust_domain: str, context: str | None = None) -> str:
    where = f"{context!r}: " if context else ""
    if not trust_domain:
        raise InvalidSpiffeId(f"{where}missing trust domain")
    if len(trust_domain) > MAX_TRUST_DOMAIN:
        raise InvalidSpiffeId(f"{where}trust domain longer than {MAX_TRUST_DOMAIN} characters")
    if not _TRUST_DOMAIN.match(trust_domain):
        raise InvalidSpiffeId(
            f"{where}trust domain {trust_domain!r} may only hold lowercase letters, digits, "
            "'.', '-' and '_' (no port, user info, query or fragment)"
        )
    return trust_domain


@dataclass(frozen=True, order=True)
class SpiffeId:
    """A workload identity: ``spiffe://TD/ns/NAMESPACE/sa/SERVICEACCOUNT``."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        for label, value in (
            ("namespace", self.namespace),
            ("service account", self.service_account),
        ):
            if not value or not _SEGMENT.match(value) or value in {".", ".."}:
                raise InvalidSpiffeId(f"invalid {label} {value!r} for a SPIFFE ID")

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        trust_domain, segments = _split(text)
        if len(segments) != 4 or segments[0] != "ns" or segments[2] != "sa":
            raise InvalidSpiffeId(
                f"{text!r} is not a workload ID: "
                "the path must be /ns/<namespace>/sa/<serviceaccount>"
            )
        return cls(trust_domain, segments[1], segments[3])

    @classmethod
    def for_workload(
        cls, namespace: str, service_account: str, trust_domain: str = DEFAULT_TRUST_DOMAIN
    ) -> SpiffeId:
        return cls(trust_domain, namespace, service_account)

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


@dataclass(frozen=True, order=True)
class NodeId:
    """A node agent's identity, used only toward the signer: ``spiffe://TD/smesh/node/NODE``."""

    trust_domain: str
    node: str

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        if not self.node or not _SEGMENT.match(self.node):
            raise InvalidSpiffeId(f"invalid node name {self.node!r}")

    @classmethod
    def parse(cls, text: str) -> NodeId:
        trust_domain, segments = _split(text)
        if len(segments) != 3 or segments[:2] != ["smesh", "node"]:
            raise InvalidSpiffeId(f"{text!r} is not a node ID: the path must be /smesh/node/<name>")
        return cls(trust_domain, segments[2])

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}/smesh/node/{self.node}"
