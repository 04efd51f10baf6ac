"""A workload's (or node's) private key and certificate chain, held in memory."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from smesh.identity.errors import IdentityError


@dataclass(frozen=True)
class Credential:
    """What a TLS endpoint presents: a key and its chain (leaf first), and the ID it proves."""

    uri: str
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def serial(self) -> int:
        return self.leaf.serial_number

    def cert_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write_to_path(self, cert_path: Path, key_path: Path) -> None:
        """Write the chain (0644) and the key (0600, created with that mode)."""
        cert_path.write_bytes(self.cert_pem())
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(self.key_pem())

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> Credential:
        chain = tuple(x509.load_pem_x509_certificates(cert_pem))
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError("smesh keys are ECDSA P-256")
        from smesh.identity.certs import uri_of  # noqa: PLC0415 - avoid an import cycle

        uri = uri_of(chain[0])
        if uri is None:
            raise IdentityError("the certificate names no single URI")
        return cls(uri, key, chain)

    @classmethod
    def read(cls, cert_path: Path, key_path: Path) -> Credential:
        try:
            return cls.from_pem(cert_path.read_bytes(), key_path.read_bytes())
        except FileNotFoundError as exc:
            raise IdentityError(f"no credential at {exc.filename}") from None
