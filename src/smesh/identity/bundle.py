"""The trust bundle: every root a peer's chain may end at.

Holding more than one root is what lets the CA rotate without downtime: the new root is
trusted everywhere before anything is signed with it, and the old one is dropped only
after the last certificate it signed has expired.

Where the source knows it, the bundle also names the root that signs now (``signing``): once
a rotation is activated, the agent renews every certificate of an older root early, so a
rotation completes in minutes rather than in a certificate lifetime.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from smesh.identity.errors import IdentityError


@dataclass(frozen=True)
class TrustBundle:
    roots: tuple[x509.Certificate, ...]
    #: The root new certificates chain to, one of *roots* (None: the source does not say).
    signing: x509.Certificate | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.roots:
            raise IdentityError("a trust bundle needs at least one root certificate")
        if self.signing is not None and self.signing not in self.roots:
            raise IdentityError("the signing root is not one of the trust bundle's roots")

    def signed_by_signing_root(self, chain: tuple[x509.Certificate, ...]) -> bool | None:
        """Whether *chain* (leaf first, no root) ends at the signing root; None if unknown."""
        if self.signing is None:
            return None
        try:
            chain[-1].verify_directly_issued_by(self.signing)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def pem(self) -> str:
        return "".join(r.public_bytes(serialization.Encoding.PEM).decode() for r in self.roots)

    @classmethod
    def from_pem(cls, data: bytes | str) -> TrustBundle:
        raw = data.encode() if isinstance(data, str) else data
        try:
            return cls(tuple(x509.load_pem_x509_certificates(raw)))
        except ValueError:
            raise IdentityError("the trust bundle holds no valid PEM certificate") from None

    def with_root(self, root: x509.Certificate) -> TrustBundle:
        return TrustBundle((*self.roots, root))
