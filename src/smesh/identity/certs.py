"""Building certificates and requests in memory; disk is touched only by explicit writes.

Roots are ECDSA P-256, CA:TRUE with path length 0 (no intermediates), for signing
certificates only. Leaves follow SPIFFE's X.509-SVID profile: an empty subject, the
SPIFFE ID as the one and only (critical) URI SAN, CA:FALSE, digital signature, and both
server and client authentication, since every workload is both.
"""

from __future__ import annotations

import datetime as dt
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from smesh.identity.errors import CaError

CLOCK_SKEW = dt.timedelta(minutes=1)
ROOT_LIFETIME = dt.timedelta(days=3650)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def random_serial() -> int:
    return secrets.randbits(159) | 1  # positive, at most 20 bytes, never zero


def root_certificate(
    key: ec.EllipticCurvePrivateKey,
    trust_domain: str,
    lifetime: dt.timedelta = ROOT_LIFETIME,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    start = (not_before or now()) - CLOCK_SKEW
    serial = random_serial()
    # Unique per root, so two roots of one trust domain (during rotation) are never confused.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "smesh"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, trust_domain[:64]),
            x509.NameAttribute(NameOID.COMMON_NAME, f"smesh root {serial:x}"[:64]),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def csr_for(key: ec.EllipticCurvePrivateKey, uri: str) -> x509.CertificateSigningRequest:
    """A request naming exactly one URI; the signer decides what the certificate says."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
        )
        .sign(key, hashes.SHA256())
    )


def requested_uri(csr: x509.CertificateSigningRequest) -> str:
    """The single URI SAN a request asks for; anything else is refused."""
    if not csr.is_signature_valid:
        raise CaError("the certificate request's signature is invalid")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CaError("the certificate request names no SPIFFE ID (no URI SAN)") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    others = len(list(san)) - len(uris)
    if len(uris) != 1 or others:
        raise CaError("the certificate request must name exactly one URI and nothing else")
    return uris[0]


def leaf_certificate(
    public: ec.EllipticCurvePublicKey,
    uri: str,
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    lifetime: dt.timedelta,
    *,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    start = (not_before or now()) - CLOCK_SKEW
    end = min(start + CLOCK_SKEW + lifetime, issuer.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.subject)
        .public_key(public)
        .serial_number(random_serial())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )


def uri_of(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if len(uris) == 1 else None
