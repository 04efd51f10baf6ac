"""Every TLS setting smesh uses, in one place.

TLS 1.3 only. Both sides present a certificate and verify the other's chain against the
trust bundle. Hostnames mean nothing in a mesh, so the client checks the server's SPIFFE
ID instead (:func:`verify_peer`), and the server hands the client's ID to policy
(:func:`peer_identity`). Session tickets stay on so repeated connections resume.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import ssl
import time
from collections.abc import Iterator

from cryptography import x509

from smesh.identity.bundle import TrustBundle
from smesh.identity.credential import Credential
from smesh.identity.errors import IdentityMismatch, InvalidSpiffeId, PeerIdentityError
from smesh.identity.spiffe import SpiffeId
from smesh.tunnel import mux

TICKETS_PER_HANDSHAKE = 1  # the client presents one ticket again and again (dataplane.md)


@contextlib.contextmanager
def _memory_files(credential: Credential) -> Iterator[tuple[str, str]]:
    """The chain and key as anonymous in-memory files: the key never touches a disk."""
    fds = [os.memfd_create("smesh-cert"), os.memfd_create("smesh-key")]
    try:
        os.write(fds[0], credential.cert_pem())
        os.write(fds[1], credential.key_pem())
        yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
    finally:
        for fd in fds:
            os.close(fd)


def _base(protocol: int, credential: Credential, bundle: TrustBundle) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bundle.pem())
    with _memory_files(credential) as (cert, key):
        ctx.load_cert_chain(cert, key)
    return ctx


def server_context(credential: Credential, bundle: TrustBundle) -> ssl.SSLContext:
    """For the inbound side: TLS 1.3, client certificate required and verified."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, credential, bundle)
    ctx.num_tickets = TICKETS_PER_HANDSHAKE
    ctx.set_alpn_protocols(list(mux.ALPNS))  # a peer offering none may still speak CONNECT
    return ctx


def client_context(credential: Credential, bundle: TrustBundle) -> ssl.SSLContext:
    """For the outbound side: presents the workload's certificate, verifies the chain.

    ``check_hostname`` is off because identity is checked by :func:`verify_peer` against the
    SPIFFE ID expected for the destination, which is stricter than any hostname.
    """
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, credential, bundle)
    ctx.check_hostname = False
    ctx.set_alpn_protocols(list(mux.ALPNS))  # newest first; an older agent picks /1
    return ctx


@functools.lru_cache(maxsize=4096)
def _identity_of(der: bytes) -> tuple[SpiffeId, float, float]:
    """(identity, not before, not after) of a certificate, parsed once."""
    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PeerIdentityError("the peer's certificate has no URI SAN (no SPIFFE ID)") from None
    except ValueError:
        raise PeerIdentityError("the peer's certificate cannot be parsed") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise PeerIdentityError(
            f"the peer's certificate must name exactly one URI, it names {len(uris)}"
        )
    try:
        identity = SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        raise PeerIdentityError(f"the peer's certificate names no workload ID: {exc}") from None
    return (
        identity,
        cert.not_valid_before_utc.timestamp(),
        cert.not_valid_after_utc.timestamp(),
    )


def peer_identity(der_cert: bytes | None) -> SpiffeId:
    """The SPIFFE ID proven by a verified peer certificate (DER, as from getpeercert(True)).

    The dates are checked here too: a resumed handshake verifies no certificate, and
    the one in the session may have expired since.
    """
    identity, _not_before, _not_after = peer_certificate(der_cert)
    return identity


def peer_certificate(der_cert: bytes | None) -> tuple[SpiffeId, float, float]:
    """:func:`peer_identity` with the certificate's validity (Unix times)."""
    if not der_cert:
        raise PeerIdentityError("the peer presented no certificate")
    identity, not_before, not_after = _identity_of(der_cert)
    now = time.time()
    if not not_before <= now < not_after:
        raise PeerIdentityError(
            f"the peer's certificate for {identity} is not valid now "
            f"(valid {_utc(not_before)} to {_utc(not_after)})"
        )
    return identity, not_before, not_after


def _utc(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def verify_peer(der_cert: bytes | None, expected: SpiffeId) -> SpiffeId:
    """Refuse a peer whose certificate is valid but proves another identity."""
    actual = peer_identity(der_cert)
    if actual != expected:
        raise IdentityMismatch(expected, actual)
    return actual
