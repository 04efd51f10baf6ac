"""The trust bundle: every root a peer's chain may end at.

Holding more than one root is what lets the CA rotate without downtime: the new root is
trusted everywhere before anything is signed with it, and the old one is dropped only
after the last certificate it signed has expired.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from smesh.identity.errors import IdentityError


@dataclass(frozen=True)
class TrustBundle:
    roots: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        if not self.roots:
            raise IdentityError("a trust bundle needs at least one root certificate")

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
