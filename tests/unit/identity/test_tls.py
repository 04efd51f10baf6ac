"""Real handshakes: chains, identities, expiry, wrong CAs, missing certs, old TLS versions."""

from __future__ import annotations

import datetime as dt
import re
import ssl

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from smesh.identity import certs, tls
from smesh.identity.ca import CertificateAuthority
from smesh.identity.credential import Credential
from smesh.identity.errors import IdentityMismatch, PeerIdentityError
from tests.unit.identity.conftest import credential, handshake, workload

POD1, POD3 = workload("pod-1"), workload("pod-3")


def contexts(ca: CertificateAuthority) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    bundle = ca.bundle()
    return (
        tls.server_context(credential(ca, POD3), bundle),
        tls.client_context(credential(ca, POD1), bundle),
    )


def test_mutual_handshake_proves_both_identities(ca: CertificateAuthority) -> None:
    server, client = contexts(ca)
    result, _ = handshake(server, client)
    assert result.ok, (result.client_error, result.server_error)
    assert tls.peer_identity(result.server_saw) == POD1  # what the server hands to policy
    assert tls.verify_peer(result.client_saw, POD3) == POD3  # what the client expected


def test_a_valid_certificate_for_another_identity_is_refused(ca: CertificateAuthority) -> None:
    server, client = contexts(ca)
    result, _ = handshake(server, client)
    with pytest.raises(
        IdentityMismatch, match=re.escape("peer is spiffe://cluster.local/ns/default/sa/pod-3")
    ):
        tls.verify_peer(result.client_saw, workload("pod-4"))


def test_client_without_a_certificate_is_refused(ca: CertificateAuthority) -> None:
    server, _ = contexts(ca)
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cadata=ca.bundle().pem())
    result, _ = handshake(server, anonymous)
    assert not result.ok
    assert result.server_saw is None


def test_certificates_from_another_ca_are_refused_both_ways(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    server, client = contexts(ca)
    stranger = tls.client_context(credential(other_ca, POD1), other_ca.bundle())
    result, _ = handshake(server, stranger)
    assert not result.ok
    impostor_server = tls.server_context(credential(other_ca, POD3), ca.bundle())
    result, _ = handshake(impostor_server, client)
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)


def _leaf(ca: CertificateAuthority, start: dt.datetime, hours: float) -> Credential:
    key = certs.new_key()
    root = ca.active
    cert = certs.leaf_certificate(
        key.public_key(),
        str(POD3),
        root.certificate,
        ca._key(root),
        dt.timedelta(hours=hours),
        not_before=start,
    )
    return Credential(str(POD3), key, (cert,))


@pytest.mark.parametrize(
    ("start", "why"),
    [
        (certs.now() - dt.timedelta(hours=3), "certificate has expired"),
        (certs.now() + dt.timedelta(hours=3), "certificate is not yet valid"),
    ],
)
def test_expired_and_not_yet_valid_certificates_are_refused(
    ca: CertificateAuthority, start: dt.datetime, why: str
) -> None:
    _, client = contexts(ca)
    server = tls.server_context(_leaf(ca, start, hours=1), ca.bundle())
    result, _ = handshake(server, client)
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)
    assert why in str(result.client_error)


def test_tls_12_is_refused(ca: CertificateAuthority) -> None:
    server, _ = contexts(ca)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.load_verify_locations(cadata=ca.bundle().pem())
    result, _ = handshake(server, old)
    assert not result.ok


def test_second_connection_resumes_the_session(ca: CertificateAuthority) -> None:
    server, client = contexts(ca)
    first, session = handshake(server, client)
    assert first.ok
    assert not first.resumed
    second, _ = handshake(server, client, session=session)
    assert second.ok
    assert second.resumed
    assert tls.peer_identity(second.server_saw) == POD1  # identity survives resumption


def test_peer_identity_refuses_certificates_without_one_workload_id(
    ca: CertificateAuthority,
) -> None:
    with pytest.raises(PeerIdentityError, match="no certificate"):
        tls.peer_identity(None)
    node = credential(ca, "spiffe://cluster.local/smesh/node/node-1")
    with pytest.raises(PeerIdentityError, match="no workload ID"):
        tls.peer_identity(node.leaf.public_bytes(Encoding.DER))


def test_a_bundle_with_two_roots_verifies_leaves_of_both(ca: CertificateAuthority) -> None:
    old_leaf = credential(ca, POD3)
    ca.rotate()
    ca.activate_newest()
    new_leaf = credential(ca, POD1)
    assert old_leaf.leaf.issuer != new_leaf.leaf.issuer
    bundle = ca.bundle()
    assert len(bundle.roots) == 2
    result, _ = handshake(
        tls.server_context(old_leaf, bundle), tls.client_context(new_leaf, bundle)
    )
    assert result.ok, (result.client_error, result.server_error)
