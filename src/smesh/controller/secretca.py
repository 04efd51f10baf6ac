"""The CA the controller signs with, kept in the Secret ``smesh-system/smesh-ca`` (sans-IO).

The Secret is of type ``kubernetes.io/tls``: ``tls.crt`` is the signing certificate followed by
its chain (up to the root, or not), ``tls.key`` its key, and the optional ``roots.pem`` every
root still trusted. Without ``roots.pem`` the trusted roots are ``ca.crt`` (what cert-manager
writes) or else the self-signed certificates of ``tls.crt``. So a CA made by ``smesh ca init``
and one a user brings (cert-manager's CA Issuer, an intermediate of a corporate PKI) read alike.

Rotation keeps the same shape, in steps that each leave a working Secret:

1. :func:`stage_rotation`: a new root and key go into ``next.crt``/``next.key`` and the new root
   joins ``roots.pem``; the controller publishes the bundle, agents start trusting it.
2. :func:`activate_rotation`: once agents trust it, the new root becomes ``tls.crt``/``tls.key``
   and signs from now on; the old root stays in ``roots.pem`` so certificates it signed (at
   most 24 h old) keep verifying.
3. :func:`retire_old_roots`: after the last certificate of an old root has expired, only the
   signing root stays in ``roots.pem``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from smesh.identity import certs
from smesh.identity.bundle import TrustBundle
from smesh.identity.errors import CaError, IdentityError

SECRET_NAME = "smesh-ca"
BUNDLE_CONFIGMAP = "smesh-trust-bundle"
BUNDLE_KEY = "roots.pem"
#: The bundle ConfigMap's other key: the root the signing chain ends at. Agents renew early
#: every certificate of another root, so an activated rotation reaches every workload soon.
SIGNING_KEY = "signing.pem"
#: When step 3 may run: set by step 2 to the activation time plus the longest lifetime.
RETIRE_AFTER_KEY = "retire-after"

SecretData = dict[str, bytes]


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


@dataclass(frozen=True)
class SecretCA:
    """A signing certificate with its key and chain, and the roots peers trust."""

    chain: tuple[x509.Certificate, ...]  # the signing certificate first
    key: ec.EllipticCurvePrivateKey
    roots: TrustBundle

    @classmethod
    def from_data(cls, data: Mapping[str, bytes], where: str = SECRET_NAME) -> SecretCA:
        """Read the Secret's data (already base64-decoded); every problem named with its key."""
        try:
            chain = tuple(x509.load_pem_x509_certificates(data["tls.crt"]))
        except KeyError:
            raise CaError(f"{where} has no tls.crt (the signing CA certificate)") from None
        except ValueError:
            raise CaError(f"{where}: tls.crt holds no PEM certificate") from None
        try:
            key = serialization.load_pem_private_key(data["tls.key"], password=None)
        except KeyError:
            raise CaError(f"{where} has no tls.key (the signing CA's key)") from None
        except (ValueError, TypeError):
            raise CaError(f"{where}: tls.key is not an unencrypted PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError(f"{where}: tls.key must be an ECDSA key (smesh signs with ECDSA)")
        if chain[0].public_key() != key.public_key():
            raise CaError(f"{where}: tls.key is not the key of the first certificate in tls.crt")
        try:
            constraints = chain[0].extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CaError(f"{where}: the first certificate of tls.crt is not a CA (CA:TRUE)")
        roots_pem = data.get(BUNDLE_KEY) or data.get("ca.crt")
        try:
            if roots_pem:
                roots = TrustBundle.from_pem(roots_pem)
            else:
                roots = TrustBundle(tuple(c for c in chain if _self_signed(c)))
        except IdentityError as exc:
            raise CaError(
                f"{where}: no trusted root ({exc}); put the root certificate(s) in roots.pem"
            ) from None
        top = chain[-1]
        if not any(r.subject == top.issuer for r in roots.roots):
            raise CaError(
                f"{where}: tls.crt's chain ends at {top.issuer.rfc4514_string()}, which is not "
                "among the trusted roots (roots.pem, ca.crt or a self-signed tls.crt)"
            )
        return cls(chain, key, roots)

    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """What a leaf's chain carries after the leaf: the chain without its root."""
        return tuple(c for c in self.chain if not _self_signed(c))

    def issue(self, public: ec.EllipticCurvePublicKey, uri: str, lifetime: dt.timedelta) -> bytes:
        """The PEM chain (leaf + intermediates) for *uri*; the caller decided it may have it."""
        leaf = certs.leaf_certificate(public, uri, self.chain[0], self.key, lifetime)
        return b"".join(_pem(c) for c in (leaf, *self.intermediates()))

    def bundle_pem(self) -> str:
        return self.roots.pem()

    def signing_root(self) -> x509.Certificate:
        """The trusted root the signing chain ends at (from_data checked there is one)."""
        top = self.chain[-1]
        candidates = [r for r in self.roots.roots if r.subject == top.issuer]
        for root in candidates:  # two roots of one name (a user's CA renewed in place)
            try:
                top.verify_directly_issued_by(root)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return root
        return candidates[0]

    def bundle_data(self) -> dict[str, str]:
        """The trust bundle ConfigMap's data: every trusted root, and the signing one."""
        return {BUNDLE_KEY: self.bundle_pem(), SIGNING_KEY: _pem(self.signing_root()).decode()}


def new_data(trust_domain: str) -> SecretData:
    """A fresh self-signed root, as the Secret's data (``smesh ca init --kubeconfig``)."""
    key = certs.new_key()
    root = certs.root_certificate(key, trust_domain)
    return {"tls.crt": _pem(root), "tls.key": _key_pem(key), BUNDLE_KEY: _pem(root)}


def _roots(data: Mapping[str, bytes]) -> list[x509.Certificate]:
    return list(SecretCA.from_data(data).roots.roots)


def stage_rotation(data: Mapping[str, bytes], trust_domain: str) -> SecretData:
    """Step 1: a new root, trusted everywhere but not signing yet."""
    if "next.crt" in data:
        raise CaError(
            "a rotation is already staged (next.crt is in the Secret): activate it with "
            "`smesh ca rotate --activate`"
        )
    roots = _roots(data)
    key = certs.new_key()
    root = certs.root_certificate(key, trust_domain)
    fresh = dict(data)
    fresh["next.crt"] = _pem(root)
    fresh["next.key"] = _key_pem(key)
    fresh[BUNDLE_KEY] = b"".join(_pem(r) for r in (*roots, root))
    return fresh


def activate_rotation(
    data: Mapping[str, bytes], now: dt.datetime, longest_lifetime: dt.timedelta
) -> SecretData:
    """Step 2: the staged root signs from now on; every root stays trusted."""
    if "next.crt" not in data or "next.key" not in data:
        raise CaError("no rotation is staged: run `smesh ca rotate` first")
    roots = _roots(data)
    fresh = {k: v for k, v in data.items() if k not in {"next.crt", "next.key"}}
    fresh["tls.crt"] = data["next.crt"]
    fresh["tls.key"] = data["next.key"]
    fresh[BUNDLE_KEY] = b"".join(_pem(r) for r in roots)
    retire = now + longest_lifetime + certs.CLOCK_SKEW
    fresh[RETIRE_AFTER_KEY] = retire.isoformat().encode()
    SecretCA.from_data(fresh)  # refuse to write a Secret the controller could not read
    return fresh


def retire_old_roots(
    data: Mapping[str, bytes], now: dt.datetime, force: bool = False
) -> SecretData:
    """Step 3: drop every root but the signing chain's, once their certificates expired."""
    if "next.crt" in data:
        raise CaError("a rotation is staged but not active: activate it first")
    after = data.get(RETIRE_AFTER_KEY)
    if after and not force and now < dt.datetime.fromisoformat(after.decode()):
        raise CaError(
            f"certificates signed by the old root may be valid until {after.decode()}; "
            "retire it after that, or pass --force"
        )
    ca = SecretCA.from_data(data)
    top = ca.chain[-1]
    keep = [r for r in ca.roots.roots if r.subject == top.issuer]
    fresh = {k: v for k, v in data.items() if k != RETIRE_AFTER_KEY}
    fresh[BUNDLE_KEY] = b"".join(_pem(r) for r in keep)
    return fresh
